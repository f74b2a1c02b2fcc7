"""One row per delivered result, unique on the Standard Webhooks ``webhook-id``."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

URI = {"max_length": 1024, "blank": True, "default": ""}
UID = {"max_length": 64, "blank": True, "default": ""}


class InferenceResult(models.Model):
    class Status(models.TextChoices):
        COMPLETED = "completed", "completed"
        FAILED = "failed", "failed"

    # The idempotency key (sha256 of source generation and model): the unique constraint
    # below is what makes concurrent duplicate deliveries land once.
    webhook_id = models.CharField(max_length=128)
    correlation_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, db_index=True)
    label = models.CharField(max_length=128, blank=True, default="", db_index=True)
    score = models.FloatField(null=True, blank=True)
    scores = models.JSONField(default=dict, blank=True)
    modality = models.CharField(max_length=16, blank=True, default="", db_index=True)
    patient_id = models.CharField(max_length=128, blank=True, default="")

    source_bucket = models.CharField(max_length=222)
    source_name = models.CharField(max_length=1024)
    source_uri = models.CharField(max_length=1300)
    source_generation = models.CharField(max_length=32)

    model_name = models.CharField(max_length=256, blank=True, default="")
    model_version = models.CharField(max_length=128, blank=True, default="")
    model_sha256 = models.CharField(max_length=64, blank=True, default="")

    image_uri = models.CharField(**URI)
    mask_uri = models.CharField(**URI)
    overlay_uri = models.CharField(**URI)
    heatmap_uri = models.CharField(**URI)

    study_instance_uid = models.CharField(**UID)
    series_instance_uid = models.CharField(**UID)
    sop_instance_uid = models.CharField(**UID)
    seg_uri = models.CharField(**URI)
    sr_uri = models.CharField(**URI)
    dicom_series_instance_uids = models.JSONField(default=list, blank=True)
    dicom_sop_instance_uids = models.JSONField(default=list, blank=True)

    timings_ms = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    body = models.JSONField()

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["webhook_id"], name="dicom_results_unique_webhook_id")]

    def __str__(self) -> str:
        outcome = self.label or self.error_code or self.status
        return f"{self.source_uri}#{self.source_generation}: {outcome}"

    def artifact_uri(self, role: str) -> str:
        """The stored gs:// URI of one artifact the viewer may show (empty when absent)."""
        return {
            "image": self.image_uri,
            "overlay": self.overlay_uri,
            "mask": self.mask_uri,
            "heatmap": self.heatmap_uri,
            "seg": self.seg_uri,
            "sr": self.sr_uri,
        }.get(role, "")
