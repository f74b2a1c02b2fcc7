"""Read a DICOM header from the first bytes of an object, never its pixels.

Pure domain code: the only I/O is the ``fetch(start, end)`` callable that
:func:`read_header` is given, so every decision here is testable on bytes.

How it stays cheap: pydicom parses a *sparse* view of the object (the byte ranges
fetched so far). Large values before Pixel Data (overlays, ICC profiles, private
blobs) are skipped by ``defer_size`` without being fetched; parsing stops at the
Pixel Data element (``stop_when``), whose offset and length then come from its
element header alone. When pydicom asks for a byte that was not fetched, the parse
is given a *pull* that fetches the missing range there and then, so the parse goes on
where it was (one parse however many fetches: walking a long sequence again after each
fetch would cost more than the fetches). Without a pull (pure use on bytes), the parse
is abandoned with :class:`NeedMore` instead.

How much a follow-up fetch asks for: when the parser jumped over a value it skipped,
it knows where it goes, so only that range plus a small margin; when it walks on past
the end of what it has (an undefined-length sequence), the header's length is
unknown, so the run it walks is doubled, by at most ``max(initial, 64 KiB)`` a time.
The overshoot into pixel data is thus bounded whatever the header's length.

Deflated data sets (PS3.5 A.5) are inflated here, incrementally, from the
compressed bytes fetched so far (pydicom's own reader would read and inflate the
whole rest of the object, pixels included), so they cost no more than the others.
"""

from __future__ import annotations

import bisect
import re
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

# Reason codes of docs/contracts.md (`dicom-rejection/1`).
EMPTY_OBJECT = "empty_object"
NOT_DICOM = "not_dicom"
TRUNCATED = "truncated"
HEADER_TOO_LARGE = "header_too_large"
NO_PIXEL_DATA = "no_pixel_data"
MODALITY_NOT_ALLOWED = "modality_not_allowed"
IMAGE_TOO_LARGE = "image_too_large"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
MISSING_REQUIRED_ATTRIBUTE = "missing_required_attribute"
REASON_CODES: frozenset[str] = frozenset(
    {
        EMPTY_OBJECT, NOT_DICOM, TRUNCATED, HEADER_TOO_LARGE, NO_PIXEL_DATA, MODALITY_NOT_ALLOWED,
        IMAGE_TOO_LARGE, UNSUPPORTED_TRANSFER_SYNTAX, MISSING_REQUIRED_ATTRIBUTE,
    }
)  # fmt: skip

# What the inference service can decode: pydicom's native decoders (numpy) and the
# pylibjpeg plugins it installs (libjpeg, openjpeg, rle). The function itself has no
# codecs, so this is a list; tests check it against the decoders pydicom reports.
DECODABLE_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        dcm_uid.ImplicitVRLittleEndian,
        dcm_uid.ExplicitVRLittleEndian,
        dcm_uid.DeflatedExplicitVRLittleEndian,
        dcm_uid.ExplicitVRBigEndian,
        dcm_uid.RLELossless,
        dcm_uid.JPEGBaseline8Bit,
        dcm_uid.JPEGExtended12Bit,
        dcm_uid.JPEGLossless,
        dcm_uid.JPEGLosslessSV1,
        dcm_uid.JPEGLSLossless,
        dcm_uid.JPEGLSNearLossless,
        dcm_uid.JPEG2000Lossless,
        dcm_uid.JPEG2000,
        dcm_uid.HTJ2KLossless,
        dcm_uid.HTJ2KLosslessRPCL,
        dcm_uid.HTJ2K,
    }
)

# Attributes without which no decoder can turn Pixel Data into an image.
REQUIRED_IMAGE_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")

