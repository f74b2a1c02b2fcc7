"""Pixel decoding on every pydicom test file plus LUT/windowing/photometric rules on synthetic DICOM."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from devkit.synthetic import make_radiograph, nodule_mask, to_dicom_dataset
from gpu_service.inference import lut, pixels
from gpu_service.inference.pixels import (
    PIXEL_KEYWORDS,
    DecodedImage,
    PixelDecodeError,
    decode,
    read_dicom,
    to_model_input,
    to_uint8,
)

TEST_FILES = [Path(f) for f in get_testdata_files() if os.path.isfile(f)]
ROOT = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent


def _rel(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


# Files that are genuinely broken or not images, with the error they must keep giving.
EXPECTED_ERRORS = {
    "JPEG-lossy.dcm": "decode_failed",  # corrupt 12-bit JPEG stream (libjpeg: misplaced marker)
    "JPEG2000-embedded-sequence-delimiter.dcm": "decode_failed",  # J2K codestream cut by a delimiter
    "MR_truncated.dcm": "truncated",  # pixel data shorter than Rows x Columns
    "badVR.dcm": "decode_failed",  # NumberOfFrames '1A'
    "meta_missing_tsyntax.dcm": "missing_required_attribute",  # PixelData without Rows/Columns
    "nested_priv_SQ.dcm": "missing_required_attribute",
}
# Not DICOM at all (text, JSON, ICC profile, gzip) or a bare dataset with no image attributes.
NOT_DICOM = {
    "README.txt",
    "dicomdirtests/README",
    "dicomdirtests/TINY_ALPHA/README",
    "crayons.icc",
    "no_meta.dcm",
    "rtplan.dump",
    "rtstruct.dump",
    "test1.json",
    "test_PN.json",
    "zipMR.gz",
}
# Real CT slices whose every pixel lies above the stored window (30/100): white is the right display.
SATURATED_BY_WINDOW = {"dicomdirtests/77654033/CT2/17166", "dicomdirtests/77654033/CT2/17196"}


@pytest.mark.parametrize("path", TEST_FILES, ids=_rel)
def test_every_pydicom_test_file_decodes_or_fails_clearly(path: Path) -> None:
    rel = _rel(path)
    name = path.name
    if rel in NOT_DICOM or name in NOT_DICOM:
        with pytest.raises(PixelDecodeError) as err:
            read_dicom(path)
        assert err.value.code == "not_dicom"
        return
    ds = read_dicom(path)
    if name in EXPECTED_ERRORS:
        with pytest.raises(PixelDecodeError) as err:
            decode(ds)
        assert err.value.code == EXPECTED_ERRORS[name], err.value.message
        return
    if not any(k in ds for k in PIXEL_KEYWORDS):
        with pytest.raises(PixelDecodeError) as err:
            decode(ds)
        assert err.value.code == "no_pixel_data"
        return
    image = decode(ds)
    pixels = image.pixels
    assert pixels.dtype == np.float32
    assert pixels.shape[:2] == (ds.Rows, ds.Columns)
    assert pixels.ndim == 2 or pixels.shape[2] == 3
    assert np.all(np.isfinite(pixels))
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert image.frame_index == image.n_frames // 2
    if rel in SATURATED_BY_WINDOW:
        assert image.details["voi"] == "window" and pixels.min() == 1.0
    else:
        assert pixels.max() > pixels.min(), f"{rel} decoded to a constant image"
    assert to_uint8(image).dtype == np.uint8


def test_all_required_transfer_syntaxes_are_covered() -> None:
    """Guard against a missing plugin silently turning a whole family into errors."""
    decoded = set()
    for path in TEST_FILES:
        try:
            decoded.add(decode(read_dicom(path)).details["transfer_syntax"])
        except (PixelDecodeError, IsADirectoryError):
            continue
    required = {
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        RLELossless,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    }
    assert required <= decoded, f"not decoded: {sorted(str(u.name) for u in required - decoded)}"


def test_multiframe_uses_middle_frame_with_pydicom_luts() -> None:
    ds = read_dicom(pydicom.data.get_testdata_file("rtdose.dcm"))
    image = decode(ds)
    assert image.n_frames == 15 and image.frame_index == 7
    assert image.details["voi"] == "minmax"  # RT dose has no window: full range

    def stretched(frame: int) -> np.ndarray:
        values = apply_modality_lut(ds.pixel_array[frame], ds).astype(float)
        return (values - values.min()) / (values.max() - values.min())

    np.testing.assert_allclose(image.pixels, stretched(7), atol=1e-6)
    assert np.abs(image.pixels - stretched(0)).max() > 1e-3

    rgb = decode(read_dicom(pydicom.data.get_testdata_file("SC_rgb_rle_2frame.dcm")))
    assert rgb.frame_index == 1 and rgb.pixels.shape == (100, 100, 3)


def test_ybr_jpeg_is_converted_to_rgb() -> None:
    ref = decode(read_dicom(pydicom.data.get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))).pixels
    ybr_file = read_dicom(pydicom.data.get_testdata_file("SC_rgb_dcmtk_+eb+cy+np.dcm"))
    assert ybr_file.PhotometricInterpretation == "YBR_FULL_422"
    jpeg = decode(ybr_file).pixels
    assert ref.shape == jpeg.shape == (100, 100, 3)
    assert np.abs(ref - jpeg).mean() < 0.03  # lossy, but the same red/green/blue stripes


def _dataset(image01: np.ndarray, **kw) -> pydicom.Dataset:
    return to_dicom_dataset(image01, **kw)


def _ramp(size: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0, 1, size, dtype=np.float32), (size, 1))


def test_monochrome1_is_inverted() -> None:
    sample = make_radiograph(np.random.default_rng(3), size=96, nodule=True)
    mono2 = decode(_dataset(sample.image)).pixels
    ds = _dataset(sample.image)
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = decode(ds).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert not np.allclose(mono1, mono2)


def test_full_range_window_round_trips_the_image() -> None:
    sample = make_radiograph(np.random.default_rng(4), size=64)
    np.testing.assert_allclose(decode(_dataset(sample.image)).pixels, sample.image, atol=1e-3)


def test_window_center_width_maps_linearly_and_clips() -> None:
    ds = _dataset(_ramp(), bits=12)  # stored values 0..4095 left to right
    ds.WindowCenter, ds.WindowWidth = 2048, 1024
    out = decode(ds)
    stored = ds.pixel_array.astype(float)
    assert out.details["voi"] == "window" and out.details["window_center"] == 2048
    assert np.all(out.pixels[stored < 1536] == 0.0)
    assert np.all(out.pixels[stored > 2560] == 1.0)
    inside = (stored > 1600) & (stored < 2500)
    expected = (stored[inside] - 2047.5) / 1023 + 0.5
    np.testing.assert_allclose(out.pixels[inside], expected, atol=2e-3)
    wide = _dataset(_ramp(), bits=12)
    assert np.abs(decode(wide).pixels - out.pixels).max() > 0.3  # the window changed the output


def test_first_window_is_used_when_several() -> None:
    ds = _dataset(_ramp(), bits=12)
    ds.WindowCenter, ds.WindowWidth = [1000, 3000], [400, 400]
    first = decode(ds)
    ds2 = _dataset(_ramp(), bits=12)
    ds2.WindowCenter, ds2.WindowWidth = 1000, 400
    np.testing.assert_array_equal(first.pixels, decode(ds2).pixels)


def test_rescale_slope_intercept_applies_before_window() -> None:
    """CT-like: stored 0..4095, HU = stored - 1024, lung window in HU."""
    ds = _dataset(_ramp(), bits=12)
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = -600, 1500
    out = decode(ds)
    hu = ds.pixel_array.astype(float) - 1024
    assert np.all(out.pixels[hu < -1350] == 0.0) and np.all(out.pixels[hu > 150] == 1.0)
    assert out.details["rescale_intercept"] == -1024


def test_signed_pixels_without_window_use_full_range() -> None:
    values = np.linspace(-1000, 1000, 64 * 64).reshape(64, 64).astype(np.int16)
    ds = _dataset(np.zeros((64, 64)), bits=16)
    ds.PixelRepresentation = 1
    ds.BitsStored, ds.HighBit = 16, 15
    del ds.WindowCenter, ds.WindowWidth
    ds.PixelData = values.tobytes()
    out = decode(ds)
    assert out.details["voi"] == "minmax"
    assert out.pixels[0, 0] == 0.0 and out.pixels[-1, -1] == 1.0
    assert np.all(np.diff(out.pixels.ravel()) >= 0)  # negative values stay below positive ones


def test_unused_high_bits_are_ignored() -> None:
    sample = make_radiograph(np.random.default_rng(5), size=64)
    clean = decode(_dataset(sample.image, bits=12)).pixels
    ds = _dataset(sample.image, bits=12)
    ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) | 0xF000).tobytes()
    np.testing.assert_array_equal(decode(ds).pixels, clean)


def _part10_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_read_dicom_errors_are_typed() -> None:
    for data in (b"", b"not a dicom file at all" * 20):
        with pytest.raises(PixelDecodeError) as err:
            read_dicom(data)
        assert err.value.code == "not_dicom"
    data = _part10_bytes(_dataset(make_radiograph(np.random.default_rng(6), size=64).image))
    assert decode(read_dicom(data)).pixels.shape == (64, 64)
    with pytest.raises(PixelDecodeError) as err:
        decode(read_dicom(data[: len(data) - 100]))
    assert err.value.code == "truncated"


def test_no_pixel_data_and_unsupported_photometric() -> None:
    ds = _dataset(np.zeros((8, 8)))
    del ds.PixelData
    with pytest.raises(PixelDecodeError) as err:
        decode(ds)
    assert err.value.code == "no_pixel_data"
    ds = _dataset(_ramp(8))
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(PixelDecodeError) as err:
        decode(ds)
    assert err.value.code == "unsupported_photometric"


def test_unknown_transfer_syntax_is_reported() -> None:
    ds = _dataset(_ramp(8))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    with pytest.raises(PixelDecodeError) as err:
        decode(ds)
    assert err.value.code == "unsupported_transfer_syntax"


def test_model_input_keeps_a_small_nodule_in_a_large_image() -> None:
    sample = make_radiograph(np.random.default_rng(7), size=1024, nodule=True)
    image = decode(_dataset(sample.image))
    x = to_model_input(image, (128, 128), 3)
    assert x.shape == (128, 128, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    inside = nodule_mask(sample, (128, 128))
    ring = nodule_mask(
        type(sample)(sample.image, sample.nodule_center, sample.nodule_radius * 2.5), (128, 128)
    ) & ~nodule_mask(type(sample)(sample.image, sample.nodule_center, sample.nodule_radius * 1.5), (128, 128))
    assert x[inside, 0].mean() > x[ring, 0].mean() + 0.1


def test_rgb_to_one_channel_and_resize() -> None:
    rgb = np.zeros((20, 30, 3), np.float32)
    rgb[..., 1] = 1.0
    image = DecodedImage(pixels=rgb, frame_index=0, n_frames=1, photometric="RGB")
    x = to_model_input(image, (10, 15), 1)
    assert x.shape == (10, 15, 1)
    np.testing.assert_allclose(x, 0.7154, atol=1e-4)


PATIENT_LIKE = "DOE^JOHN"


def _no_patient_text(err: PixelDecodeError) -> None:
    for text in (err.message, str(err)):
        assert PATIENT_LIKE not in text and "DOE" not in text, text


def test_decode_error_messages_never_quote_element_values() -> None:
    """Messages go into records and the webhook; pydicom's own texts quote element values."""
    ds = _dataset(_ramp(8))
    ds.PhotometricInterpretation = PATIENT_LIKE  # pydicom: "Unknown ... value 'DOE^JOHN'"
    with pytest.raises(PixelDecodeError) as err:
        decode(ds)
    assert err.value.code == "decode_failed"
    assert "ValueError" in err.value.message and "1.2.840.10008.1.2.1" in err.value.message
    _no_patient_text(err.value)

    # A window centre that is not a number, straight from the file's bytes: the LUT step fails on it.
    ds = _dataset(_ramp(8))
    ds.WindowCenter, ds.WindowWidth = "12345678", "100"
    data = _part10_bytes(ds).replace(b"12345678", PATIENT_LIKE.encode())
    with pytest.raises(PixelDecodeError) as err:
        decode(read_dicom(data))
    assert err.value.code == "decode_failed"
    _no_patient_text(err.value)

    ds = _dataset(_ramp(8))
    ds.file_meta.TransferSyntaxUID = PATIENT_LIKE
    with pytest.raises(PixelDecodeError) as err:
        decode(ds)
    assert err.value.code == "unsupported_transfer_syntax"
    _no_patient_text(err.value)


