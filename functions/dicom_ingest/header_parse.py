"""Parse the header of a DICOM object from the bytes fetched so far, stopping at Pixel Data.

Large values before Pixel Data are skipped by ``defer_size`` without being fetched, and the
Pixel Data element's offset and length come from its element header alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom import uid as dcm_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag

from dicom_ingest import sparse_file
from dicom_ingest.header_fields import dicom_fields, text_value
from dicom_ingest.rejection import (
    CS_VALUE,
    EMPTY_OBJECT,
    HEADER_TOO_LARGE,
    NO_PIXEL_DATA,
    NOT_DICOM,
    TRUNCATED,
    UI_VALUE,
    Rejection,
    vr_safe,
)
from dicom_ingest.sparse_file import Chunks, InflatedFile, NeedMore, Puller, SparseFile

# The only top-level attributes parsed. Everything else (sequences of defined length
# included) is skipped by seeking: cheaper, and patient data we do not need is never decoded.
HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyDate", "Modality", "PatientID", "BodyPartExamined",
    "ViewPosition", "StudyInstanceUID", "SeriesInstanceUID", "NumberOfFrames", "PhotometricInterpretation",
    "Rows", "Columns", "BitsAllocated", "BitsStored",
)  # fmt: skip
HEADER_TAGS = [pydicom.datadict.tag_for_keyword(k) for k in HEADER_KEYWORDS]

PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
# Values above this are skipped by seeking, never fetched (they are never metadata we use).
DEFER_SIZE = 4096


@dataclass(frozen=True)
class DicomHeader:
    """What the header says about an image, ready for the message's ``dicom`` section."""

    dicom: dict[str, Any]
    pixel_data_offset: int | None  # None for deflated data sets (offset is inside the zlib stream)
    pixel_data_length: int | None  # None when encapsulated with undefined length
    has_file_meta: bool


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A data set without preamble starts with group 0x0002 or 0x0008 (either byte order).

    Checked before pydicom is forced onto the bytes, so a PNG or a PDF renamed
    ``.dcm`` is ``not_dicom`` at once instead of being parsed as garbage tags.
    """
    if len(head) < 8:
        return False
    return head[:2] in (b"\x02\x00", b"\x00\x02", b"\x08\x00", b"\x00\x08")


def inspect(chunks: Chunks, size: int, pull: Puller | None = None) -> DicomHeader | Rejection | NeedMore:
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
    fp: SparseFile | InflatedFile
    fp = SparseFile(chunks, size, pull) if meta is None else InflatedFile(chunks, size, meta[0], pull)
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
            if isinstance(fp, InflatedFile):
                assert meta is not None
                ds = read_dataset(
                    fp,
                    is_implicit_VR=False,
                    is_little_endian=True,
                    stop_when=at_pixel_data,
                    defer_size=DEFER_SIZE,
                    specific_tags=HEADER_TAGS,
                )
                ds.file_meta = meta[1]
            else:
                ds = read_partial(
                    fp,
                    stop_when=at_pixel_data,
                    defer_size=DEFER_SIZE,
                    force=not part10,
                    specific_tags=HEADER_TAGS,
                )
        except Exception as exc:  # pydicom raises many types on garbage; the flags say why
            error = exc

    if fp.missing is not None:
        return fp.missing
    if isinstance(fp, InflatedFile) and fp.too_large:
        return Rejection(
            HEADER_TOO_LARGE,
            f"The deflated header inflates beyond {sparse_file.MAX_INFLATED} bytes before Pixel Data.",
            {"max_inflated_bytes": sparse_file.MAX_INFLATED, "object_size": size},
        )
    if isinstance(fp, InflatedFile) and fp.corrupt:
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

    transfer_syntax = transfer_syntax_of(ds)
    deflated = transfer_syntax == dcm_uid.DeflatedExplicitVRLittleEndian
    if not stop:
        if fp.truncated:
            return Rejection(TRUNCATED, "The file ends in the middle of its DICOM header.")
        return Rejection(
            NO_PIXEL_DATA,
            f"The DICOM object has no Pixel Data: it is not an image "
            f"(SOP Class {_sop_class_name(ds)}, "
            f"Modality {vr_safe(text_value(ds, 'Modality'), CS_VALUE) or 'missing'}).",
            {
                "sop_class_uid": vr_safe(text_value(ds, "SOPClassUID"), UI_VALUE),
                "modality": vr_safe(text_value(ds, "Modality"), CS_VALUE),
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
        dicom=dicom_fields(ds, transfer_syntax),
        pixel_data_offset=offset,
        pixel_data_length=length,
        has_file_meta=part10 or bool(getattr(ds, "file_meta", None)),
    )


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _deflated_file_meta(
    chunks: Chunks, size: int, has_meta: bool, meta_at: int, pull: Puller | None
) -> tuple[int, FileMetaDataset] | NeedMore | None:
    """Where a deflated data set starts, and the file meta; None when it is not deflated.

    The file meta is read here, before pydicom sees the object, because pydicom's own
    reader inflates everything after it (pixels included) at once.
    """
    if not has_meta:
        return None
    fp = SparseFile(chunks, size, pull)
    fp.seek(meta_at)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_file_meta)
        except Exception:
            meta = None  # read_partial meets the same error and says what it is
    if fp.missing is not None:
        return fp.missing
    if meta is None or text_value(meta, "TransferSyntaxUID") != dcm_uid.DeflatedExplicitVRLittleEndian:
        return None
    return fp.tell(), FileMetaDataset(meta)


def _keywords(ds: Dataset) -> list[str]:
    return [pydicom.datadict.keyword_for_tag(t) for t in ds.keys()]  # noqa: SIM118 - iterating a Dataset yields elements


def transfer_syntax_of(ds: Dataset) -> str:
    """The file meta's Transfer Syntax, or the encoding pydicom found when there is none."""
    meta = getattr(ds, "file_meta", None)
    ts = text_value(meta, "TransferSyntaxUID") if meta is not None else None
    if ts:
        return ts
    implicit, little = ds.original_encoding[:2]
    if implicit:
        return dcm_uid.ImplicitVRLittleEndian
    return dcm_uid.ExplicitVRLittleEndian if little else dcm_uid.ExplicitVRBigEndian


def _sop_class_name(ds: Dataset) -> str:
    uid = vr_safe(text_value(ds, "SOPClassUID"), UI_VALUE)
    if not uid:
        return "missing"
    if not UI_VALUE.fullmatch(uid):
        return uid
    name = dcm_uid.UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid
