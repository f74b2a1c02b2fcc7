"""The decisions part of a result's detail page: history with receipts, and the review form's
tokens. Kept apart from the views so that viewer.py and review_views.py can both use it."""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from dicom_results import reviews
from dicom_results.models import InferenceResult, ReviewDecision


def review_context(request: HttpRequest, row: InferenceResult) -> dict[str, Any]:
    """What the detail page needs for the decisions: history (with receipts), and the form with
    the tokens of this rendering (a fresh ``review_id``, the opening time, the latest decision
    seen) when the user may decide."""
    history = list(ReviewDecision.objects.filter(result=row).select_related("receipt"))
    superseded = {d.supersedes_id for d in history}
    latest = next((d for d in history if d.pk not in superseded), None)
    may_review = request.user.has_perm(reviews.PERMISSION)
    size = reviews.image_size(row)
    return {
        "history": history,
        "latest": latest,
        "may_review": may_review,
        "can_review": may_review and row.status == InferenceResult.Status.COMPLETED,
        "form": {
            "review_id": uuid.uuid4(),
            "opened_at": reviews.sign_opened_at(timezone.now()),
            "expected_latest": latest.review_id if latest else "",
        },
        "labels": reviews.model_labels(row),
        "reasons": ReviewDecision.Reason.choices,
        "image_size": {"rows": size[0], "columns": size[1]} if size else None,
    }
