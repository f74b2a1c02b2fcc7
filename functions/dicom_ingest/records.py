"""The rejection record `STEM.rejected.json` (`dicom-rejection/1`) beside a rejected upload.

Writes and deletes use generation preconditions, so redelivered and late events never
clobber the record of a newer upload of the same object (docs/contracts.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from dicom_ingest.header import Rejection
from dicom_ingest.message import Upload
from pipeline_common import jsonlog, naming

logger = logging.getLogger("dicom_ingest")

SCHEMA = "dicom-rejection/1"
ROLE = "rejection"
SOURCE_KEY = "dicom-pipeline-source"
CORRELATION_KEY = "dicom-pipeline-correlation-id"
MAX_WRITE_RACES = 3

# How a write ended (logged as ``record_write``).
CREATED = "created"
REPLACED = "replaced"  # a record of an older generation of the upload
PRESENT = "present"  # this generation's record was already there (a redelivery)
SUPERSEDED = "superseded"  # a newer generation's record is there and stays
TAKEN = "taken"  # the name holds another object's record or a foreign object


class StorageRace(Exception):
    """Other writers kept changing the record; the event is retried."""


@dataclass(frozen=True)
class RecordWrite:
    name: str
    outcome: str


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


def _source_of(blob: storage.Blob) -> tuple[str | None, int | None]:
    """The upload (``gs://b/n``) and generation a pipeline object was written for."""
    uri, _, generation = (blob.metadata or {}).get(SOURCE_KEY, "").rpartition("#")
    try:
        return uri or None, int(generation)
    except ValueError:
        return uri or None, None


def write_rejection(
    client: storage.Client,
    upload: Upload,
    record: dict[str, Any],
    *,
    marker_key: str = naming.MARKER_KEY,
    timeout_s: float = 20.0,
    retry_deadline_s: float = 60.0,
) -> RecordWrite:
    """Write the record next to the upload, never over a newer upload's; storage errors raise.

    Every write has a generation precondition: create only if absent; when a record is
    there, its source decides: the same generation is this event's own (a redelivery)
    and stays; an older one is replaced under a precondition on the generation just
    looked at, so a concurrent writer is never lost; a newer one (a late event for an
    overwritten upload) is left alone. A record of another upload (``x.dcm`` and
    ``x.DCM`` share a stem) or an object without the pipeline's marker is never
    overwritten: the rejection is still in the log. The record carries the marker, so
    its own finalize event is ignored without a read.
    """
    name = record_name(upload.name)
    handle = client.bucket(upload.bucket)
    ours_uri, ours_gen = naming.gs_uri(upload.bucket, upload.name), int(upload.generation)
    retry = DEFAULT_RETRY.with_deadline(retry_deadline_s)
    body = json.dumps(record, ensure_ascii=False, indent=2).encode("utf-8")
    expected, outcome = 0, CREATED
    for _ in range(MAX_WRITE_RACES):
        blob = handle.blob(name)
        blob.metadata = {
            marker_key: ROLE,
            SOURCE_KEY: f"{ours_uri}#{upload.generation}",
            CORRELATION_KEY: upload.correlation_id,
        }
        try:
            blob.upload_from_string(
                body,
                content_type="application/json",
                if_generation_match=expected,
                timeout=timeout_s,
                retry=retry,
            )
            return RecordWrite(name, outcome)
        except gexc.PreconditionFailed:
            pass
        existing = handle.get_blob(name, timeout=timeout_s, retry=retry)
        if existing is None:  # deleted since: create it again
            expected, outcome = 0, CREATED
            continue
        their_uri, their_gen = _source_of(existing)
        if marker_key not in (existing.metadata or {}) or their_uri != ours_uri or their_gen is None:
            jsonlog.log(
                logger,
                logging.WARNING,
                "rejection record not written: its name is taken by another object",
                record_object=name,
                record_source=their_uri,
            )
            return RecordWrite(name, TAKEN)
        if their_gen == ours_gen:
            return RecordWrite(name, PRESENT)
        if their_gen > ours_gen:
            jsonlog.log(
                logger,
                logging.INFO,
                "rejection record kept: it is for a newer generation of the upload",
                record_object=name,
                record_source_generation=str(their_gen),
            )
            return RecordWrite(name, SUPERSEDED)
        expected, outcome = int(existing.generation), REPLACED
    raise StorageRace(f"lost the write race for {naming.gs_uri(upload.bucket, name)} {MAX_WRITE_RACES} times")


def remove_stale_rejection(
    client: storage.Client,
    upload: Upload,
    *,
    marker_key: str = naming.MARKER_KEY,
    timeout_s: float = 20.0,
    retry_deadline_s: float = 60.0,
) -> bool:
    """Delete a rejection record left by an older generation of an upload now accepted.

    Otherwise the folder would still say the upload was rejected. Only the pipeline's
    record of this very object with an older source generation goes, and only the
    generation looked at (a record written meanwhile stays). Best effort: the
    acceptance already stands, so failures are logged, never raised. True if deleted.
    """
    name = record_name(upload.name)
    retry = DEFAULT_RETRY.with_deadline(retry_deadline_s)
    try:
        blob = client.bucket(upload.bucket).get_blob(name, timeout=timeout_s, retry=retry)
        if blob is None or marker_key not in (blob.metadata or {}):
            return False
        their_uri, their_gen = _source_of(blob)
        if their_uri != naming.gs_uri(upload.bucket, upload.name) or their_gen is None:
            return False
        if their_gen >= int(upload.generation):
            return False
        blob.delete(if_generation_match=blob.generation, timeout=timeout_s, retry=retry)
    except (gexc.NotFound, gexc.PreconditionFailed):
        return False  # gone or rewritten since we looked: nothing stale to remove
    except Exception as exc:  # best effort, see above
        jsonlog.log(
            logger,
            logging.WARNING,
            "stale rejection record not removed",
            record_object=name,
            error=type(exc).__name__,
        )
        return False
    jsonlog.log(
        logger,
        logging.INFO,
        "stale rejection record of an older generation removed",
        record_object=name,
        record_source_generation=str(their_gen),
    )
    return True
