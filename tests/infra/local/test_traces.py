"""infra.local.traces: finding one upload's spans in the span file, by trace id or correlation id,
its stage times and its waterfall. The spans are made by the real SDK and the real JSON-lines
exporter, as the local stack's processes write them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local import traces
from pipeline_common import tracing

CID = "ab" * 16


@pytest.fixture
def span_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "traces.jsonl"
    tracing.setup(tracing.TraceSettings("file", str(path)), "inference-service", "p")
    with tracing.root_span("inference", None, correlation_id=CID):
        for stage, seconds in (("download", 0.002), ("explain", 0.03), ("webhook", 0.001)):
            with tracing.span(stage, **{"pipeline.stage": stage}):
                time.sleep(seconds)
    with tracing.root_span("inference", None, correlation_id="cd" * 16):
        pass
    assert tracing.flush(5000)
    with path.open("a") as fh:
        fh.write('{"trace_id": "half a line')  # a line being appended by another process
    yield path
    tracing.setup(tracing.TraceSettings(), "unconfigured", None)


def test_an_upload_is_found_by_correlation_id_and_by_trace_id(span_file: Path) -> None:
    spans = traces.load_spans(span_file)
    assert len(spans) == 5
    mine = traces.spans_of(CID, spans)
    assert [s["name"] for s in mine] == ["inference", "download", "explain", "webhook"]
    assert traces.spans_of(CID.upper(), spans) == mine
    assert traces.trace_ids_for("cd" * 16, spans) == ["cd" * 16]
    assert traces.spans_of("ef" * 16, spans) == []


def test_stage_times_and_the_slowest_stage_come_from_the_spans(span_file: Path) -> None:
    mine = traces.spans_of(CID, traces.load_spans(span_file))
    stages = traces.stage_ms(mine)
    assert set(stages) == {"download", "explain", "webhook"}
    assert stages["explain"] >= 30
    assert traces.slowest_stage(mine) == ("explain", stages["explain"])
    assert traces.slowest_stage([]) is None
    summary = traces.stage_summary([CID], traces.load_spans(span_file))
    assert [line.split()[0] for line in summary] == ["download", "explain", "webhook"]
    assert all(line.endswith("(1 uploads)") for line in summary)


def test_waterfall_and_the_command(span_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drawn = traces.waterfall(traces.spans_of(CID, traces.load_spans(span_file))).splitlines()
    assert drawn[0].startswith(f"trace {CID}")
    assert [line.split()[-1] for line in drawn[1:]] == ["inference", "download", "explain", "webhook"]
    # Children are indented under the root; every bar fits its column.
    assert all("|" in line for line in drawn[1:])
    assert traces.main([CID, "--file", str(span_file)]) == 0
    out = capsys.readouterr().out
    assert "slowest stage: explain" in out
    assert traces.main(["ef" * 16, "--file", str(span_file)]) == 1
    assert traces.main(["--file", str(span_file.with_name("absent.jsonl"))]) == 1


def test_file_lines_follow_the_contract(span_file: Path) -> None:
    line = json.loads(span_file.read_text().splitlines()[0])
    assert set(line) == {"trace_id", "span_id", "parent_span_id", "name", "service", "kind", "start_ns",
                         "end_ns", "duration_ms", "status", "attributes"}  # fmt: skip
