"""The result as DICOM objects (gpu_service/dicom/objects.py): read back with pydicom and highdicom,
compared with the PNG mask and the record, on synthetic radiographs and every pydicom test file
the pipeline completes."""

from __future__ import annotations

import io
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pydicom.uid
import pytest
from PIL import Image
from pydicom.data import get_testdata_files
from pydicom.sr.codedict import codes

from devkit import synthetic
from gpu_service.dicom import objects as dicom_objects
from gpu_service.dicom.objects import HEATMAP, SEG, SR, Algorithm, Finding
from gpu_service.dicom.result_objects import dicom_section
from gpu_service.inference import render
from gpu_service.inference.pixels import decode, read_dicom, to_uint8
from gpu_service.results import record as result

KEY = "uploads/ward3/chest.dcm#1712345678"
ALGORITHM = Algorithm(
    name="demo-nodule-cnn",
    version="1.0.0",
    sha256="ab" * 32,
    lime_parameters={"num_samples": 1000, "num_features": 5, "segmentation": "slic", "seed": 0},
)
PROBS = np.array([0.125, 0.875])
LABELS = ["normal", "nodule"]


def radiograph(size: int = 96, **kwargs) -> pydicom.Dataset:
    sample = synthetic.make_radiograph(np.random.default_rng(3), size=size, nodule=True)
    return read_dicom(_bytes(synthetic.to_dicom_dataset(sample.image, modality="DX", **kwargs)))


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def some_mask(shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[shape[0] // 4 : shape[0] // 2, shape[1] // 3 : shape[1] // 2 + 3] = True
    mask[-3:, :5] = True
    return mask


def build(ds: pydicom.Dataset, mask: np.ndarray, weights: np.ndarray | None = None, key: str = KEY):
    finding = Finding(LABELS, list(PROBS), int(np.argmax(PROBS)))
    return dicom_objects.build_objects(ds, mask, finding, ALGORITHM, key, 0, pixel_weights=weights)


def reread(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def text_values(item: pydicom.Dataset) -> set[str]:
    """Every TEXT value of an SR content tree."""
    found = {str(item.TextValue)} if "TextValue" in item else set()
    for child in item.get("ContentSequence", []):
        found |= text_values(child)
    return found


def test_seg_reads_back_references_the_source_and_equals_the_png_mask() -> None:
    source = radiograph()
    mask = some_mask((source.Rows, source.Columns))
    objects = build(source, mask)
    assert objects.absent == {}

    seg = hd.seg.segread(io.BytesIO(objects.encoded(SEG)))
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.PatientID == source.PatientID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (description,) = seg.SegmentSequence
    assert description.SegmentNumber == 1 and description.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == ALGORITHM.name and algorithm.AlgorithmVersion == ALGORITHM.version
    assert (
        ALGORITHM.sha256 in algorithm.AlgorithmParameters
        and "lime_num_samples=1000" in algorithm.AlgorithmParameters
    )

    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
    png = np.asarray(Image.open(io.BytesIO(render.mask_png(mask)))) > 0
    assert pixels.shape == png.shape == (source.Rows, source.Columns)
    assert np.array_equal(pixels.astype(bool), png)


def test_sr_holds_the_records_finding_probabilities_and_references_unverified() -> None:
    source = radiograph()
    objects = build(source, some_mask((source.Rows, source.Columns)))
    record_prediction = result.prediction_fields(PROBS, LABELS)

    sr = hd.sr.srread(io.BytesIO(objects.encoded(SR)))
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, objects.objects[SEG].SOPInstanceUID}

    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1
    group = groups[0]
    assert group.finding_type == codes.SCT.Nodule
    assert group.reference_type == codes.DCM.ReferencedSegmentationFrame
    assert (
        group.referenced_segmentation_frame.referenced_sop_instance_uid == objects.objects[SEG].SOPInstanceUID
    )
    # By segment number, without a frame number: the reference macro allows one or the other.
    (reference,) = group.referenced_segmentation_frame[0].ReferencedSOPSequence
    assert reference.ReferencedSegmentNumber == 1 and "ReferencedFrameNumber" not in reference
    (source_image,) = group.referenced_segmentation_frame[1].ReferencedSOPSequence
    assert source_image.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert group.finding_type.meaning.lower() == record_prediction["label"] == "nodule"
    (evaluation,) = group.get_qualitative_evaluations(name=codes.SCT.Nodule)
    assert evaluation.value == codes.DCM.Present
    (probability,) = group.get_measurements(name=codes.DCM.Probability)
    assert probability.value == pytest.approx(record_prediction["score"])
    others = sr.content.get_image_measurement_groups()
    assert [(g.finding_type.meaning, g.get_measurements()[0].value) for g in others] == [
        ("Normal", pytest.approx(record_prediction["scores"]["normal"]))
    ]
    texts = text_values(reread(objects.encoded(SR)))
    assert {ALGORITHM.name, ALGORITHM.version, f"model_sha256={ALGORITHM.sha256}"} <= texts


@pytest.mark.parametrize(
    ("header", "spacing", "thickness"),
    [
        ({"PixelSpacing": [0.2, 0.25]}, [0.2, 0.25], 1.0),
        ({"ImagerPixelSpacing": [0.143, 0.143], "SliceThickness": 2.5}, [0.143, 0.143], 2.5),
        ({"PixelSpacing": [0.3, 0.3], "ImagerPixelSpacing": [0.1, 0.1]}, [0.3, 0.3], 1.0),
        ({}, [1.0, 1.0], 1.0),  # no spacing at all: the documented fallback
    ],
)
def test_segs_of_a_projection_image_carry_pixel_measures(header, spacing, thickness) -> None:
    """OHIF's SEG viewport reads the shared Pixel Measures, which highdicom leaves out of a SEG
    of a projection image: the source's Pixel Spacing, else Imager Pixel Spacing, else 1 mm."""
    source = radiograph(size=64, **header)
    weights = np.ones((64, 64), dtype=np.float32)
    objects = build(source, some_mask((64, 64)), weights=weights)
    for role in (SEG, HEATMAP):
        seg = hd.seg.segread(io.BytesIO(objects.encoded(role)))
        (measures,) = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        assert [float(v) for v in measures.PixelSpacing] == pytest.approx(spacing), role
        assert float(measures.SliceThickness) == pytest.approx(thickness), role
        assert seg.PatientOrientation == "", role  # Type 2C without an Image Orientation (Patient)
        (orientation,) = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
        assert [float(v) for v in orientation.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0], role
        assert len(seg.SegmentSequence[0].RecommendedDisplayCIELabValue) == 3, role


def test_a_second_run_on_the_same_upload_gives_the_same_uids_another_upload_others() -> None:
    source = radiograph()
    mask = some_mask((source.Rows, source.Columns))
    first, second = build(source, mask), build(source, mask)
    other = build(source, mask, key=KEY.replace("#1712345678", "#1712345679"))
    for role in (SEG, SR):
        a, b, c = first.objects[role], second.objects[role], other.objects[role]
        assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
        assert a.SOPInstanceUID != c.SOPInstanceUID
        assert reread(first.encoded(role)).SOPInstanceUID == reread(second.encoded(role)).SOPInstanceUID
    assert first.objects[SEG].SOPInstanceUID == dicom_objects.object_uid(KEY, ALGORITHM.sha256, SEG)


def test_weight_map_becomes_four_binary_bands_of_its_positive_part() -> None:
    source = radiograph(size=64)
    yy, xx = np.mgrid[0:64, 0:64]
    weights = ((xx - 32) / 32.0).astype(np.float32)  # signed, in [-1, 1]
    objects = build(source, some_mask((64, 64)), weights=weights)
    seg = hd.seg.segread(io.BytesIO(objects.encoded(HEATMAP)))
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == 4
    # One segment per band, none overlapping: each pixel is in exactly the band of its weight.
    bands = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1, 2, 3, 4])[0]
    assert bands.sum(axis=-1).max() == 1
    band_of_pixel = (bands * np.arange(1, 5)).sum(axis=-1)
    assert np.array_equal(band_of_pixel, np.ceil(np.clip(weights, 0, 1) * 4).astype(int))
    assert band_of_pixel[:, :33].max() == 0 and band_of_pixel[:, -1].min() == 4
    labels = [item.SegmentLabel for item in seg.SegmentSequence]
    assert labels[0].startswith("LIME weight 0.00-0.25") and labels[3].startswith("LIME weight 0.75-1.00")
    assert seg.SOPInstanceUID not in {objects.objects[SEG].SOPInstanceUID, objects.objects[SR].SOPInstanceUID}


