"""Trace context propagation (docs/contracts.md, "Tracing") and its bad inputs: a malformed or
missing ``traceparent`` and an exporter that is down. Spans go through the real SDK and the
real JSON-lines exporter; interoperability is checked against google-cloud-pubsub's own
OpenTelemetry getter and setter."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.pubsub_v1.open_telemetry.context_propagation import (
    OpenTelemetryContextGetter,
    OpenTelemetryContextSetter,
)
from google.cloud.trace_v2 import TraceServiceClient
from google.pubsub_v1 import PubsubMessage
from opentelemetry import trace
from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pipeline_common import jsonlog, trace_export, tracing
from pipeline_common.env import SettingsError

PROJECT = "trace-proj"
CORRELATION = "5f" * 16
INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(jsonlog.CloudLoggingFormatter())
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(self.format(record)))


@pytest.fixture
def lines() -> Iterator[_Lines]:
    handler = _Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


@pytest.fixture
def span_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "traces.jsonl"
    tracing.setup(tracing.TraceSettings("file", str(path)), "test-service", PROJECT)
    yield path
    tracing.setup(tracing.TraceSettings(), "unconfigured", None)


def _spans(path: Path) -> list[dict[str, Any]]:
    assert tracing.flush(5000)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_settings_refuse_unknown_exporters_and_a_file_exporter_without_a_file() -> None:
    assert tracing.TraceSettings.from_env({}) == tracing.TraceSettings("none", None, 1.0)
    with pytest.raises(SettingsError):
        tracing.TraceSettings.from_env({"TRACE_EXPORTER": "zipkin"})
    with pytest.raises(SettingsError):
        tracing.TraceSettings.from_env({"TRACE_EXPORTER": "file"})
    with pytest.raises(SettingsError):
        tracing.TraceSettings.from_env({"TRACE_SAMPLE_RATIO": "2"})


def test_attribute_name_is_the_pubsub_clients_and_both_read_each_other(span_file: Path) -> None:
    # Ours -> the client library's getter.
    with tracing.root_span("publisher", None, correlation_id=CORRELATION) as span:
        attributes = tracing.inject_attributes({"schema": "x"})
        ours = span.get_span_context()
    assert set(attributes) == {"schema", "googclient_traceparent"}
    message = PubsubMessage(data=b"{}", attributes=attributes)
    extracted = TraceContextTextMapPropagator().extract(message, getter=OpenTelemetryContextGetter())
    theirs = trace.get_current_span(extracted).get_span_context()
    assert (theirs.trace_id, theirs.span_id) == (ours.trace_id, ours.span_id)
    # The client library's setter -> ours.
    message = PubsubMessage(data=b"{}")
    TraceContextTextMapPropagator().inject(
        message,
        context=trace.set_span_in_context(trace.NonRecordingSpan(ours)),
        setter=OpenTelemetryContextSetter(),
    )
    incoming = tracing.incoming_context(
        [(tracing.PUBSUB_ATTRIBUTE, tracing.pubsub_traceparent(message.attributes))]
    )
    with tracing.root_span("subscriber", incoming, correlation_id="ab" * 16) as child:
        assert child.get_span_context().trace_id == ours.trace_id
    by_name = {s["name"]: s for s in _spans(span_file)}
    assert by_name["subscriber"]["parent_span_id"] == by_name["publisher"]["span_id"]


def test_continued_context_keeps_trace_and_parent_and_logs_carry_it(span_file: Path, lines: _Lines) -> None:
    incoming = tracing.incoming_context([(tracing.PUBSUB_ATTRIBUTE, INCOMING)])
    assert incoming.note is None
    with tracing.root_span("inference", incoming, correlation_id=CORRELATION), tracing.span("download"):
        logging.getLogger("x").info("inside")
        header = tracing.inject_headers({})
    (entry,) = [e for e in lines.entries if e["message"] == "inside"]
    assert entry[jsonlog.TRACE_KEY] == f"projects/{PROJECT}/traces/0af7651916cd43dd8448eb211c80319c"
    spans = {s["name"]: s for s in _spans(span_file)}
    assert entry[tracing.SPAN_ID_KEY] == spans["download"]["span_id"]
    assert entry[tracing.SAMPLED_KEY] is True
    assert spans["inference"]["parent_span_id"] == "b7ad6b7169203331"
    assert spans["download"]["parent_span_id"] == spans["inference"]["span_id"]
    assert header["traceparent"] == f"00-0af7651916cd43dd8448eb211c80319c-{spans['download']['span_id']}-01"
    assert spans["inference"]["attributes"]["correlation_id"] == CORRELATION
    assert spans["inference"]["service"] == "test-service"


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
    ],
)
def test_malformed_traceparent_starts_the_uploads_trace_and_says_so_once(
    span_file: Path, lines: _Lines, bad: str
) -> None:
    incoming = tracing.incoming_context([(tracing.PUBSUB_ATTRIBUTE, bad)])
    with tracing.root_span("inference", incoming, correlation_id=CORRELATION):
        pass
    notes = [e for e in lines.entries if "traceparent" in e["message"]]
    assert [(e["severity"], e["message"]) for e in notes] == [
        ("WARNING", "malformed traceparent ignored; starting a new trace")
    ]
    assert notes[0]["traceparent_source"] == tracing.PUBSUB_ATTRIBUTE
    # The note is written inside the new trace, so it can be found from it.
    assert notes[0][jsonlog.TRACE_KEY] == f"projects/{PROJECT}/traces/{CORRELATION}"
    (span,) = _spans(span_file)
    assert (span["trace_id"], span["parent_span_id"]) == (CORRELATION, None)


def test_missing_traceparent_is_one_info_line_and_a_malformed_first_choice_falls_back(
    span_file: Path, lines: _Lines
) -> None:
    with tracing.root_span("a", tracing.incoming_context([("cloudevent", None)]), correlation_id=CORRELATION):
        pass
    incoming = tracing.incoming_context([("cloudevent", "nope"), ("header", INCOMING)])
    with tracing.root_span("b", incoming, correlation_id=CORRELATION):
        pass
    notes = [(e["severity"], e["message"]) for e in lines.entries if "traceparent" in e["message"]]
    assert notes == [
        ("INFO", "no incoming traceparent; starting a new trace"),
        ("WARNING", "malformed traceparent ignored"),
    ]
    by_name = {s["name"]: s for s in _spans(span_file)}
    assert by_name["a"]["trace_id"] == CORRELATION
    assert by_name["b"]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def test_root_span_never_nests_in_the_current_trace(span_file: Path) -> None:
    with tracing.root_span("outer", None, correlation_id=CORRELATION):
        with tracing.root_span("inner", None, correlation_id="12" * 16):
            pass
        with tracing.root_span("random", None):
            pass
    by_name = {s["name"]: s for s in _spans(span_file)}
    assert by_name["inner"]["trace_id"] == "12" * 16 and by_name["inner"]["parent_span_id"] is None
    assert by_name["random"]["trace_id"] not in (CORRELATION, "12" * 16)


def test_a_parent_that_did_not_sample_is_still_recorded_under_its_trace(span_file: Path) -> None:
    unsampled = INCOMING[:-2] + "00"
    with tracing.root_span("x", tracing.incoming_context([("header", unsampled)])) as span:
        assert span.is_recording()
    (line,) = _spans(span_file)
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cloud_trace_exporter_down_never_fails_and_is_one_log_line(lines: _Lines) -> None:
    """The real Cloud Trace exporter, pointed at a port nothing listens on."""
    client = TraceServiceClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{_closed_port()}"),
    )
    exporter = CloudTraceSpanExporter(project_id=PROJECT, client=client)
    trace_export.quiet_cloud_trace_failures()  # as cloud_trace_exporter() does
    tracing.setup(tracing.TraceSettings(), "test-service", PROJECT, exporter=exporter)
    try:
        started = time.perf_counter()
        for i in range(3):  # three batches, each flushed: three failed exports
            with tracing.root_span("request", None, correlation_id=f"{i + 1:032x}"), tracing.span("stage"):
                pass
            tracing.flush(10_000)
        elapsed = time.perf_counter() - started
    finally:
        tracing.setup(tracing.TraceSettings(), "unconfigured", None)
    failing = [e for e in lines.entries if e["message"].startswith("trace exporter")]
    assert [(e["severity"], e["message"]) for e in failing] == [
        ("WARNING", "trace exporter failing; spans dropped until it recovers")
    ]
    assert not [e for e in lines.entries if "Cloud Trace" in e["message"]]
    assert elapsed < 10


def test_recovery_is_said_once_with_the_spans_dropped(tmp_path: Path, lines: _Lines) -> None:
    path = tmp_path / "missing-dir-file"
    path.mkdir()  # a directory where the file should be: every append fails
    guarded = trace_export.GuardedExporter(trace_export.JsonLinesExporter(str(path)), "file")
    tracing.setup(tracing.TraceSettings(), "test-service", PROJECT, exporter=guarded)
    try:
        for _ in range(2):
            with tracing.root_span("r", None):
                pass
            tracing.flush(5000)
        path.rmdir()
        with tracing.root_span("r", None):
            pass
        tracing.flush(5000)
    finally:
        tracing.setup(tracing.TraceSettings(), "unconfigured", None)
    said = [
        (e["message"], e.get("spans_dropped"))
        for e in lines.entries
        if e["message"].startswith("trace exporter")
    ]
    assert said == [
        ("trace exporter failing; spans dropped until it recovers", None),
        ("trace exporter recovered", 2),
    ]
    assert len(path.read_text().splitlines()) == 1


def test_gcp_exporter_without_credentials_is_one_line_and_tracing_goes_on(
    lines: _Lines, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    tracing.setup(tracing.TraceSettings("gcp"), "test-service", None)
    try:
        with tracing.root_span("r", None, correlation_id=CORRELATION):
            assert tracing.current_trace_id() == CORRELATION
    finally:
        tracing.setup(tracing.TraceSettings(), "unconfigured", None)
    said = [e["message"] for e in lines.entries if e["message"].startswith("trace exporter")]
    assert said == ["trace exporter unavailable; spans are not exported"]
