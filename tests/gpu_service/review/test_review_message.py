"""dicom-review/1 parsed (gpu_service/pipeline/review_message.py) and checked against a stored
record (review_check.py): pure, no servers."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gpu_service.pipeline.review_check import ReviewRefused, check_review
from gpu_service.pipeline.review_message import parse_review
from gpu_service.transport.push import MessageError, PubSubMessage
from tests.gpu_service.review.support import review_body

RECORD: dict[str, Any] = {
    "status": "completed",
    "correlation_id": "c" * 32,
    "study_instance_uid": "1.2.3",
    "sop_instance_uid": "1.2.3.4",
    "prediction": {"label": "nodule", "scores": {"normal": 0.1, "nodule": 0.9}},
    "image": {"rows": 100, "columns": 80, "frame_index": 0},
    "source": {"bucket": "b", "name": "x/y.dcm", "generation": "7"},
    "model": {"name": "m", "sha256": "a" * 64},
    "dicom": {
        "sr_uri": "gs://b/x/y.sr.dcm",
        "seg_uri": "gs://b/x/y.seg.dcm",
        "sop_instance_uids": {"sr": "2.25.1", "seg": "2.25.2"},
    },  # fmt: skip
}


def parsed(**overrides: Any):
    return parse_review(PubSubMessage(json.dumps(review_body(RECORD, **overrides)).encode(), {}))


def test_a_polygon_arrives_as_objects_and_reaches_the_core_as_pairs() -> None:
    region = {"type": "polygon", "points": [{"x": 1, "y": 2}, {"x": 30, "y": 2}, {"x": 30.5, "y": 40}]}
    message = parsed(decision="correct", corrected_label="normal", region=region)
    assert message.assessment.region == {"type": "polygon", "points": [[1, 2], [30, 2], [30.5, 40]]}
    check_review(message, RECORD)  # inside the 80 x 100 image


@pytest.mark.parametrize(
    "overrides",
    [
        {"schema": "dicom-review/2"},
        {"decision": "maybe"},
        {"decision": "reject"},  # a rejection needs a reason
        {"decision": "reject", "reason_code": "bored"},
        {"decision": "accept", "reason_code": "other"},
        {"decision": "accept", "corrected_label": "normal"},
        {"decision": "correct"},  # no label
        {
            "decision": "correct",
            "corrected_label": "normal",
            "region": {"type": "point", "x": 1, "y": 1, "radius": 0},
        },
        {
            "decision": "correct",
            "corrected_label": "normal",
            "region": {"type": "polygon", "points": [[1, 2], [3, 4], [5, 6]]},
        },
        {"review_id": "42"},
        {"decided_at": "yesterday"},
        {"decided_at": "2026-11-30T10:00:00"},  # no offset
        {"reviewer": {"name": ""}},
        {"reason_text": "x" * 2001, "decision": "reject", "reason_code": "other"},
    ],
)
def test_malformed_messages_are_message_errors(overrides: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        parsed(**overrides)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda r: r.update(status="failed"), "result_not_completed"),
        (lambda r: r["source"].update(generation="8"), "result_mismatch"),
        (lambda r: r["prediction"].update(label="normal"), "result_mismatch"),
        (lambda r: r["dicom"]["sop_instance_uids"].update(sr="2.25.9"), "result_mismatch"),
        (lambda r: r["dicom"].update(sr_uri=None), "no_ai_sr"),
    ],
)
def test_a_message_that_does_not_match_the_record_is_refused(change, code: str) -> None:
    record = copy.deepcopy(RECORD)
    change(record)
    with pytest.raises(ReviewRefused) as refused:
        check_review(parsed(), record)
    assert refused.value.code == code
    with pytest.raises(ReviewRefused, match="no result record"):
        check_review(parsed(), None)


def test_labels_and_regions_are_checked_against_the_record() -> None:
    with pytest.raises(ReviewRefused) as refused:
        check_review(parsed(decision="correct", corrected_label="kitten"), RECORD)
    assert refused.value.code == "label_unknown"
    outside = {"type": "point", "x": 81, "y": 10, "radius": 2}  # the image is 80 columns wide
    with pytest.raises(ReviewRefused) as refused:
        check_review(parsed(decision="correct", corrected_label="normal", region=outside), RECORD)
    assert refused.value.code == "region_outside_image"


def test_the_review_component_loads_no_model_framework() -> None:
    """A CPU service: starting it imports neither TensorFlow nor Keras (no model, no GPU)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from gpu_service.review_app import create_app\n"
        "from gpu_service.settings import Settings\n"
        "from gpu_service.results.cloud_storage import GcsStore\n"
        "app = create_app(Settings(project='p'), cloud_storage=GcsStore('p'))\n"
        "assert app.test_client().get('/readyz').status_code == 200\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
