"""The four PNG renderings of one result, rendered and written beside the upload.

Run on a worker thread by :mod:`gpu_service.pipeline.processing` while the request's own thread
builds the DICOM objects: PNG encoding (zlib) and the numpy steps release the GIL, highdicom's
build holds it, so the two overlap on separate cores.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gpu_service.inference import render
from gpu_service.inference.explain import Explanation
from gpu_service.outcome import ProcessResult, RequestOutcome
from gpu_service.pipeline.failures import PermanentFailure, permanent_unless_transient
from gpu_service.request import InferenceRequest
from gpu_service.results.cloud_storage import OutputConflict
from gpu_service.results.outputs import RequestOutputs
from gpu_service.timing import StageTimer
from pipeline_common import naming
from pipeline_common.jsonlog import log
from pipeline_common.write_outcome import WriteOutcome

logger = logging.getLogger(__name__)

# (suffix, role), in the order they are written: docs/contracts.md, "Outputs".
RENDERINGS = (
    (naming.PREVIEW_SUFFIX, "preview"),
    (naming.MASK_SUFFIX, "mask"),
    (naming.OVERLAY_SUFFIX, "overlay"),
    (naming.HEATMAP_SUFFIX, "heatmap"),
)


def write_renderings(
    outputs: RequestOutputs,
    request: InferenceRequest,
    dataset: Any,
    preview: np.ndarray,
    explanation: Explanation,
    max_side: int,
    timer: StageTimer,
) -> ProcessResult | None:
    """Render and write the PNGs (stages ``render`` and ``write``). A SUPERSEDED result when a
    newer upload's output holds a name (nothing more to do for this one), else None."""
    with timer.stage("render"), permanent_unless_transient("render_failed", dataset):
        # The mask at the source's resolution; the other three at display resolution.
        arrays = render.display_arrays(preview, explanation.mask, explanation.pixel_weights, max_side)
        artifacts = [(suffix, role, render.png(arrays[role])) for suffix, role in RENDERINGS]
    with timer.stage("write"):
        for suffix, role, png in artifacts:
            try:
                written = outputs.write(request, suffix, role, png, "image/png")
            except OutputConflict as exc:
                raise PermanentFailure(OutputConflict.code, str(exc), dataset) from exc
            if written.outcome is WriteOutcome.SUPERSEDED:
                log(logger, logging.INFO, "a newer generation's output is stored; skipping", role=role)
                return ProcessResult(RequestOutcome.SUPERSEDED, timings_ms=timer.ms)
    return None
