"""The app under ``/results/`` (webhook at ``/results/webhook/``), plus the stand-in's hooks."""

from django.contrib import admin
from django.urls import include, path

from infra.local.results_site import recording

urlpatterns = [
    path("results/", include("dicom_results.urls")),
    path("admin/", admin.site.urls),
    path("healthz", recording.health),
    path("_control", recording.control),
]
