"""DICOM pixel data to a display-ready image and to the model's input.

Pure domain code: bytes or a dataset in, arrays out. Every step is pydicom's own
(decoders with the pylibjpeg plugins, Modality LUT, VOI LUT / windowing, colour
conversion), so the image the model sees is the one a DICOM viewer would show.

Rules that are not in the standard, documented here because results depend on them:
- Multi-frame: the middle frame (index ``n_frames // 2``) is decoded; for a cine or a
  tomosynthesis stack it is the most representative single frame.
- VOI: a VOI LUT Sequence is preferred over windows; with several windows the first is
  used; with neither, the full range of the Modality-LUT output (min..max) is stretched.
- Output is "as displayed": MONOCHROME1 is inverted so that bright always means dense.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gpu_service.inference import lut

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PHOTOMETRICS = frozenset(
    ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "XYB")
    + ("YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT")
)
_YBR = ("YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT")


class PixelDecodeError(Exception):
    """An image that cannot be turned into pixels; `code` is stable and goes into error records.

    `message` goes into result records and the webhook too, so it is always a fixed text plus,
    at most, an exception type name, a validated UID or photometric keyword, never the text
    of a library exception: pydicom quotes element values, which can be patient data.
    """

    def __init__(self, code: str, message: str | None = None) -> None:
        self.code = code
        self.message = message or code.replace("_", " ")
        super().__init__(f"{code}: {self.message}")


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # float32, HxW (grayscale) or HxWx3 (RGB), in [0, 1] as displayed
    frame_index: int
    n_frames: int
    photometric: str  # photometric interpretation of the source (before conversion)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-safe, no patient data


def read_dicom(data: bytes | str | os.PathLike) -> pydicom.Dataset:
    """Parse a whole DICOM file (Part 10, or a bare dataset without file meta)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) == 0:
            raise PixelDecodeError("not_dicom", "the object is empty")

        def source() -> Any:
            return io.BytesIO(bytes(data))
    else:
        path = os.fspath(data)

        def source() -> Any:
            return path

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(source())
    except InvalidDicomError:
        ds = _read_without_meta(source())
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except EOFError as exc:
        raise PixelDecodeError("truncated", f"the file ends early ({type(exc).__name__})") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on corrupt input
        raise PixelDecodeError("not_dicom", f"cannot parse as DICOM ({type(exc).__name__})") from exc
    _ensure_transfer_syntax(ds)
    return ds