def _decode_both(ds: pydicom.Dataset, monkeypatch: pytest.MonkeyPatch) -> tuple[DecodedImage, DecodedImage]:
    """The image decoded pixel by pixel and through the lookup table."""
    monkeypatch.setattr(pixels, "LUT_MIN_PIXELS", 1 << 62)
    direct = decode(ds)
    monkeypatch.setattr(pixels, "LUT_MIN_PIXELS", 0)
    return direct, decode(ds)


@pytest.mark.parametrize(
    "attributes",
    [
        {},  # full-range window
        {"RescaleIntercept": -1024, "RescaleSlope": 1, "WindowCenter": -600, "WindowWidth": 1500},
        {"PhotometricInterpretation": "MONOCHROME1"},
        {"WindowCenter": None},  # no window: min..max of the values present
        {"RescaleSlope": 0.5, "RescaleIntercept": 3, "WindowCenter": None},
    ],
)
def test_lookup_table_decodes_bit_for_bit_as_pixel_by_pixel(
    attributes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_radiograph(np.random.default_rng(5), size=300, nodule=True).image * 0.6 + 0.2
    ds = _dataset(image, bits=12)
    for keyword, value in attributes.items():
        if value is None:
            del ds.WindowCenter, ds.WindowWidth
        else:
            setattr(ds, keyword, value)
    direct, table = _decode_both(ds, monkeypatch)
    assert table.pixels.dtype == np.float32 and np.array_equal(direct.pixels, table.pixels)
    assert direct.details == table.details


@pytest.mark.parametrize("path", [p for p in TEST_FILES if p.suffix.lower() == ".dcm"], ids=lambda p: p.name)
def test_lookup_table_matches_on_every_pydicom_test_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pixels, "LUT_MIN_PIXELS", 1 << 62)
    try:
        ds = read_dicom(path.read_bytes())
        direct = decode(ds)
    except (PixelDecodeError, ValueError):
        pytest.skip("not decodable")
    monkeypatch.setattr(pixels, "LUT_MIN_PIXELS", 0)
    table = decode(ds)
    assert np.array_equal(direct.pixels, table.pixels) and direct.details == table.details


