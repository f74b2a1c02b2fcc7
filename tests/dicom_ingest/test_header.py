"""Header-only DICOM inspection (pure): every pydicom test file, plus files made here.

The oracle for accepted files is a full, independent ``pydicom.dcmread`` of the
whole file; the code under test only ever sees the byte ranges it asked for.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_ingest import fetch_policy, header_fields, ingest_policy, message, sparse_file
from dicom_ingest import header as hdr
from dicom_ingest import rejection as rejection_codes
from dicom_ingest.settings import IMAGE_MODALITIES
from tests.support import REPO

TESTDATA = sorted(p for p in get_testdata_files() if os.path.isfile(p))
TESTDATA_ROOT = Path(get_testdata_files("CT_small.dcm")[0]).parent

# The outcome of every pydicom test file under the default policy (image modalities).
# Anything not listed here must be accepted.
_NO_MODALITY = "missing_required_attribute"
EXPECTED_REJECTIONS: dict[str, str] = {
    # not DICOM at all
    "README.txt": "not_dicom",
    "README": "not_dicom",
    "crayons.icc": "not_dicom",
    "rtplan.dump": "not_dicom",
    "rtstruct.dump": "not_dicom",
    "test1.json": "not_dicom",
    "test_PN.json": "not_dicom",
    "zipMR.gz": "not_dicom",
    "no_meta.dcm": "not_dicom",  # one stray byte before the data set: pydicom reads garbage tags
    # DICOM without Pixel Data: structured reports, RT objects, DICOMDIRs, header-only stubs
    "ExplVR_BigEndNoMeta.dcm": "no_pixel_data",
    "ExplVR_LitEndNoMeta.dcm": "no_pixel_data",
    "rtstruct.dcm": "no_pixel_data",
    "rtplan.dcm": "no_pixel_data",
    "reportsi.dcm": "no_pixel_data",
    "reportsi_with_empty_number_tags.dcm": "no_pixel_data",
    "test-SR.dcm": "no_pixel_data",
    "waveform_ecg.dcm": "no_pixel_data",
    "UN_sequence.dcm": "no_pixel_data",
    "empty_charset_LEI.dcm": "no_pixel_data",
    "no_meta_group_length.dcm": "no_pixel_data",
    "priv_SQ.dcm": "no_pixel_data",
    "DICOMDIR": "no_pixel_data",
    "DICOMDIR-bigEnd": "no_pixel_data",
    "DICOMDIR-empty.dcm": "no_pixel_data",
    "DICOMDIR-implicit": "no_pixel_data",
    "DICOMDIR-nooffset": "no_pixel_data",
    "DICOMDIR-nopatient": "no_pixel_data",
    "DICOMDIR-reordered": "no_pixel_data",
    # truncated: inside the header, or Pixel Data shorter than announced
    "rtplan_truncated.dcm": "truncated",
    "MR_truncated.dcm": "truncated",
    # images that are not pictures of a patient
    "liver_1frame.dcm": "modality_not_allowed",  # SEG
    "liver_expb_1frame.dcm": "modality_not_allowed",
    "rtdose.dcm": "modality_not_allowed",
    "rtdose_1frame.dcm": "modality_not_allowed",
    "rtdose_expb.dcm": "modality_not_allowed",
    "rtdose_expb_1frame.dcm": "modality_not_allowed",
    "rtdose_rle.dcm": "modality_not_allowed",
    "rtdose_rle_1frame.dcm": "modality_not_allowed",
    "badVR.dcm": "missing_required_attribute",  # NumberOfFrames '1A'
    # Pixel Data without the attributes needed to decode it
    "meta_missing_tsyntax.dcm": "missing_required_attribute",
    "nested_priv_SQ.dcm": "missing_required_attribute",
    # images without Modality (Type 1): rejected unless ALLOWED_MODALITIES=*
    "GDCMJ2K_TextGBR.dcm": _NO_MODALITY,
    "JPEGLSNearLossless_08.dcm": _NO_MODALITY,
    "JPEGLSNearLossless_16.dcm": _NO_MODALITY,
    "SC_jpeg_no_color_transform.dcm": _NO_MODALITY,
    "SC_jpeg_no_color_transform_2.dcm": _NO_MODALITY,
    "SC_rgb_jls_lossy_line.dcm": _NO_MODALITY,
    "SC_rgb_jls_lossy_sample.dcm": _NO_MODALITY,
    "SC_rgb_jpeg_app14_dcmd.dcm": _NO_MODALITY,
}


def expected_reason(path: str) -> str | None:
    """The rejection reason expected for a pydicom test file, None when it must be accepted."""
    name = os.path.basename(path)
    if name.startswith("IM0000"):  # TINY_ALPHA: DICOMDIR test stubs, CT headers without pixels
        return "no_pixel_data"
    return EXPECTED_REJECTIONS.get(name)


def _testdata_id(path: str) -> str:
    return str(Path(path).relative_to(TESTDATA_ROOT))


def oracle(path: str | bytes) -> pydicom.Dataset:
    """The whole file read by pydicom, the reference the header-only read is compared with."""
    src = io.BytesIO(path) if isinstance(path, bytes) else path
    return pydicom.dcmread(src, force=True)


class Fetcher:
    """In-memory ``fetch`` that records every range asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        return self.data[start:end]

    @property
    def bytes_read(self) -> int:
        return sum(len(self.data[s:e]) for s, e in self.ranges)


