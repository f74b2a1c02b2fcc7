"""The app under ``/results/`` (webhook at ``/results/webhook/``), plus the stand-in's hooks,
and the static files (the reading view's script and style, the admin's) served by Django
itself: fine for one local user; a production host puts them behind its web server."""

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import include, path, re_path

from infra.local.results_site import recording

urlpatterns = [
    path("results/", include("dicom_results.urls")),
    path("admin/", admin.site.urls),
    path("healthz", recording.health),
    path("_control", recording.control),
    re_path(rf"^{settings.STATIC_URL.strip('/')}/(?P<path>.*)$", serve, {"insecure": True}),
]