# The only top-level attributes parsed. Everything else (sequences of defined length
# included) is skipped by seeking: cheaper, and patient data we do not need is never decoded.
HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyDate", "Modality", "PatientID", "BodyPartExamined",
    "ViewPosition", "StudyInstanceUID", "SeriesInstanceUID", "NumberOfFrames", "PhotometricInterpretation",
    "Rows", "Columns", "BitsAllocated", "BitsStored",
)  # fmt: skip
_HEADER_TAGS = [pydicom.datadict.tag_for_keyword(k) for k in HEADER_KEYWORDS]

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
# Values above this are skipped by seeking, never fetched (they are never metadata we use).
DEFER_SIZE = 4096
_MAX_ROUNDS = 48  # fetches per object; a guard against pathological headers
# A jump's fetch: the missing range plus this much (what usually follows a skipped value).
_JUMP_MARGIN = 8192
# Growth per fetch while walking on, at least the initial range.
_MAX_STEP = 64 * 1024
# Inflated bytes a deflated header may span (a guard against zip bombs), and how much
# of the inflated stream is kept behind the read position (pydicom seeks back a little).
_MAX_INFLATED = 64 * 1024 * 1024
_INFLATE_WINDOW = 1024 * 1024
_INFLATE_FEED = 64 * 1024


@dataclass(frozen=True)
class Rejection:
    """The file's fault: recorded beside the upload, never retried."""

    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)  # no patient data


@dataclass(frozen=True)
class NeedMore:
    """The parse needs bytes ``[start, start + length)`` that were not fetched yet."""

    start: int
    length: int


@dataclass(frozen=True)
class DicomHeader:
    """What the header says about an image, ready for the message's ``dicom`` section."""

    dicom: dict[str, Any]
    pixel_data_offset: int | None  # None for deflated data sets (offset is inside the zlib stream)
    pixel_data_length: int | None  # None when encapsulated with undefined length
    has_file_meta: bool


@dataclass(frozen=True)
class HeaderRead:
    """Outcome of :func:`read_header` plus what it cost."""

    result: DicomHeader | Rejection
    bytes_read: int
    fetches: int


# --------------------------------------------------------------------------- sparse view


class _Missing(Exception):
    """Stops pydicom as soon as it wants a byte that was not fetched."""


