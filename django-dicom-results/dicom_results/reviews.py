"""Records a radiologist's decision on an AI result: the one place that checks it and stores it.

Every bad input raises :class:`ReviewError` with a code, a message for people and the HTTP
status a view should answer with; nothing is stored then. A decision is stored with its audit
event in one transaction, and ``review_decided`` is sent once, after the commit.

Two guards make it safe when two requests arrive at once:

- the double submit: the form carries a ``review_id`` made when the page was rendered; a second
  POST with it returns the decision already stored (``review_id`` is unique);
- two reviewers: the form carries the latest ``review_id`` the reviewer saw (``expected_latest``);
  the result's row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
  IMMEDIATE``, database.py) before the latest decision is read, so the second reviewer reads the
  first one's decision and is answered 409. The unique ``supersedes`` and the one-first-decision
  constraint (migration 0004) refuse what would slip past.

Regions are in the source's pixel coordinates (x = column, y = row, (0, 0) the top-left corner
of the image, (columns, rows) its bottom-right), checked against the source's size that the
record's ``image`` block gives (``image.rows`` / ``image.columns``, docs/contracts.md). A record
without it (from before that block) takes decisions without a region only: the rendered PNG
may be shrunk, so its size says nothing about the source's.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core import signing
from django.db import IntegrityError, transaction
from django.utils import timezone

from dicom_results import audit
from dicom_results.conf import app_settings
from dicom_results.models import AuditEvent, InferenceResult, ReviewDecision
from dicom_results.signals import review_decided

logger = logging.getLogger(__name__)

Decision = ReviewDecision.Decision
Reason = ReviewDecision.Reason
MAX_POLYGON_POINTS = 1000
MAX_REASON_TEXT = 2000
CLOCK_SKEW = timedelta(seconds=5)
PERMISSION = "dicom_results.review_result"
OPENED_AT_SALT = "dicom_results.review.opened_at"


@dataclass
class ReviewError(Exception):
    """Why a decision was refused: ``code`` for programs, ``message`` for people."""

    code: str
    message: str
    http_status: int = 400

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def sign_opened_at(when: datetime) -> str:
    """The page's opening time as the form carries it: ISO 8601, signed with the project's key,
    so that a decision time (a quality figure) cannot be made up by editing the form."""
    return signing.Signer(salt=OPENED_AT_SALT).sign(when.isoformat())


def read_opened_at(value: str) -> datetime | None:
    """The time :func:`sign_opened_at` wrote, or ReviewError when it was altered."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(signing.Signer(salt=OPENED_AT_SALT).unsign(value))
    except (signing.BadSignature, ValueError):
        raise ReviewError("bad_opened_at", "the page's opening time was altered: reload the page") from None


def image_size(result: InferenceResult) -> tuple[int, int] | None:
    """The source's (rows, columns) from the record, or None when the record does not say."""
    image = result.body.get("image") if isinstance(result.body, dict) else None
    if not isinstance(image, dict):
        return None
    rows, columns = image.get("rows"), image.get("columns")
    if isinstance(rows, int) and isinstance(columns, int) and rows > 0 and columns > 0:
        return rows, columns
    return None


def model_labels(result: InferenceResult) -> list[str]:
    """The labels a correction may choose: the model's, as its ``scores`` name them."""
    return sorted(result.scores) if result.scores else ([result.label] if result.label else [])


def latest_decision(result: InferenceResult) -> ReviewDecision | None:
    """The decision in force: the one no later decision supersedes."""
    return ReviewDecision.objects.filter(result=result, superseded_by__isnull=True).first()


