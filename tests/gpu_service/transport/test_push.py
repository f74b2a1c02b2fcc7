"""Pub/Sub push envelopes and pulled messages turned into one inference request, and what is refused."""

from __future__ import annotations

import base64
import json

import pytest

from gpu_service.transport.push import MessageError, PubSubMessage, parse_envelope, parse_request
from pipeline_common import naming
from tests.support.service import envelope

# -- settings ------------------------------------------------------------------------------


BODY = {
    "schema": "dicom-inference-request/1",
    "correlation_id": "ignored",
    "source": {"bucket": "b", "name": "a/img.DCM", "generation": "17", "size": "12"},
    "dicom": {"patient_id": "P1", "modality": "CR"},
}


def test_parse_push_envelope_and_request() -> None:
    msg = parse_envelope(envelope(BODY, message_id="42", attempt=3))
    assert (msg.message_id, msg.delivery_attempt) == ("42", 3)
    req = parse_request(msg)
    assert (req.bucket, req.name, req.generation, req.size) == ("b", "a/img.DCM", "17", 12)
    assert req.correlation_id == naming.correlation_id("b", "a/img.DCM", "17")
    assert req.object_key == "b/a/img.DCM#17"
    assert req.dicom["patient_id"] == "P1"
    assert req.event_time is None  # absent from BODY
    timed = parse_request(parse_envelope(envelope({**BODY, "event_time": "2026-01-31T12:00:00Z"})))
    assert timed.event_time == "2026-01-31T12:00:00Z"
    assert parse_request(parse_envelope(envelope({**BODY, "event_time": 5}))).event_time is None
    # The emulator sends no deliveryAttempt.
    assert parse_envelope(envelope(BODY)).delivery_attempt is None


@pytest.mark.parametrize(
    "env",
    [
        None,
        [],
        {"message": "x"},
        {"message": {}},
        {"message": {"data": "***not base64***"}},
    ],
)
def test_malformed_envelopes_are_refused(env: object) -> None:
    with pytest.raises(MessageError):
        parse_envelope(env)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({**BODY, "schema": "other/1"}).encode(),
        json.dumps({**BODY, "source": {"bucket": "b", "name": "n"}}).encode(),
        json.dumps({**BODY, "source": {"bucket": "b", "name": "n", "generation": "abc"}}).encode(),
    ],
)
def test_malformed_requests_are_refused(data: bytes) -> None:
    with pytest.raises(MessageError):
        parse_request(PubSubMessage(data=data, attributes={}))


def test_envelope_base64_roundtrip() -> None:
    raw = {"message": {"data": base64.b64encode(b"{}").decode()}}
    assert parse_envelope(raw).data == b"{}"
