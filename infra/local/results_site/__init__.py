"""The local stack's hospital: a minimal Django project hosting django-dicom-results."""
