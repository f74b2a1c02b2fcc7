"""Admin registration: read-only (results come from the pipeline only), filterable."""

from django.contrib import admin

from dicom_results.models import InferenceResult


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
