"""Django system checks, so a bad setting stops ``migrate``/``check``/server start with a clear
message instead of turning every webhook into a 500; and, under ``check --deploy``, warnings
for access that is not fit for patient data (no login throttling, sessions that never end)."""

from __future__ import annotations

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from dicom_results.conf import app_settings

# A working day: longer, and a workstation left logged in keeps patient data open overnight.
MAX_SESSION_AGE_S = 12 * 3600


@checks.register()
def settings_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    try:
        app_settings()
    except (ImproperlyConfigured, ValueError, TypeError) as exc:
        return [checks.Error(str(exc), id="dicom_results.E001")]
    return []


@checks.register(checks.Tags.security, deploy=True)
def access_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """django-axes is optional (the app runs without it), so production is told here instead."""
    found = []
    if not apps.is_installed("axes"):
        found.append(
            checks.Warning(
                "Logins to the results viewer are not throttled: wrong passwords can be tried without limit.",
                hint="pip install 'django-dicom-results[axes]' and configure django-axes "
                "(django-dicom-results/README.md, 'Access').",
                id="dicom_results.W001",
            )
        )
    if settings.SESSION_COOKIE_AGE > MAX_SESSION_AGE_S:
        found.append(
            checks.Warning(
                f"SESSION_COOKIE_AGE is {settings.SESSION_COOKIE_AGE} s: a staff session stays "
                "open on patient data longer than a working day.",
                hint=f"Set SESSION_COOKIE_AGE to at most {MAX_SESSION_AGE_S} "
                "(Django's default is two weeks).",
                id="dicom_results.W002",
            )
        )
    return found
