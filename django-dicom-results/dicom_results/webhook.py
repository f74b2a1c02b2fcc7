"""The webhook endpoint: verify (Standard Webhooks), check the schema, store once, signal.

Order matters: the size is checked before the body is read, the signature before the body
is parsed (an unsigned body is never looked at), and the row is written in one
transaction whose unique ``webhook_id`` turns every duplicate, concurrent ones included,
into a 200 with nothing stored and no signal. No network call happens here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from standardwebhooks import Webhook, WebhookVerificationError

from dicom_results import tracing
from dicom_results.conf import MAX_TOLERANCE_S, app_settings
from dicom_results.models import InferenceResult
from dicom_results.schema import SchemaError, parse_result
from dicom_results.signals import result_received

logger = logging.getLogger(__name__)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
MAX_ID_LENGTH = InferenceResult._meta.get_field("webhook_id").max_length


def _refuse(status: int, error: str, detail: str, **fields: object) -> JsonResponse:
    logger.warning("webhook refused", extra={"fields": {"status": status, "error": error, **fields}})
    return JsonResponse({"error": error, "detail": detail}, status=status)


def verify_delivery(secret: str, tolerance_s: int, body: bytes, headers: Mapping[str, str]) -> str | None:
    """None when the delivery is authentic and fresh, else the reason (for the 401's body)."""
    try:
        Webhook(secret).verify(body, dict(headers.items()), json_parse=False)
    except WebhookVerificationError as exc:
        return str(exc) or "bad signature"
    except (ValueError, TypeError):  # undecodable body, malformed signature list or base64
        return "malformed signature headers or body"
    # The library's window is fixed at 300 s; ours may only be narrower.
    age_s = abs(time.time() - float(headers.get(TIMESTAMP_HEADER, "0")))
    if tolerance_s < MAX_TOLERANCE_S and age_s > tolerance_s:
        return "timestamp outside the replay window"
    return None


def read_signed(
    request: HttpRequest, max_id_length: int, refuse: Callable[[int, str, str], JsonResponse]
) -> bytes | JsonResponse:
    """The body of an authentic delivery, or ``refuse``'s answer, for every signed endpoint of
    this app: the declared and the actual size checked before and while the body is read, the
    signature before anything looks at the body, then the webhook-id's length."""
    conf = app_settings()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return refuse(400, "bad_request", "Content-Length is not a number")
    if declared > conf.max_body_bytes:
        return refuse(413, "too_large", f"body over {conf.max_body_bytes} bytes")
    body = request.read(conf.max_body_bytes + 1)
    if len(body) > conf.max_body_bytes:
        return refuse(413, "too_large", f"body over {conf.max_body_bytes} bytes")
    reason = verify_delivery(conf.webhook_secret, conf.tolerance_s, body, request.headers)
    if reason is not None:
        return refuse(401, "bad_signature", reason)
    if len(request.headers.get(ID_HEADER, "")) > max_id_length:
        return refuse(400, "bad_webhook_id", f"webhook-id longer than {max_id_length} characters")
    return body


def load_json(body: bytes) -> Any:
    """The body as JSON; ValueError for what is not JSON, NaN and Infinity included."""
    return json.loads(body, parse_constant=_no_constants)


@csrf_exempt
@require_POST
def receive_result(request: HttpRequest) -> JsonResponse:
    traceparent = request.headers.get(tracing.HEADER)
    with tracing.continued(traceparent):
        return _receive(request, tracing.log_fields(traceparent))


def _receive(request: HttpRequest, trace_fields: dict[str, object]) -> JsonResponse:
    webhook_id = request.headers.get(ID_HEADER, "")
    trace = {
        "webhook_id": webhook_id[:MAX_ID_LENGTH],
        "correlation_id": request.headers.get("X-Correlation-Id"),
        **trace_fields,
    }
    body = read_signed(request, MAX_ID_LENGTH, lambda *refusal: _refuse(*refusal, **trace))
    if isinstance(body, JsonResponse):
        return body
    try:
        record = load_json(body)
        fields = parse_result(record)
    except SchemaError as exc:
        return _refuse(400, "bad_schema", str(exc), **trace)
    except ValueError:  # json.JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        return _refuse(400, "not_json", "the body is not JSON (NaN and Infinity are not JSON)", **trace)

    existing = InferenceResult.objects.filter(webhook_id=webhook_id).values_list("pk", flat=True).first()
    if existing is not None:
        return _duplicate(existing, trace)
    try:
        with transaction.atomic():
            row = InferenceResult.objects.create(webhook_id=webhook_id, body=record, **fields)
            transaction.on_commit(lambda: result_received.send(sender=InferenceResult, result=row))
    except IntegrityError:
        # A concurrent delivery of the same webhook-id committed first.
        existing = InferenceResult.objects.filter(webhook_id=webhook_id).values_list("pk", flat=True).first()
        if existing is None:
            raise
        return _duplicate(existing, trace)
    logger.info("webhook stored", extra={"fields": {**trace, "id": row.pk, "status": row.status}})
    return JsonResponse({"id": row.pk, "duplicate": False}, status=201)


def _no_constants(name: str) -> None:
    """NaN and Infinity: Python's json accepts them, PostgreSQL's jsonb and every other reader do not."""
    raise ValueError(f"{name} is not JSON")


def _duplicate(pk: int, trace: dict[str, object]) -> JsonResponse:
    logger.info("webhook duplicate", extra={"fields": {**trace, "id": pk}})
    return JsonResponse({"id": pk, "duplicate": True}, status=200)