def test_bands_are_ceil_of_four_times_the_clipped_weight_nan_in_none() -> None:
    from gpu_service.dicom.seg import heatmap_bands

    edges = [0.0, 1e-7, 0.25, np.nextafter(np.float32(0.25), np.float32(1)), 0.5, 0.75, 0.7500001, 1.0]
    specials = [np.nan, np.inf, -np.inf, -0.0, -1e-30, 3.5, -2.0]
    rng = np.random.default_rng(7)
    weights = np.concatenate([edges, specials, rng.uniform(-1.5, 1.5, 5000)]).astype(np.float32)
    expected = np.ceil(np.clip(np.nan_to_num(weights), 0, 1) * 4).astype(np.uint8)  # the definition
    got = heatmap_bands(weights.reshape(-1, 5))
    assert got.dtype == np.uint8
    assert np.array_equal(got.ravel(), expected)


def test_multi_frame_source_without_frame_positions_gets_the_sr_and_a_reason() -> None:
    """A legacy multi-frame source has no per-frame positions, which highdicom needs to keep a
    SEG's frames apart: no SEG, the SR references the source, and the record will say why."""
    source = radiograph(size=64)
    source.Modality = "MR"
    frame = source.pixel_array
    source.NumberOfFrames = 3
    source.PixelData = np.stack([frame] * 3).tobytes()
    mask = some_mask((64, 64))
    finding = Finding(LABELS, list(PROBS), 1)
    for frame_of_reference, reason in (
        (None, "Frame of Reference"),
        (pydicom.uid.generate_uid(), "functional groups"),
    ):
        if frame_of_reference:
            source.FrameOfReferenceUID = frame_of_reference
        objects = dicom_objects.build_objects(source, mask, finding, ALGORITHM, KEY, frame_index=1)
        assert list(objects.objects) == [SR] and reason in objects.absent[SEG]
        sr = hd.sr.srread(io.BytesIO(objects.encoded(SR)))
        (group,) = sr.content.get_image_measurement_groups()[:1]
        assert group.finding_type == codes.SCT.Nodule
        assert SEG not in {*objects.objects}