class Chunks:
    """Byte ranges of one object fetched so far, merged when they touch."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._data: list[bytes] = []

    @property
    def total(self) -> int:
        return sum(len(d) for d in self._data)

    def add(self, start: int, data: bytes) -> None:
        if not data:
            return
        spans = [(s, d) for s, d in zip(self._starts, self._data, strict=True)] + [(start, data)]
        spans.sort(key=lambda sd: sd[0])
        merged: list[tuple[int, bytearray]] = []
        for s, d in spans:
            if merged and s <= merged[-1][0] + len(merged[-1][1]):
                ms, md = merged[-1]
                overlap = ms + len(md) - s
                md.extend(d[overlap:] if overlap < len(d) else b"")
            else:
                merged.append((s, bytearray(d)))
        self._starts = [s for s, _ in merged]
        self._data = [bytes(d) for _, d in merged]

    def covered_until(self, pos: int) -> int:
        """End of the fetched run that contains ``pos`` (``pos`` itself when it is not fetched)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and pos < self._starts[i] + len(self._data[i]):
            return self._starts[i] + len(self._data[i])
        return pos

    def run_ending_at(self, pos: int) -> int:
        """Length of the fetched run that ends exactly at ``pos`` (0 when none does)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and self._starts[i] + len(self._data[i]) == pos:
            return len(self._data[i])
        return 0

    def get(self, start: int, end: int) -> bytes:
        i = bisect.bisect_right(self._starts, start) - 1
        base = self._starts[i]
        return self._data[i][start - base : end - base]


class _SparseFile:
    """A read-only file over :class:`Chunks` of an object of known ``size``.

    Records the first missing range (``missing``) and whether a read ran into the real
    end of the object mid-element (``truncated``); pydicom swallows some errors
    (EOFError, and it turns any error in a sequence item into OSError), so the caller
    looks at these flags rather than at what pydicom raised.
    """

    name = "<cloud storage object>"

    def __init__(self, chunks: Chunks, size: int, pull: _Pull | None = None) -> None:
        self.chunks = chunks
        self.size = size
        self.pull = pull
        self.pos = 0
        self.missing: NeedMore | None = None
        self.truncated = False

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        start = self.pos
        end = self.size if n is None or n < 0 else min(start + n, self.size)
        if start >= self.size:
            # At the real end: reading the next tag (8 bytes) or peeking (1) there is
            # how a complete data set ends; anything else means a value was cut off.
            if start > self.size or n not in (1, 8):
                self.truncated = True
            return b""
        have = self.chunks.covered_until(start)
        if have < end and self.pull is not None and self.pull(NeedMore(have, end - have)):
            self.size = self.pull.size  # the object may prove shorter than its event said
            return self.read(n)
        if have < end:
            if self.missing is None:
                self.missing = NeedMore(have, end - have)
            raise _Missing
        data = self.chunks.get(start, end)
        self.pos = end
        if n is not None and n >= 0 and len(data) < n:
            self.truncated = True
        return data


class _InflatedFile:
    """A read-only file over the inflated data set of a deflated object (PS3.5 A.5).

    Positions are in the inflated stream. It inflates lazily, from the compressed
    bytes in ``chunks`` from ``start`` on, only as far as pydicom reads, keeping a
    window behind the read position. Flags as :class:`_SparseFile` (``missing`` is a
    range of compressed bytes), plus ``corrupt`` (not a deflate stream) and
    ``too_large`` (the header would inflate beyond ``_MAX_INFLATED``).
    """

    name = "<cloud storage object, inflated>"

    def __init__(self, chunks: Chunks, size: int, start: int, pull: _Pull | None = None) -> None:
        self.chunks = chunks
        self.size = size
        self.pull = pull
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._next = start  # the next compressed byte to feed
        self._tail = b""  # compressed input the inflater has not consumed yet
        self._buf = bytearray()
        self._base = 0  # inflated offset of _buf[0]
        self._cut = False  # the object ends before the deflate stream does
        self.pos = 0
        self.missing: NeedMore | None = None
        self.truncated = False
        self.corrupt = False
        self.too_large = False

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            raise OSError("the length of an inflated data set is not known")
        self.pos = max(0, (self.pos if whence == 1 else 0) + offset)
        return self.pos

    def _inflate(self, data: bytes, max_length: int) -> None:
        try:
            out = self._inflater.decompress(data, max_length)
        except zlib.error as exc:
            self.corrupt = True
            raise _Missing from exc
        self._tail = self._inflater.unconsumed_tail
        self._buf += out
        if self._base + len(self._buf) > _MAX_INFLATED:
            self.too_large = True
            raise _Missing
        drop = self.pos - _INFLATE_WINDOW - self._base
        if drop > _INFLATE_WINDOW:
            del self._buf[:drop]
            self._base += drop

    def _inflate_to(self, end: int) -> None:
        while self._base + len(self._buf) < end and not self._inflater.eof and not self._cut:
            want = max(end - self._base - len(self._buf), _INFLATE_FEED)
            if not self._tail:
                before = len(self._buf)
                self._inflate(b"", want)  # output the inflater may still hold
                if len(self._buf) > before:
                    continue
                have = self.chunks.covered_until(self._next)
                if have == self._next and self.pull is not None and self.pull(NeedMore(self._next, 1)):
                    self.size = self.pull.size
                    continue
                if have == self._next:
                    if self._next >= self.size:
                        self._cut = True
                        return
                    if self.missing is None:
                        self.missing = NeedMore(self._next, 1)
                    raise _Missing
                end_feed = min(have, self._next + _INFLATE_FEED)
                self._tail = self.chunks.get(self._next, end_feed)
                self._next = end_feed
            self._inflate(self._tail, want)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            raise OSError("unbounded read of a deflated data set")
        end = self.pos + n
        self._inflate_to(end)
        if self.pos < self._base:
            raise OSError("seek behind the inflate window")
        data = bytes(self._buf[self.pos - self._base : end - self._base])
        if len(data) < n and (self._cut or data or n not in (1, 8)):
            self.truncated = True  # cut off mid-stream, or the stream ends mid-element
        self.pos += len(data)
        return data


# --------------------------------------------------------------------------- parsing


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A data set without preamble starts with group 0x0002 or 0x0008 (either byte order).

    Checked before pydicom is forced onto the bytes, so a PNG or a PDF renamed
    ``.dcm`` is ``not_dicom`` at once instead of being parsed as garbage tags.
    """
    if len(head) < 8:
        return False
    return head[:2] in (b"\x02\x00", b"\x00\x02", b"\x08\x00", b"\x00\x08")


