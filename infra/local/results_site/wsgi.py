"""WSGI entry point for gunicorn (``infra.local.results_site.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application
from opentelemetry import trace

from pipeline_common import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra.local.results_site.settings")
# The hospital side of the local stack traces too: dicom_results continues the webhook's
# traceparent under the global tracer provider, so its span joins the upload's trace.
trace.set_tracer_provider(
    tracing.setup(
        tracing.TraceSettings.from_env(os.environ), "results-site", os.environ.get("GOOGLE_CLOUD_PROJECT")
    )
)
application = get_wsgi_application()
