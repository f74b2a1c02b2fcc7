"""The rejection record `STEM.rejected.json` (`dicom-rejection/1`) beside a rejected upload.

Writes and deletes use generation preconditions, so redelivered and late events never
clobber the record of a newer upload of the same object (docs/contracts.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from dicom_ingest.message import Upload
from dicom_ingest.rejection import Rejection
from pipeline_common import contract, jsonlog, naming
from pipeline_common.conditional_write import write_unless_kept
from pipeline_common.timefmt import rfc3339
from pipeline_common.write_outcome import Relation, WriteOutcome, relation

logger = logging.getLogger("dicom_ingest")

ROLE = "rejection"

# How a write ended (logged as ``record_write``).
CREATED = WriteOutcome.CREATED
REPLACED = WriteOutcome.REPLACED  # a record of an older generation of the upload
PRESENT = WriteOutcome.PRESENT  # this generation's record was already there (a redelivery)
SUPERSEDED = WriteOutcome.SUPERSEDED  # a newer generation's record is there and stays
TAKEN = WriteOutcome.TAKEN  # the name holds another object's record or a foreign object


@dataclass(frozen=True)
class RecordWrite:
    name: str
    outcome: WriteOutcome


def rejection_record(upload: Upload, rejection: Rejection, now: datetime | None = None) -> dict[str, Any]:
    """The record's JSON (pure). ``details`` hold sizes and codes, never patient data."""
    return {
        "schema": contract.REJECTION,
        "status": "rejected",
        "reason": rejection.reason,
        "message": rejection.message,
        "details": rejection.details,
        "source": upload.source(),
        "correlation_id": upload.correlation_id,
        "event_id": upload.event_id,
        "rejected_at": rfc3339(now),
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
    ours_uri, ours_gen = naming.gs_uri(upload.bucket, upload.name), int(upload.generation)

    def decide(found: dict[str, str]) -> WriteOutcome | None:
        kind = relation(found, ours_uri, ours_gen, marker_key)
        if kind is Relation.OLDER:
            return None
        if kind is Relation.SAME:
            return PRESENT
        return SUPERSEDED if kind is Relation.NEWER else TAKEN

    written = write_unless_kept(
        client.bucket(upload.bucket),
        name,
        json.dumps(record, ensure_ascii=False, indent=2).encode("utf-8"),
        content_type="application/json",
        metadata={
            marker_key: ROLE,
            naming.SOURCE_KEY: naming.source_marker(upload.bucket, upload.name, upload.generation),
            naming.CORRELATION_KEY: upload.correlation_id,
        },
        decide=decide,
        timeout=timeout_s,
        retry=DEFAULT_RETRY.with_deadline(retry_deadline_s),
    )
    their_uri, their_gen = naming.parse_source_marker(written.existing_source)
    if written.outcome is TAKEN:
        jsonlog.log(
            logger,
            logging.WARNING,
            "rejection record not written: its name is taken by another object",
            record_object=name,
            record_source=their_uri or None,
        )
    elif written.outcome is SUPERSEDED:
        jsonlog.log(
            logger,
            logging.INFO,
            "rejection record kept: it is for a newer generation of the upload",
            record_object=name,
            record_source_generation=str(their_gen),
        )
    return RecordWrite(name, written.outcome)


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
        kind = relation(
            blob.metadata or {}, naming.gs_uri(upload.bucket, upload.name), int(upload.generation), marker_key
        )
        if kind is not Relation.OLDER:
            return False
        their_gen = naming.parse_source_marker((blob.metadata or {}).get(naming.SOURCE_KEY))[1]
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