def inspect(chunks: Chunks, size: int, pull: _Pull | None = None) -> DicomHeader | Rejection | NeedMore:
    """Decide what the fetched bytes of an object of ``size`` bytes are (``pull`` fetches more)."""
    if size == 0:
        return Rejection(EMPTY_OBJECT, "The object is empty (0 bytes).")
    prefix_end = min(132, size)
    if chunks.covered_until(0) < prefix_end:
        return NeedMore(0, prefix_end)
    head = chunks.get(0, prefix_end)
    part10 = size >= 132 and head[128:132] == b"DICM"
    if not part10 and not _looks_like_raw_dataset(head):
        return Rejection(
            NOT_DICOM,
            "Not a DICOM file: no 'DICM' prefix at byte 128 and the first bytes are not a DICOM data set.",
        )

    has_meta = part10 or head[:2] == b"\x02\x00"  # file meta without a preamble
    meta = _deflated_file_meta(chunks, size, has_meta, 132 if part10 else 0, pull)
    if isinstance(meta, NeedMore):
        return meta
    size = pull.size if pull is not None else size
    fp: _SparseFile | _InflatedFile
    fp = _SparseFile(chunks, size, pull) if meta is None else _InflatedFile(chunks, size, meta[0], pull)
    stop: dict[str, Any] = {}

    def at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
        if tag in PIXEL_DATA_TAGS:
            stop.update(tag=int(tag), vr=vr, length=length, value_at=fp.tell())
            return True
        return False

    error: Exception | None = None
    ds: Dataset | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if isinstance(fp, _InflatedFile):
                assert meta is not None
                ds = read_dataset(
                    fp,
                    is_implicit_VR=False,
                    is_little_endian=True,
                    stop_when=at_pixel_data,
                    defer_size=DEFER_SIZE,
                    specific_tags=_HEADER_TAGS,
                )
                ds.file_meta = meta[1]
            else:
                ds = read_partial(
                    fp,
                    stop_when=at_pixel_data,
                    defer_size=DEFER_SIZE,
                    force=not part10,
                    specific_tags=_HEADER_TAGS,
                )
        except Exception as exc:  # pydicom raises many types on garbage; the flags say why
            error = exc

    if fp.missing is not None:
        return fp.missing
    if isinstance(fp, _InflatedFile) and fp.too_large:
        return Rejection(
            HEADER_TOO_LARGE,
            f"The deflated header inflates beyond {_MAX_INFLATED} bytes before Pixel Data.",
            {"max_inflated_bytes": _MAX_INFLATED, "object_size": size},
        )
    if isinstance(fp, _InflatedFile) and fp.corrupt:
        return Rejection(NOT_DICOM, "The deflated data set is not a valid deflate stream.", {"error": "zlib"})
    if ds is None or error is not None:
        if fp.truncated:
            return Rejection(TRUNCATED, "The file ends in the middle of its DICOM header.")
        return Rejection(
            NOT_DICOM,
            f"The DICOM data set cannot be parsed ({type(error).__name__}).",
            {"error": type(error).__name__},
        )

    if not part10 and not ({"SOPClassUID", "SOPInstanceUID"} & set(_keywords(ds))):
        return Rejection(
            NOT_DICOM,
            "Not a DICOM file: no 'DICM' prefix and no SOP Class/Instance UID in the parsed data.",
        )

    transfer_syntax = _transfer_syntax(ds)
    deflated = transfer_syntax == dcm_uid.DeflatedExplicitVRLittleEndian
    if not stop:
        if fp.truncated:
            return Rejection(TRUNCATED, "The file ends in the middle of its DICOM header.")
        return Rejection(
            NO_PIXEL_DATA,
            f"The DICOM object has no Pixel Data: it is not an image "
            f"(SOP Class {_sop_class_name(ds)}, Modality {_safe(_text(ds, 'Modality'), _CS) or 'missing'}).",
            {
                "sop_class_uid": _safe(_text(ds, "SOPClassUID"), _UI),
                "modality": _safe(_text(ds, "Modality"), _CS),
            },
        )

    offset: int | None = None
    length: int | None = None if stop["length"] == 0xFFFFFFFF else stop["length"]
    if not deflated:
        offset = fp.tell()  # pydicom rewinds to the start of the Pixel Data element
        value_at = stop["value_at"]
        if length is not None and value_at + length > size:
            return Rejection(
                TRUNCATED,
                f"Pixel Data is cut off: the header announces {length} bytes, the object holds "
                f"{max(size - value_at, 0)}.",
                {"pixel_data_length": length, "object_size": size},
            )
    return DicomHeader(
        dicom=_metadata(ds, transfer_syntax),
        pixel_data_offset=offset,
        pixel_data_length=length,
        has_file_meta=part10 or bool(getattr(ds, "file_meta", None)),
    )


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _deflated_file_meta(
    chunks: Chunks, size: int, has_meta: bool, meta_at: int, pull: _Pull | None
) -> tuple[int, FileMetaDataset] | NeedMore | None:
    """Where a deflated data set starts, and the file meta; None when it is not deflated.

    The file meta is read here, before pydicom sees the object, because pydicom's own
    reader inflates everything after it (pixels included) at once.
    """
    if not has_meta:
        return None
    fp = _SparseFile(chunks, size, pull)
    fp.seek(meta_at)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_file_meta)
        except Exception:
            meta = None  # read_partial meets the same error and says what it is
    if fp.missing is not None:
        return fp.missing
    if meta is None or _text(meta, "TransferSyntaxUID") != dcm_uid.DeflatedExplicitVRLittleEndian:
        return None
    return fp.tell(), FileMetaDataset(meta)