def _read_without_meta(fp: Any) -> pydicom.Dataset:
    """Bare datasets (no preamble) are legal on old media; accept them only if they look like images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, force=True)
            ok = ("SOPClassUID" in ds) or ("Rows" in ds and "Columns" in ds)
    except Exception as exc:  # noqa: BLE001
        raise PixelDecodeError("not_dicom", "no DICM prefix and not a parsable dataset") from exc
    if not ok:
        raise PixelDecodeError("not_dicom", "no DICM prefix and no DICOM image attributes")
    return ds


def _ensure_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Decoders need a transfer syntax; bare datasets only know how they were encoded."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _frame_view(ds: pydicom.Dataset, frame_index: int) -> pydicom.Dataset:
    """The dataset's LUT attributes for one frame, merging enhanced multi-frame functional groups.

    pydicom's LUT functions read RescaleSlope/WindowCenter etc. at the top level; enhanced
    objects keep them in shared/per-frame functional groups.
    """
    groups = []
    for keyword, index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", frame_index),
    ):
        seq = ds.get(keyword)
        if seq and len(seq) > index:
            groups.append(seq[index])
    if not groups:
        return ds
    view = pydicom.Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    for elem in ds:
        if elem.tag.group == 0x0028:
            view.add(elem)
    for group in groups:
        for inner_keyword in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            inner = group.get(inner_keyword)
            if inner:
                for elem in inner[0]:
                    view.add(elem)
    return view


def decode(ds: pydicom.Dataset) -> DecodedImage:
    """Decode one frame and bring it to [0, 1] as a viewer would display it."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise PixelDecodeError("no_pixel_data", "the dataset has no pixel data")
    if "Rows" not in ds or "Columns" not in ds:
        raise PixelDecodeError("missing_required_attribute", "Rows or Columns is missing")
    rows, cols = _int_attr(ds, "Rows", 0), _int_attr(ds, "Columns", 0)
    if rows == 0 or cols == 0:
        raise PixelDecodeError("empty_image", f"image size is {rows}x{cols}")
    n_frames = _int_attr(ds, "NumberOfFrames", 1)
    if n_frames < 1:
        raise PixelDecodeError("empty_image", "the image has no frames")
    frame_index = n_frames // 2
    source_pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()

    meta = getattr(ds, "file_meta", None)
    tsyntax = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
    if not tsyntax:
        raise PixelDecodeError("unsupported_transfer_syntax", "no transfer syntax UID")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise PixelDecodeError(
            "unsupported_transfer_syntax", f"no decoder for transfer syntax {_safe_uid(tsyntax)}"
        ) from exc
    if not decoder.is_available:
        raise PixelDecodeError(
            "unsupported_transfer_syntax", f"no installed plugin decodes {_safe_uid(tsyntax)}"
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, decode_meta = decoder.as_array(ds, index=frame_index, as_rgb=True)
    except PixelDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - plugins raise ValueError/RuntimeError/...
        lowered = str(exc).lower()  # only classified, never copied into the message
        short = "less than expected" in lowered or ("length" in lowered and "pixel data" in lowered)
        what = f"{_safe_uid(tsyntax)}, photometric {_safe_photometric(source_pi)}, {type(exc).__name__}"
        if short:
            raise PixelDecodeError(
                "truncated", f"pixel data is shorter than the image attributes say ({what})"
            ) from exc
        raise PixelDecodeError("decode_failed", f"the pixel data cannot be decoded ({what})") from exc
    if arr.size == 0:
        raise PixelDecodeError("empty_image", "decoded pixel array is empty")

    pi = str(decode_meta.get("photometric_interpretation", source_pi)).upper()
    details: dict[str, Any] = {
        "transfer_syntax": str(tsyntax),
        "rows": rows,
        "columns": cols,
        "bits_stored": _int_attr(ds, "BitsStored", 0) or None,
        "pixel_representation": _int_attr(ds, "PixelRepresentation", 0),
        "frame_rule": "middle",
        "decoded_photometric": pi,
    }
    clean = False  # float32 in [0, 1] without NaN already
    try:
        if pi in ("MONOCHROME1", "MONOCHROME2") and arr.ndim == 2:
            pixels, clean = _grayscale(arr, _frame_view(ds, frame_index), pi, details)
        elif pi == "PALETTE COLOR":
            pixels = _palette(arr, ds, details)
        elif pi == "RGB" or pi in _YBR:
            pixels = _rgb(arr, ds, pi, details)
        else:
            raise PixelDecodeError(
                "unsupported_photometric", f"photometric interpretation {_safe_photometric(pi)}"
            )
    except PixelDecodeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PixelDecodeError(
            "decode_failed",
            f"the LUT/colour step failed (photometric {_safe_photometric(pi)}, {type(exc).__name__})",
        ) from exc
    if not clean:
        # In [0, 1], NaN as 0 (clip sends +inf to 1, -inf to 0): what nan_to_num then clip gave,
        # in two passes over the image instead of five.
        pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False)
        pixels[np.isnan(pixels)] = 0.0
    return DecodedImage(
        pixels=pixels,
        frame_index=frame_index,
        n_frames=n_frames,
        photometric=source_pi or pi,
        details=details,
    )


# Integer images of more pixels than this, whose stored values span at most LUT_MAX_SPAN, go
# through a lookup table: the Modality LUT, VOI and scaling are pointwise functions of the stored
# value, so they are computed once per value in min..max (4,096 for 12 bits) and gathered, not
# once per pixel (2048 x 2048 DX: ~4 M float64 operations per step). Same values, bit for bit.
LUT_MIN_PIXELS = 65536
LUT_MAX_SPAN = 65536


def _grayscale(
    arr: np.ndarray, view: pydicom.Dataset, pi: str, details: dict[str, Any]
) -> tuple[np.ndarray, bool]:
    """The display values, and whether they are float32 in [0, 1] without NaN already (a lookup
    table's are: it was cleaned before the gather, so the image needs no pass of its own)."""
    if arr.dtype.kind in "iu" and arr.size >= LUT_MIN_PIXELS:
        low, high = int(arr.min()), int(arr.max())
        if high - low < LUT_MAX_SPAN:
            offsets = lut.offsets(arr, low)

            def present() -> np.ndarray:
                held = np.zeros(high - low + 1, dtype=bool)
                held[offsets] = True
                return held

            values = np.arange(low, high + 1).astype(arr.dtype)
            table = _grayscale_values(values, view, pi, details, present)
            table = np.clip(np.nan_to_num(table, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
            return lut.gather(table.astype(np.float32), offsets), True
    return _grayscale_values(arr, view, pi, details, None), False


def _grayscale_values(
    arr: np.ndarray,
    view: pydicom.Dataset,
    pi: str,
    details: dict[str, Any],
    present: Callable[[], np.ndarray] | None,
) -> np.ndarray:
    """``present``: which of ``arr``'s values the image holds (a lookup table's input), so a
    min..max stretch spans the image's values only; asked only by that stretch (an image with a
    window or a VOI LUT skips a pass over its pixels)."""
    is_float = arr.dtype.kind == "f"
    if not is_float:
        arr = apply_modality_lut(arr, view)
        details["rescale_slope"] = _num(view.get("RescaleSlope"))
        details["rescale_intercept"] = _num(view.get("RescaleIntercept"))
        details["modality_lut"] = "sequence" if view.get("ModalityLUTSequence") else "rescale"
    out: np.ndarray | None = None
    if view.get("VOILUTSequence"):
        lut_input = np.rint(arr).astype(np.int64)
        item = view.VOILUTSequence[0]
        n_entries = int(item.LUTDescriptor[0]) or 65536
        first = int(item.LUTDescriptor[1])
        table = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), view, index=0)
        out = apply_voi_lut(lut_input, view, index=0).astype(np.float64)
        lo, hi = float(table.min()), float(table.max())
        details["voi"] = "voi_lut"
    elif "WindowCenter" in view and "WindowWidth" in view:
        try:
            out = apply_voi_lut(arr.astype(np.float64), view, index=0, prefer_lut=False)
            probe = apply_voi_lut(np.array([-1e15, 1e15]), view, index=0, prefer_lut=False)
            lo, hi = float(probe.min()), float(probe.max())
            details["voi"] = "window"
            details["window_center"] = _num(_first(view["WindowCenter"].value))
            details["window_width"] = _num(_first(view["WindowWidth"].value))
            details["voi_function"] = str(view.get("VOILUTFunction", "LINEAR"))
        except ValueError as exc:  # e.g. width < 1: ignore the broken window, say so (not its value)
            out = None
            details["voi_error"] = f"invalid window, ignored ({type(exc).__name__})"
    if out is None:
        out = np.asarray(arr, dtype=np.float64)
        finite = out[np.isfinite(out) & (True if present is None else present())]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        details["voi"] = "minmax"
    scaled = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
    if pi == "MONOCHROME1":
        scaled = 1.0 - scaled
        details["inverted"] = True
    return scaled


