"""The webhook's incoming W3C ``traceparent`` (docs/contracts.md, "Tracing"): log fields that
join Django's lines to the upload's trace in Cloud Logging, and, only when the host project has
``opentelemetry`` installed, a span continuing it. The app never needs OpenTelemetry.

Parsing is ours (a regular expression of the W3C format) so that the app works without the
``opentelemetry`` package; the project id comes from ``DICOM_RESULTS_TRACE_PROJECT``, else
``GOOGLE_CLOUD_PROJECT``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

from django.conf import settings

logger = logging.getLogger(__name__)

HEADER = "traceparent"
TRACE_KEY = "logging.googleapis.com/trace"
SPAN_ID_KEY = "logging.googleapis.com/spanId"
_FORMAT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a well-formed traceparent, else None (all-zero ids and
    version ff are invalid in W3C Trace Context)."""
    match = _FORMAT.match((value or "").strip())
    if not match or match[1] == "ff" or set(match[2]) == {"0"} or set(match[3]) == {"0"}:
        return None
    return match[2], match[3]


def _project() -> str | None:
    return getattr(settings, "DICOM_RESULTS_TRACE_PROJECT", None) or os.environ.get("GOOGLE_CLOUD_PROJECT")


def log_fields(value: str | None) -> dict[str, object]:
    """What each webhook log line carries: the header as received, and Cloud Logging's trace
    fields when it is well formed (a malformed one is said so, never refused)."""
    if not value:
        return {}
    parsed = parse(value)
    if parsed is None:
        return {"traceparent": value[:64], "traceparent_malformed": True}
    trace_id, span_id = parsed
    fields: dict[str, object] = {"traceparent": value.strip(), SPAN_ID_KEY: span_id}
    project = _project()
    if project:
        fields[TRACE_KEY] = f"projects/{project}/traces/{trace_id}"
    return fields


@contextlib.contextmanager
def continued(value: str | None) -> Iterator[None]:
    """A ``dicom_results.webhook`` span under the incoming context, when OpenTelemetry is installed
    (a no-op span unless the host project configured a tracer provider); nothing otherwise."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        yield
        return
    parent = TraceContextTextMapPropagator().extract({HEADER: value}) if parse(value) else None
    tracer = trace.get_tracer("dicom_results")
    with tracer.start_as_current_span("dicom_results.webhook", context=parent, kind=trace.SpanKind.SERVER):
        yield