def _keywords(ds: Dataset) -> list[str]:
    return [pydicom.datadict.keyword_for_tag(t) for t in ds.keys()]  # noqa: SIM118 - iterating a Dataset yields elements


def _transfer_syntax(ds: Dataset) -> str:
    """The file meta's Transfer Syntax, or the encoding pydicom found when there is none."""
    meta = getattr(ds, "file_meta", None)
    ts = _text(meta, "TransferSyntaxUID") if meta is not None else None
    if ts:
        return ts
    implicit, little = ds.original_encoding[:2]
    if implicit:
        return dcm_uid.ImplicitVRLittleEndian
    return dcm_uid.ExplicitVRLittleEndian if little else dcm_uid.ExplicitVRBigEndian


# Rejection messages and details are logged: only values that match their VR's character set
# go in, so a malformed file cannot smuggle free text (patient data) into the logs.
_UI = re.compile(r"[0-9.]{1,64}")
_CS = re.compile(r"[A-Z0-9 _]{1,16}")


def _safe(value: str | None, pattern: re.Pattern[str]) -> str | None:
    if value is None:
        return None
    return value if pattern.fullmatch(value) else "<invalid value>"


def _sop_class_name(ds: Dataset) -> str:
    uid = _safe(_text(ds, "SOPClassUID"), _UI)
    if not uid:
        return "missing"
    if not _UI.fullmatch(uid):
        return uid
    name = dcm_uid.UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def _text(ds: Dataset | None, keyword: str) -> str | None:
    """A string value decoded with the data set's Specific Character Set, or None."""
    if ds is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    text = text.strip().rstrip("\x00").strip()
    return text or None


class _BadInteger(ValueError):
    pass


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception as exc:
        raise _BadInteger(keyword) from exc
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise _BadInteger(keyword) from exc


