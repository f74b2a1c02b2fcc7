"""The service's part of an upload's trace (docs/contracts.md, "Tracing"): it continues the
message's ``googclient_traceparent``, times each stage as a span, sends ``traceparent`` to the
webhook, hands it on to ``dicom-delivery/1``, and never fails a request over tracing."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpu_service.request import request_for_object
from gpu_service.results.delivery_queue import delivery_message
from pipeline_common import jsonlog, tracing
from tests.gpu_service.pipeline.test_processing import (  # noqa: F401 - pytest fixtures
    _Capture,
    _dicom_with,
    blob_correlation,
    make_app,
    model,
)
from tests.support.service import PROJECT, WebhookServer, envelope, header_of, request_body, upload

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def span_file(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "traces.jsonl"
    tracing.setup(tracing.TraceSettings(), "unconfigured", None)


def _spans(path: Path) -> list[dict[str, Any]]:
    assert tracing.flush(5000)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _push(app: Any, bucket: str, name: str, attributes: dict[str, str]) -> tuple[Any, list[dict], Any]:
    data = _dicom_with(len(name))
    blob = upload(bucket, name, data)
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    try:
        response = app.test_client().post(
            "/", json=envelope(request_body(blob, header_of(data)), attributes=attributes)
        )
    finally:
        logging.getLogger().removeHandler(capture)
    return response, [json.loads(line) for line in capture.lines], blob


def test_push_continues_the_message_trace_with_a_span_per_stage_and_tells_the_webhook(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    span_file: Path,
) -> None:
    app = make_app(tracing=tracing.TraceSettings("file", str(span_file)))
    response, entries, blob = _push(app, bucket_name, "trace/a.dcm", {tracing.PUBSUB_ATTRIBUTE: INCOMING})
    assert response.status_code == 200, response.get_json()
    spans = _spans(span_file)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    assert {s["trace_id"] for s in spans} == {trace_id}
    (root,) = [s for s in spans if s["name"] == "inference"]
    assert root["parent_span_id"] == "b7ad6b7169203331"
    assert root["attributes"]["correlation_id"] == blob_correlation(blob)
    assert root["attributes"]["outcome"] == "completed"
    stages = {s["name"]: s for s in spans if s["parent_span_id"] == root["span_id"]}
    assert {"download", "decode", "predict", "explain", "render", "write", "write_record", "webhook"} <= set(
        stages
    )
    assert all(s["attributes"]["pipeline.stage"] == s["name"] for s in stages.values())
    # Each PNG's compression and write is one span under the write stage (not a stage of its own).
    outputs = [s for s in spans if s["name"] == "write_output"]
    assert len(outputs) >= 4 and {s["parent_span_id"] for s in outputs} == {stages["write"]["span_id"]}
    assert all("pipeline.stage" not in s["attributes"] for s in outputs)
    # The webhook request names the webhook span of this trace.
    (call,) = webhook.calls
    assert call.headers["traceparent"] == f"00-{trace_id}-{stages['webhook']['span_id']}-01"
    # Every log line written while processing carries the same trace and a span of it.
    span_ids = {s["span_id"] for s in spans}
    inside = [e for e in entries if e.get("correlation_id") == blob_correlation(blob)]
    assert inside
    for e in inside:
        assert e[jsonlog.TRACE_KEY] == f"projects/{PROJECT}/traces/{trace_id}", e
        assert e[tracing.SPAN_ID_KEY] in span_ids, e


def test_malformed_attribute_starts_the_uploads_trace_with_one_warning(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    span_file: Path,
) -> None:
    app = make_app(tracing=tracing.TraceSettings("file", str(span_file)))
    response, entries, blob = _push(
        app, bucket_name, "trace/bad.dcm", {tracing.PUBSUB_ATTRIBUTE: "00-xyz-01"}
    )
    assert response.status_code == 200, response.get_json()
    notes = [e for e in entries if "traceparent" in e["message"]]
    assert [(e["severity"], e["message"]) for e in notes] == [
        ("WARNING", "malformed traceparent ignored; starting a new trace")
    ]
    correlation = blob_correlation(blob)
    assert {s["trace_id"] for s in _spans(span_file)} == {correlation}
    assert webhook.calls[-1].headers["traceparent"].split("-")[1] == correlation


def test_exporter_down_never_fails_the_push_and_is_one_line(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    span_file: Path,
) -> None:
    span_file.mkdir()  # a directory where the span file should be: every export fails
    app = make_app(tracing=tracing.TraceSettings("file", str(span_file)))
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    try:
        for i in range(2):
            attributes = {tracing.PUBSUB_ATTRIBUTE: INCOMING}
            blob = upload(bucket_name, f"trace/down{i}.dcm", _dicom_with(i))
            body = envelope(request_body(blob, {}), attributes=attributes)
            response = app.test_client().post("/", json=body)
            assert response.status_code == 200, response.get_json()
            tracing.flush(5000)  # each request's spans: one failed export each
    finally:
        logging.getLogger().removeHandler(capture)
    said = [json.loads(line) for line in capture.lines if "trace exporter" in line]
    assert [(e["severity"], e["message"]) for e in said] == [
        ("WARNING", "trace exporter failing; spans dropped until it recovers")
    ]
    guarded = tracing._State.exporter
    assert guarded is not None and guarded.failing and guarded.dropped >= 2 * 8


def test_hand_off_message_carries_the_current_trace() -> None:
    request = request_for_object("b", "x.dcm", "7", None)
    with tracing.root_span("inference", None, correlation_id=request.correlation_id) as span:
        _, attributes = delivery_message(request, "webhook_failed")
        context = span.get_span_context()
    # Flags 03: sampled, and a random trace id (W3C Trace Context level 2; a sha256 prefix is).
    assert attributes[tracing.PUBSUB_ATTRIBUTE] == f"00-{context.trace_id:032x}-{context.span_id:016x}-03"
    assert attributes[tracing.PUBSUB_ATTRIBUTE].split("-")[1] == request.correlation_id
