"""One upload on the local stack is one trace (issue 20): the function's, the service's and Django's
spans under one trace id in ``.local/traces.jsonl``, each continuing the one before it, and Django
received that ``traceparent`` (its webhook log and its own JSON log line say so)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from infra.local import traces
from pipeline_common import jsonlog
from tests.e2e.test_pipeline_e2e import run_prefix, write_radiograph
from tests.support import REPO

pytestmark = pytest.mark.e2e

SERVICES = {"ingest-function", "inference-service", "results-site"}
STAGES = {"download", "decode", "predict", "explain", "render", "write", "write_record", "webhook"}


def test_one_upload_is_one_trace_from_the_function_to_django(local_stack, tmp_path):
    prefix = run_prefix("trace")
    name = prefix + "chest.dcm"
    local_stack.gcloud_cp(
        [write_radiograph(tmp_path / "chest.dcm", seed=5)], f"gs://{local_stack.bucket}/{name}"
    )
    outcome = local_stack.outcomes({"chest": name})["chest"]
    assert outcome.status == "completed", outcome.record.get("error")
    correlation_id = outcome.record["correlation_id"]
    trace_file = local_stack.stack.config.trace_file

    spans = traces.wait_for_spans(correlation_id, SERVICES, trace_file, timeout_s=30)
    assert {s["service"] for s in spans} >= SERVICES, f"spans: {[(s['service'], s['name']) for s in spans]}"
    # One trace: no Eventarc traceparent locally, so the function starts it with the correlation id.
    assert {s["trace_id"] for s in spans} == {correlation_id}
    by_name = {(s["service"], s["name"]): s for s in spans}
    function_root = by_name[("ingest-function", "ingest_dicom")]
    publish = by_name[("ingest-function", "publish")]
    service_root = by_name[("inference-service", "inference")]
    webhook = by_name[("inference-service", "webhook")]
    django = by_name[("results-site", "dicom_results.webhook")]
    assert function_root["parent_span_id"] is None
    assert publish["parent_span_id"] == function_root["span_id"]
    assert service_root["parent_span_id"] == publish["span_id"]  # through googclient_traceparent
    assert {n for (svc, n) in by_name if svc == "inference-service"} >= STAGES
    assert webhook["parent_span_id"] == service_root["span_id"]
    assert django["parent_span_id"] == webhook["span_id"]  # through the webhook's traceparent
    assert service_root["attributes"]["outcome"] == "completed"

    # Django received that traceparent: the receiver's record of the request, and the app's log line.
    (hook,) = local_stack.webhooks_for(name)
    traceparent = hook["headers"]["traceparent"]
    assert traceparent.split("-")[1:3] == [correlation_id, webhook["span_id"]]
    log = local_stack.root / "logs" / "webhook-receiver.log"
    stored = [
        entry
        for entry in (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
        if entry.get("message") == "webhook stored" and entry.get("correlation_id") == correlation_id
    ]
    assert len(stored) == 1, stored
    assert stored[0]["traceparent"] == traceparent
    project = local_stack.env["GOOGLE_CLOUD_PROJECT"]
    assert stored[0][jsonlog.TRACE_KEY] == f"projects/{project}/traces/{correlation_id}"

    # The service's and the function's log lines of this upload join the same trace.
    for component in ("inference-service", "ingest-function"):
        lines = (local_stack.root / "logs" / f"{component}.log").read_text().splitlines()
        mine = [json.loads(x) for x in lines if correlation_id in x and x.startswith("{")]
        assert mine, component
        assert {e.get(jsonlog.TRACE_KEY) for e in mine} == {f"projects/{project}/traces/{correlation_id}"}

    # The waterfall command finds it by correlation id and names the slowest stage.
    shown = subprocess.run(
        [sys.executable, "-m", "infra.local.traces", correlation_id, "--file", str(trace_file)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    print(shown)  # pytest -s: the waterfall of one upload
    assert "ingest_dicom" in shown and "dicom_results.webhook" in shown and "slowest stage:" in shown
