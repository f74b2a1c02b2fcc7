"""Per-request stage timings: they go into the result record and the logs, and each timed stage
is also a span of the upload's trace (docs/contracts.md, "Tracing"), named as its timing key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

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

    def record(self, name: str, seconds: float) -> None:
        self.ms[name] = round(self.ms.get(name, 0.0) + seconds * 1000, 1)
