"""Valid ``dicom-inference-result/1`` records and Standard Webhooks headers, signed with the
library itself (the same calls the pipeline's sender makes)."""

from __future__ import annotations

import copy
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from standardwebhooks import Webhook

RECORD: dict[str, Any] = {
    "schema": "dicom-inference-result/1",
    "status": "completed",
    "correlation_id": "c" * 32,
    "patient_id": "PAT-1",
    "study_modality": "DX",
    "study_instance_uid": "1.2.3.4",
    "series_instance_uid": "1.2.3.4.5",
    "sop_instance_uid": "1.2.3.4.5.6",
    "prediction": {
        "label": "nodule",
        "label_index": 1,
        "score": 0.93,
        "scores": {"normal": 0.07, "nodule": 0.93},
    },
    "image_uri": "gs://uploads/ward3/scan.png",
    "explanation": {
        "method": "lime",
        "mask_uri": "gs://uploads/ward3/scan.lime.png",
        "overlay_uri": "gs://uploads/ward3/scan.overlay.png",
        "heatmap_uri": "gs://uploads/ward3/scan.heatmap.png",
        "parameters": {"num_samples": 100},
        "top_segments": [3, 1],
        "stability": 0.9123,
        "samples_used": 300,
        "reason": None,
    },
    "dicom": {
        "seg_uri": "gs://uploads/ward3/scan.seg.dcm",
        "sr_uri": "gs://uploads/ward3/scan.sr.dcm",
        "study_instance_uid": "1.2.3.4",
        "series_instance_uids": ["1.2.3.4.7", "1.2.3.4.8"],
        "sop_instance_uids": ["1.2.3.4.7.1", "1.2.3.4.8.1"],
    },
    "source": {
        "bucket": "uploads",
        "name": "ward3/scan.dcm",
        "uri": "gs://uploads/ward3/scan.dcm",
        "generation": "17",
    },
    "model": {"name": "demo-cnn", "version": "1", "sha256": "ab" * 32},
    "timings_ms": {"download": 3.5, "predict": 20.0, "explain": 900.1},
    "completed_at": "2026-11-30T04:00:00Z",
}


def record(**overrides: Any) -> dict[str, Any]:
    out = copy.deepcopy(RECORD)
    out.update(overrides)
    return out


def failed_record() -> dict[str, Any]:
    out = record(status="failed", prediction=None, explanation=None, image_uri=None, dicom=None)
    out["error"] = {"code": "decode_error", "message": "pixel data could not be decoded"}
    return out


def encode(rec: Any) -> bytes:
    return json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()


def webhook_id_for(rec: dict[str, Any]) -> str:
    source, model = rec["source"], rec["model"]
    key = f"{source['bucket']}/{source['name']}#{source['generation']}|{model['sha256']}"
    return hashlib.sha256(key.encode()).hexdigest()


def sign(
    body: bytes,
    *,
    webhook_id: str | None = None,
    timestamp: float | None = None,
    secret: str | None = None,
) -> dict[str, str]:
    msg_id = webhook_id or uuid.uuid4().hex
    moment = datetime.fromtimestamp(int(time.time() if timestamp is None else timestamp), tz=UTC)
    signature = Webhook(secret or settings.DICOM_RESULTS_WEBHOOK_SECRET).sign(msg_id, moment, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
        "X-Correlation-Id": "c" * 32,
    }
