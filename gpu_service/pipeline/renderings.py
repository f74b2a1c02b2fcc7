"""The four PNG renderings of one result: drawn as arrays on the request's thread, then each one
compressed and written beside the upload by a small pool of I/O threads while the request's
thread goes on to the DICOM objects.

The compression overlaps the DICOM build because libdeflate compresses each image in one call
without the GIL (gpu_service/inference/png.py); a thread blocked on a socket holds it only between
reads. Drawing the arrays stays on the request's thread: it is many short numpy steps, each of
which would wait for the GIL that highdicom's Python build holds (measured: render stage 519 ->
1,072 ms at 2048² when Pillow drew and compressed on a worker thread, docs/benchmarks.md).
"""

from __future__ import annotations

import contextvars
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu_service.inference import render
from gpu_service.inference.upsampled import WeightMap
from gpu_service.outcome import ProcessResult, RequestOutcome
from gpu_service.pipeline.failures import PermanentFailure, permanent_unless_transient
from gpu_service.request import InferenceRequest
from gpu_service.results.cloud_storage import OutputConflict
from gpu_service.results.outputs import RequestOutputs
from gpu_service.timing import RunningStage, StageTimer
from pipeline_common import naming, tracing
from pipeline_common.jsonlog import log
from pipeline_common.write_outcome import WriteOutcome, WriteResult

logger = logging.getLogger(__name__)

# (suffix, role): docs/contracts.md, "Outputs"; each explanation method adds its heat map.
RENDERINGS = (
    (naming.PREVIEW_SUFFIX, "preview"),
    (naming.MASK_SUFFIX, "mask"),
    (naming.OVERLAY_SUFFIX, "overlay"),
)


def render_arrays(
    dataset: Any,
    preview: np.ndarray,
    display: np.ndarray,
    mask: np.ndarray,
    heatmaps: list[tuple[str, WeightMap]],
    max_side: int,
    timer: StageTimer,
) -> list[tuple[str, str, np.ndarray]]:
    """(suffix, role, pixels) of the renderings (stage ``render``): the mask at the source's
    resolution, the preview, the overlay and one heat map per (suffix, weights) at display
    resolution, all drawn on ``display`` (``render.display_image`` of ``preview``)."""
    with timer.stage("render"), permanent_unless_transient("render_failed", dataset):
        arrays = render.display_arrays(preview, mask, None, max_side, small=display)
        drawn = [(suffix, role, arrays[role]) for suffix, role in RENDERINGS]
        for suffix, weights in heatmaps:
            heat = render.heatmap_on_display(arrays["preview"], preview.shape[:2], weights)
            drawn.append((suffix, "heatmap", heat))
        return drawn


@dataclass
class PendingWrites:
    """The PNG compressions and writes of one request, under way; :meth:`wait` before anything
    claims them."""

    dataset: Any
    writes: list[tuple[str, Future[tuple[WriteResult, float]]]]
    stage: RunningStage

    def wait(self) -> ProcessResult | None:
        """Stage ``write``: from the first compression's start to the last write's end (it
        overlaps ``dicom``). A SUPERSEDED result when a newer upload's output holds a name (nothing more to
        do for this one), a PermanentFailure on a foreign object, else None."""
        superseded, finished = None, self.stage.started
        try:
            for role, future in self.writes:
                try:
                    written, done_at = future.result()
                    finished = max(finished, done_at)
                except OutputConflict as exc:
                    raise PermanentFailure(OutputConflict.code, str(exc), self.dataset) from exc
                if written.outcome is WriteOutcome.SUPERSEDED and superseded is None:
                    log(logger, logging.INFO, "a newer generation's output is stored; skipping", role=role)
                    superseded = ProcessResult(RequestOutcome.SUPERSEDED, timings_ms=self.stage.timer.ms)
        finally:
            for _, future in self.writes:  # every write settled before the caller goes on
                if future.exception() is None:
                    finished = max(finished, future.result()[1])
            self.stage.end(finished)
        return superseded


def start_writes(
    pool: ThreadPoolExecutor,
    outputs: RequestOutputs,
    request: InferenceRequest,
    dataset: Any,
    drawn: list[tuple[str, str, np.ndarray]],
    timer: StageTimer,
) -> PendingWrites:
    """Each rendering compressed and written on the pool: neither holds the GIL for long (libdeflate
    releases it; a write waits on its socket). A rendering that cannot be encoded is a
    ``render_failed`` record, as when it cannot be drawn."""

    def write(suffix: str, role: str, pixels: np.ndarray) -> tuple[WriteResult, float]:
        """The write's result and when it ended: stage ``write`` ends with the last one. Each
        rendering is a ``write_output`` span under the stage's ``write`` span (they overlap ``dicom``)."""
        with tracing.span("write_output", **{"pipeline.output": suffix}):
            with permanent_unless_transient("render_failed", dataset):
                png = render.png(pixels)
            return outputs.write(request, suffix, role, png, "image/png"), time.perf_counter()

    stage = timer.begin("write")
    with stage.current():  # each task in a copy of the request's context (logs), under the stage's span
        writes = [
            (role, pool.submit(contextvars.copy_context().run, write, suffix, role, pixels))
            for suffix, role, pixels in drawn
        ]
    return PendingWrites(dataset, writes, stage)
