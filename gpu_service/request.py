"""One inference request: the upload it is about (bucket, name, generation), the correlation id
that follows it everywhere, and the header fields the ingest function sent. Every layer of the
service takes it; it is built by the push parser or, for the backfill job, from a listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline_common import naming


@dataclass(frozen=True)
class InferenceRequest:
    bucket: str
    name: str
    generation: str
    correlation_id: str
    size: int | None = None
    dicom: dict[str, Any] = field(default_factory=dict)  # patient data: never log it
    event_time: str | None = None  # when the upload was finalized (the storage event's time)

    @property
    def uri(self) -> str:
        return naming.gs_uri(self.bucket, self.name)

    @property
    def object_key(self) -> str:
        """``bucket/name#generation``: the upload's identity (DICOM UIDs derive from it)."""
        return naming.object_key(self.bucket, self.name, self.generation)


def request_for_object(bucket: str, name: str, generation: str | int, size: int | None) -> InferenceRequest:
    """A request for an object found by listing (the backfill job): no header from the function."""
    return InferenceRequest(
        bucket=bucket,
        name=name,
        generation=str(generation),
        correlation_id=naming.correlation_id(bucket, name, generation),
        size=size,
    )
