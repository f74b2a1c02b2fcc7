"""Per-request stage timings: they go into the result record and the logs, and each timed stage
is also a span of the upload's trace (docs/contracts.md, "Tracing"), named as its timing key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from opentelemetry import trace

from pipeline_common import tracing


class StageTimer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with tracing.span(name, **{"pipeline.stage": name}):
            start = time.perf_counter()
            try:
                yield
            finally:
                self.record(name, time.perf_counter() - start)

    def begin(self, name: str) -> RunningStage:
        """A stage whose work other threads do: it ends when :meth:`RunningStage.end` says."""
        span = tracing.start_span(name, **{"pipeline.stage": name})
        return RunningStage(self, name, span, time.perf_counter(), time.time_ns())

    def record(self, name: str, seconds: float) -> None:
        self.ms[name] = round(self.ms.get(name, 0.0) + seconds * 1000, 1)


@dataclass
class RunningStage:
    """One stage under way on other threads: its span is the parent of what they trace."""

    timer: StageTimer
    name: str
    span: trace.Span
    started: float  # time.perf_counter()
    started_ns: int  # the span's clock

    def current(self) -> AbstractContextManager[trace.Span]:
        """The stage's span as the current one: tasks whose context is copied inside are its children."""
        return trace.use_span(self.span, end_on_exit=False)

    def end(self, at: float) -> None:
        """Record the stage and end its span at ``at`` (a ``time.perf_counter()`` time)."""
        seconds = max(0.0, at - self.started)
        self.timer.record(self.name, seconds)
        self.span.end(end_time=self.started_ns + int(seconds * 1e9))
