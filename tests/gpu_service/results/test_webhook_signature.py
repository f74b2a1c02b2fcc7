"""Standard Webhooks signatures and the webhook-id: round trip, refusals, stability per generation
and model."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from gpu_service.results import webhook_signature
from tests.support.service import SECRET

# -- settings ------------------------------------------------------------------------------


def test_signature_roundtrip_and_rejections() -> None:
    """Signed by the service, checked by the library the receivers use (Standard Webhooks)."""
    body = b'{"status":"completed"}'
    headers = webhook_signature.signed_headers(SECRET, body, webhook_id="k", correlation_id="c")
    sig = headers["webhook-signature"]
    assert sig.startswith("v1,") and len(base64.b64decode(sig[3:])) == 32
    assert headers["webhook-id"] == "k" and headers["X-Correlation-Id"] == "c"
    assert "Idempotency-Key" not in headers and not any(h.startswith("X-Pipeline") for h in headers)
    Webhook(SECRET).verify(body, headers)
    other = webhook_signature.new_secret()
    bad = [
        (body, {**headers, "webhook-signature": webhook_signature.signed_headers(other, body, webhook_id="k",
                                                                                 correlation_id="c")["webhook-signature"]}),
        (body + b" ", headers),
        (body, {**headers, "webhook-id": "another-key"}),  # the id is signed: no replay under a new key
        (body, {k: v for k, v in headers.items() if k != "webhook-signature"}),
    ]  # fmt: skip
    for stale in (time.time() - 301, time.time() + 301):  # replay window, both ways
        bad.append((body, webhook_signature.signed_headers(SECRET, body, webhook_id="k", correlation_id="c",
                                                           now=stale)))  # fmt: skip
    for b, h in bad:
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(b, h)
    # Rotation: any one matching v1 value (space separated) is enough.
    Webhook(SECRET).verify(body, {**headers, "webhook-signature": f"v1,{'A' * 44} {sig}"})


def test_secret_must_be_whsec_base64() -> None:
    webhook_signature.check_secret(SECRET)
    webhook_signature.check_secret(webhook_signature.new_secret())
    for wrong in ("hunter2", "whsec_", "whsec_not base64!"):
        with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
            webhook_signature.check_secret(wrong)


def test_idempotency_key_is_stable_per_generation_and_model() -> None:
    key = webhook_signature.idempotency_key("b", "n.dcm", "1", "sha")
    assert key == webhook_signature.idempotency_key("b", "n.dcm", 1, "sha")
    assert key != webhook_signature.idempotency_key("b", "n.dcm", "2", "sha")
    assert key != webhook_signature.idempotency_key("b", "n.dcm", "1", "sha2")