@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<u2", ">u2", "i1", "u1", "<i4", ">u4"])
def test_lookup_offsets_are_value_minus_minimum_in_any_width_sign_and_byte_order(dtype: str) -> None:
    info = np.iinfo(np.dtype(dtype))
    low = max(int(info.min), -40000)
    high = min(int(info.max), low + 65535)
    values = np.array([low, high, low + 1, (low + high) // 2, high - 1] * 3, dtype=dtype).reshape(3, 5)
    offsets = lut.offsets(values, int(values.min()))
    assert np.array_equal(offsets.astype(np.int64), values.astype(np.int64) - low)


@pytest.mark.parametrize("shape", [(1,), (7, 3), (lut.GATHER_CHUNK,), (517, 389), (3, lut.GATHER_CHUNK + 1)])
def test_the_chunked_gather_is_numpys_take(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) * 31 + shape[-1])
    table = rng.random(4096).astype(np.float32)
    offsets = rng.integers(0, table.size, shape).astype(np.uint16)
    gathered = lut.gather(table, offsets)
    assert gathered.shape == offsets.shape and gathered.dtype == np.float32
    assert np.array_equal(gathered, np.take(table, offsets))
    strided = offsets[..., ::2]  # a view that is not contiguous
    assert np.array_equal(lut.gather(table, strided), np.take(table, strided))