def test_missing_type2_attributes_are_added_empty_and_a_source_without_a_study_gets_no_object() -> None:
    source = radiograph()
    for keyword in (
        "PatientName",
        "PatientBirthDate",
        "ReferringPhysicianName",
        "AccessionNumber",
        "StudyID",
    ):
        if keyword in source:
            delattr(source, keyword)
    objects = build(source, some_mask((source.Rows, source.Columns)))
    seg = reread(objects.encoded(SEG))
    assert (
        seg.PatientName == ""
        and seg.AccessionNumber == ""
        and seg.StudyInstanceUID == source.StudyInstanceUID
    )

    del source.StudyInstanceUID
    objects = build(source, some_mask((source.Rows, source.Columns)))
    assert objects.objects == {}
    assert set(objects.absent) == {SEG, SR} and "Study Instance UID" in objects.absent[SEG]


def test_finding_codes_snomed_then_the_models_own_then_a_local_scheme() -> None:
    assert dicom_objects.finding_code("nodule", {}, "m") == hd.sr.CodedConcept("27925004", "SCT", "Nodule")
    own = {"effusion": {"value": "E1", "scheme": "99ACME", "meaning": "Pleural effusion"}}
    assert dicom_objects.finding_code("effusion", own, "m") == hd.sr.CodedConcept(
        "E1", "99ACME", "Pleural effusion"
    )
    local = dicom_objects.finding_code("class_3", {}, "demo-nodule-cnn")
    assert local.scheme_designator.startswith("99") and local.value == "class_3"


