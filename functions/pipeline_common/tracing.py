"""One OpenTelemetry trace per upload: the tracer, the W3C ``traceparent`` carried by CloudEvents,
Pub/Sub attributes and the webhook, and the trace fields of every JSON log line.

The contract (attribute and header names, span names, exporters) is docs/contracts.md,
"Tracing". The SDK is always installed, even when nothing is exported, so the context is
propagated and logged everywhere; a bad ``traceparent`` or an exporter that is down never
fails a request.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pipeline_common import jsonlog, trace_export
from pipeline_common.env import SettingsError, read_float, read_str
from pipeline_common.jsonlog import log

logger = logging.getLogger("pipeline_common.tracing")

TRACEPARENT = "traceparent"
# google-cloud-pubsub's OpenTelemetry support (pubsub_v1/open_telemetry/context_propagation.py)
# stores the propagator's keys under this prefix: the same name lets both read each other.
PUBSUB_PREFIX = "googclient_"
PUBSUB_ATTRIBUTE = PUBSUB_PREFIX + TRACEPARENT
SPAN_ID_KEY = "logging.googleapis.com/spanId"
SAMPLED_KEY = "logging.googleapis.com/trace_sampled"
EXPORTERS = ("none", "file", "gcp")

_propagator = TraceContextTextMapPropagator()
_new_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("new_trace_id", default=None)


class _UploadIds(RandomIdGenerator):
    """A trace started for an upload takes the upload's correlation id (32 hex, docs/contracts.md)
    as its trace id, so every attempt of one upload without an incoming context shares one trace."""

    def generate_trace_id(self) -> int:
        return _new_trace_id.get() or super().generate_trace_id()


@dataclass(frozen=True)
class TraceSettings:
    """``TRACE_EXPORTER`` (none | file | gcp), ``TRACE_FILE``, ``TRACE_SAMPLE_RATIO``."""

    exporter: str = "none"
    file: str | None = None
    sample_ratio: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TraceSettings:
        exporter = (read_str(env, "TRACE_EXPORTER", "none") or "none").lower()
        if exporter not in EXPORTERS:
            raise SettingsError(f"TRACE_EXPORTER must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
        path = read_str(env, "TRACE_FILE")
        if exporter == "file" and not path:
            raise SettingsError("TRACE_EXPORTER=file needs TRACE_FILE")
        ratio = read_float(env, "TRACE_SAMPLE_RATIO", 1.0)
        if not 0.0 <= ratio <= 1.0:
            raise SettingsError(f"TRACE_SAMPLE_RATIO must be between 0 and 1, got {ratio}")
        return cls(exporter, path, ratio)


class _State:
    lock = threading.Lock()
    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None
    project: str | None = None
    exporter: trace_export.GuardedExporter | None = None


def _sampler(ratio: float) -> ParentBased:
    """A sampled parent is followed; a new trace, or a parent that did not sample (Cloud Run's
    front end samples few requests), is sampled at ``ratio``, keeping its trace id."""
    own = TraceIdRatioBased(ratio)
    return ParentBased(root=own, remote_parent_not_sampled=own)


def setup(
    settings: TraceSettings,
    service_name: str,
    project: str | None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """Install this process's tracer (replacing any earlier one: tests reconfigure). ``exporter``
    overrides the one ``settings`` names (tests, benchmarks)."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=_sampler(settings.sample_ratio),
        id_generator=_UploadIds(),
    )
    name = "custom" if exporter is not None else settings.exporter
    if exporter is None:
        exporter = _exporter(settings, project)
    guarded = (
        exporter
        if exporter is None or isinstance(exporter, trace_export.GuardedExporter)
        else trace_export.GuardedExporter(exporter, name)
    )
    if guarded is not None:
        provider.add_span_processor(BatchSpanProcessor(guarded, schedule_delay_millis=1000))
    with _State.lock:
        old = _State.provider
        _State.provider, _State.tracer = provider, provider.get_tracer("dicom-pipeline")
        _State.project, _State.exporter = project, guarded
    if old is not None:
        old.shutdown()
    jsonlog.add_field_provider(log_fields)
    return provider


def _exporter(settings: TraceSettings, project: str | None) -> SpanExporter | None:
    if settings.exporter == "file":
        assert settings.file
        return trace_export.JsonLinesExporter(settings.file)
    if settings.exporter == "gcp":
        try:
            return trace_export.cloud_trace_exporter(project)
        except Exception as exc:  # noqa: BLE001 - no credentials or project: trace nothing, say it once
            log(logger, logging.WARNING, "trace exporter unavailable; spans are not exported",
                exporter="gcp", reason=f"{type(exc).__name__}: {exc}"[:300])  # fmt: skip
    return None


