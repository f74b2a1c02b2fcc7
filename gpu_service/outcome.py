"""What Pub/Sub is answered for each request outcome, and which failures are worth a retry.

The policy itself (2xx only once a result is safe, 5xx for what another attempt can fix,
400 for what never can) is written down in docs/contracts.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RequestOutcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"  # permanent failure, recorded and delivered
    DUPLICATE = "duplicate"  # result already stored for this generation and model; delivered or re-sent
    SUPERSEDED = "superseded"  # a newer generation's result is stored; nothing to do
    HANDED_OFF = "handed_off"  # durable in the bucket; a dicom-delivery/1 message will deliver it
    RETRY = "retry"  # transient: let Pub/Sub redeliver
    INVALID = "invalid"  # can never be processed: dead-letter it
    NOT_READY = "not_ready"  # model still loading


_STATUS = {
    RequestOutcome.COMPLETED: 200,
    RequestOutcome.FAILED: 200,
    RequestOutcome.DUPLICATE: 200,
    RequestOutcome.SUPERSEDED: 200,
    RequestOutcome.HANDED_OFF: 200,
    RequestOutcome.RETRY: 503,
    RequestOutcome.INVALID: 400,
    RequestOutcome.NOT_READY: 503,
}


def ack_status(outcome: RequestOutcome) -> int:
    """The HTTP status Pub/Sub gets for an outcome (2xx acknowledges; anything else redelivers)."""
    return _STATUS[outcome]


def is_acked(outcome: RequestOutcome) -> bool:
    return 200 <= ack_status(outcome) < 300


def is_transient(exc: BaseException) -> bool:
    """Errors another attempt (maybe on another instance) can fix, wherever they are raised:
    out of memory and I/O. Anything else raised by a pure stage is a property of the input."""
    return isinstance(exc, MemoryError | OSError)


def gives_up(delivery_attempt: int | None, give_up_attempt: int) -> bool:
    """True when a transient failure must be recorded as ``retries_exhausted`` and acked."""
    return delivery_attempt is not None and delivery_attempt >= give_up_attempt


# Failures of a downstream after the result is durable: handed off to the delivery subscription.
DOWNSTREAM_UNAVAILABLE = frozenset({"dicomweb_unavailable", "webhook_failed"})


@dataclass
class ProcessResult:
    outcome: RequestOutcome
    record: dict[str, Any] | None = None
    error_code: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return ack_status(self.outcome)
