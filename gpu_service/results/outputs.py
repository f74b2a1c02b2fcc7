"""Where one request's outputs live, how they are written, and how its stored record is read back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gpu_service.request import InferenceRequest
from gpu_service.results import record as result
from gpu_service.results.cloud_storage import GcsStore, Location, StoredOutput
from pipeline_common import naming
from pipeline_common.write_outcome import WriteResult


@dataclass(frozen=True)
class StoredRecord:
    """A result record as stored: its bytes are what the webhook gets, byte for byte."""

    body: bytes
    record: dict[str, Any]
    generation: int  # of the record object, for the delivered marker's precondition
    delivered_at: str | None  # the delivered marker, None until Django accepted it


class RequestOutputs:
    """The outputs of requests processed with one model (its sha256 marks every object written)."""

    def __init__(self, cloud_storage: GcsStore, model_sha256: str) -> None:
        self.cloud_storage = cloud_storage
        self.model_sha = model_sha256

    def location(self, request: InferenceRequest, suffix: str) -> Location:
        return self.cloud_storage.location(request.bucket, request.name, suffix)

    def write(
        self, request: InferenceRequest, suffix: str, role: str, data: bytes, ctype: str
    ) -> WriteResult:
        return self.cloud_storage.write_output(
            self.location(request, suffix),
            data,
            content_type=ctype,
            role=role,
            source_bucket=request.bucket,
            source_name=request.name,
            source_generation=request.generation,
            correlation_id=request.correlation_id,
            model_sha256=self.model_sha,
        )

    def read(self, request: InferenceRequest, suffix: str) -> StoredOutput | None:
        return self.cloud_storage.read_output(self.location(request, suffix))

    def stored_record(
        self, request: InferenceRequest, suffix: str = naming.RESULT_SUFFIX
    ) -> StoredRecord | None:
        """The stored result record (or staged one, ``suffix``) for this object, if any
        (whatever generation/model).

        An object under the record's name that the pipeline did not write for this very
        upload is not a record: processing goes on and ``write_output`` refuses to touch it.
        """
        found = self.read(request, suffix)
        if found is None:
            return None
        try:
            record = json.loads(found.data)
        except ValueError:
            return None  # unreadable record: recompute and replace it
        if not isinstance(record, dict) or not result.is_record_of(record, found.metadata, request.uri):
            return None
        return StoredRecord(found.data, record, found.generation, found.metadata.get(naming.DELIVERED_KEY))
