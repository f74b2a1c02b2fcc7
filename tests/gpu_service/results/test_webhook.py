"""Webhook delivery against a real local HTTP server: signed bodies, retries, what is never retried."""

from __future__ import annotations

import time

import pytest

from gpu_service.results.webhook import WebhookClient
from infra.local.emulators import free_port
from tests.support.service import SECRET, WebhookServer

# -- settings ------------------------------------------------------------------------------


def _client(url: str, attempts: int = 4) -> tuple[WebhookClient, list[float]]:
    sleeps: list[float] = []
    client = WebhookClient(
        url, SECRET, timeout_s=5, max_attempts=attempts, backoff_base_s=0.01, backoff_max_s=0.05,
        sleep=lambda s: (sleeps.append(s), time.sleep(s)),
    )  # fmt: skip
    return client, sleeps


def test_webhook_delivers_signed_body() -> None:
    server = WebhookServer()
    try:
        client, _ = _client(server.url)
        d = client.deliver(b'{"a":1}', idempotency_key="key", correlation_id="corr")
        assert (d.accepted, d.status, d.attempts) == (True, 200, 1)
        call = server.calls[0]
        assert call.signature_ok and call.body == b'{"a":1}'
        assert call.headers["webhook-id"] == "key" and call.headers["X-Correlation-Id"] == "corr"
        assert call.headers["Content-Type"] == "application/json"
    finally:
        server.stop()


@pytest.mark.parametrize("status", [503, 500, 429, 408])
def test_webhook_retries_transient_statuses(status: int) -> None:
    server = WebhookServer(fail_next=2, fail_status=status)
    try:
        client, sleeps = _client(server.url)
        d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
        assert (d.accepted, d.attempts) == (True, 3)
        assert len(sleeps) == 2 and all(0 <= s <= 0.05 for s in sleeps)
        keys = {c.headers["webhook-id"] for c in server.calls}
        assert keys == {"k"} and all(c.signature_ok for c in server.calls)
    finally:
        server.stop()


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_webhook_does_not_retry_client_errors(status: int) -> None:
    server = WebhookServer(fail_next=5, fail_status=status)
    try:
        client, sleeps = _client(server.url)
        d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
        assert (d.accepted, d.status, d.attempts, sleeps) == (False, status, 1, [])
    finally:
        server.stop()


def test_webhook_retries_connection_errors_then_gives_up() -> None:
    client, sleeps = _client(f"http://127.0.0.1:{free_port()}/hook", attempts=3)
    d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
    assert (d.accepted, d.status, d.attempts, len(sleeps)) == (False, None, 3, 2)
    assert d.error and "Connection" in d.error


def test_webhook_retries_dropped_connections() -> None:
    server = WebhookServer(fail_next=1, drop_connection=True)
    try:
        client, _ = _client(server.url)
        d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
        assert (d.accepted, d.attempts) == (True, 2)
    finally:
        server.stop()


def test_webhook_does_not_follow_redirects() -> None:
    """requests would turn the POST into a GET of the login page and call that delivered."""
    server = WebhookServer(redirect_to="/accounts/login/")
    try:
        client, sleeps = _client(server.url)
        d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
        assert (d.accepted, d.status, d.attempts, sleeps) == (False, 302, 1, [])
        assert "redirect" in (d.error or "") and server.gets == []
    finally:
        server.stop()


def test_webhook_backoff_grows_and_is_capped() -> None:
    client = WebhookClient("http://x", SECRET, backoff_base_s=1.0, backoff_max_s=4.0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        assert all(0 <= client.backoff_s(attempt) <= cap for _ in range(50))


@pytest.mark.parametrize("url", ["no-scheme.example/hook", "http://"])
def test_webhook_does_not_retry_malformed_urls(url: str) -> None:
    client, sleeps = _client(url)
    d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
    assert (d.accepted, d.status, d.attempts, sleeps) == (False, None, 1, [])
    assert d.error in ("MissingSchema", "InvalidURL")
