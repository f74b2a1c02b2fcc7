"""Stand-in for the hospital's Django server: verifies each webhook and records what it accepted.

Local stack and tests only. It does what a careful receiver must do (reject a bad or
stale signature with 401) and writes every accepted call, duplicates included, to a
JSON-lines file as ``{"received_at", "headers", "body"}``, so the tests can prove
"exactly once" instead of assuming it. It can be told to fail the next N calls
(``POST /_control {"fail_next": N}`` or ``WEBHOOK_FAIL_FIRST``) so retries can be seen;
``{"fail_next": N, "match": "part/of/the/object"}`` fails only calls whose source object
name or URI contains ``match``, so a stray webhook for another upload never uses up a
failure meant for one object. Every attempt, failed or not, also goes to a second file
(``WEBHOOK_ATTEMPTS_LOG``).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gpu_service.webhook_signature import verify_signature

CONTROL_PATH = "/_control"
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class ReceiverSettings:
    secret: str
    log_path: Path
    attempts_path: Path
    host: str = "127.0.0.1"
    port: int = 8083
    fail_first: int = 0
    fail_status: int = 503
    tolerance_s: int = 300

    @classmethod
    def from_env(cls) -> ReceiverSettings:
        secret = os.environ.get("WEBHOOK_SECRET", "")
        if not secret:
            raise SystemExit("WEBHOOK_SECRET is required: the receiver verifies every signature")
        log_path = Path(os.environ.get("WEBHOOK_LOG", ".local/webhooks.jsonl")).resolve()
        attempts = os.environ.get("WEBHOOK_ATTEMPTS_LOG") or str(log_path.with_suffix(".attempts.jsonl"))
        return cls(
            secret=secret,
            log_path=log_path,
            attempts_path=Path(attempts).resolve(),
            host=os.environ.get("WEBHOOK_HOST", "127.0.0.1"),
            port=int(os.environ.get("WEBHOOK_PORT") or os.environ.get("LOCAL_WEBHOOK_PORT") or 8083),
            fail_first=int(os.environ.get("WEBHOOK_FAIL_FIRST", "0")),
            fail_status=int(os.environ.get("WEBHOOK_FAIL_STATUS", "503")),
            tolerance_s=int(os.environ.get("WEBHOOK_TOLERANCE_S", "300")),
        )


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _State:
    """Failure budget and the two append-only files, shared by the request threads."""

    def __init__(self, settings: ReceiverSettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.fail_next = settings.fail_first
        self.fail_match = ""  # empty: any call
        self.fail_status = settings.fail_status
        self.accepted = 0
        self.calls = 0
        for path in (settings.log_path, settings.attempts_path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    @staticmethod
    def _append(path: Path, record: dict[str, Any]) -> None:
        # One write() of one whole line on an O_APPEND descriptor, under the lock: readers
        # polling the file never see half a record.
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def take_failure(self, payload: Any) -> int | None:
        with self.lock:
            self.calls += 1
            if self.fail_next > 0 and _matches(self.fail_match, payload):
                self.fail_next -= 1
                return self.fail_status
            return None

    def attempt(self, record: dict[str, Any]) -> None:
        with self.lock:
            self._append(self.settings.attempts_path, record)

    def accept(self, record: dict[str, Any]) -> None:
        with self.lock:
            self._append(self.settings.log_path, record)
            self.accepted += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "fail_next": self.fail_next,
                "match": self.fail_match,
                "fail_status": self.fail_status,
                "accepted": self.accepted,
                "calls": self.calls,
                "log": str(self.settings.log_path),
                "attempts_log": str(self.settings.attempts_path),
            }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler API
        print(json.dumps({"severity": "INFO", "message": format % args, "time": _now()}), flush=True)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path == HEALTH_PATH:
            self._reply(HTTPStatus.OK, {"ok": True})
        elif self.path == CONTROL_PATH:
            self._reply(HTTPStatus.OK, self.server.state.snapshot())
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        body = self._body()
        if self.path == CONTROL_PATH:
            self._control(body)
        else:
            self._webhook(body)

    def _control(self, body: bytes) -> None:
        try:
            wanted = json.loads(body or b"{}")
            state = self.server.state
            with state.lock:
                if "fail_next" in wanted:
                    state.fail_next = int(wanted["fail_next"])
                    state.fail_match = str(wanted.get("match") or "")
                if "fail_status" in wanted:
                    state.fail_status = int(wanted["fail_status"])
        except (ValueError, TypeError) as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"bad control body: {exc}"})
            return
        self._reply(HTTPStatus.OK, self.server.state.snapshot())

    def _webhook(self, body: bytes) -> None:
        state = self.server.state
        settings = state.settings
        headers = dict(self.headers.items())
        attempt = {
            "received_at": _now(),
            "path": self.path,
            "idempotency_key": self.headers.get("Idempotency-Key"),
            "correlation_id": self.headers.get("X-Correlation-Id"),
        }
        if not _signature_ok(settings, self.headers.get("X-Pipeline-Timestamp"), body, headers):
            state.attempt({**attempt, "status": HTTPStatus.UNAUTHORIZED, "outcome": "bad_signature"})
            self._reply(HTTPStatus.UNAUTHORIZED, {"error": "bad signature"})
            return
        try:
            payload = json.loads(body)
        except ValueError:
            state.attempt({**attempt, "status": HTTPStatus.BAD_REQUEST, "outcome": "not_json"})
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
            return
        failure = state.take_failure(payload)
        if failure is not None:
            state.attempt({**attempt, "status": failure, "outcome": "injected_failure"})
            self._reply(failure, {"error": "failing on purpose (fail_next)"})
            return
        state.accept({"received_at": attempt["received_at"], "headers": headers, "body": payload})
        state.attempt({**attempt, "status": HTTPStatus.OK, "outcome": "accepted"})
        self._reply(HTTPStatus.OK, {"ok": True})


def _matches(match: str, payload: Any) -> bool:
    """Whether an injected failure applies to this call: any call without ``match``, else a call
    whose ``source.name`` or ``source.uri`` contains it."""
    if not match:
        return True
    source = payload.get("source") if isinstance(payload, dict) else None
    if not isinstance(source, dict):
        return False
    return any(match in str(source.get(key) or "") for key in ("name", "uri"))


def _signature_ok(settings: ReceiverSettings, timestamp: str | None, body: bytes, headers: dict) -> bool:
    signature = headers.get("X-Pipeline-Signature")
    if not timestamp or not signature:
        return False
    try:
        return bool(
            verify_signature(settings.secret, timestamp, body, signature, tolerance_s=settings.tolerance_s)
        )
    except (ValueError, TypeError):
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


def make_server(settings: ReceiverSettings) -> _Server:
    """Bind the receiver (call ``serve_forever`` on the result); port 0 picks a free port."""
    server = _Server((settings.host, settings.port), _Handler)
    server.state = _State(settings)
    return server


def main() -> None:
    settings = ReceiverSettings.from_env()
    server = make_server(settings)
    print(
        json.dumps({"severity": "INFO", "message": "webhook receiver listening", "port": server.server_port}),
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
