"""Delivery of result records to the Django webhook: signed (Standard Webhooks), idempotent
(``webhook-id``), retried with backoff.

Only failures that another attempt can fix are retried: connection errors, timeouts,
5xx, 408 and 429 (honouring a short ``Retry-After``). Any other answer (400, 401, 404...)
and any other request error (a malformed ``WEBHOOK_URL``: ``MissingSchema``,
``InvalidURL``...) is final for this delivery. Redirects are never followed: requests
would turn the POST into a GET, so a redirect to a login page would count as delivered;
a 3xx is a final failure (fix ``WEBHOOK_URL``). In every such case the caller answers
Pub/Sub with 5xx anyway, since the result was not accepted, and the redelivery re-sends
the stored record without recomputing it. The backoff is "full jitter" so many instances retrying against a
recovering server do not hammer it in lockstep.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from gpu_service.results import webhook_signature
from pipeline_common import tracing
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class Delivery:
    accepted: bool
    status: int | None  # last HTTP status, None when no answer came
    attempts: int
    error: str | None = None
    elapsed_ms: float = 0.0


class WebhookClient:
    def __init__(
        self,
        url: str | None,
        secret: str,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter delay before retry number ``attempt`` (1-based)."""
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return self._rng.uniform(0, cap)

    def deliver(self, body: bytes, *, idempotency_key: str, correlation_id: str) -> Delivery:
        if not self.url:
            return Delivery(accepted=True, status=None, attempts=0, error="webhook disabled")
        start = time.monotonic()
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            headers = webhook_signature.signed_headers(
                self.secret, body, webhook_id=idempotency_key, correlation_id=correlation_id
            )
            tracing.inject_headers(headers)  # not signed: tracing only, like X-Correlation-Id
            retry_after: float | None = None
            try:
                response = self._session().post(
                    self.url, data=body, headers=headers, timeout=self.timeout_s, allow_redirects=False
                )
                status, error = response.status_code, None
                if 200 <= status < 300:
                    return Delivery(True, status, attempt, None, (time.monotonic() - start) * 1000)
                error = f"HTTP {status}"
                if 300 <= status < 400:
                    error = f"HTTP {status}: redirects are not followed (check WEBHOOK_URL)"
                if status not in RETRYABLE_STATUS:
                    break
                retry_after = _retry_after(response.headers.get("Retry-After"))
            except (requests.ConnectionError, requests.Timeout) as exc:  # refused/reset, timeouts
                status, error = None, type(exc).__name__
            except requests.RequestException as exc:  # malformed URL and the like: final
                status, error = None, type(exc).__name__
                break
            if attempt < self.max_attempts:
                delay = self.backoff_s(attempt)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
                log(logger, logging.WARNING, "webhook attempt failed; retrying",
                    attempt=attempt, status=status, error=error, retry_in_s=round(delay, 3))  # fmt: skip
                self._sleep(delay)
        return Delivery(False, status, attempt, error, (time.monotonic() - start) * 1000)


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None
