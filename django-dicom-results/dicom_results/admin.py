"""Admin registration: read-only (results come from the pipeline only, audit events and review
decisions are append-only), filterable."""

from django.contrib import admin

from dicom_results.models import AuditEvent, InferenceResult, ReviewDecision


@admin.register(InferenceResult)
class InferenceResultAdmin(admin.ModelAdmin):
    list_display = ("received_at", "status", "label", "score", "modality", "source_uri", "model_version")
    list_filter = ("status", "label", "modality")
    search_fields = ("source_uri", "correlation_id", "webhook_id", "study_instance_uid", "sop_instance_uid")
    date_hierarchy = "received_at"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only for everyone, superusers included: the trail is append-only (models.py)."""

    list_display = ("at", "username", "action", "result_id", "detail", "client_address")
    # The fields are not editable (models.py), so the admin shows them only when named here.
    fields = readonly_fields = ("at", "username", "user", "action", "result", "detail", "client_address")
    list_filter = (
        "action",
        ("user", admin.RelatedOnlyFieldListFilter),
        ("result", admin.RelatedOnlyFieldListFilter),
        ("at", admin.DateFieldListFilter),
    )
    date_hierarchy = "at"
    search_fields = ("username",)
    list_select_related = False  # result_id is shown as is: the result may be gone

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ReviewDecision)
class ReviewDecisionAdmin(admin.ModelAdmin):
    """Read-only for everyone, superusers included: decisions are history (models.py)."""

    list_display = ("decided_at", "reviewer_name", "decision", "reason_code", "corrected_label", "result_id",
                    "decision_ms", "published_at")  # fmt: skip
    fields = readonly_fields = (
        "review_id", "result", "supersedes", "decision", "reason_code", "reason_text", "corrected_label",
        "region", "reviewer", "reviewer_name", "reviewer_organisation", "opened_at", "decided_at",
        "decision_ms", "client_address", "published_at",
    )  # fmt: skip
    list_filter = (
        "decision",
        "reason_code",
        ("reviewer", admin.RelatedOnlyFieldListFilter),
        ("result", admin.RelatedOnlyFieldListFilter),
        ("decided_at", admin.DateFieldListFilter),
    )
    date_hierarchy = "decided_at"
    search_fields = ("reviewer_name", "=review_id")
    list_select_related = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
