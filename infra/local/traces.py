"""One upload's spans from the local stack's ``.local/traces.jsonl``, printed as a waterfall.

``python -m infra.local.traces <correlation id | trace id>`` (``make trace ID=...``); without
an id, the latest trace. The span lines are docs/contracts.md's ("Tracing"). The demo and the
benchmarks read per-stage times from here (:func:`stage_ms`, :func:`slowest_stage`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_FILE = Path(".local/traces.jsonl")
BAR_WIDTH = 40


def load_spans(path: Path = DEFAULT_FILE) -> list[dict[str, Any]]:
    """Every complete line of the file (a line being appended is skipped)."""
    if not path.exists():
        return []
    spans = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            spans.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return spans


def trace_ids_for(key: str, spans: Iterable[dict[str, Any]]) -> list[str]:
    """Trace ids that ``key`` names: a trace id itself, or the correlation id a span carries."""
    key = key.strip().lower()
    ids: dict[str, None] = {}
    for span in spans:
        if span["trace_id"] == key or (span.get("attributes") or {}).get("correlation_id") == key:
            ids[span["trace_id"]] = None
    return list(ids)


def spans_of(key: str, spans: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """All spans of the traces ``key`` names, by start time."""
    ids = set(trace_ids_for(key, spans))
    return sorted((s for s in spans if s["trace_id"] in ids), key=lambda s: s["start_ns"])


ROOT_SPANS = {"ingest-function": "ingest_dicom", "inference-service": "inference"}


def wait_for_spans(
    key: str, services: set[str], path: Path = DEFAULT_FILE, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """The spans of ``key`` once every one of ``services`` has written one, and its root span
    where it has one (:data:`ROOT_SPANS`: a root ends after its children, so it is exported
    last; exports are batched about once a second), or what there is at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = spans_of(key, load_spans(path))
        written = {(s.get("service"), s.get("name")) for s in found}
        complete = all(
            (service, ROOT_SPANS[service]) in written
            if service in ROOT_SPANS
            else any(svc == service for svc, _ in written)
            for service in services
        )
        if complete or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def stage_ms(spans: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Milliseconds per service stage (the spans StageTimer makes), summed over attempts."""
    out: dict[str, float] = {}
    for span in spans:
        stage = (span.get("attributes") or {}).get("pipeline.stage")
        if stage:
            out[stage] = round(out.get(stage, 0.0) + float(span["duration_ms"]), 1)
    return out


def slowest_stage(spans: Iterable[dict[str, Any]]) -> tuple[str, float] | None:
    stages = stage_ms(spans)
    if not stages:
        return None
    name = max(stages, key=lambda k: stages[k])
    return name, stages[name]


def stage_summary(keys: Iterable[str], spans: Sequence[dict[str, Any]]) -> list[str]:
    """p50 and p95 of each stage over the uploads ``keys`` name, read from their spans (lines for a
    benchmark's report), with the function's ``ingest_dicom`` span beside the service's stages."""
    traces: dict[str, list[dict[str, Any]]] = {}  # trace id -> its spans, by start time
    named: dict[str, dict[str, None]] = {}  # correlation id -> its trace ids
    for span in sorted(spans, key=lambda s: s["start_ns"]):
        traces.setdefault(span["trace_id"], []).append(span)
        correlation = (span.get("attributes") or {}).get("correlation_id")
        if correlation:
            named.setdefault(correlation, {})[span["trace_id"]] = None
    per_stage: dict[str, list[float]] = {}
    for key in keys:  # what spans_of(key, spans) gives, from the indexes (one pass, not one per key)
        key = key.strip().lower()
        ids = {key} | set(named.get(key, {}))
        found = sorted((s for i in ids for s in traces.get(i, [])), key=lambda s: s["start_ns"])
        for stage, ms in stage_ms(found).items():
            per_stage.setdefault(stage, []).append(ms)
        for span in found:
            if span["name"] == "ingest_dicom":
                per_stage.setdefault("(function)", []).append(float(span["duration_ms"]))
    lines = []
    for stage, values in per_stage.items():
        values.sort()
        p50 = values[len(values) // 2]
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        lines.append(f"  {stage:<14} p50 {p50:9.1f} ms   p95 {p95:9.1f} ms   ({len(values)} uploads)")
    return lines


def _depths(spans: Sequence[dict[str, Any]]) -> dict[str, int]:
    parents = {s["span_id"]: s.get("parent_span_id") for s in spans}
    depths: dict[str, int] = {}
    for span in spans:
        depth, parent, seen = 0, span.get("parent_span_id"), set()
        while parent in parents and parent not in seen:  # a parent outside the file ends the chain
            seen.add(parent)
            depth, parent = depth + 1, parents[parent]
        depths[span["span_id"]] = depth
    return depths


def waterfall(spans: Sequence[dict[str, Any]], width: int = BAR_WIDTH) -> str:
    """One line per span: offset from the trace's start, duration, a bar, service and name."""
    if not spans:
        return "no spans"
    t0 = min(s["start_ns"] for s in spans)
    total = max(max(s["end_ns"] for s in spans) - t0, 1)
    depths = _depths(spans)
    lines = [f"trace {', '.join(dict.fromkeys(s['trace_id'] for s in spans))}  ({total / 1e6:.1f} ms)"]
    for span in spans:
        start = (span["start_ns"] - t0) / total
        length = max(1, round(span["duration_ms"] * 1e6 / total * width))
        offset = min(width - 1, round(start * width))
        bar = (" " * offset + "█" * length)[:width].ljust(width)
        status = "" if span.get("status") in ("UNSET", "OK") else f"  [{span.get('status')}]"
        lines.append(
            f"{(span['start_ns'] - t0) / 1e6:9.1f} ms {span['duration_ms']:9.1f} ms |{bar}| "
            f"{span.get('service', '?'):<18} {'  ' * depths[span['span_id']]}{span['name']}{status}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("id", nargs="?", help="correlation id or trace id (default: the latest trace)")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    args = parser.parse_args(argv)
    spans = load_spans(args.file)
    if not spans:
        print(f"no spans in {args.file} (is the local stack up? `make up`)", file=sys.stderr)
        return 1
    key = args.id or max(spans, key=lambda s: s["start_ns"])["trace_id"]
    found = spans_of(key, spans)
    if not found:
        print(f"no trace for {key} in {args.file}", file=sys.stderr)
        return 1
    print(waterfall(found))
    slowest = slowest_stage(found)
    if slowest:
        print(f"slowest stage: {slowest[0]} ({slowest[1]:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
