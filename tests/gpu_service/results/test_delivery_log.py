"""The final delivery log line carries the numbers the log-based metrics of infra/terraform/monitoring.tf
read: upload-to-webhook latency, explanation samples and stability, left out when unknown."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from gpu_service.outcome import RequestOutcome
from gpu_service.request import InferenceRequest
from gpu_service.results.delivery import ResultDelivery, delivered_fields
from gpu_service.results.webhook import Delivery
from gpu_service.timing import StageTimer
from pipeline_common.jsonlog import CloudLoggingFormatter

NOW = datetime(2026, 1, 31, 12, 0, 5, tzinfo=UTC)
COMPLETED = {"status": "completed", "explanation": {"samples_used": 300, "stability": 0.9123}}


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        ("2026-01-31T12:00:00Z", 5000.0),
        ("2026-01-31T12:00:00.250000+00:00", 4750.0),
        ("2026-01-31T13:00:00+01:00", 5000.0),
        ("2026-01-31T12:00:00", 5000.0),  # naive: taken as UTC
    ],
)
def test_latency_from_the_upload_event_time(event_time: str, expected: float) -> None:
    assert delivered_fields({}, event_time, NOW) == {"upload_to_webhook_ms": expected}


@pytest.mark.parametrize("event_time", [None, "", "yesterday", "2026-01-31T12:00:06Z"])
def test_no_latency_when_the_time_is_unknown_or_ahead(event_time: str | None) -> None:
    assert "upload_to_webhook_ms" not in delivered_fields(COMPLETED, event_time, NOW)


def test_explanation_numbers_of_a_completed_record_only() -> None:
    assert delivered_fields(COMPLETED, None, NOW) == {
        "explanation_samples": 300,
        "explanation_stability": 0.9123,
    }
    failed = {"status": "failed", "explanation": None, "error": {"code": "decode_failed"}}
    assert delivered_fields(failed, None, NOW) == {}
    odd = {"explanation": {"samples_used": True, "stability": float("nan")}}
    assert delivered_fields(odd, None, NOW) == {}


class _Outputs:
    model_sha = "sha"

    def __init__(self) -> None:
        self.cloud_storage = SimpleNamespace(mark_delivered=lambda *a: None)

    def location(self, request: InferenceRequest, suffix: str) -> Any:
        return SimpleNamespace(uri=f"gs://{request.bucket}/{request.name}{suffix}")


class _Webhook:
    def deliver(self, body: bytes, *, idempotency_key: str, correlation_id: str) -> Delivery:
        return Delivery(True, 200, 1, None, 12.0)


def test_the_final_delivery_line_carries_the_fields(caplog: pytest.LogCaptureFixture) -> None:
    request = InferenceRequest("b", "a/x.dcm", "7", "corr", event_time="2000-01-01T00:00:00Z")
    delivery = ResultDelivery(_Outputs(), _Webhook())
    with caplog.at_level(logging.INFO, logger="gpu_service.results.delivery"):
        delivery._deliver(request, b"{}", dict(COMPLETED), RequestOutcome.COMPLETED, StageTimer(), 3)
    (line,) = [r for r in caplog.records if r.getMessage() == "request completed"]
    entry = json.loads(CloudLoggingFormatter().format(line))
    assert entry["outcome"] == "completed" and entry["result_status"] == "completed"
    assert entry["upload_to_webhook_ms"] > 0
    assert (entry["explanation_samples"], entry["explanation_stability"]) == (300, 0.9123)
