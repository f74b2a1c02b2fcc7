"""The review component's receipts (``dicom-review-receipt/1``) on ``<prefix>webhook/review/``:
verified like the result webhook (Standard Webhooks, same secret and window), one
:class:`~dicom_results.models.ReviewReceipt` per decision, idempotent on ``webhook-id``.
docs/contracts.md, "Webhook event: dicom-review-receipt/1".
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from dicom_results.models import ReviewDecision, ReviewReceipt
from dicom_results.webhook import ID_HEADER, load_json, read_signed

logger = logging.getLogger(__name__)

SCHEMA = "dicom-review-receipt/1"
MAX_ID_LENGTH = ReviewReceipt._meta.get_field("webhook_id").max_length


class ReceiptError(ValueError):
    pass


def _refuse(status: int, error: str, detail: str, **fields: object) -> JsonResponse:
    logger.warning("review receipt refused", extra={"fields": {"status": status, "error": error, **fields}})
    return JsonResponse({"error": error, "detail": detail}, status=status)


def _uid(section: Any, key: str) -> str:
    value = section.get(key) if isinstance(section, dict) else None
    return value[:64] if isinstance(value, str) else ""


def parse_receipt(body: Any) -> dict[str, Any]:
    """The receipt's fields for :class:`ReviewReceipt`, or ReceiptError."""
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise ReceiptError(f"not a {SCHEMA} body")
    try:
        review_id = uuid.UUID(str(body.get("review_id")))
    except ValueError:
        raise ReceiptError("review_id is not a UUID") from None
    status = body.get("status")
    if status not in ReviewReceipt.Status.values:
        raise ReceiptError(f"status must be one of {ReviewReceipt.Status.values}")
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    if status == ReviewReceipt.Status.FAILED and not error.get("code"):
        raise ReceiptError("a failed receipt needs error.code")
    sr, seg = body.get("sr"), body.get("seg")
    if status == ReviewReceipt.Status.STORED and not _uid(sr, "sop_instance_uid"):
        raise ReceiptError("a stored receipt needs sr.sop_instance_uid")
    return {
        "review_id": review_id,
        "status": status,
        "sr_sop_instance_uid": _uid(sr, "sop_instance_uid"),
        "sr_uri": str((sr or {}).get("uri") or "")[:1300],
        "seg_sop_instance_uid": _uid(seg, "sop_instance_uid"),
        "seg_uri": str((seg or {}).get("uri") or "")[:1300],
        "review_json_uri": str(body.get("review_json_uri") or "")[:1300],
        "error_code": str(error.get("code") or "")[:64],
        "error_message": str(error.get("message") or "")[:2000],
    }


@csrf_exempt
@require_POST
def receive_review_receipt(request: HttpRequest) -> JsonResponse:
    webhook_id = request.headers.get(ID_HEADER, "")
    trace = {
        "webhook_id": webhook_id[:MAX_ID_LENGTH],
        "correlation_id": request.headers.get("X-Correlation-Id"),
    }
    body = read_signed(request, MAX_ID_LENGTH, lambda *refusal: _refuse(*refusal, **trace))
    if isinstance(body, JsonResponse):
        return body
    try:
        receipt = load_json(body)
        fields = parse_receipt(receipt)
    except ReceiptError as exc:
        return _refuse(400, "bad_schema", str(exc), **trace)
    except ValueError:  # json.JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        return _refuse(400, "not_json", "the body is not JSON (NaN and Infinity are not JSON)", **trace)
    existing = ReviewReceipt.objects.filter(webhook_id=webhook_id).values_list("pk", flat=True).first()
    if existing is not None:
        return JsonResponse({"id": existing, "duplicate": True}, status=200)
    review = ReviewDecision.objects.filter(review_id=fields.pop("review_id")).first()
    if review is None:
        return _refuse(404, "unknown_review", "no decision with this review_id", **trace)
    try:
        with transaction.atomic():
            earlier = ReviewReceipt.objects.select_for_update().filter(review=review).first()
            if earlier is not None:
                return _replace(earlier, webhook_id, receipt, fields, trace)
            row = ReviewReceipt.objects.create(review=review, webhook_id=webhook_id, body=receipt, **fields)
    except IntegrityError:  # a concurrent delivery, or another receipt for this decision
        existing = ReviewReceipt.objects.filter(review=review).values_list("pk", flat=True).first()
        if existing is None:
            raise
        return JsonResponse({"id": existing, "duplicate": True}, status=200)
    stored = {**trace, "id": row.pk, "review_id": str(review.review_id), "status": row.status}
    logger.info("review receipt stored", extra={"fields": stored})
    return JsonResponse({"id": row.pk, "duplicate": False}, status=201)


def _replace(earlier: ReviewReceipt, webhook_id: str, receipt: dict[str, Any], fields: dict[str, Any],
             trace: dict[str, object]) -> JsonResponse:  # fmt: skip
    """One receipt per decision: ``stored`` replaces ``failed`` (the decision was republished once
    the cause was fixed); nothing replaces ``stored``."""
    if not (
        earlier.status == ReviewReceipt.Status.FAILED and fields["status"] == ReviewReceipt.Status.STORED
    ):
        return JsonResponse({"id": earlier.pk, "duplicate": True}, status=200)
    for key, value in {**fields, "webhook_id": webhook_id, "body": receipt}.items():
        setattr(earlier, key, value)
    earlier.save()
    logger.info(
        "review receipt replaced", extra={"fields": {**trace, "id": earlier.pk, "status": earlier.status}}
    )
    return JsonResponse({"id": earlier.pk, "duplicate": False, "replaced": True}, status=200)
