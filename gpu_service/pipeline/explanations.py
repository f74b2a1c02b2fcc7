"""The explanation methods of one request (``EXPLANATION_METHODS``: LIME, Grad-CAM or both):
the prediction, each method's map, and what the record says of each (docs/contracts.md,
"Explanation methods"). The first method's result is the one the ``explanation`` object, the
binary mask and its SEG show; every method has its heat map, heat-map SEG and list entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpu_service.inference import gradcam as gradcam_method
from gpu_service.inference.explain import Explanation, LimeParams, explain
from gpu_service.inference.gradcam import GradcamExplainer, GradcamResult
from gpu_service.inference.upsampled import WeightMap
from gpu_service.timing import StageTimer
from pipeline_common import naming

HEATMAP_SUFFIXES = {"lime": naming.HEATMAP_SUFFIX, "gradcam": naming.GRADCAM_HEATMAP_SUFFIX}
# The record's dicom block key of each method's heat-map SEG (result_objects.dicom_section).
HEATMAP_SEG_KEYS = {"lime": "heatmap_uri", "gradcam": "gradcam_heatmap_uri"}


@dataclass(frozen=True)
class Inference:
    """Everything computed from the pixels, before anything is written."""

    preview: np.ndarray
    probs: np.ndarray
    explanation: Any  # the first method's: an Explanation (LIME) or a GradcamResult
    lime: Explanation | None = None
    gradcam: GradcamResult | None = None
    ms: Mapping[str, float] = field(default_factory=dict)  # each method's wall time

    @property
    def methods(self) -> list[str]:
        """The methods that ran, in ``EXPLANATION_METHODS`` order (the first is ``explanation``'s)."""
        first = "lime" if self.lime is not None and self.explanation is self.lime else "gradcam"
        rest = [
            m for m, r in (("lime", self.lime), ("gradcam", self.gradcam)) if r is not None and m != first
        ]
        return [first, *rest]

    def weights(self, method: str) -> WeightMap | None:
        """The method's heat map at the source's resolution (LIME signed in [-1, 1], Grad-CAM in [0, 1])."""
        result = self.lime if method == "lime" else self.gradcam
        return getattr(result, "pixel_weights", None)


def infer(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    decoded_u8: np.ndarray,
    model_input: np.ndarray,
    params: LimeParams,
    timer: StageTimer,
    methods: Sequence[str] = ("lime",),
    gradcam: GradcamExplainer | None = None,
) -> Inference:
    """The prediction, then each method for the predicted label, in order (Grad-CAM needs ``gradcam``)."""
    with timer.stage("predict"):
        probs = np.asarray(predict_fn(model_input[None]))[0]
    label = int(np.argmax(probs))
    shape = decoded_u8.shape[:2]
    lime: Explanation | None = None
    cam: GradcamResult | None = None
    ms: dict[str, float] = {}
    for method in methods:
        if method == "lime":
            with timer.stage("explain"):
                lime = explain(model_input, predict_fn, label, params, output_shape=shape)
            ms["lime"] = timer.ms["explain"]
        elif method == "gradcam":
            if gradcam is None:
                raise ValueError("EXPLANATION_METHODS has gradcam, but no Grad-CAM explainer was built")
            with timer.stage("gradcam"):
                cam = gradcam.explain(model_input, label, shape)
            ms["gradcam"] = timer.ms["gradcam"]
        else:
            raise ValueError(f"unknown explanation method {method!r}")
    first = lime if methods[0] == "lime" else cam
    return Inference(decoded_u8, probs, first, lime, cam, ms)


def gradcam_explainer(model: Any, methods: Sequence[str]) -> GradcamExplainer | None:
    """Built once per model when Grad-CAM is asked for (tf-keras-vis clones the model)."""
    return gradcam_method.for_model(model) if "gradcam" in methods else None


def entries(inference: Inference, heatmap_uri: Callable[[str], str], dicom: Mapping[str, Any] | None) -> list:
    """The record's ``explanations`` list: one entry per method, in order."""
    out = []
    for method in inference.methods:
        seg = (dicom or {}).get(HEATMAP_SEG_KEYS[method])
        ms = round(float(inference.ms.get(method, 0.0)), 1)
        if method == "lime":
            lime = inference.lime
            assert lime is not None
            reason = lime.reason
            stability = float(lime.stability)
            out.append(
                {
                    "method": "lime",
                    "label_index": lime.label_index,
                    "heatmap_uri": heatmap_uri(HEATMAP_SUFFIXES["lime"]),
                    "heatmap_seg_uri": seg,
                    "stability": round(stability, 4) if np.isfinite(stability) else 0.0,
                    "stability_reason": None,  # LIME always has one
                    "model_passes": int(lime.samples_used),
                    "ms": ms,
                    "reason": {"code": reason.code, "message": reason.message} if reason else None,
                    "parameters": lime.params,
                }
            )
        else:
            cam = inference.gradcam
            assert cam is not None
            out.append(
                {
                    "method": "gradcam",
                    "label_index": cam.label_index,
                    "heatmap_uri": heatmap_uri(HEATMAP_SUFFIXES["gradcam"]),
                    "heatmap_seg_uri": seg,
                    "stability": None,
                    "stability_reason": gradcam_method.STABILITY_REASON,
                    "model_passes": cam.model_passes,
                    "ms": ms,
                    "reason": {"code": cam.reason.code, "message": cam.reason.message}
                    if cam.reason
                    else None,
                    "parameters": {"layer": cam.layer, "layer_source": cam.layer_source},
                }
            )
    return out


def gradcam_first_explanation(cam: GradcamResult, uri: Callable[[str], str]) -> dict[str, Any]:
    """The ``explanation`` object when Grad-CAM is the first method: today's shape, Grad-CAM's values."""
    return {
        "method": "gradcam",
        "mask_uri": uri(naming.MASK_SUFFIX),
        "overlay_uri": uri(naming.OVERLAY_SUFFIX),
        "heatmap_uri": uri(naming.GRADCAM_HEATMAP_SUFFIX),
        "stability": 0.0,
        "stability_reason": gradcam_method.STABILITY_REASON,
        "samples_used": cam.model_passes,
        "reason": {"code": cam.reason.code, "message": cam.reason.message} if cam.reason else None,
        "parameters": {"layer": cam.layer, "layer_source": cam.layer_source},
        "top_segments": [],
        "weights": {},
        "label_index": cam.label_index,
    }
