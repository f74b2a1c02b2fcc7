"""Django app configuration."""

from django.apps import AppConfig


class DicomResultsConfig(AppConfig):
    name = "dicom_results"
    verbose_name = "DICOM inference results"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from dicom_results import (
            checks,  # noqa: F401 - registers the settings check
            review_publish,  # noqa: F401 - publishes each decision (dicom-review/1)
        )