def test_record_section_lists_uris_uids_and_reasons() -> None:
    source = radiograph()
    objects = build(source, some_mask((source.Rows, source.Columns)))
    uris = {SEG: "gs://b/x.seg.dcm", SR: "gs://b/x.sr.dcm"}
    section = dicom_section(objects, uris, "http://store/dicom-web", False)
    assert section["seg_uri"] == uris[SEG] and section["sr_uri"] == uris[SR]
    assert section["study_instance_uid"] == source.StudyInstanceUID
    assert section["sop_instance_uids"] == {r: objects.objects[r].SOPInstanceUID for r in (SEG, SR)}
    assert section["series_instance_uids"][SEG] == objects.objects[SEG].SeriesInstanceUID
    assert section["absent"] == {} and section["dicomweb"]["stored"] == [SEG, SR]
    assert dicom_section(objects, uris, None, None)["dicomweb"] is None


def _completed_test_files() -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(get_testdata_files("*"))


@pytest.mark.slow  # every pydicom test file through decode and the builders (~15 s)
def test_every_pydicom_test_file_the_pipeline_completes_gets_objects_or_reasons() -> None:
    """RGB, palette, multi-frame, big endian, odd sizes, no study: valid objects or a reason,
    never a crash."""
    built = {SEG: 0, SR: 0}
    completed = 0
    for path in _completed_test_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                source = read_dicom(path)
                decoded = decode(source)
                preview = to_uint8(decoded)
            except Exception:  # noqa: BLE001 - not completed by the pipeline: not this test's business
                continue
            completed += 1
            mask = some_mask(preview.shape[:2])
            finding = Finding(LABELS, list(PROBS), 1)
            objects = dicom_objects.build_objects(
                source, mask, finding, ALGORITHM, path, decoded.frame_index, pixel_weights=None
            )
        for role in (SEG, SR):
            assert (role in objects.objects) != (role in objects.absent), path
            if role in objects.absent:
                assert objects.absent[role].strip(), path
                continue
            built[role] += 1
            again = reread(objects.encoded(role))
            assert again.StudyInstanceUID == source.StudyInstanceUID, path
        if SEG in objects.objects:
            seg = hd.seg.segread(io.BytesIO(objects.encoded(SEG)))
            frames = np.asarray(seg.pixel_array).reshape(-1, *mask.shape)
            assert np.array_equal(
                frames[decoded.frame_index if decoded.n_frames > 1 else 0].astype(bool), mask
            ), path
    assert completed >= 40
    assert built[SEG] >= 30 and built[SR] >= 35


