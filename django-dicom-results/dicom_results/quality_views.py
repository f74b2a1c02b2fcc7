"""``quality/``: the quality-in-use page, per model (staff only; figures in quality.py)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET

from dicom_results import quality
from dicom_results.models import ReviewDecision
from dicom_results.viewer import staff_required


@require_GET
@staff_required
def quality_page(request: HttpRequest) -> HttpResponse:
    bucket = request.GET.get("bucket", "week")
    if bucket not in quality.BUCKETS:
        bucket = "week"
    models = quality.summarise([quality.as_reviewed(d) for d in quality.latest_reviews()], bucket)
    reason_names = dict(ReviewDecision.Reason.choices)
    rows = [
        {
            "q": q,
            "chart": mark_safe(q.chart),  # built from numbers and escaped dates only (quality.py)
            "reasons": [(reason_names.get(code, code or "none"), n) for code, n in q.reasons],
        }
        for q in models
    ]
    return render(request, "dicom_results/quality.html", {"models": rows, "bucket": bucket})
