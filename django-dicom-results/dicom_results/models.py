"""One row per delivered result, unique on the Standard Webhooks ``webhook-id``; and the
append-only audit trail of who opened which result."""

from __future__ import annotations

from django.conf import settings
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


class AppendOnlyError(Exception):
    """Raised when code tries to change or delete an audit event: the trail is append-only."""


class AuditEventQuerySet(models.QuerySet):
    """Refuses the bulk paths around ``save``/``delete``: ``update``, ``bulk_update``, ``delete``."""

    def update(self, **kwargs):
        raise AppendOnlyError("audit events cannot be updated")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AppendOnlyError("audit events cannot be updated")

    def delete(self):
        raise AppendOnlyError("audit events cannot be deleted")


class AuditEvent(models.Model):
    """Who opened which result's page or image (later: who decided what), when, from where.

    A hospital must be able to say who looked at a patient's result, so rows are only ever
    added. The trail must also outlive what it names: user and result are kept as plain ids
    (no database constraint, no cascade), so deleting a user or a result neither deletes nor
    rewrites an event, and ``username`` keeps the name as it was. No patient data is copied here.
    """

    class Action(models.TextChoices):
        VIEWED_RESULT = "viewed_result", "viewed result page"
        VIEWED_ARTIFACT = "viewed_artifact", "viewed image or object"
        DECIDED = "decided", "decided"  # the radiologist's review (issue 18, part 1)

    at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        editable=False,
    )
    username = models.CharField(max_length=150, editable=False)
    action = models.CharField(max_length=32, choices=Action.choices, db_index=True, editable=False)
    result = models.ForeignKey(
        InferenceResult,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="audit_events",
        editable=False,
    )
    # What was opened within the result: the artifact role ("overlay", "seg"), or empty.
    detail = models.CharField(max_length=32, blank=True, default="", editable=False)
    client_address = models.GenericIPAddressField(null=True, blank=True, editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        default_permissions = ("view",)  # nobody may add, change or delete one by hand

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username} {self.action} result {self.result_id}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AppendOnlyError("audit events cannot be updated")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("audit events cannot be deleted")