def _metadata(ds: Dataset, transfer_syntax: str) -> dict[str, Any]:
    """The ``dicom`` section of `dicom-inference-request/1` (integers may be invalid: see check)."""
    out: dict[str, Any] = {
        "patient_id": _text(ds, "PatientID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "modality": _text(ds, "Modality"),
        "body_part_examined": _text(ds, "BodyPartExamined"),
        "view_position": _text(ds, "ViewPosition"),
    }
    bad: list[str] = []
    for key, keyword in (
        ("rows", "Rows"),
        ("columns", "Columns"),
        ("number_of_frames", "NumberOfFrames"),
        ("bits_stored", "BitsStored"),
        ("bits_allocated", "BitsAllocated"),
    ):
        try:
            out[key] = _integer(ds, keyword)
        except _BadInteger:
            out[key] = None
            bad.append(keyword)
    out["photometric_interpretation"] = _text(ds, "PhotometricInterpretation")
    out["transfer_syntax_uid"] = transfer_syntax
    out["study_date"] = _text(ds, "StudyDate")
    out["specific_character_set"] = _text(ds, "SpecificCharacterSet")
    out["_invalid"] = bad  # removed by check(); names of attributes whose values are not integers
    return out


# --------------------------------------------------------------------------- policy


def check(
    header: DicomHeader, allowed_modalities: frozenset[str] | None, max_pixels: int
) -> Rejection | None:
    """Apply the pipeline's policy to a parsed image header; None means accepted."""
    dicom = header.dicom
    invalid = [k for k in dicom.get("_invalid", []) if k in ("Rows", "Columns", "NumberOfFrames")]
    missing = [k for k in REQUIRED_IMAGE_ATTRIBUTES if dicom.get(_KEY[k]) is None and k not in invalid]
    if missing or invalid:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if invalid:
            parts.append("not an integer: " + ", ".join(invalid))
        return Rejection(
            MISSING_REQUIRED_ATTRIBUTE,
            "The image cannot be decoded: " + "; ".join(parts) + ".",
            {"missing": missing, "invalid": invalid},
        )
    modality = dicom.get("modality")
    if allowed_modalities is not None:
        if not modality:
            return Rejection(
                MISSING_REQUIRED_ATTRIBUTE,
                "Modality (0008,0060) is missing, so it cannot be checked against ALLOWED_MODALITIES "
                "(set ALLOWED_MODALITIES=* to accept any).",
                {"missing": ["Modality"], "invalid": []},
            )
        if modality.upper() not in allowed_modalities:
            return Rejection(
                MODALITY_NOT_ALLOWED,
                f"Modality {_safe(modality, _CS)} is not processed here "
                f"(allowed: {', '.join(sorted(allowed_modalities))}).",
                {"modality": _safe(modality, _CS)},
            )
    ts = dicom["transfer_syntax_uid"]
    if ts not in DECODABLE_TRANSFER_SYNTAXES:
        safe_ts = _safe(ts, _UI)
        name = dcm_uid.UID(safe_ts).name if safe_ts and _UI.fullmatch(safe_ts) else "missing"
        return Rejection(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"Pixel Data encoded as {name} ({safe_ts}) cannot be decoded by the pipeline.",
            {"transfer_syntax_uid": safe_ts},
        )
    frames = dicom.get("number_of_frames") or 1
    pixels = dicom["rows"] * dicom["columns"] * frames
    if dicom["rows"] <= 0 or dicom["columns"] <= 0 or frames <= 0:
        return Rejection(
            MISSING_REQUIRED_ATTRIBUTE,
            "Rows, Columns and NumberOfFrames must be positive.",
            {"missing": [], "invalid": ["Rows", "Columns", "NumberOfFrames"]},
        )
    if pixels > max_pixels:
        return Rejection(
            IMAGE_TOO_LARGE,
            f"The image has {pixels} pixels ({dicom['rows']} x {dicom['columns']} x {frames} frames), "
            f"above the budget of {max_pixels} (MAX_PIXELS).",
            {"pixels": pixels, "max_pixels": max_pixels},
        )
    return None


_KEY = {
    "Rows": "rows",
    "Columns": "columns",
    "BitsAllocated": "bits_allocated",
    "PhotometricInterpretation": "photometric_interpretation",
}


def message_fields(header: DicomHeader) -> dict[str, Any]:
    """The ``dicom`` section exactly as docs/contracts.md lists it."""
    return {k: header.dicom.get(k) for k in DICOM_FIELDS}


DICOM_FIELDS = (
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "modality",
    "body_part_examined",
    "view_position",
    "rows",
    "columns",
    "number_of_frames",
    "photometric_interpretation",
    "bits_stored",
    "transfer_syntax_uid",
    "study_date",
    "specific_character_set",
)


# --------------------------------------------------------------------------- the loop


class _Pull:
    """Fetches, mid-parse, the range a parse is missing, as the fetch policy and budget allow.

    Policy (the module's docstring says why): a jump gets the missing range plus
    ``_JUMP_MARGIN``; walking on doubles the run it extends, by at most ``max_step``.
    Refuses (False) beyond ``max_bytes`` or ``_MAX_ROUNDS`` (``over_budget``) and after
    a failed fetch (``error``, re-raised by :func:`read_header`: pydicom would swallow it).
    """

    def __init__(
        self, fetch: Callable[[int, int], bytes], chunks: Chunks, size: int, *, initial: int, max_bytes: int
    ) -> None:
        self.fetch = fetch
        self.chunks = chunks
        self.size = size
        self.max_bytes = max_bytes
        self.max_step = max(initial, _MAX_STEP)
        self.fetches = 0
        self.over_budget = False
        self.error: Exception | None = None

    def __call__(self, want: NeedMore) -> bool:
        if self.error is not None or self.over_budget:
            return False
        have = self.chunks.total
        budget = self.max_bytes - have
        if want.length > budget or budget <= 0 or self.fetches >= _MAX_ROUNDS:
            self.over_budget = True
            return False
        length = want.length
        if self.fetches:
            run = self.chunks.run_ending_at(want.start)
            if run:  # walking on past what it has: the header's length is unknown
                length = max(length, min(run, self.max_step))
            else:  # jumped over a skipped value: it knows where it goes
                length += min(_JUMP_MARGIN, have)
        length = min(length, budget, self.size - want.start)
        if length <= 0:
            return False
        try:
            data = self.fetch(want.start, want.start + length)
        except Exception as exc:  # noqa: BLE001 - re-raised by read_header, whatever it is
            self.error = exc
            return False
        self.fetches += 1
        self.chunks.add(want.start, data)
        if len(data) < length:  # the object is shorter than its event said
            self.size = want.start + len(data)
        return True


def read_header(
    fetch: Callable[[int, int], bytes],
    size: int,
    *,
    initial_bytes: int,
    max_bytes: int,
) -> HeaderRead:
    """Fetch as little of the object as its header needs and parse it.

    ``fetch(start, end)`` returns bytes ``[start, end)`` (end exclusive). The first
    fetch is ``initial_bytes``; later ones cover what the parse asked for (see the
    module's docstring), never beyond ``max_bytes`` in all (then ``header_too_large``).
    Whatever ``fetch`` raises propagates.
    """
    if size <= 0:
        return HeaderRead(Rejection(EMPTY_OBJECT, "The object is empty (0 bytes)."), 0, 0)
    chunks = Chunks()
    pull = _Pull(fetch, chunks, size, initial=initial_bytes, max_bytes=max_bytes)
    want: DicomHeader | Rejection | NeedMore = NeedMore(0, min(initial_bytes, size, max_bytes))
    while isinstance(want, NeedMore):
        # A parse only stops short when the pull could not fetch (or before the file meta).
        if not pull(want):
            if pull.error is not None:
                raise pull.error
            if pull.over_budget:
                return HeaderRead(_too_large(max_bytes, pull.size), chunks.total, pull.fetches)
            truncated = Rejection(TRUNCATED, "The file ends in the middle of its DICOM header.")
            return HeaderRead(truncated, chunks.total, pull.fetches)  # wants bytes past the end
        want = inspect(chunks, pull.size, pull)
        if pull.error is not None:
            raise pull.error
        if pull.over_budget:
            return HeaderRead(_too_large(max_bytes, pull.size), chunks.total, pull.fetches)
    return HeaderRead(want, chunks.total, pull.fetches)


def _too_large(max_bytes: int, size: int) -> Rejection:
    return Rejection(
        HEADER_TOO_LARGE,
        f"No Pixel Data within the first {max_bytes} bytes read (HEADER_MAX_BYTES); "
        "the header is too large to inspect.",
        {"max_bytes": max_bytes, "object_size": size},
    )
