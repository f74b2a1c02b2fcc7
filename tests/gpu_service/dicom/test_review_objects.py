"""The radiologist's assessment as DICOM (gpu_service/dicom/review.py, review_seg.py): read back
with pydicom, highdicom and dsrdump; the decision, reason, comment and reviewer are where the
contract says, the AI SR and SEG are referenced, the drawn region is rasterised pixel-exact, and
the same review always gives the same instances."""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from devkit import synthetic
from gpu_service.dicom import objects as dicom_objects
from gpu_service.dicom.objects import SEG, SR, Algorithm, Finding
from gpu_service.dicom.review import ai_label_codes, build_review_objects
from gpu_service.dicom.review_codes import REVIEW_SEG, REVIEW_SR, SCHEME, Assessment, review_uid
from gpu_service.dicom.review_seg import RegionError, rasterise
from gpu_service.inference.pixels import read_dicom

ALGORITHM = Algorithm(
    "demo-nodule-cnn",
    "1.0.0",
    "ab" * 32,
    label_codes={"nodule": {"value": "N1", "scheme": "99DEMO", "meaning": "Nodule (demo)"}},
)
REVIEW_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
DECIDED = datetime(2026, 11, 30, 12, 34, 56, tzinfo=UTC)


def _source(size: int = 64) -> pydicom.Dataset:
    sample = synthetic.make_radiograph(np.random.default_rng(3), size=size, nodule=True)
    buffer = io.BytesIO()
    synthetic.to_dicom_dataset(sample.image, modality="DX").save_as(buffer, enforce_file_format=True)
    return read_dicom(buffer.getvalue())


def _ai(source: pydicom.Dataset):
    mask = np.zeros((source.Rows, source.Columns), dtype=bool)
    mask[10:20, 10:20] = True
    built = dicom_objects.build_objects(
        source, mask, Finding(["normal", "nodule"], [0.3, 0.7], 1), ALGORITHM, "b/x.dcm#1"
    )
    return dicom_objects.source_header(source), built.objects[SR], built.objects[SEG]


def _assessment(**overrides) -> Assessment:
    fields = {
        "review_id": REVIEW_ID,
        "decision": "accept",
        "decided_at": DECIDED,
        "reviewer_name": "Doe^Jane",
        "reviewer_organisation": "St Elsewhere",
    }
    return Assessment(**{**fields, **overrides})


def _codes(ds: pydicom.Dataset) -> dict[str, tuple[str, str]]:
    """concept meaning -> (value, scheme) of every CODE item."""
    found = {}

    def walk(item):
        for child in item.get("ContentSequence", []):
            if child.ValueType == "CODE":
                code = child.ConceptCodeSequence[0]
                found[child.ConceptNameCodeSequence[0].CodeMeaning] = (
                    code.CodeValue,
                    code.CodingSchemeDesignator,
                )
            walk(child)

    walk(ds)
    return found


def _composites(ds: pydicom.Dataset) -> dict[str, str]:
    found = {}

    def walk(item):
        for child in item.get("ContentSequence", []):
            if child.ValueType == "COMPOSITE":
                found[child.ConceptNameCodeSequence[0].CodeMeaning] = child.ReferencedSOPSequence[
                    0
                ].ReferencedSOPInstanceUID
            walk(child)

    walk(ds)
    return found


def test_accept_is_a_verified_sr_in_the_study_referencing_the_ai_sr_and_seg() -> None:
    source, ai_sr, ai_seg = _ai(_source())
    objects, absent = build_review_objects(source, ai_sr, _assessment(), "nodule", ALGORITHM.name, ai_seg)
    assert set(objects) == {REVIEW_SR} and absent is None
    sr = pydicom.dcmread(io.BytesIO(dicom_objects.encode(objects[REVIEW_SR])))
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    observer = sr.VerifyingObserverSequence[0]
    assert (str(observer.VerifyingObserverName), observer.VerifyingOrganization) == (
        "Doe^Jane",
        "St Elsewhere",
    )
    assert observer.VerificationDateTime.startswith("20261130123456")
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert sr.SOPInstanceUID == review_uid(REVIEW_ID, "review-sr") and sr.SeriesNumber == 9904
    codes = _codes(sr)
    assert codes["Assessment of AI result"] == ("RV010", SCHEME)
    assert codes["Finding"] == ("N1", "99DEMO")  # the AI SR's own code for the label
    assert "Reason for assessment" not in codes
    assert _composites(sr) == {
        "Assessed AI report": ai_sr.SOPInstanceUID,
        "Assessed AI segmentation": ai_seg.SOPInstanceUID,
    }
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {source.SOPInstanceUID, ai_sr.SOPInstanceUID, ai_seg.SOPInstanceUID}
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert SCHEME in schemes
    assert hd.sr.Comprehensive3DSR.from_dataset(sr).VerificationFlag == "VERIFIED"


def test_reject_carries_the_coded_reason_and_the_comment() -> None:
    source, ai_sr, ai_seg = _ai(_source())
    assessment = _assessment(
        decision="reject", reason_code="false_positive", reason_text="calcified granuloma"
    )
    sr = build_review_objects(source, ai_sr, assessment, "nodule", ALGORITHM.name, ai_seg)[0][REVIEW_SR]
    codes = _codes(sr)
    assert codes["Assessment of AI result"] == ("RV011", SCHEME)
    assert codes["Reason for assessment"] == ("RV020", SCHEME)
    texts = [
        c.TextValue
        for c in sr.ContentSequence[-1].ContentSequence[0].ContentSequence
        if c.ValueType == "TEXT"
    ]
    assert "calcified granuloma" in texts


