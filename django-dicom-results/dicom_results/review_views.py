"""The radiologist's side of the viewer: the review form's POST and the worklist.

The POST needs the ``dicom_results.review_result`` permission (given through a group such as
"radiologists"): other staff get 403, and the detail page shows them the decisions without a
form (:func:`review_context`). CSRF protection is Django's, with no exemption. The checks
themselves live in reviews.py; this module only reads the form and answers.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, time
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from dicom_results import audit, reviews
from dicom_results.models import InferenceResult
from dicom_results.viewer import render_detail, staff_required

PAGE_SIZE = 50


def _uuid(value: str, field: str) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise reviews.ReviewError("bad_form", f"'{field}' is not a UUID") from None


def _region(value: str) -> Any:
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise reviews.ReviewError("bad_region", "the region is not JSON") from None


@require_POST
@staff_required
def review(request: HttpRequest, pk: int) -> HttpResponse:
    """Record one decision; redirect to the result's history, or show the page with the reason."""
    user = request.user
    if not user.has_perm(reviews.PERMISSION):
        raise PermissionDenied("you may see decisions but not make them")
    row = InferenceResult.objects.filter(pk=pk).first()
    if row is None:
        return render(request, "dicom_results/review_error.html",
                      {"message": "no such result: it is unknown or was deleted"}, status=404)  # fmt: skip
    form = request.POST
    try:
        reviews.record_decision(
            row,
            user,
            decision=form.get("decision", ""),
            reason_code=form.get("reason_code", ""),
            reason_text=form.get("reason_text", ""),
            corrected_label=form.get("corrected_label", ""),
            region=_region(form.get("region", "")),
            opened_at=reviews.read_opened_at(form.get("opened_at", "")),
            expected_latest=_uuid(form.get("expected_latest", ""), "expected_latest"),
            review_id=_uuid(form.get("review_id", ""), "review_id"),
            client_address=audit.client_address(request),
        )
    except reviews.ReviewError as exc:
        return render_detail(request, row, review_error=exc, status=exc.http_status)
    return HttpResponseRedirect(reverse("dicom_results:detail", args=[row.pk]) + "#history", status=303)


def worklist_counts(unreviewed: int) -> dict[str, int]:
    """``unreviewed``: the worklist's own count (its paginator has made it already)."""
    completed = InferenceResult.objects.filter(status=InferenceResult.Status.COMPLETED)
    start = timezone.make_aware(datetime.combine(timezone.localdate(), time.min))
    return {
        "unreviewed": unreviewed,
        "reviewed_today": completed.filter(reviews__decided_at__gte=start).distinct().count(),
        "total": completed.count(),
    }


@require_GET
@staff_required
def worklist(request: HttpRequest) -> HttpResponse:
    """Unreviewed completed results, oldest first, with the identifiers to match the patient."""
    rows = InferenceResult.objects.filter(
        status=InferenceResult.Status.COMPLETED, reviews__isnull=True
    ).order_by("received_at", "id")
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {"page": page, "counts": worklist_counts(page.paginator.count)}
    return render(request, "dicom_results/worklist.html", context)
