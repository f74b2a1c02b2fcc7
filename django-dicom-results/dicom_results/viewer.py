"""The staff-only results viewer: a list, a detail page and the images behind them.

Images are patient data: every view needs a logged-in staff user, and the artifacts are
streamed through Django (``private`` caching only), never linked from the bucket. Opening a
result's page, or being served one of its images or objects, adds an audit event (audit.py).
"""

from __future__ import annotations

from django.contrib.auth.decorators import user_passes_test
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from dicom_results import audit, review_page, storage
from dicom_results.conf import app_settings
from dicom_results.models import AuditEvent, InferenceResult

staff_required = user_passes_test(lambda user: user.is_active and user.is_staff)
IMAGE_ROLES = ("image", "overlay", "mask", "heatmap")
DICOM_ROLES = ("seg", "sr")
PAGE_SIZE = 50


@require_GET
@staff_required
def result_list(request: HttpRequest) -> HttpResponse:
    rows = InferenceResult.objects.all()
    status = request.GET.get("status", "")
    label = request.GET.get("label", "")
    if status:
        rows = rows.filter(status=status)
    if label:
        rows = rows.filter(label=label)
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    labels = (
        InferenceResult.objects.exclude(label="").order_by("label").values_list("label", flat=True).distinct()
    )
    context = {
        "page": page,
        "status": status,
        "label": label,
        "statuses": InferenceResult.Status.values,
        "labels": list(labels),
    }
    return render(request, "dicom_results/list.html", context)


def explanation_summary(body: dict) -> dict | None:
    """How far to trust the picture (docs/contracts.md, "Explanation fields"): the stability of
    the highlighted regions, the samples it took, and why there is nothing to show, if so."""
    explanation = body.get("explanation") if isinstance(body, dict) else None
    if not isinstance(explanation, dict) or "stability" not in explanation:
        return None  # a record from before the stability figure
    reason = explanation.get("reason") or {}
    return {
        "stability": explanation.get("stability"),
        "samples_used": explanation.get("samples_used"),
        "reason": reason.get("message") if isinstance(reason, dict) else None,
    }


METHOD_NAMES = {"lime": "LIME", "gradcam": "Grad-CAM"}


def explanation_methods(row: InferenceResult) -> list[tuple[str, str]]:
    """(method, display name) of each heat map the record holds, when there is a choice."""
    methods = list(row.explanation_heatmaps())
    return [(m, METHOD_NAMES.get(m, m)) for m in methods] if len(methods) > 1 else []


@require_GET
@staff_required
def result_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render_detail(request, get_object_or_404(InferenceResult, pk=pk))


def render_detail(
    request: HttpRequest, row: InferenceResult, review_error=None, status: int = 200
) -> HttpResponse:
    """The reading view: the image with its layers, the identifiers, the decisions and (for a
    reviewer) the review form; also the answer to a refused decision, with its reason."""
    links = []
    for role in DICOM_ROLES:
        uri = row.artifact_uri(role)
        if uri.startswith(("http://", "https://")):
            links.append((role, uri, False))  # a DICOMweb URL: the hospital's own PACS
        elif uri:
            links.append((role, uri, True))  # a gs:// object: downloaded through Django
    context = {
        "row": row,
        "scores": sorted(row.scores.items(), key=lambda kv: -kv[1]),
        "timings": sorted(row.timings_ms.items()),
        "dicom_links": links,
        "explanation": explanation_summary(row.body),
        "methods": explanation_methods(row),
        "review_error": review_error,
        **review_page.review_context(request, row),
    }
    audit.record(request, AuditEvent.Action.VIEWED_RESULT, row)
    return render(request, "dicom_results/detail.html", context, status=status)


@require_GET
@staff_required
def artifact(request: HttpRequest, pk: int, role: str) -> HttpResponse:
    row = get_object_or_404(InferenceResult, pk=pk)
    uri = row.artifact_uri(role)  # "" for a role the result does not have
    if not uri.startswith("gs://"):
        raise Http404("no such artifact")
    conf = app_settings()
    try:
        found = storage.fetch(uri, project=conf.gcs_project, allowed_buckets=conf.allowed_buckets)
    except storage.ArtifactUnavailable as exc:
        raise Http404(str(exc)) from None
    audit.record(request, AuditEvent.Action.VIEWED_ARTIFACT, row, detail=role)
    content_type = "application/dicom" if role in DICOM_ROLES else found.content_type
    response = HttpResponse(found.data, content_type=content_type)
    response["Cache-Control"] = "private, max-age=300"
    response["X-Content-Type-Options"] = "nosniff"
    if role in DICOM_ROLES:
        response["Content-Disposition"] = f'attachment; filename="result-{row.pk}-{role}.dcm"'
    return response
