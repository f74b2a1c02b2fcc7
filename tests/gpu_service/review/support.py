"""A ``dicom-review/1`` body made from a stored result record, as Django publishes it."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any


def review_body(record: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    dicom = record.get("dicom") or {}
    uids = dicom.get("sop_instance_uids") or {}
    body: dict[str, Any] = {
        "schema": "dicom-review/1",
        "review_id": str(uuid.uuid4()),
        "supersedes": None,
        "decided_at": "2026-11-30T10:15:00.000000Z",
        "decision": "accept",
        "reason_code": None,
        "reason_text": "",
        "corrected_label": None,
        "region": None,
        "reviewer": {"name": "Doe^Jane", "organisation": "St Elsewhere"},
        "result": {
            "correlation_id": record["correlation_id"],
            "webhook_id": "w" * 64,
            "source": {k: record["source"][k] for k in ("bucket", "name", "generation")},
            "model_sha256": record["model"]["sha256"],
            "label": record["prediction"]["label"],
            "study_instance_uid": record["study_instance_uid"],
            "sop_instance_uid": record["sop_instance_uid"],
            "sr_sop_instance_uid": uids.get("sr"),
            "seg_sop_instance_uid": uids.get("seg"),
        },
    }
    body.update(overrides)
    return body


def review_envelope(body: dict[str, Any], message_id: str = "r1") -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(json.dumps(body).encode()).decode(),
            "attributes": {"schema": "dicom-review/1", "review_id": str(body.get("review_id"))},
            "messageId": message_id,
        },
        "subscription": "projects/test-project/subscriptions/review-push",
    }
