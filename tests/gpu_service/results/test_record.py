"""The result record: its fields, what counts as a stored record, the header merged from message
and dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpu_service.results import record as result
from pipeline_common import naming

# -- settings ------------------------------------------------------------------------------


def _record(**overrides: object) -> dict:
    kwargs: dict = {
        "status": result.COMPLETED,
        "correlation_id": "c",
        "bucket": "b",
        "name": "x.dcm",
        "generation": "5",
        "header": {"patient_id": "P", "modality": "DX", "sop_instance_uid": "1.2"},
        "model": {"name": "m", "version": "1", "sha256": "abc"},
        "prediction": result.prediction_fields(np.array([0.25, 0.75]), ["normal", "nodule"]),
        "timings_ms": {"download": 1.234},
    }
    kwargs.update(overrides)
    return result.build_record(**kwargs)


def test_result_record_fields() -> None:
    rec = _record()
    assert rec["schema"] == "dicom-inference-result/1"
    assert rec["study_modality"] == "DX" and rec["patient_id"] == "P"
    assert rec["prediction"]["label"] == "nodule" and rec["prediction"]["score"] == 0.75
    assert rec["prediction"]["scores"] == {"normal": 0.25, "nodule": 0.75}
    assert rec["source"] == {"bucket": "b", "name": "x.dcm", "uri": "gs://b/x.dcm", "generation": "5"}
    assert rec["timings_ms"] == {"download": 1.2}
    assert rec["completed_at"].endswith("Z") and "error" not in rec
    assert result.same_work(rec, "gs://b/x.dcm", "5", "abc")
    assert not result.same_work(rec, "gs://b/x.dcm", "6", "abc")
    assert not result.same_work(rec, "gs://b/x.dcm", "5", "other")
    # x.dcm and x.DCM share a stem (and so do equal names in two buckets under OUTPUT_BUCKET).
    assert not result.same_work(rec, "gs://b/x.DCM", "5", "abc")
    assert not result.same_work(rec, "gs://other/x.dcm", "5", "abc")
    assert result.record_generation(rec) == 5
    assert json.loads(result.encode(rec)) == rec


def test_a_stored_record_counts_only_with_the_marker_and_the_same_source() -> None:
    rec = _record()
    marked = {naming.MARKER_KEY: "result"}
    assert result.is_record_of(rec, marked, "gs://b/x.dcm")
    assert not result.is_record_of(rec, {}, "gs://b/x.dcm")  # someone's own x.result.json
    assert not result.is_record_of(rec, None, "gs://b/x.dcm")
    assert not result.is_record_of(rec, marked, "gs://b/x.DCM")
    assert not result.is_record_of(rec, marked, "gs://c/x.dcm")


def test_header_from_dataset_never_raises() -> None:
    class Broken:
        Modality = "CT"

        @property
        def PatientID(self) -> str:  # noqa: N802 - DICOM keyword
            raise ValueError("cannot convert")

    header = result.header_from_dataset(Broken())
    assert header["patient_id"] is None and header["modality"] == "CT"


def test_failed_record_needs_error() -> None:
    with pytest.raises(ValueError):
        _record(status=result.FAILED)
    rec = _record(status=result.FAILED, prediction=None, error={"code": "not_dicom", "message": "m"})
    assert rec["error"] == {"code": "not_dicom", "message": "m"} and rec["prediction"] is None


def test_header_merge_prefers_message() -> None:
    merged = result.merge_header({"patient_id": "A", "modality": None}, {"patient_id": "B", "modality": "CT"})
    assert merged == {"patient_id": "A", "modality": "CT"}
