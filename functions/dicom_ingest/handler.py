"""One storage event in, one inference request or one rejection record out.

Failure policy: whatever is the file's fault (not DICOM, truncated, no pixels, ...)
is recorded and logged, and the event succeeds, so Eventarc does not redeliver it.
Whatever is not (storage or Pub/Sub errors, a bad deployment) raises, so Eventarc
retries the event; every step is safe to repeat (see ``message`` for deduplication).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from cloudevents.abstract import AnyCloudEvent
from google.cloud import pubsub_v1, storage
from opentelemetry import trace

from dicom_ingest import header as hdr
from dicom_ingest import ingest_policy, message, publisher, records
from dicom_ingest.reader import ObjectGone, RangedReader
from dicom_ingest.settings import Settings
from pipeline_common import jsonlog, naming, tracing

logger = logging.getLogger("dicom_ingest")

FINALIZED = "google.cloud.storage.object.v1.finalized"


@dataclass(frozen=True)
class EventOutcome:
    """What happened to one event (returned for tests and benchmarks; the log says the same)."""

    status: str  # accepted | rejected | ignored | gone | invalid_event
    reason: str | None = None
    message_id: str | None = None
    record_name: str | None = None
    record_write: str | None = None  # records.CREATED, REPLACED, PRESENT, SUPERSEDED or TAKEN
    bytes_read: int = 0
    fetches: int = 0
    object_size: int | None = None


def _event_data(event: AnyCloudEvent) -> dict[str, Any]:
    data = event.get_data()
    if isinstance(data, bytes | str):
        data = json.loads(data or "{}")
    return data if isinstance(data, dict) else {}


class InvalidEvent(ValueError):
    """An event that no retry can make work (a mis-wired trigger or a malformed payload)."""


def _decimal(value: Any, field: str, *, minimum: int) -> int:
    """GCS sends ``generation`` and ``size`` as decimal strings; anything else is malformed."""
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise InvalidEvent(f"{field} is not an integer >= {minimum}")
    return int(text)


def _upload(event: AnyCloudEvent, data: dict[str, Any]) -> message.Upload:
    """The upload the event names, pinned to its generation (never the live object)."""
    bucket, name = data.get("bucket"), data.get("name")
    if not bucket or not name:
        raise InvalidEvent("event without bucket/name")
    generation = data.get("generation")
    if generation in (None, ""):
        raise InvalidEvent("event without generation")
    size = data.get("size")
    return message.Upload(
        bucket=str(bucket),
        name=str(name),
        generation=str(_decimal(generation, "generation", minimum=1)),
        # Absent: read from the object's metadata at this generation (see handle).
        size=-1 if size in (None, "") else _decimal(size, "size", minimum=0),
        content_type=data.get("contentType"),
        event_id=str(event["id"]),
        event_time=event.get("time"),
    )


def handle(
    event: AnyCloudEvent,
    settings: Settings,
    storage_client: storage.Client,
    publisher_client: pubsub_v1.PublisherClient,
) -> EventOutcome:
    """One event in one span: it continues the event's ``traceparent`` extension, else starts the
    upload's trace, whose id is the correlation id (docs/contracts.md, "Tracing")."""
    incoming = tracing.incoming_context([("cloudevent", _str_or_none(event.get("traceparent")))])
    with tracing.root_span(
        "ingest_dicom", incoming, trace.SpanKind.SERVER, correlation_id=_correlation_id(event)
    ) as span:
        outcome = _handle(event, settings, storage_client, publisher_client)
        span.set_attribute("outcome", outcome.status)
        if outcome.reason:
            span.set_attribute("reason", outcome.reason)
        return outcome


