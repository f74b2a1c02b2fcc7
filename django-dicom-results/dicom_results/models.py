"""One row per delivered result, unique on the Standard Webhooks ``webhook-id``; the
append-only audit trail of who opened which result; the radiologists' review decisions
(append-only too) and the receipts of their assessment objects."""

from __future__ import annotations

import uuid

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


class ReviewDecision(models.Model):
    """One radiologist's verdict on one AI result: accept, reject (with a reason) or correct.

    Decisions are history: a later one supersedes an earlier one (``supersedes``) and none is
    ever edited or deleted, so the same append-only guards as the audit trail apply. The
    ``review_id`` is the decision's identity everywhere else: in the ``dicom-review/1``
    message, in the deterministic UIDs of the assessment SR/SEG and in ``ReviewReceipt``.
    """

    class Decision(models.TextChoices):
        ACCEPT = "accept", "accept"
        REJECT = "reject", "reject"
        CORRECT = "correct", "correct"

    class Reason(models.TextChoices):
        FALSE_POSITIVE = "false_positive", "false positive"
        FALSE_NEGATIVE = "false_negative", "false negative"
        WRONG_REGION = "wrong_region", "wrong region"
        IMAGE_NOT_SUITABLE = "image_not_suitable", "image not suitable"
        OTHER = "other", "other"

    review_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    result = models.ForeignKey(
        InferenceResult, on_delete=models.PROTECT, related_name="reviews", editable=False
    )
    supersedes = models.OneToOneField(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="superseded_by",
        editable=False,
    )
    decision = models.CharField(max_length=16, choices=Decision.choices, db_index=True, editable=False)
    reason_code = models.CharField(
        max_length=32, choices=Reason.choices, blank=True, default="", editable=False
    )
    reason_text = models.TextField(blank=True, default="", max_length=2000, editable=False)
    # The right label (one of the model's labels) when the decision is "correct".
    corrected_label = models.CharField(max_length=128, blank=True, default="", editable=False)
    # The right region in source pixel coordinates (columns x, rows y), or null:
    # {"type": "polygon", "points": [[x, y], ...]} or {"type": "point", "x": x, "y": y, "radius": r}.
    region = models.JSONField(null=True, blank=True, editable=False)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", editable=False
    )
    # As the SR's verifying observer will name them: kept as they were at decision time.
    reviewer_name = models.CharField(max_length=150, editable=False)
    reviewer_organisation = models.CharField(max_length=150, blank=True, default="", editable=False)
    opened_at = models.DateTimeField(null=True, blank=True, editable=False)
    decided_at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    # Milliseconds from opening the detail page to deciding (null when the page time is unknown).
    decision_ms = models.PositiveIntegerField(null=True, blank=True, editable=False)
    client_address = models.GenericIPAddressField(null=True, blank=True, editable=False)
    # Set by the dicom-review/1 publisher once the message is accepted by Pub/Sub.
    published_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-decided_at", "-id"]
        default_permissions = ("view",)
        permissions = [("review_result", "Can accept, reject or correct an AI result")]
        constraints = [
            # One first decision per result: every later one supersedes (``supersedes`` is unique),
            # so a result's decisions form one chain even when two reviewers submit at once.
            models.UniqueConstraint(
                fields=["result"],
                condition=models.Q(supersedes__isnull=True),
                name="dicom_results_one_first_review",
            )
        ]

    def __str__(self) -> str:
        return f"review {self.review_id} of result {self.result_id}: {self.decision}"

    def save(self, *args, **kwargs) -> None:
        # ``published_at`` is the one field set after the fact (by the publisher, through
        # ``mark_published``), because Pub/Sub answers after the row is committed.
        if not self._state.adding:
            raise AppendOnlyError("review decisions cannot be updated")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("review decisions cannot be deleted")

    def mark_published(self, when) -> None:
        """Record that Pub/Sub accepted the decision's message (the only permitted update)."""
        models.QuerySet(model=ReviewDecision).filter(pk=self.pk, published_at__isnull=True).update(
            published_at=when
        )
        self.published_at = when


class ReviewReceipt(models.Model):
    """What the review component reported back: the assessment objects stored, or why not.

    One per decision (the component's webhook is idempotent on ``review_id``). The detail page
    reads it to say "stored in PACS".
    """

    class Status(models.TextChoices):
        STORED = "stored", "stored"
        FAILED = "failed", "failed"

    review = models.OneToOneField(ReviewDecision, on_delete=models.PROTECT, related_name="receipt")
    webhook_id = models.CharField(max_length=128, unique=True)
    received_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=Status.choices)
    sr_sop_instance_uid = models.CharField(**UID)
    sr_uri = models.CharField(**URI)
    seg_sop_instance_uid = models.CharField(**UID)
    seg_uri = models.CharField(**URI)
    review_json_uri = models.CharField(**URI)
    error_code = models.CharField(max_length=64, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    body = models.JSONField()

    def __str__(self) -> str:
        return f"receipt for review {self.review.review_id}: {self.status}"