def _coordinate(value: Any, limit: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ReviewError("bad_region", f"{what} must be a number")
    if not 0 <= value <= limit:
        raise ReviewError("region_outside", f"{what} = {value} is outside the image (0 to {limit})")
    return round(float(value), 2)


def check_region(region: Any, size: tuple[int, int] | None) -> dict[str, Any] | None:
    """The region, normalised, or ReviewError: a polygon of 3+ points or a point with a radius,
    every coordinate inside the source image."""
    if region is None:
        return None
    if size is None:
        raise ReviewError(
            "region_unchecked",
            "this result's record does not give the image size, so a region cannot be checked: "
            "decide without one",
        )
    rows, columns = size
    if not isinstance(region, dict) or region.get("type") not in ("polygon", "point"):
        raise ReviewError("bad_region", 'a region is {"type": "polygon", ...} or {"type": "point", ...}')
    if region["type"] == "polygon":
        points = region.get("points")
        if set(region) != {"type", "points"} or not isinstance(points, list):
            raise ReviewError("bad_region", 'a polygon is {"type": "polygon", "points": [[x, y], ...]}')
        if not 3 <= len(points) <= MAX_POLYGON_POINTS:
            raise ReviewError("bad_region", f"a polygon needs 3 to {MAX_POLYGON_POINTS} points")
        out = []
        for i, point in enumerate(points):
            if not isinstance(point, list | tuple) or len(point) != 2:
                raise ReviewError("bad_region", f"point {i} must be [x, y]")
            out.append(
                [
                    _coordinate(point[0], columns, f"x of point {i}"),
                    _coordinate(point[1], rows, f"y of point {i}"),
                ]
            )
        return {"type": "polygon", "points": out}
    if set(region) != {"type", "x", "y", "radius"}:
        raise ReviewError("bad_region", 'a point is {"type": "point", "x": x, "y": y, "radius": r}')
    radius = region["radius"]
    if isinstance(radius, bool) or not isinstance(radius, int | float) or not 0 < radius <= max(size):
        raise ReviewError("bad_region", f"the radius must be a number above 0 and at most {max(size)}")
    return {
        "type": "point",
        "x": _coordinate(region["x"], columns, "x"),
        "y": _coordinate(region["y"], rows, "y"),
        "radius": round(float(radius), 2),
    }


def _check_fields(result: InferenceResult, decision: str, reason_code: str, reason_text: str,
                  corrected_label: str, region: Any) -> dict[str, Any] | None:  # fmt: skip
    if result.status != InferenceResult.Status.COMPLETED:
        raise ReviewError("failed_result", "a failed result has no finding to decide on", 409)
    if decision not in Decision.values:
        raise ReviewError("bad_decision", f"the decision must be one of {', '.join(Decision.values)}")
    if reason_code and reason_code not in Reason.values:
        raise ReviewError("bad_reason", f"the reason must be one of {', '.join(Reason.values)}")
    if decision == Decision.REJECT and not reason_code:
        raise ReviewError("reason_required", "a rejection needs a reason")
    if decision == Decision.ACCEPT and (reason_code or corrected_label or region is not None):
        raise ReviewError("bad_decision", "an acceptance takes no reason, label or region")
    if len(reason_text) > MAX_REASON_TEXT:
        raise ReviewError("bad_reason", f"the free text is limited to {MAX_REASON_TEXT} characters")
    if decision == Decision.CORRECT:
        labels = model_labels(result)
        if corrected_label not in labels:
            raise ReviewError(
                "bad_label", f"the corrected label must be one of the model's: {', '.join(labels)}"
            )
    elif corrected_label or region is not None:
        raise ReviewError("bad_decision", "only a correction takes a label or a region")
    return check_region(region, image_size(result))


def _decision_ms(opened_at: datetime | None, decided_at: datetime) -> int | None:
    if opened_at is None:
        return None
    if timezone.is_naive(opened_at):
        raise ReviewError("bad_opened_at", "the page's opening time must carry a time zone")
    if opened_at > decided_at + CLOCK_SKEW:
        raise ReviewError("bad_opened_at", "the page's opening time is in the future")
    return max(0, int((decided_at - opened_at).total_seconds() * 1000))


def record_decision(
    result: InferenceResult,
    reviewer,
    *,
    decision: str,
    reason_code: str = "",
    reason_text: str = "",
    corrected_label: str = "",
    region: Any = None,
    opened_at: datetime | None = None,
    expected_latest: uuid.UUID | None = None,
    review_id: uuid.UUID | None = None,
    client_address: str | None = None,
) -> ReviewDecision:
    """Store one decision (or return the one already stored under ``review_id``)."""
    if not (reviewer.is_active and reviewer.has_perm(PERMISSION)):
        raise ReviewError("forbidden", "you may see decisions but not make them", 403)
    reason_text = reason_text.strip()
    region = _check_fields(result, decision, reason_code, reason_text, corrected_label, region)
    review_id = review_id or uuid.uuid4()
    decided_at = timezone.now()
    decision_ms = _decision_ms(opened_at, decided_at)
    try:
        with transaction.atomic():
            locked = InferenceResult.objects.select_for_update().get(pk=result.pk)
            existing = ReviewDecision.objects.filter(review_id=review_id).first()
            if existing is not None:
                if existing.result_id != locked.pk:
                    raise ReviewError("review_id_reused", "this review id belongs to another result", 409)
                return existing  # the double submit: the first one stands, nothing new is sent
            latest = latest_decision(locked)
            if (latest.review_id if latest else None) != expected_latest:
                raise ReviewError("conflict", "another reviewer decided meanwhile: reload the page", 409)
            row = ReviewDecision(
                review_id=review_id,
                result=locked,
                supersedes=latest,
                decision=decision,
                reason_code=reason_code,
                reason_text=reason_text,
                corrected_label=corrected_label,
                region=region,
                reviewer=reviewer,
                reviewer_name=(reviewer.get_full_name() or reviewer.get_username())[:150],
                reviewer_organisation=app_settings().reviewer_organisation[:150],
                opened_at=opened_at,
                decided_at=decided_at,
                decision_ms=decision_ms,
                client_address=client_address,
            )
            row.save()
            audit.record_for(reviewer, AuditEvent.Action.DECIDED, locked, decision, client_address)
            transaction.on_commit(lambda: review_decided.send(sender=ReviewDecision, decision=row))
    except IntegrityError:
        # What the lock should have kept out (a database without row locks): a concurrent twin.
        existing = ReviewDecision.objects.filter(review_id=review_id, result=result).first()
        if existing is not None:
            return existing
        raise ReviewError("conflict", "another reviewer decided meanwhile: reload the page", 409) from None
    logger.info("review decided", extra={"fields": {
        "review_id": str(row.review_id), "result_id": result.pk, "user_id": reviewer.pk,
        "decision": decision, "supersedes": str(latest.review_id) if latest else None,
    }})  # fmt: skip
    return row
