"""``dicom-review/1`` (docs/contracts.md, "Review of a result"): a Pub/Sub message parsed into one
:class:`ReviewMessage`, or :class:`MessageError` for a body that can never be processed (400, kept
for people by the dead-letter topic). Whether it matches a stored result is checked elsewhere
(:mod:`gpu_service.pipeline.review_check`); here rather than in transport because its form
rules (decision, reason, region) are the DICOM core's. Pure: no I/O.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gpu_service.dicom.review_codes import DECISIONS, REASONS, Assessment
from gpu_service.dicom.review_seg import RegionError, region_points
from gpu_service.transport.push import MessageError, PubSubMessage

SCHEMA = "dicom-review/1"
MAX_TEXT = 2000
MAX_NAME = 150


@dataclass(frozen=True)
class ReviewedResult:
    """The result the decision is about, as Django knows it."""

    correlation_id: str
    webhook_id: str
    bucket: str
    name: str
    generation: str
    model_sha256: str
    label: str
    study_instance_uid: str
    sop_instance_uid: str
    sr_sop_instance_uid: str
    seg_sop_instance_uid: str | None


@dataclass(frozen=True)
class ReviewMessage:
    assessment: Assessment
    supersedes: str | None
    result: ReviewedResult
    body: dict[str, Any]  # as published, for STEM.review.json


def _text(body: dict[str, Any], key: str, limit: int = 1024, required: bool = True) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        raise MessageError(
            f"'{key}' must be a {'non-empty ' if required else ''}string of at most {limit} characters"
        )
    return value


def _uuid(value: Any, key: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise MessageError(f"'{key}' is not a UUID") from None


def _time(value: Any) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MessageError("'decided_at' is not an RFC 3339 date-time") from None
    if when.tzinfo is None:
        raise MessageError("'decided_at' has no UTC offset")
    return when.astimezone(UTC)


def _result(raw: Any) -> ReviewedResult:
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), dict):
        raise MessageError("'result' must be an object with a 'source' object")
    source = raw["source"]
    generation = _text(source, "generation", 32)
    if not generation.isdigit():
        raise MessageError("'result.source.generation' must be a decimal string")
    seg = raw.get("seg_sop_instance_uid")
    if seg is not None and (not isinstance(seg, str) or not seg or len(seg) > 64):
        raise MessageError("'result.seg_sop_instance_uid' must be a UID or null")
    return ReviewedResult(
        correlation_id=_text(raw, "correlation_id", 64),
        webhook_id=_text(raw, "webhook_id", 128),
        bucket=_text(source, "bucket", 222),
        name=_text(source, "name", 1024),
        generation=generation,
        model_sha256=_text(raw, "model_sha256", 64),
        label=_text(raw, "label", 128),
        study_instance_uid=_text(raw, "study_instance_uid", 64),
        sop_instance_uid=_text(raw, "sop_instance_uid", 64),
        sr_sop_instance_uid=_text(raw, "sr_sop_instance_uid", 64),
        seg_sop_instance_uid=seg,
    )


def _region(raw: Any) -> Any:
    """The message's polygon points ``{"x", "y"}`` as the ``[x, y]`` pairs the DICOM core takes."""
    if isinstance(raw, dict) and raw.get("type") == "polygon" and isinstance(raw.get("points"), list):
        points = raw["points"]
        if not all(isinstance(p, dict) and set(p) == {"x", "y"} for p in points):
            raise MessageError('\'region.points\' must be objects {"x", "y"}')
        return {"type": "polygon", "points": [[p["x"], p["y"]] for p in points]}
    return raw


def parse_review(message: PubSubMessage) -> ReviewMessage:
    """The message, checked for form: decision, reason and region as the contract allows."""
    try:
        body = json.loads(message.data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError("message data is not UTF-8 JSON") from exc
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise MessageError(f"not a {SCHEMA} message")
    decision = body.get("decision")
    if decision not in DECISIONS:
        raise MessageError(f"'decision' must be one of {DECISIONS}")
    reason = body.get("reason_code") or None
    if reason is not None and reason not in REASONS:
        raise MessageError(f"'reason_code' must be one of {REASONS} or null")
    if decision == "reject" and reason is None:
        raise MessageError("a rejection needs a 'reason_code'")
    if decision == "accept" and reason is not None:
        raise MessageError("an acceptance has no 'reason_code'")
    corrected = body.get("corrected_label") or None
    if (decision == "correct") != (corrected is not None):
        raise MessageError("'corrected_label' is required for a correction and only there")
    if corrected is not None and (not isinstance(corrected, str) or len(corrected) > 128):
        raise MessageError("'corrected_label' must be a string of at most 128 characters")
    region = _region(body.get("region"))
    if region is not None:
        if decision != "correct":
            raise MessageError("only a correction carries a 'region'")
        try:
            region_points(region)
        except RegionError as exc:
            raise MessageError(f"'region': {exc}") from None
    reviewer = body.get("reviewer")
    if not isinstance(reviewer, dict):
        raise MessageError("'reviewer' must be an object")
    supersedes = body.get("supersedes")
    assessment = Assessment(
        review_id=_uuid(body.get("review_id"), "review_id"),
        decision=decision,
        decided_at=_time(body.get("decided_at")),
        reviewer_name=_text(reviewer, "name", MAX_NAME),
        reviewer_organisation=_text(reviewer, "organisation", MAX_NAME, required=False),
        reason_code=reason,
        reason_text=_text(body, "reason_text", MAX_TEXT, required=False),
        corrected_label=corrected,
        region=region,
    )
    return ReviewMessage(
        assessment=assessment,
        supersedes=_uuid(supersedes, "supersedes") if supersedes is not None else None,
        result=_result(body.get("result")),
        body=body,
    )
