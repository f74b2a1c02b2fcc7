"""Where finished spans go: Cloud Trace in production, a JSON-lines file locally, and a guard
that keeps an exporter that is down from failing requests or flooding the logs.

The OpenTelemetry SDK has no file exporter (its ``ConsoleSpanExporter`` writes one
multi-line JSON document per span to a stream), so :class:`JsonLinesExporter` is ours: one
line per span (docs/contracts.md, "Tracing"), appended with one ``write`` per batch so that
several processes can share one file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from pipeline_common.jsonlog import log

logger = logging.getLogger("pipeline_common.tracing")

# The Cloud Trace exporter logs every failed batch at ERROR with its stack; the guard below
# reports an outage once instead, so that message is dropped (its other warnings are kept).
CLOUD_TRACE_LOGGER = "opentelemetry.exporter.cloud_trace"
_CLOUD_TRACE_FAILURE = "Error while writing to Cloud Trace"


def span_line(span: ReadableSpan) -> dict[str, Any]:
    """One span as the file's JSON object (hex ids, as Cloud Trace and ``traceparent`` show them)."""
    ctx = span.get_span_context()
    start, end = span.start_time or 0, span.end_time or span.start_time or 0
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "kind": span.kind.name,
        "start_ns": start,
        "end_ns": end,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


class JsonLinesExporter(SpanExporter):
    """Appends spans to a file, one JSON object per line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_line(s), default=str) + "\n" for s in spans).encode("utf-8")
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)  # O_APPEND: one write per batch, never interleaved with another process's
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class _DropCloudTraceFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_CLOUD_TRACE_FAILURE)


class GuardedExporter(SpanExporter):
    """Wraps an exporter: an exception or a failed export drops that batch and is reported by
    one WARNING line per outage (not one per batch or span), and one INFO line on recovery."""

    def __init__(self, inner: SpanExporter, name: str) -> None:
        self.inner = inner
        self.name = name
        self.failing = False
        self.dropped = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
            reason = None if result is SpanExportResult.SUCCESS else "export failed"
        except Exception as exc:  # noqa: BLE001 - any exporter error: drop the batch, never raise
            result, reason = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        with self._lock:
            if reason is not None:
                self.dropped += len(spans)
                if not self.failing:
                    self.failing = True
                    log(logger, logging.WARNING, "trace exporter failing; spans dropped until it recovers",
                        exporter=self.name, reason=reason[:300])  # fmt: skip
            elif self.failing:
                self.failing = False
                log(logger, logging.INFO, "trace exporter recovered",
                    exporter=self.name, spans_dropped=self.dropped)  # fmt: skip
                self.dropped = 0
        return result

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # shutting down is best effort
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def cloud_trace_exporter(project: str | None) -> SpanExporter:
    """The Cloud Trace exporter (``opentelemetry-exporter-gcp-trace``); raises when it cannot be
    built (no credentials, no project): the caller falls back to exporting nothing."""
    from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

    quiet_cloud_trace_failures()
    return CloudTraceSpanExporter(project_id=project or None)


def quiet_cloud_trace_failures() -> None:
    """Drop the Cloud Trace exporter's per-batch failure line (the guard reports outages); idempotent."""
    cloud_logger = logging.getLogger(CLOUD_TRACE_LOGGER)
    if not any(isinstance(f, _DropCloudTraceFailures) for f in cloud_logger.filters):
        cloud_logger.addFilter(_DropCloudTraceFailures())