def run(data: bytes, initial: int = 65536, maximum: int = 1 << 20, **policy) -> tuple[object, Fetcher]:
    """Read the header and apply the policy; returns (DicomHeader or Rejection, fetcher)."""
    fetch = Fetcher(data)
    read = hdr.read_header(fetch, len(data), initial_bytes=initial, max_bytes=maximum)
    assert read.bytes_read == fetch.bytes_read
    result = read.result
    if isinstance(result, hdr.DicomHeader):
        rejection = ingest_policy.check(
            result, policy.get("allowed", IMAGE_MODALITIES), policy.get("max_pixels", 64 << 20)
        )
        return (rejection or result), fetch
    return result, fetch


# --------------------------------------------------------------------------- DICOM made here


def make_dicom(
    rows: int = 64,
    columns: int = 64,
    *,
    modality: str = "CR",
    patient_id: str = "PAT-0001",
    charset: str | None = None,
    frames: int = 1,
    bits: int = 16,
    extra: Dataset | None = None,
    fill: int | None = None,
) -> bytes:
    """A valid Part-10 image (explicit VR little endian) written by pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20240131"
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    if extra is not None:
        ds.update(extra)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    dtype = np.uint16 if bits == 16 else np.uint8
    shape = (frames, rows, columns) if frames > 1 else (rows, columns)
    if fill is None:
        pixels = (np.arange(rows * columns * frames, dtype=np.uint32) % 4096).astype(dtype).reshape(shape)
    else:
        pixels = np.full(shape, fill, dtype=dtype)
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def long_sequence(items: int, undefined_length: bool = True) -> Dataset:
    """A long sequence before Pixel Data (about 100 bytes an item).

    With undefined length (as many modalities write them) the parser must walk
    through every item to find where it ends: a header genuinely longer than the
    first range. With a defined length it can skip it without reading.
    """
    seq = Sequence()
    for i in range(items):
        item = Dataset()
        item.ReferencedSOPClassUID = pydicom.uid.CTImageStorage
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i}"
        item.is_undefined_length_sequence_item = undefined_length
        seq.append(item)
    extra = Dataset()
    extra.ReferencedImageSequence = seq
    extra["ReferencedImageSequence"].is_undefined_length = undefined_length
    return extra


def big_private_blob(nbytes: int) -> Dataset:
    extra = Dataset()
    block = extra.private_block(0x0029, "DICOM-PIPELINE-TEST", create=True)
    block.add_new(0x10, "OB", b"\x00" * nbytes)
    return extra


def png_bytes() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------- every pydicom file


@pytest.mark.parametrize("initial", [65536, 256], ids=["64KiB", "256B"])
@pytest.mark.parametrize("path", TESTDATA, ids=_testdata_id)
def test_every_pydicom_file(path: str, initial: int) -> None:
    data = Path(path).read_bytes()
    result, fetch = run(data, initial=initial)
    expected = expected_reason(path)
    if expected is not None:
        assert isinstance(result, hdr.Rejection), f"expected {expected}, got accepted"
        assert result.reason == expected, result.message
        assert result.message
        return
    assert isinstance(result, hdr.DicomHeader), f"expected accepted, got {result}"
    ref = oracle(path)
    dicom = message.message_fields(result)
    assert set(dicom) == set(header_fields.DICOM_FIELDS)
    assert dicom["modality"] == ref.Modality
    assert dicom["rows"] == ref.Rows and dicom["columns"] == ref.Columns
    assert dicom["sop_instance_uid"] == ref.get("SOPInstanceUID")
    assert dicom["sop_class_uid"] == ref.get("SOPClassUID")
    assert dicom["study_instance_uid"] == ref.get("StudyInstanceUID")
    assert dicom["patient_id"] == (str(ref.PatientID) if ref.get("PatientID") else None)
    assert dicom["photometric_interpretation"] == ref.PhotometricInterpretation
    assert dicom["bits_stored"] == ref.get("BitsStored")
    assert dicom["number_of_frames"] == (int(ref.NumberOfFrames) if "NumberOfFrames" in ref else None)
    assert dicom["transfer_syntax_uid"] == ref.file_meta.TransferSyntaxUID
    assert dicom["transfer_syntax_uid"] in ingest_policy.DECODABLE_TRANSFER_SYNTAXES
    if result.pixel_data_offset is not None:  # None only for deflated data sets
        little = ref.file_meta.TransferSyntaxUID != pydicom.uid.ExplicitVRBigEndian
        tag = data[result.pixel_data_offset : result.pixel_data_offset + 4]
        assert tag == (b"\xe0\x7f\x10\x00" if little else b"\x7f\xe0\x00\x10")
        # Header-only: never asked for a range that starts inside the pixels, and when the
        # first range was small, widened only as far as the doubling rule allows.
        assert all(start <= result.pixel_data_offset for start, _ in fetch.ranges)
        assert fetch.bytes_read <= max(initial, 2 * (result.pixel_data_offset + 12))
        assert fetch.bytes_read <= result.pixel_data_offset + 12 + max(initial, 65536)


def test_the_table_names_only_files_that_exist() -> None:
    names = {os.path.basename(p) for p in TESTDATA}
    assert set(EXPECTED_REJECTIONS) <= names
    assert len(TESTDATA) > 150


def test_images_without_modality_pass_when_any_modality_is_allowed() -> None:
    path = get_testdata_files("JPEGLSNearLossless_08.dcm")[0]
    result, _ = run(Path(path).read_bytes(), allowed=None)
    assert isinstance(result, hdr.DicomHeader)
    assert result.dicom["modality"] is None
    assert result.dicom["transfer_syntax_uid"] == pydicom.uid.JPEGLSNearLossless


def test_rt_plans_without_meta_header_are_dicom_without_pixels() -> None:
    for name in ("ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm"):
        data = Path(get_testdata_files(name)[0]).read_bytes()
        result, _ = run(data)
        assert isinstance(result, hdr.Rejection) and result.reason == "no_pixel_data"
        assert "Plan Storage" in result.message


@pytest.mark.parametrize(
    ("implicit", "little", "expected"),
    [
        (True, True, pydicom.uid.ImplicitVRLittleEndian),
        (False, True, pydicom.uid.ExplicitVRLittleEndian),
        (False, False, pydicom.uid.ExplicitVRBigEndian),
    ],
)
def test_images_without_meta_header_get_their_encoding_as_transfer_syntax(implicit, little, expected) -> None:
    """A bare data set (no preamble, no file meta), as old archives write them."""
    ds = oracle(get_testdata_files("MR_small.dcm")[0])
    del ds.file_meta
    raw = pydicom.filebase.DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = little, implicit
    pydicom.filewriter.write_dataset(raw, ds)
    data = raw.getvalue()
    assert data[128:132] != b"DICM"
    result, _ = run(data)
    assert isinstance(result, hdr.DicomHeader), result
    assert result.dicom["transfer_syntax_uid"] == expected
    assert (result.dicom["modality"], result.dicom["rows"]) == ("MR", 64)
    assert not result.has_file_meta


# --------------------------------------------------------------------------- made-up files


def test_png_renamed_dcm_is_not_dicom() -> None:
    result, fetch = run(png_bytes())
    assert isinstance(result, hdr.Rejection) and result.reason == "not_dicom"
    assert len(fetch.ranges) == 1


def test_empty_object_reads_nothing() -> None:
    result, fetch = run(b"")
    assert isinstance(result, hdr.Rejection) and result.reason == "empty_object"
    assert fetch.ranges == []


def test_tiny_garbage_is_not_dicom() -> None:
    for data in (b"\x00", b"DICM", b"\x08\x00\x05\x00", b"hello world, this is text" * 3):
        result, _ = run(data)
        assert isinstance(result, hdr.Rejection) and result.reason == "not_dicom", data


@pytest.mark.parametrize("cut", [140, 400, 700])
def test_file_cut_inside_its_header_is_truncated(cut: int) -> None:
    data = make_dicom(extra=long_sequence(20))
    result, _ = run(data[:cut])
    assert isinstance(result, hdr.Rejection) and result.reason == "truncated", result


def test_file_cut_inside_its_pixels_is_truncated_without_reading_them() -> None:
    data = make_dicom(512, 512)
    cut = data[: len(data) - 1000]
    result, fetch = run(cut, initial=4096)
    assert isinstance(result, hdr.Rejection) and result.reason == "truncated"
    assert result.details["pixel_data_length"] == 512 * 512 * 2
    assert fetch.bytes_read == 4096


@pytest.mark.parametrize("initial", [65536, 4096, 256])
def test_header_longer_than_the_first_range_reads_little_past_the_pixels(initial: int) -> None:
    """Walking an undefined-length sequence, the header's end is unknown: the range grows,
    but by at most ``max(initial, 64 KiB)`` a fetch, so it never runs far into the pixels."""
    data = make_dicom(1024, 1024, extra=long_sequence(3000))
    result, fetch = run(data, initial=initial)
    assert isinstance(result, hdr.DicomHeader)
    assert result.pixel_data_offset > 2 * 65536
    assert len(fetch.ranges) >= 2 and fetch.ranges[0] == (0, initial)
    assert fetch.bytes_read <= result.pixel_data_offset + 12 + max(initial, 65536)
    assert fetch.bytes_read <= 2 * (result.pixel_data_offset + 12)
    assert result.dicom["rows"] == 1024


def test_a_fetch_that_fails_mid_parse_propagates() -> None:
    """Fetches happen inside pydicom's parse, which swallows or rewraps errors: a storage
    failure must still reach the caller as itself (the event is then retried)."""

    class Outage(Exception):
        pass

    data = make_dicom(256, 256, extra=long_sequence(3000))
    fetch = Fetcher(data)

    def failing(start: int, end: int) -> bytes:
        if fetch.ranges:
            raise Outage("storage unavailable")
        return fetch(start, end)

    with pytest.raises(Outage):
        hdr.read_header(failing, len(data), initial_bytes=65536, max_bytes=1 << 20)
    assert fetch.ranges == [(0, 65536)]


def test_a_jump_over_a_skipped_value_fetches_only_where_it_lands() -> None:
    """After skipping a large value the parser knows where it goes: that range plus a small margin."""
    data = make_dicom(512, 512, extra=big_private_blob(400_000))
    result, fetch = run(data, initial=65536)
    assert isinstance(result, hdr.DicomHeader)
    assert len(fetch.ranges) == 2
    start, end = fetch.ranges[1]
    assert start > 400_000 and end - start <= 12 + fetch_policy.JUMP_MARGIN
    assert end <= result.pixel_data_offset + 12 + fetch_policy.JUMP_MARGIN


def test_defined_length_sequences_are_skipped_not_fetched() -> None:
    data = make_dicom(128, 128, extra=long_sequence(3000, undefined_length=False))
    result, fetch = run(data, initial=16384)
    assert isinstance(result, hdr.DicomHeader)
    assert result.pixel_data_offset > 200_000
    assert fetch.bytes_read <= 2 * 16384
    assert result.dicom["patient_id"] == "PAT-0001"


def test_large_values_before_the_pixels_are_skipped_not_fetched() -> None:
    blob = 400_000
    data = make_dicom(128, 128, extra=big_private_blob(blob))
    result, fetch = run(data, initial=65536)
    assert isinstance(result, hdr.DicomHeader)
    assert result.pixel_data_offset > blob
    assert fetch.bytes_read < 2 * 65536  # the 400 kB value itself is never downloaded
    assert len(fetch.ranges) == 2


# --------------------------------------------------------------------------- deflated data sets


def deflate(data: bytes) -> bytes:
    """The same image with its data set deflated (Deflated Explicit VR Little Endian), as pydicom
    writes it."""
    ds = oracle(data)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert out.getvalue()[128:132] == b"DICM"
    return out.getvalue()


def noisy_image(rows: int, columns: int, **kwargs) -> bytes:
    """An image whose pixels do not compress (so a deflated copy stays large)."""
    ds = oracle(make_dicom(rows, columns, **kwargs))
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def assert_same_header(result: object, data: bytes) -> None:
    assert isinstance(result, hdr.DicomHeader), result
    ref = oracle(data)
    assert result.dicom["transfer_syntax_uid"] == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert (result.dicom["rows"], result.dicom["columns"]) == (ref.Rows, ref.Columns)
    assert result.dicom["sop_instance_uid"] == ref.SOPInstanceUID
    assert result.dicom["patient_id"] == ref.PatientID
    assert result.pixel_data_offset is None and result.pixel_data_length == ref.Rows * ref.Columns * 2


@pytest.mark.parametrize("initial", [65536, 4096])
def test_large_deflated_image_reads_only_its_header(initial: int) -> None:
    """Several MB of deflated pixels, far above HEADER_MAX_BYTES: only the compressed
    bytes up to Pixel Data are fetched (pydicom's reader would inflate them all)."""
    data = deflate(noisy_image(2048, 2048))
    assert len(data) > 5_000_000
    result, fetch = run(data, initial=initial, maximum=1 << 20)
    assert_same_header(result, data)
    assert fetch.bytes_read <= initial
    assert fetch.bytes_read / len(data) < 0.01
    assert ingest_policy.check(result, IMAGE_MODALITIES, 64 << 20) is None


@pytest.mark.parametrize("initial", [65536, 4096, 256])
def test_deflated_header_longer_than_the_first_range(initial: int) -> None:
    data = deflate(noisy_image(1024, 1024, extra=long_sequence(3000)))
    result, fetch = run(data, initial=initial)
    assert_same_header(result, data)
    assert len(fetch.ranges) >= 2 or initial == 65536
    assert fetch.bytes_read < 0.05 * len(data)


def test_pydicoms_deflated_file_is_read_only_up_to_its_pixels() -> None:
    data = Path(get_testdata_files("image_dfl.dcm")[0]).read_bytes()
    result, fetch = run(data, initial=256)
    assert isinstance(result, hdr.DicomHeader)
    assert result.dicom["transfer_syntax_uid"] == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert fetch.bytes_read < len(data) / 2


def test_deflated_value_larger_than_the_inflate_window_is_skipped() -> None:
    data = deflate(make_dicom(256, 256, extra=big_private_blob(3 * sparse_file.INFLATE_WINDOW)))
    result, fetch = run(data, initial=4096)
    assert_same_header(result, data)
    assert fetch.bytes_read < len(data)


def test_deflated_header_that_inflates_without_end_is_too_large(monkeypatch) -> None:
    monkeypatch.setattr(sparse_file, "MAX_INFLATED", 1 << 20)
    data = deflate(make_dicom(64, 64, extra=big_private_blob(2 << 20)))
    result, fetch = run(data)
    assert isinstance(result, hdr.Rejection) and result.reason == "header_too_large"
    assert fetch.bytes_read <= len(data)


def test_deflated_file_cut_or_corrupt_is_rejected() -> None:
    data = deflate(noisy_image(256, 256, extra=long_sequence(3000)))
    result, _ = run(data[:2000], initial=256)
    assert isinstance(result, hdr.Rejection) and result.reason == "truncated", result

    meta_end = 144 + int.from_bytes(data[140:144], "little")  # (0002,0000) group length
    corrupt = data[:meta_end] + b"\x07" + b"\x00" * 1000  # deflate block type 3 is invalid
    result, _ = run(corrupt)
    assert isinstance(result, hdr.Rejection) and result.reason == "not_dicom", result
    assert "deflate" in result.message


def test_header_larger_than_the_budget_is_rejected() -> None:
    data = make_dicom(64, 64, extra=long_sequence(3000))
    result, fetch = run(data, initial=16384, maximum=65536)
    assert isinstance(result, hdr.Rejection) and result.reason == "header_too_large"
    assert fetch.bytes_read <= 65536


def test_fifty_megabyte_image_costs_under_one_percent() -> None:
    data = make_dicom(5000, 5000, fill=7)
    assert len(data) > 50_000_000
    result, fetch = run(data)
    assert isinstance(result, hdr.DicomHeader)
    assert fetch.bytes_read / len(data) < 0.01
    assert fetch.ranges == [(0, 65536)]


@pytest.mark.parametrize(
    ("charset", "patient_id", "encoding"),
    [
        ("ISO_IR 100", "MÜLLER-ÅSA-ß", "latin_1"),
        ("ISO_IR 192", "患者-Ωμέγα-Ж", "utf_8"),
        ("ISO_IR 144", "ИВАНОВ-42", "iso8859_5"),
        (["", "ISO 2022 IR 87"], "やまだ", "iso2022_jp"),
    ],
)
def test_character_sets_are_decoded(charset: str | list[str], patient_id: str, encoding: str) -> None:
    data = make_dicom(charset=charset, patient_id=patient_id)
    assert patient_id.encode(encoding) in data  # the file really holds the encoded bytes
    result, _ = run(data)
    assert isinstance(result, hdr.DicomHeader)
    assert result.dicom["patient_id"] == patient_id
    expected = charset if isinstance(charset, str) else "\\".join(charset)
    assert result.dicom["specific_character_set"] == expected


def test_policy_modality_pixel_budget_and_transfer_syntax() -> None:
    data = make_dicom(100, 100, modality="MG", frames=4)
    result, _ = run(data, allowed=frozenset({"CR", "DX"}))
    assert isinstance(result, hdr.Rejection) and result.reason == "modality_not_allowed"
    result, _ = run(data, max_pixels=100 * 100 * 4 - 1)
    assert isinstance(result, hdr.Rejection) and result.reason == "image_too_large"
    assert result.details == {"pixels": 40000, "max_pixels": 39999}
    result, _ = run(data, max_pixels=100 * 100 * 4)
    assert isinstance(result, hdr.DicomHeader) and result.dicom["number_of_frames"] == 4

    ds = oracle(data)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    result, _ = run(out.getvalue())
    assert isinstance(result, hdr.Rejection) and result.reason == "unsupported_transfer_syntax"
    assert "MPEG2" in result.message


def test_rejection_messages_never_carry_free_text_from_the_file() -> None:
    """Messages and details are logged: a value outside its VR's characters must not reach them."""
    phi = "DOE^JOHN 19700101"
    data = make_dicom(16, 16, modality="MG")
    ds = oracle(data)
    ds.Modality = phi
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    result, _ = run(out.getvalue(), allowed=frozenset({"CR", "DX"}))
    assert isinstance(result, hdr.Rejection) and result.reason == "modality_not_allowed"
    assert phi not in result.message and phi not in json.dumps(result.details)
    assert "<invalid value>" in result.message

    ds = oracle(data)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.SOPClassUID = "1.2.3"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    rejected, _ = run(out.getvalue())
    assert isinstance(rejected, hdr.Rejection) and rejected.reason == "unsupported_transfer_syntax"
    # A legitimate UID still appears, so the check is about the characters, not about hiding UIDs.
    assert pydicom.uid.MPEG2MPML in rejected.message


def test_decodable_transfer_syntaxes_are_what_pydicom_can_decode_here() -> None:
    """The list the function applies matches the decoders installed for the service."""
    from pydicom.pixels import get_decoder

    for uid in ingest_policy.DECODABLE_TRANSFER_SYNTAXES:
        assert get_decoder(pydicom.uid.UID(uid)).is_available, uid
    for uid in (pydicom.uid.MPEG2MPML, pydicom.uid.MPEG4HP41, pydicom.uid.JPEG2000MC):
        assert uid not in ingest_policy.DECODABLE_TRANSFER_SYNTAXES


def test_reason_codes_are_the_contract() -> None:
    contract = (REPO / "docs" / "contracts.md").read_text()
    for code in rejection_codes.REASON_CODES:
        assert f"`{code}`" in contract


def test_schema_file_is_draft07_json() -> None:
    schema_path = Path(hdr.__file__).parent / "schemas" / "dicom-inference-request-1.json"
    schema = json.loads(schema_path.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert set(schema["properties"]["dicom"]["required"]) == set(header_fields.DICOM_FIELDS)


def test_message_leaves_out_absent_attributes_and_keeps_null_fields() -> None:
    from dicom_ingest import message

    path = get_testdata_files("JPEGLSNearLossless_08.dcm")[0]
    data = Path(path).read_bytes()
    result, _ = run(data, allowed=None)
    upload = message.Upload("b", "dir/x.DCM", "17", len(data), None, "ev-1", None)
    body, attributes = message.inference_request(upload, result)
    doc = json.loads(body)
    assert doc["dicom"]["modality"] is None and "modality" not in attributes
    assert attributes["dedup_key"] == "b/dir/x.DCM#17"
    assert attributes["generation"] == "17" and doc["source"]["generation"] == "17"
    assert doc["correlation_id"] == attributes["correlation_id"] == upload.correlation_id
    assert set(doc) == {"schema", "correlation_id", "event_id", "event_time", "source", "dicom"}
