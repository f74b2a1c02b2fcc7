"""The inference request `dicom-inference-request/1` (docs/contracts.md), built from pure data.

Redelivered events build the same body except for ``event_id``/``event_time``; consumers
deduplicate on the ``dedup_key`` attribute (``bucket/name#generation``), never on the
Pub/Sub message id, because every publish gets a new one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dicom_ingest.header_fields import DICOM_FIELDS
from dicom_ingest.header_parse import DicomHeader
from pipeline_common import contract, naming


@dataclass(frozen=True)
class Upload:
    """One upload as the storage event describes it."""

    bucket: str
    name: str
    generation: str
    size: int
    content_type: str | None
    event_id: str
    event_time: str | None

    @property
    def dedup_key(self) -> str:
        return naming.object_key(self.bucket, self.name, self.generation)

    @property
    def correlation_id(self) -> str:
        return naming.correlation_id(self.bucket, self.name, self.generation)

    def source(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "name": self.name,
            "generation": self.generation,
            "size": self.size,
            "content_type": self.content_type,
            "uri": naming.gs_uri(self.bucket, self.name),
        }


def message_fields(header: DicomHeader) -> dict[str, Any]:
    """The ``dicom`` section exactly as docs/contracts.md lists it."""
    return {k: header.dicom.get(k) for k in DICOM_FIELDS}


def inference_request(upload: Upload, header: DicomHeader) -> tuple[bytes, dict[str, str]]:
    """Message body (UTF-8 JSON) and attributes for one accepted image."""
    dicom = message_fields(header)
    body = {
        "schema": contract.INFERENCE_REQUEST,
        "correlation_id": upload.correlation_id,
        "event_id": upload.event_id,
        "event_time": upload.event_time,
        "source": upload.source(),
        "dicom": dicom,
    }
    attributes = {
        "schema": contract.INFERENCE_REQUEST,
        "correlation_id": upload.correlation_id,
        "modality": dicom.get("modality") or "",
        "sop_instance_uid": dicom.get("sop_instance_uid") or "",
        "bucket": upload.bucket,
        "object": upload.name,
        "generation": upload.generation,
        "dedup_key": upload.dedup_key,
    }
    # Absent values are left out (filters then see no attribute); Pub/Sub limits values
    # to 1024 bytes and object names may be longer.
    attributes = {k: v.encode()[:1024].decode(errors="ignore") for k, v in attributes.items() if v}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), attributes
