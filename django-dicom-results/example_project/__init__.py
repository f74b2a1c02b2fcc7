"""An example production host project for django-dicom-results (``settings.py``, ``urls.py``)."""