def tracer() -> trace.Tracer:
    """This process's tracer; before :func:`setup`, one that records nothing but still propagates."""
    if _State.tracer is None:
        setup(TraceSettings(), "unconfigured", None)
    assert _State.tracer is not None
    return _State.tracer


def flush(timeout_ms: int = 2000) -> bool:
    """Export what is queued (a Cloud Run function may be throttled once its event returns)."""
    provider = _State.provider
    return provider.force_flush(timeout_ms) if provider is not None else True


def _extracted(value: str | None) -> otel_context.Context | None:
    """The context ``value`` names, or None when it is absent or malformed."""
    if not value:
        return None
    ctx = _propagator.extract({TRACEPARENT: value})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def valid_traceparent(value: str | None) -> bool:
    return _extracted(value) is not None


@dataclass(frozen=True)
class Incoming:
    """The context to continue (None: a new trace) and what to say about it, once, in the new span."""

    context: otel_context.Context | None
    note: str | None = None
    level: int = logging.INFO
    sources: str | None = None


def incoming_context(candidates: Sequence[tuple[str, str | None]]) -> Incoming:
    """The first well-formed ``traceparent`` of ``(source, value)`` pairs, in order of trust;
    otherwise a new trace, with a WARNING when one was malformed and an INFO when none came."""
    parsed = [(source, value, _extracted(value)) for source, value in candidates]  # each parsed once
    malformed = [source for source, value, ctx in parsed if value and ctx is None]
    for _source, _value, parent in parsed:
        if parent is not None:
            note = "malformed traceparent ignored" if malformed else None
            return Incoming(parent, note, logging.WARNING, ",".join(malformed))
    if malformed:
        return Incoming(None, "malformed traceparent ignored; starting a new trace", logging.WARNING,
                        ",".join(malformed))  # fmt: skip
    sources = ",".join(s for s, _ in candidates) or None
    return Incoming(None, "no incoming traceparent; starting a new trace", logging.INFO, sources)


def pubsub_traceparent(attributes: Mapping[str, str]) -> str | None:
    return attributes.get(PUBSUB_ATTRIBUTE)


def trace_id_of(correlation_id: str | None) -> int | None:
    """The correlation id as a trace id (None when it is not 32 hex digits or is all zeros)."""
    if not correlation_id or len(correlation_id) != 32:
        return None
    try:
        value = int(correlation_id, 16)
    except ValueError:
        return None
    return value or None


@contextlib.contextmanager
def root_span(
    name: str,
    incoming: Incoming | None,
    kind: trace.SpanKind = trace.SpanKind.CONSUMER,
    *,
    correlation_id: str | None = None,
    **attributes: Any,
) -> Iterator[trace.Span]:
    """A span continuing ``incoming`` that ends with the block; without a context to continue, a
    new trace whose id is ``correlation_id`` (when given). The note about a missing or malformed
    ``traceparent`` is logged inside the span, so it carries the trace it started."""
    attrs = {k: v for k, v in {"correlation_id": correlation_id, **attributes}.items() if v is not None}
    parent = incoming.context if incoming is not None else None
    token = _new_trace_id.set(trace_id_of(correlation_id) if parent is None else None)
    try:  # an empty context, not the current one: a root span never nests in another trace
        current = tracer().start_span(
            name, context=parent or otel_context.Context(), kind=kind, attributes=attrs
        )
    finally:
        _new_trace_id.reset(token)
    with trace.use_span(current, end_on_exit=True):
        if incoming is not None and incoming.note:
            log(logger, incoming.level, incoming.note, traceparent_source=incoming.sources)
        yield current


@contextlib.contextmanager
def span(
    name: str, kind: trace.SpanKind = trace.SpanKind.INTERNAL, **attributes: Any
) -> Iterator[trace.Span]:
    """A child of the current span (or a new trace)."""
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with tracer().start_as_current_span(name, kind=kind, attributes=attrs) as current:
        yield current


def start_span(name: str, **attributes: Any) -> trace.Span:
    """A child of the current span that the caller ends (work that other threads do)."""
    return tracer().start_span(name, attributes={k: v for k, v in attributes.items() if v is not None})


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


def inject_attributes(attributes: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span as ``googclient_traceparent`` to Pub/Sub message attributes."""
    value = current_traceparent()
    if value:
        attributes[PUBSUB_ATTRIBUTE] = value
    return attributes


def inject_headers(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    value = current_traceparent()
    if value:
        headers[TRACEPARENT] = value
    return headers


def log_fields() -> dict[str, Any]:
    """Cloud Logging's trace fields for the current span (empty outside one)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    fields: dict[str, Any] = {SPAN_ID_KEY: format(ctx.span_id, "016x"), SAMPLED_KEY: ctx.trace_flags.sampled}
    if _State.project:
        fields[jsonlog.TRACE_KEY] = f"projects/{_State.project}/traces/{format(ctx.trace_id, '032x')}"
    return fields


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
