"""Cloud Storage side of the review component: read what a decision is about (the result record,
the AI SR and SEG, the source) and write its outputs beside the upload (docs/contracts.md,
"Outputs beside the upload" under "Review of a result"):

- the DICOM objects are per decision and create-only: a second write of the same review finds
  them (``present``), an object of another decision or a foreign one under the name is an
  :class:`~gpu_service.results.cloud_storage.OutputConflict`;
- ``STEM.review.json`` is the latest decision: replaced only by a later ``decided_at`` (equal:
  the greater review id), under a generation precondition (:mod:`pipeline_common.conditional_write`).

Storage errors propagate: the push is answered 503 and redelivered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gpu_service.results.cloud_storage import GcsStore, Location, OutputConflict, StoredOutput
from pipeline_common import naming
from pipeline_common.conditional_write import write_unless_kept
from pipeline_common.write_outcome import WriteOutcome, WriteResult

DICOM_TYPE = "application/dicom"
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class ReviewTarget:
    """The upload the decision is about, and who wrote its result (for the markers)."""

    bucket: str
    name: str
    generation: str
    correlation_id: str
    model_sha256: str
    review_id: str
    decided_at: str  # RFC 3339 UTC, the ordering of STEM.review.json


class ReviewOutputs:
    def __init__(self, cloud_storage: GcsStore) -> None:
        self.cloud_storage = cloud_storage

    def location(self, target: ReviewTarget, suffix: str) -> Location:
        return self.cloud_storage.location(target.bucket, target.name, suffix)

    def read_record(self, target: ReviewTarget) -> dict[str, Any] | None:
        """STEM.result.json as stored, None when there is none or it is not a JSON object."""
        stored = self.cloud_storage.read_output(self.location(target, naming.RESULT_SUFFIX))
        if stored is None or stored.metadata.get(naming.MARKER_KEY) != "result":
            return None
        try:
            record = json.loads(stored.data)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def read_object(self, uri: str) -> StoredOutput | None:
        """An output the pipeline wrote (the AI SR or SEG), by its gs:// URI."""
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        stored = self.cloud_storage.read_output(Location(bucket, name))
        if stored is None or naming.MARKER_KEY not in stored.metadata:
            return None
        return stored

    def fetch_source(self, target: ReviewTarget, max_bytes: int) -> bytes:
        return self.cloud_storage.fetch_source(target.bucket, target.name, target.generation, max_bytes)

    def _metadata(self, target: ReviewTarget, role: str) -> dict[str, str]:
        return {
            naming.MARKER_KEY: role,
            naming.SOURCE_KEY: naming.source_marker(target.bucket, target.name, target.generation),
            naming.CORRELATION_KEY: target.correlation_id,
            naming.MODEL_KEY: target.model_sha256,
            naming.REVIEW_ID_KEY: target.review_id,
            naming.REVIEW_DECIDED_KEY: target.decided_at,
        }

    def write_object(self, target: ReviewTarget, suffix: str, role: str, data: bytes) -> Location:
        """Create-only: the same decision's object already there is kept (a redelivery)."""
        location = self.location(target, naming.review_suffix(target.review_id, suffix))

        def decide(found: dict[str, str]) -> WriteOutcome:
            if found.get(naming.MARKER_KEY) == role and found.get(naming.REVIEW_ID_KEY) == target.review_id:
                return WriteOutcome.PRESENT
            raise OutputConflict(f"{location.uri} exists and holds another object")

        self._write(location, data, DICOM_TYPE, self._metadata(target, role), decide)
        return location

    def write_latest(self, target: ReviewTarget, record: dict[str, Any]) -> tuple[Location, WriteOutcome]:
        """STEM.review.json, unless a later decision is there already."""
        location = self.location(target, naming.REVIEW_SUFFIX)
        ours = (target.decided_at, target.review_id)

        def decide(found: dict[str, str]) -> WriteOutcome | None:
            if found.get(naming.MARKER_KEY) != "review":
                raise OutputConflict(f"{location.uri} exists and was not written by the review component")
            theirs = (found.get(naming.REVIEW_DECIDED_KEY, ""), found.get(naming.REVIEW_ID_KEY, ""))
            if theirs == ours:
                return WriteOutcome.PRESENT
            return WriteOutcome.SUPERSEDED if theirs > ours else None

        data = json.dumps(record, ensure_ascii=False, sort_keys=True).encode()
        written = self._write(location, data, JSON_TYPE, self._metadata(target, "review"), decide)
        return location, written.outcome

    def _write(
        self, location: Location, data: bytes, ctype: str, metadata: dict[str, str], decide
    ) -> WriteResult:
        return write_unless_kept(
            self.cloud_storage.client().bucket(location.bucket),
            location.name,
            data,
            content_type=ctype,
            metadata=metadata,
            decide=decide,
        )