def test_startup_warmup_builds_both_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    real = dicom_objects.build_objects

    def recording(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(dicom_objects, "build_objects", recording)
    dicom_objects.warmup()
    assert [sorted(b.objects) for b in built] == [[SEG, SR]] and built[0].absent == {}


@pytest.mark.parametrize("on_pool", [True, False])
def test_a_failed_write_is_raised_after_every_other_write_settled(on_pool: bool) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from gpu_service.dicom.result_objects import write_objects
    from pipeline_common.write_outcome import WriteOutcome, WriteResult

    source = radiograph(size=64)
    weights = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    started, finished, lock = [], [], threading.Lock()

    def write(suffix: str, role: str, data: bytes, content_type: str) -> WriteResult:
        with lock:
            started.append(role)
        if role == SEG:
            raise OSError("the bucket refused the SEG")
        time.sleep(0.2)  # the other writes are still under way when the SEG's fails
        with lock:
            finished.append(role)
        return WriteResult(WriteOutcome.CREATED, generation=1)

    with ThreadPoolExecutor(4) as pool:
        with pytest.raises(OSError, match="refused the SEG"):
            write_objects(
                source=source,
                mask=some_mask((64, 64)),
                finding=Finding(LABELS, list(PROBS), 1),
                algorithm=ALGORITHM,
                dedup_key=KEY,
                frame_index=0,
                pixel_weights=weights,
                write=write,
                uri=lambda suffix: f"gs://b/x{suffix}",
                dicomweb_url=None,
                pool=pool if on_pool else None,
            )
        if on_pool:  # every write was started, and none was still running when the error came
            assert sorted(started) == sorted([SEG, HEATMAP, SR]) and sorted(finished) == sorted([HEATMAP, SR])
        else:  # one after the other: nothing is written after the failed one (the SEG is first)
            assert started == [SEG] and finished == []


def _write_inputs(write, pool) -> dict:
    return {
        "source": radiograph(size=64),
        "mask": some_mask((64, 64)),
        "finding": Finding(LABELS, list(PROBS), 1),
        "algorithm": ALGORITHM,
        "dedup_key": KEY,
        "frame_index": 0,
        "pixel_weights": np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64),
        "write": write,
        "uri": lambda suffix: f"gs://b/x{suffix}",
        "dicomweb_url": None,
        "pool": pool,
    }


def test_each_object_is_written_while_the_next_one_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SEG's and the heat-map SEG's writes are under way before the SR is built."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from gpu_service.dicom.result_objects import write_objects
    from pipeline_common.write_outcome import WriteOutcome, WriteResult

    written = {SEG: threading.Event(), HEATMAP: threading.Event()}
    seen_before_sr: dict[str, bool] = {}
    real_report = dicom_objects.build_report

    def report(*args, **kwargs):
        for role, event in written.items():  # waits for them: they never come if writes wait for every build
            seen_before_sr[role] = event.wait(timeout=5)
        return real_report(*args, **kwargs)

    def write(suffix: str, role: str, data: bytes, content_type: str) -> WriteResult:
        if role in written:
            written[role].set()
        return WriteResult(WriteOutcome.CREATED, generation=1)

    monkeypatch.setattr(dicom_objects, "build_report", report)
    with ThreadPoolExecutor(4) as pool:
        result = write_objects(**_write_inputs(write, pool))
    assert seen_before_sr == {SEG: True, HEATMAP: True}
    assert set(result.section["sop_instance_uids"]) == {SEG, HEATMAP, SR}


def test_an_encoding_error_is_raised_after_the_writes_under_way_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from gpu_service.dicom.result_objects import write_objects
    from pipeline_common.write_outcome import WriteOutcome, WriteResult

    finished, lock = [], threading.Lock()
    real_encode = dicom_objects.encode

    def encode(ds: pydicom.Dataset) -> bytes:
        if ds.Modality == "SR":
            raise ValueError("the SR cannot be encoded")
        return real_encode(ds)

    def write(suffix: str, role: str, data: bytes, content_type: str) -> WriteResult:
        time.sleep(0.2)  # still under way when the SR's encoding fails
        with lock:
            finished.append(role)
        return WriteResult(WriteOutcome.CREATED, generation=1)

    monkeypatch.setattr(dicom_objects, "encode", encode)
    with ThreadPoolExecutor(4) as pool:
        with pytest.raises(ValueError, match="cannot be encoded"):
            write_objects(**_write_inputs(write, pool))
        assert sorted(finished) == sorted([SEG, HEATMAP])  # both settled before the error was raised
