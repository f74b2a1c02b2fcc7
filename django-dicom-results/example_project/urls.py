"""The app under ``/results/`` (webhook at ``/results/webhook/``) and Django's admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("results/", include("dicom_results.urls")),
    path("admin/", admin.site.urls),
]
