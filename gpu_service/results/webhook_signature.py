"""Standard Webhooks signing of result deliveries (docs/contracts.md, "Webhook").

A thin use of the ``standardwebhooks`` library, the same one the Django app
(``django-dicom-results``) verifies with: one signature implementation on both sides.
What is ours: the ``webhook-id`` (the idempotency key) and a strict check of the
``whsec_`` secret, because the library decodes any string as base64 without complaint,
so a mistyped secret would silently sign with another key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from datetime import UTC, datetime

from standardwebhooks import Webhook

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
CORRELATION_HEADER = "X-Correlation-Id"
SECRET_PREFIX = "whsec_"


def check_secret(secret: str) -> None:
    """Raise ValueError unless ``secret`` is ``whsec_`` followed by a non-empty base64 key."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("WEBHOOK_SECRET must be a Standard Webhooks secret: whsec_<base64 key>")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("WEBHOOK_SECRET: the part after whsec_ is not valid base64") from None
    if not key:
        raise ValueError("WEBHOOK_SECRET: the key after whsec_ is empty")


def new_secret(nbytes: int = 32) -> str:
    """A random ``whsec_`` secret (the local stack makes one per start)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def idempotency_key(bucket: str, name: str, generation: str | int, model_sha256: str) -> str:
    """The ``webhook-id``: stable for one object generation and one model, so every retry and
    redelivery shares it and the receiver stores the result once."""
    return hashlib.sha256(f"{bucket}/{name}#{generation}|{model_sha256}".encode()).hexdigest()


def signed_headers(
    secret: str,
    body: bytes,
    *,
    webhook_id: str,
    correlation_id: str,
    now: float | None = None,
) -> dict[str, str]:
    """All headers of one delivery attempt (signed anew per attempt, so retries stay in the window)."""
    moment = datetime.fromtimestamp(int(time.time() if now is None else now), tz=UTC)
    signature = Webhook(secret).sign(webhook_id, moment, body.decode("utf-8"))
    return {
        "Content-Type": "application/json",
        ID_HEADER: webhook_id,
        TIMESTAMP_HEADER: str(int(moment.timestamp())),
        SIGNATURE_HEADER: signature,
        CORRELATION_HEADER: correlation_id,
    }
