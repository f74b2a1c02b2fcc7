"""Each radiologist decision published as a ``dicom-review/1`` message (docs/contracts.md, "Review
of a result"), so the pipeline's review component makes it into a verified DICOM SR.

Settings: ``DICOM_RESULTS_REVIEW_TOPIC`` (``projects/<project>/topics/<topic>``; unset: nothing is
published and ``published_at`` stays null), ``DICOM_RESULTS_PUBLISH_TIMEOUT_S`` (default 10).
google-cloud-pubsub talks to the emulator when ``PUBSUB_EMULATOR_HOST`` is set, else to Pub/Sub
with Application Default Credentials. A publish that fails is logged and left for
``manage.py publish_reviews`` (the decision itself is already committed).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC
from typing import Any

from django.conf import settings
from django.dispatch import receiver
from django.utils import timezone

from dicom_results.models import ReviewDecision
from dicom_results.signals import review_decided

logger = logging.getLogger(__name__)

SCHEMA = "dicom-review/1"
DEFAULT_TIMEOUT_S = 10.0
_client_lock = threading.Lock()
_client: Any = None


def topic() -> str | None:
    return getattr(settings, "DICOM_RESULTS_REVIEW_TOPIC", None) or None


def _publisher() -> Any:
    """One client per process (it holds a channel and a batching thread)."""
    global _client
    with _client_lock:
        if _client is None:
            from google.cloud import pubsub_v1

            _client = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        return _client


def _utc(when) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ai_objects(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The AI SR's and SEG's SOP Instance UIDs from the stored record (``dicom.sop_instance_uids``)."""
    uids = (body.get("dicom") or {}).get("sop_instance_uids")
    if not isinstance(uids, dict):
        return None, None
    return uids.get("sr") or None, uids.get("seg") or None


def message_region(region: Any) -> Any:
    """A polygon's ``[x, y]`` pairs as ``{"x", "y"}`` objects: the topic's Protocol Buffer schema
    has no list of lists."""
    if isinstance(region, dict) and region.get("type") == "polygon":
        return {"type": "polygon", "points": [{"x": x, "y": y} for x, y in region.get("points") or []]}
    return region


def review_message(decision: ReviewDecision) -> dict[str, Any]:
    """The ``dicom-review/1`` body of one decision."""
    result = decision.result
    sr_uid, seg_uid = _ai_objects(result.body if isinstance(result.body, dict) else {})
    return {
        "schema": SCHEMA,
        "review_id": str(decision.review_id),
        "supersedes": str(decision.supersedes.review_id) if decision.supersedes_id else None,
        "decided_at": _utc(decision.decided_at),
        "decision": decision.decision,
        "reason_code": decision.reason_code or None,
        "reason_text": decision.reason_text or "",
        "corrected_label": decision.corrected_label or None,
        "region": message_region(decision.region),
        "reviewer": {"name": decision.reviewer_name, "organisation": decision.reviewer_organisation or ""},
        "result": {
            "correlation_id": result.correlation_id,
            "webhook_id": result.webhook_id,
            "source": {
                "bucket": result.source_bucket,
                "name": result.source_name,
                "generation": str(result.source_generation),
            },
            "model_sha256": result.model_sha256,
            "label": result.label,
            "study_instance_uid": result.study_instance_uid,
            "sop_instance_uid": result.sop_instance_uid,
            "sr_sop_instance_uid": sr_uid,
            "seg_sop_instance_uid": seg_uid,
        },
    }


def publish(decision: ReviewDecision, *, force: bool = False) -> bool:
    """Publish one decision and set ``published_at``; False (logged) when it did not get through.

    ``force`` republishes a decision already published (the component is idempotent on the
    review id: the same SR, one receipt)."""
    name = topic()
    fields = {"review_id": str(decision.review_id), "result_id": decision.result_id}
    if name is None:
        logger.warning("review not published: DICOM_RESULTS_REVIEW_TOPIC unset", extra={"fields": fields})
        return False
    if decision.published_at is not None and not force:
        return True
    body = review_message(decision)
    timeout = float(getattr(settings, "DICOM_RESULTS_PUBLISH_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    try:
        future = _publisher().publish(
            name,
            json.dumps(body, ensure_ascii=False).encode(),
            schema=SCHEMA,
            review_id=body["review_id"],
            correlation_id=body["result"]["correlation_id"],
        )
        message_id = future.result(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - Pub/Sub down: publish_reviews sends it later
        logger.warning("review not published; publish_reviews will retry it",
                       extra={"fields": {**fields, "error": type(exc).__name__}})  # fmt: skip
        return False
    if decision.published_at is None:
        decision.mark_published(timezone.now())
    logger.info("review published", extra={"fields": {**fields, "message_id": message_id}})
    return True


@receiver(review_decided, dispatch_uid="dicom_results.review_publish")
def publish_on_decision(sender, decision: ReviewDecision, **kwargs: Any) -> None:
    """After the decision's commit (the signal's contract): a failure never undoes the decision."""
    publish(decision)
