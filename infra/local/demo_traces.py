"""The demo's trace lines: each file's slowest stage, read from its trace in ``.local/traces.jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.local import traces


def report(trace_file: Path, outcomes: list[Any], timeout_s: float = 10.0) -> list[str]:
    """One line per file: its trace id, span count and slowest service stage (a rejected file has
    the function's spans only, so no stage)."""
    lines = [f"slowest stage per file, from its trace ({trace_file}; `make trace ID=<id>` draws one):"]
    for outcome in outcomes:
        correlation_id = (outcome.record or {}).get("correlation_id")
        if not correlation_id:
            lines.append(f"  {outcome.file}: no correlation id")
            continue
        wanted = {"ingest-function"} | ({"inference-service"} if outcome.status != "rejected" else set())
        spans = traces.wait_for_spans(correlation_id, wanted, trace_file, timeout_s)
        if not spans:
            lines.append(f"  {outcome.file}: no trace found for {correlation_id}")
            continue
        trace_ids = sorted({s["trace_id"] for s in spans})
        slowest = traces.slowest_stage(spans)
        stage = f"{slowest[0]} {slowest[1]:.0f} ms" if slowest else "- (no service stage)"
        lines.append(f"  {outcome.file}: {stage}   trace {','.join(trace_ids)} ({len(spans)} spans)")
    return lines