def test_correction_with_a_polygon_gets_a_seg_of_it_and_the_corrected_finding() -> None:
    source, ai_sr, ai_seg = _ai(_source())
    region = {"type": "polygon", "points": [[8, 8], [40, 8], [40, 30], [8, 30]]}
    assessment = _assessment(decision="correct", corrected_label="normal", region=region)
    objects, absent = build_review_objects(source, ai_sr, assessment, "nodule", ALGORITHM.name, ai_seg)
    assert set(objects) == {REVIEW_SR, REVIEW_SEG} and absent is None
    seg = hd.seg.Segmentation.from_dataset(
        pydicom.dcmread(io.BytesIO(dicom_objects.encode(objects[REVIEW_SEG])))
    )
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])[
        0, :, :, 0
    ].astype(bool)
    expected = np.zeros((64, 64), dtype=bool)
    expected[8:30, 8:40] = True
    assert np.array_equal(pixels, expected)
    assert (
        seg.SOPInstanceUID == review_uid(REVIEW_ID, "review-seg")
        and seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    )
    sr = objects[REVIEW_SR]
    codes = _codes(sr)
    assert codes["Assessment of AI result"] == ("RV012", SCHEME)
    assert codes["Finding"] == ("17621005", "SCT")  # normal, corrected
    assert codes["Normal"] == ("121053", "DCM")  # the corrected finding is present
    references = [
        c for c in sr.ContentSequence[-1].ContentSequence[0].ContentSequence if c.ValueType == "IMAGE"
    ]
    assert references[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID


def test_the_same_review_rebuilds_identical_objects_another_review_other_uids() -> None:
    source, ai_sr, ai_seg = _ai(_source())
    assessment = _assessment(
        decision="correct", corrected_label="normal", region={"type": "point", "x": 20, "y": 20, "radius": 5}
    )
    first = build_review_objects(source, ai_sr, assessment, "nodule", ALGORITHM.name, ai_seg)[0]
    again = build_review_objects(source, ai_sr, assessment, "nodule", ALGORITHM.name, ai_seg)[0]
    for role in first:
        assert dicom_objects.encode(first[role]) == dicom_objects.encode(again[role])
    other = build_review_objects(
        source,
        ai_sr,
        _assessment(review_id="00000000-0000-4000-8000-000000000001"),
        "nodule",
        ALGORITHM.name,
        ai_seg,
    )[0]
    assert other[REVIEW_SR].SOPInstanceUID != first[REVIEW_SR].SOPInstanceUID


def test_rasterise_pixel_centres_discs_and_points_outside() -> None:
    disc = rasterise({"type": "point", "x": 5.5, "y": 5.5, "radius": 1.0}, 10, 10)
    assert disc.sum() == 5 and disc[5, 5] and disc[4, 5] and disc[5, 6]
    tiny = rasterise({"type": "point", "x": 0, "y": 0, "radius": 0.1}, 10, 10)
    assert tiny.sum() == 1 and tiny[0, 0]  # the pixel under the point, always
    edge = rasterise({"type": "polygon", "points": [[0, 0], [10, 0], [10, 10], [0, 10]]}, 10, 10)
    assert edge.all()
    for region, code in (
        ({"type": "polygon", "points": [[0, 0], [11, 0], [5, 5]]}, "region_outside_image"),
        ({"type": "point", "x": -1, "y": 2, "radius": 3}, "region_outside_image"),
        ({"type": "point", "x": 1, "y": 2, "radius": 0}, "bad_region"),
        ({"type": "polygon", "points": [[0, 0], [1, 1]]}, "bad_region"),
        ({"type": "circle"}, "bad_region"),
        ({"type": "point", "x": float("nan"), "y": 2, "radius": 3}, "bad_region"),
    ):
        with pytest.raises(RegionError) as caught:
            rasterise(region, 10, 10)
        assert caught.value.code == code, region


def test_ai_label_codes_are_read_back_from_the_ai_sr() -> None:
    _, ai_sr, _ = _ai(_source())
    codes = {label: (c.value, c.scheme_designator) for label, c in ai_label_codes(ai_sr).items()}
    assert codes == {"nodule": ("N1", "99DEMO"), "normal": ("17621005", "SCT")}


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dsrdump not found (Debian package dcmtk)")
def test_dsrdump_reads_the_assessment(tmp_path: Path) -> None:
    source, ai_sr, ai_seg = _ai(_source())
    assessment = _assessment(
        decision="reject", reason_code="wrong_region", reason_text="left apex", reviewer_name="Jane Doe"
    )
    path = tmp_path / "review.sr.dcm"
    path.write_bytes(
        dicom_objects.encode(
            build_review_objects(source, ai_sr, assessment, "nodule", ALGORITHM.name, ai_seg)[0][REVIEW_SR]
        )
    )
    run = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "Verification Flag   : VERIFIED" in out
    assert "Jane Doe, St Elsewhere" in out
    assert '(RV011,99DPREVIEW,"Rejected")' in out and '(RV022,99DPREVIEW,"Wrong region")' in out
    assert '"Comment")="left apex"' in out
    assert '"Assessed AI report")=(Comprehensive3DSRStorage,)' in out
    assert not [line for line in run.stderr.splitlines() if line.startswith("E:")]