def _palette(arr: np.ndarray, ds: pydicom.Dataset, details: dict[str, Any]) -> np.ndarray:
    rgb = apply_color_lut(arr, ds)
    depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
    details["palette_bits"] = depth
    return rgb.astype(np.float64) / float((1 << depth) - 1)


def _rgb(arr: np.ndarray, ds: pydicom.Dataset, pi: str, details: dict[str, Any]) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise PixelDecodeError("unsupported_photometric", f"{pi} with array shape {arr.shape}")
    if pi in _YBR:
        arr = convert_color_space(arr, pi, "RGB")
        details["converted_from"] = pi
    bits = int(ds.get("BitsStored") or 8)
    return arr.astype(np.float64) / float((1 << bits) - 1)


def _safe_uid(uid: str) -> str:
    """A transfer syntax UID for a message: its name when known, digits and dots only otherwise."""
    uid = str(uid)
    if not re.fullmatch(r"[0-9.]{1,64}", uid):
        return "an invalid transfer syntax UID"
    name = UID(uid).name
    return f"{uid} ({name})" if name != uid else uid


def _safe_photometric(value: str) -> str:
    """A photometric interpretation for a message: only the standard's defined terms, never free text."""
    value = str(value).strip().upper()
    return repr(value) if value in PHOTOMETRICS else "(not a defined term)"


def _int_attr(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError) as exc:
        raise PixelDecodeError("decode_failed", f"invalid {keyword} value") from exc


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return value[0] if len(value) else None
    return value


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def to_uint8(image: DecodedImage) -> np.ndarray:
    """The decoded image as 8-bit, for STEM.png."""
    out = np.multiply(image.pixels, np.float32(255.0), dtype=np.float32)  # rint(clip(p) x 255), in place
    np.clip(out, 0.0, 255.0, out=out)
    np.rint(out, out=out)
    return out.astype(np.uint8)


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-aware resize of an HxW or HxWxC float image to (h, w).

    Pillow's filters are antialiased when shrinking, so a small nodule in a 3000x3000
    radiograph survives as a blob instead of aliasing away.
    """
    h, w = size
    if pixels.shape[:2] == (h, w):
        return pixels.astype(np.float32, copy=False)
    planes = pixels[..., None] if pixels.ndim == 2 else pixels
    out = np.empty((h, w, planes.shape[-1]), dtype=np.float32)
    for c in range(planes.shape[-1]):
        img = Image.fromarray(np.ascontiguousarray(planes[..., c], dtype=np.float32))
        out[..., c] = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
    return out[..., 0] if pixels.ndim == 2 else out


def to_model_input(image: DecodedImage | np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """Resize to the model's input and match its channels (grayscale replicated to 3, RGB to luminance)."""
    pixels = image.pixels if isinstance(image, DecodedImage) else np.asarray(image, dtype=np.float32)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 3 and channels == 1:
        pixels = pixels[..., 0] * 0.2125 + pixels[..., 1] * 0.7154 + pixels[..., 2] * 0.0721
    out = resize(pixels, size)
    if out.ndim == 2:
        out = np.repeat(out[..., None], channels, axis=-1)
    elif out.shape[-1] != channels:
        raise ValueError(f"cannot map {out.shape[-1]} channels to {channels}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
