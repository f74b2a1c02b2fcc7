"""The app's settings, read once from the host project's Django settings.

``DICOM_RESULTS_WEBHOOK_SECRET`` (``whsec_...``, required), ``DICOM_RESULTS_TOLERANCE_S``
(replay window, at most the specification's 300 s), ``DICOM_RESULTS_MAX_BODY_BYTES``,
``DICOM_RESULTS_ALLOWED_BUCKETS`` (buckets the viewer may read; empty: those named by a
stored result), ``DICOM_RESULTS_GCS_PROJECT`` and ``DICOM_RESULTS_REVIEWER_ORGANISATION``
(the organisation the assessment SR names beside the reviewer as verifying observer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# The standardwebhooks library refuses timestamps more than 5 minutes away and has no setting
# for it, so our tolerance can only narrow that window.
MAX_TOLERANCE_S = 300
DEFAULT_MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class AppSettings:
    webhook_secret: str = field(repr=False)
    tolerance_s: int = MAX_TOLERANCE_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allowed_buckets: frozenset[str] = frozenset()
    gcs_project: str | None = None
    reviewer_organisation: str = ""


def app_settings() -> AppSettings:
    """Read on every call (cheap), so ``override_settings`` in tests and hosts is honoured."""
    secret = getattr(settings, "DICOM_RESULTS_WEBHOOK_SECRET", "") or ""
    if not secret.startswith("whsec_"):
        raise ImproperlyConfigured(
            "DICOM_RESULTS_WEBHOOK_SECRET must be a Standard Webhooks secret (whsec_...)"
        )
    tolerance = int(getattr(settings, "DICOM_RESULTS_TOLERANCE_S", MAX_TOLERANCE_S))
    if not 0 < tolerance <= MAX_TOLERANCE_S:
        raise ImproperlyConfigured(f"DICOM_RESULTS_TOLERANCE_S must be between 1 and {MAX_TOLERANCE_S}")
    max_body = int(getattr(settings, "DICOM_RESULTS_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
    return AppSettings(
        webhook_secret=secret,
        tolerance_s=tolerance,
        max_body_bytes=max_body,
        allowed_buckets=frozenset(getattr(settings, "DICOM_RESULTS_ALLOWED_BUCKETS", ()) or ()),
        gcs_project=getattr(settings, "DICOM_RESULTS_GCS_PROJECT", None),
        reviewer_organisation=str(getattr(settings, "DICOM_RESULTS_REVIEWER_ORGANISATION", "") or ""),
    )
