"""The local stack's test hooks around the real Django app: what tools and tests read.

- Every webhook the app accepts (2xx, duplicates included) is appended to ``WEBHOOK_LOG``
  as ``{"received_at", "headers", "body"}``; every attempt, whatever its answer, to
  ``WEBHOOK_ATTEMPTS_LOG``, so tests prove "exactly once" instead of assuming it.
- ``POST /_control {"fail_next": N, "match": "part/of/name"}`` (or ``WEBHOOK_FAIL_FIRST``)
  makes the next N authentic calls (whose ``source.name``/``uri`` contains ``match``) answer
  ``WEBHOOK_FAIL_STATUS`` before the app sees them, so retries can be watched.

Authenticity is checked with the app's own check (the standardwebhooks library): one
signature implementation. State lives in the one gunicorn worker the stack starts.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from dicom_results.conf import app_settings
from dicom_results.webhook import verify_delivery


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _State:
    """Failure budget and the two append-only files, shared by the request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fail_next = settings.WEBHOOK_FAIL_FIRST
        self.fail_match = ""  # empty: any call
        self.fail_status = settings.WEBHOOK_FAIL_STATUS
        self.accepted = 0
        self.calls = 0
        for path in (settings.WEBHOOK_LOG, settings.WEBHOOK_ATTEMPTS_LOG):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    @staticmethod
    def append(path: Path, record: dict[str, Any]) -> None:
        # One write() of one whole line on an O_APPEND descriptor: readers polling the file
        # never see half a record.
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def take_failure(self, payload: Any) -> int | None:
        with self.lock:
            if self.fail_next > 0 and _matches(self.fail_match, payload):
                self.fail_next -= 1
                return self.fail_status
            return None

    def snapshot(self) -> dict[str, Any]:
        return {
            "fail_next": self.fail_next,
            "match": self.fail_match,
            "fail_status": self.fail_status,
            "accepted": self.accepted,
            "calls": self.calls,
            "log": str(settings.WEBHOOK_LOG),
            "attempts_log": str(settings.WEBHOOK_ATTEMPTS_LOG),
        }


_state: _State | None = None
_state_lock = threading.Lock()


def state() -> _State:
    global _state
    with _state_lock:
        if _state is None:
            _state = _State()
        return _state


def _matches(match: str, payload: Any) -> bool:
    if not match:
        return True
    source = payload.get("source") if isinstance(payload, dict) else None
    if not isinstance(source, dict):
        return False
    return any(match in str(source.get(key) or "") for key in ("name", "uri"))


def _outcome(status: int, answer: HttpResponse) -> str:
    if status == HTTPStatus.CREATED:
        return "accepted"
    if 200 <= status < 300:
        return "duplicate"
    if status == HTTPStatus.UNAUTHORIZED:
        return "bad_signature"
    try:
        return str(json.loads(answer.content).get("error") or f"http_{status}")
    except ValueError:
        return f"http_{status}"


class WebhookRecorder:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.path = reverse("dicom_results:webhook")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path != self.path or request.method != "POST":
            return self.get_response(request)
        hooks = state()
        conf = app_settings()
        received_at = _now()
        attempt = {"received_at": received_at, "path": request.path,
                   "webhook_id": request.headers.get("webhook-id"),
                   "correlation_id": request.headers.get("X-Correlation-Id")}  # fmt: skip
        with hooks.lock:
            hooks.calls += 1
        payload: Any = None
        if int(request.META.get("CONTENT_LENGTH") or 0) <= conf.max_body_bytes:
            body = request.body  # cached: the app reads the same bytes
            if verify_delivery(conf.webhook_secret, conf.tolerance_s, body, request.headers) is None:
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = None
                failure = hooks.take_failure(payload)
                if failure is not None:
                    hooks.append(settings.WEBHOOK_ATTEMPTS_LOG,
                                 {**attempt, "status": failure, "outcome": "injected_failure"})  # fmt: skip
                    return JsonResponse({"error": "failing on purpose (fail_next)"}, status=failure)
        answer = self.get_response(request)
        status = answer.status_code
        with hooks.lock:
            if 200 <= status < 300:
                headers = {k.lower(): v for k, v in request.headers.items()}
                record = {"received_at": received_at, "headers": headers, "body": payload}
                hooks.append(settings.WEBHOOK_LOG, record)
                hooks.accepted += 1
            hooks.append(
                settings.WEBHOOK_ATTEMPTS_LOG,
                {**attempt, "status": status, "outcome": _outcome(status, answer)},
            )
        return answer


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@csrf_exempt
def control(request: HttpRequest) -> JsonResponse:
    hooks = state()
    if request.method == "POST":
        try:
            wanted = json.loads(request.body or b"{}")
            with hooks.lock:
                if "fail_next" in wanted:
                    hooks.fail_next = int(wanted["fail_next"])
                    hooks.fail_match = str(wanted.get("match") or "")
                if "fail_status" in wanted:
                    hooks.fail_status = int(wanted["fail_status"])
        except (ValueError, TypeError, AttributeError) as exc:
            return JsonResponse({"error": f"bad control body: {exc}"}, status=400)
    with hooks.lock:
        return JsonResponse(hooks.snapshot())
