"""A Django system check, so a bad setting stops ``migrate``/``check``/server start with a clear
message instead of turning every webhook into a 500."""

from __future__ import annotations

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from dicom_results.conf import app_settings


@checks.register()
def settings_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    try:
        app_settings()
    except (ImproperlyConfigured, ValueError, TypeError) as exc:
        return [checks.Error(str(exc), id="dicom_results.E001")]
    return []
