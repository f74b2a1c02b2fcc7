"""The rejection record `STEM.rejected.json` (`dicom-rejection/1`) beside a rejected upload."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from dicom_ingest.header import Rejection
from dicom_ingest.message import Upload
from pipeline_common import naming

SCHEMA = "dicom-rejection/1"
ROLE = "rejection"


def rejection_record(upload: Upload, rejection: Rejection, now: datetime | None = None) -> dict[str, Any]:
    """The record's JSON (pure). ``details`` hold sizes and codes, never patient data."""
    return {
        "schema": SCHEMA,
        "status": "rejected",
        "reason": rejection.reason,
        "message": rejection.message,
        "details": rejection.details,
        "source": upload.source(),
        "correlation_id": upload.correlation_id,
        "event_id": upload.event_id,
        "rejected_at": (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
    }


def record_name(object_name: str) -> str:
    return naming.output_name(object_name, naming.REJECTION_SUFFIX)


def write_rejection(
    client: storage.Client,
    upload: Upload,
    record: dict[str, Any],
    *,
    marker_key: str = naming.MARKER_KEY,
    timeout_s: float = 20.0,
    retry_deadline_s: float = 60.0,
) -> str:
    """Write the record next to the upload and return its name; storage errors raise.

    It carries the pipeline's marker, so its own finalize event is ignored without a
    read. Rewriting it on a redelivered event is harmless (same content but the time),
    so the upload is retried even without a generation precondition.
    """
    name = record_name(upload.name)
    blob = client.bucket(upload.bucket).blob(name)
    blob.metadata = {
        marker_key: ROLE,
        "dicom-pipeline-source": f"{naming.gs_uri(upload.bucket, upload.name)}#{upload.generation}",
        "dicom-pipeline-correlation-id": upload.correlation_id,
    }
    blob.upload_from_string(
        json.dumps(record, ensure_ascii=False, indent=2).encode("utf-8"),
        content_type="application/json",
        timeout=timeout_s,
        retry=DEFAULT_RETRY.with_deadline(retry_deadline_s),
    )
    return name
