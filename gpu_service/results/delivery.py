"""Result delivery: store the record (the commit marker), send it to the webhook, mark it delivered."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

from gpu_service.outcome import ProcessResult, RequestOutcome
from gpu_service.request import InferenceRequest
from gpu_service.results import record as result
from gpu_service.results.cloud_storage import OutputConflict
from gpu_service.results.outputs import RequestOutputs, StoredRecord
from gpu_service.results.webhook import WebhookClient
from gpu_service.results.webhook_signature import idempotency_key
from gpu_service.timing import StageTimer
from pipeline_common import naming
from pipeline_common.jsonlog import log
from pipeline_common.timefmt import rfc3339
from pipeline_common.write_outcome import WriteOutcome

logger = logging.getLogger(__name__)


class ResultDelivery:
    def __init__(self, outputs: RequestOutputs, webhook: WebhookClient) -> None:
        self.outputs = outputs
        self.webhook = webhook

    def commit(
        self, request: InferenceRequest, record: dict[str, Any], outcome: RequestOutcome, timer: StageTimer
    ) -> ProcessResult:
        """Store the record (the commit marker), then deliver it."""
        body = result.encode(record)
        try:
            with timer.stage("write_record"):
                written = self.outputs.write(
                    request, naming.RESULT_SUFFIX, "result", body, "application/json"
                )
        except OutputConflict as exc:
            # A foreign object holds the record's name: never overwrite it, never ack without a
            # stored record. Redeliveries fail the same way until the dead-letter topic keeps it.
            log(logger, logging.ERROR, "cannot store the result record; not acknowledging",
                error_code=OutputConflict.code, reason=str(exc),
                record_status=record.get("status"))  # fmt: skip
            return ProcessResult(
                RequestOutcome.RETRY, record=record, error_code=OutputConflict.code, timings_ms=timer.ms
            )
        if written.outcome is WriteOutcome.SUPERSEDED:
            return ProcessResult(RequestOutcome.SUPERSEDED, record=record, timings_ms=timer.ms)
        if written.outcome is WriteOutcome.PRESENT:  # a concurrent twin stored it first
            existing = self.outputs.stored_record(request)
            if existing is not None:
                return self.redeliver(request, existing, outcome, timer)
        return self._deliver(request, body, record, outcome, timer, written.generation)

    def redeliver(
        self, request: InferenceRequest, stored: StoredRecord, outcome: RequestOutcome, timer: StageTimer
    ) -> ProcessResult:
        """A stored record: acknowledge it if Django already has it, else send it as stored."""
        record = stored.record
        if stored.delivered_at:
            log(logger, logging.INFO, "duplicate: webhook already delivered", outcome=outcome.value,
                result_status=record.get("status"), delivered_at=stored.delivered_at)  # fmt: skip
            error = (record.get("error") or {}).get("code")
            return ProcessResult(outcome, record=record, error_code=error, timings_ms=timer.ms)
        log(logger, logging.INFO, "result already stored; re-sending the webhook only",
            status=record.get("status"))  # fmt: skip
        return self._deliver(request, stored.body, record, outcome, timer, stored.generation)

    def _mark_delivered(self, request: InferenceRequest, record_generation: int) -> None:
        """Not fatal: without the marker a redelivery sends one more (idempotent) webhook."""
        try:
            self.outputs.cloud_storage.mark_delivered(
                self.outputs.location(request, naming.RESULT_SUFFIX), record_generation, rfc3339()
            )
        except Exception as exc:  # noqa: BLE001 - storage error, record replaced or deleted
            log(logger, logging.WARNING, "cannot mark the result record as delivered",
                reason=f"{type(exc).__name__}: {exc}", record_generation=str(record_generation))  # fmt: skip

    def _deliver(
        self,
        request: InferenceRequest,
        body: bytes,
        record: dict[str, Any],
        outcome: RequestOutcome,
        timer: StageTimer,
        record_generation: int | None,
    ) -> ProcessResult:
        key = idempotency_key(request.bucket, request.name, request.generation, self.outputs.model_sha)
        with timer.stage("webhook"):  # the span the webhook's traceparent names
            delivery = self.webhook.deliver(body, idempotency_key=key, correlation_id=request.correlation_id)
        timer.ms["webhook"] = round(delivery.elapsed_ms, 1)
        error = (record.get("error") or {}).get("code")
        if not delivery.accepted:
            log(logger, logging.ERROR, "webhook not accepted; the message will be redelivered",
                status=delivery.status, attempts=delivery.attempts, error=delivery.error,
                timings_ms=timer.ms)  # fmt: skip
            return ProcessResult(
                RequestOutcome.RETRY, record=record, error_code="webhook_failed", timings_ms=timer.ms
            )
        if record_generation is not None:
            self._mark_delivered(request, record_generation)
        log(logger, logging.INFO, f"request {outcome.value}", outcome=outcome.value,
            result_status=record.get("status"), error_code=error,
            sop_instance_uid_hash=naming.hash_uid(record.get("sop_instance_uid")),
            webhook_status=delivery.status, webhook_attempts=delivery.attempts,
            timings_ms=timer.ms, **delivered_fields(record, request.event_time))  # fmt: skip
        return ProcessResult(outcome, record=record, error_code=error, timings_ms=timer.ms)


def delivered_fields(
    record: dict[str, Any], event_time: str | None, now: datetime | None = None
) -> dict[str, float]:
    """The numbers of the final delivery line that log-based metrics read (infra/terraform/monitoring.tf):
    ``upload_to_webhook_ms`` from the upload's storage event time to now, and the explanation's
    ``explanation_samples`` and ``explanation_stability``. A value that is unknown (no event time,
    as in the backfill job; a failed record, with no explanation) or not a number is left out."""
    fields: dict[str, float] = {}
    uploaded = _parse_time(event_time)
    if uploaded is not None:
        elapsed_ms = ((now or datetime.now(UTC)) - uploaded).total_seconds() * 1000
        if elapsed_ms >= 0:  # a clock ahead of ours gives no latency, not a negative one
            fields["upload_to_webhook_ms"] = round(elapsed_ms, 1)
    explanation = record.get("explanation") or {}
    for field, key in (("explanation_samples", "samples_used"), ("explanation_stability", "stability")):
        value = explanation.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            fields[field] = value
    return fields


def _parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 time (naive ones taken as UTC), or None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
