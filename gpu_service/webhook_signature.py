"""Signing of webhook bodies (docs/contracts.md, "Webhook"), shared by sender and receivers.

``X-Pipeline-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` with
``X-Pipeline-Timestamp: <unix seconds>``. The timestamp is inside the MAC so a captured
request cannot be replayed outside the tolerance window; receivers additionally dedupe
on ``Idempotency-Key``. Several ``v1=`` values (comma separated) are accepted so a
secret can be rotated without downtime. Pure functions, no I/O: the local stack's
receiver and Django import :func:`verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Pipeline-Timestamp"
SIGNATURE_HEADER = "X-Pipeline-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
CORRELATION_HEADER = "X-Correlation-Id"
VERSION = "v1"
DEFAULT_TOLERANCE_S = 300


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def compute_signature(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body``."""
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    return f"{VERSION}={compute_signature(secret, timestamp, body)}"


def idempotency_key(bucket: str, name: str, generation: str | int, model_sha256: str) -> str:
    """Stable for one object generation and one model, so every retry and redelivery shares it."""
    return hashlib.sha256(f"{bucket}/{name}#{generation}|{model_sha256}".encode()).hexdigest()


def signed_headers(
    secret: str | bytes,
    body: bytes,
    *,
    idempotency: str,
    correlation_id: str,
    now: float | None = None,
) -> dict[str, str]:
    """All headers of one delivery attempt (re-signed per attempt, so retries stay in the window)."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature_header(secret, timestamp, body),
        IDEMPOTENCY_HEADER: idempotency,
        CORRELATION_HEADER: correlation_id,
    }


def verify_signature(
    secret: str | bytes,
    timestamp: str | int | None,
    body: bytes,
    signature_header: str | None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when one ``v1=`` signature matches and the timestamp is within ``tolerance_s`` of now.

    Timestamps in the future beyond the tolerance are refused too (clock skew is symmetric).
    """
    if not secret or timestamp is None or not signature_header:
        return False
    ts_text = str(timestamp).strip()
    if not ts_text.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(ts_text)) > tolerance_s:
        return False
    expected = compute_signature(secret, ts_text, body)
    for part in signature_header.split(","):
        version, _, value = part.strip().partition("=")
        if version == VERSION and hmac.compare_digest(value.strip().lower(), expected):
            return True
    return False