def _correlation_id(event: AnyCloudEvent) -> str | None:
    """The upload's correlation id when the event names one (a malformed event has none)."""
    try:
        upload = _upload(event, _event_data(event))
    except (InvalidEvent, ValueError, KeyError, TypeError):
        return None
    return upload.correlation_id


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _handle(
    event: AnyCloudEvent,
    settings: Settings,
    storage_client: storage.Client,
    publisher_client: pubsub_v1.PublisherClient,
) -> EventOutcome:
    started = time.perf_counter()
    if event["type"] != FINALIZED:
        jsonlog.log(logger, logging.INFO, "event ignored: not an object finalize", event_type=event["type"])
        return EventOutcome("ignored", reason="event_type")
    data = _event_data(event)
    try:
        upload = _upload(event, data)
    except InvalidEvent as exc:
        # A mis-wired trigger or a malformed payload, not a file: no retry can help,
        # so say it loudly and ack. Reading the live object instead of the generation
        # the event names could publish the wrong upload.
        jsonlog.log(
            logger,
            logging.ERROR,
            f"invalid storage event: {exc}",
            event_id=event["id"],
            bucket=str(data.get("bucket") or ""),
            object=str(data.get("name") or ""),
            reason="invalid_event",
        )
        return EventOutcome("invalid_event", reason="invalid_event")

    with jsonlog.bind_upload(upload, event_id=upload.event_id):
        if naming.is_pipeline_output(
            upload.name, data.get("metadata") or {}, settings.output_suffixes, settings.marker_key
        ):
            jsonlog.log(logger, logging.INFO, "object ignored: written by the pipeline")
            return EventOutcome("ignored", reason="pipeline_output")

        reader = RangedReader(
            storage_client,
            upload.bucket,
            upload.name,
            upload.generation,
            timeout_s=settings.storage_timeout_s,
            retry_deadline_s=settings.storage_retry_deadline_s,
        )
        try:
            with tracing.span("read_header"):
                if upload.size < 0:
                    upload = dataclasses.replace(upload, size=reader.size())
                read = hdr.read_header(
                    reader.fetch,
                    upload.size,
                    initial_bytes=settings.header_initial_bytes,
                    max_bytes=settings.header_max_bytes,
                )
        except ObjectGone:
            # Deleted or overwritten before we looked: the newer generation has its own event.
            jsonlog.log(
                logger, logging.WARNING, "object generation gone before it was read", reason="object_gone"
            )
            return EventOutcome("gone", reason="object_gone", bytes_read=reader.bytes_read)

        cost = {
            "bytes_read": reader.bytes_read,
            "object_size": upload.size,
            "read_ratio": round(reader.bytes_read / upload.size, 6) if upload.size > 0 else None,
            "range_requests": reader.requests,
        }
        result = read.result
        rejection = result if isinstance(result, hdr.Rejection) else None
        if isinstance(result, hdr.DicomHeader):
            rejection = ingest_policy.check(result, settings.allowed_modalities, settings.max_pixels)
        if rejection is not None:
            return _reject(upload, rejection, settings, storage_client, cost, started)

        assert isinstance(result, hdr.DicomHeader)
        body, attributes = message.inference_request(upload, result)
        with tracing.span("publish", kind=trace.SpanKind.PRODUCER) as publish_span:
            tracing.inject_attributes(attributes)  # the service's spans continue this one
            message_id = publisher.publish(
                publisher_client, settings.topic_path, body, attributes, settings.publish_timeout_s
            )
            publish_span.set_attribute("messaging.message.id", message_id)
        # The folder must not go on saying that this object was rejected.
        records.remove_stale_rejection(
            storage_client,
            upload,
            marker_key=settings.marker_key,
            timeout_s=settings.storage_timeout_s,
            retry_deadline_s=settings.storage_retry_deadline_s,
        )
        jsonlog.log(
            logger,
            logging.INFO,
            "inference request published",
            outcome="accepted",
            message_id=message_id,
            modality=result.dicom.get("modality"),
            sop_instance_uid_hash=naming.hash_uid(result.dicom.get("sop_instance_uid")),
            transfer_syntax_uid=result.dicom.get("transfer_syntax_uid"),
            pixel_data_offset=result.pixel_data_offset,
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            **cost,
        )
        return EventOutcome(
            "accepted",
            message_id=message_id,
            bytes_read=reader.bytes_read,
            fetches=reader.requests,
            object_size=upload.size,
        )


def _reject(
    upload: message.Upload,
    rejection: hdr.Rejection,
    settings: Settings,
    storage_client: storage.Client,
    cost: dict[str, Any],
    started: float,
) -> EventOutcome:
    record = records.rejection_record(upload, rejection)
    written = records.write_rejection(
        storage_client,
        upload,
        record,
        marker_key=settings.marker_key,
        timeout_s=settings.storage_timeout_s,
        retry_deadline_s=settings.storage_retry_deadline_s,
    )
    jsonlog.log(
        logger,
        logging.WARNING,
        f"DICOM upload rejected: {rejection.reason}",
        outcome="rejected",
        reason=rejection.reason,
        detail=rejection.message,  # built from codes and sizes only, never from patient data
        rejection_record=naming.gs_uri(upload.bucket, written.name),
        record_write=written.outcome,
        latency_ms=round((time.perf_counter() - started) * 1000, 1),
        **cost,
    )
    return EventOutcome(
        "rejected",
        reason=rejection.reason,
        record_name=written.name,
        record_write=written.outcome,
        bytes_read=cost["bytes_read"],
        fetches=cost["range_requests"],
        object_size=upload.size,
    )
