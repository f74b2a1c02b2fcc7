"""Grad-CAM (Selvaraju et al. 2017) for one image and one label, by tf-keras-vis.

One forward and one backward pass: the label's pre-activation score is differentiated with
respect to a 4-D feature map (the sidecar's ``"gradcam_layer"``, else the last layer with a 4-D
output, i.e. the last convolutional map before pooling); the map's channels, weighted by their
mean gradient, are summed and kept where positive. tf-keras-vis builds the two-output sub-model
and the weighted sum; what it lacks and is added here: the layer choice by output rank (it seeks
a ``Conv`` layer, and would take a ``Conv`` inside a block past a later concatenation), a reason
instead of an exception for every input it cannot explain (docs/contracts.md, "Explanation
methods"), and the map at the source's resolution. Never NaN: a map is finite, in [0, 1].
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from gpu_service.inference.lime_stability import Degenerate

METHOD = "gradcam"
PASSES = 2  # one forward, one backward
STABILITY_REASON = "Grad-CAM is deterministic: no sampling to be stable under"


@dataclass(frozen=True)
class GradcamResult:
    label_index: int
    # float32 at output_shape in [0, 1] (the map / its maximum); all zero when `reason` is set
    pixel_weights: np.ndarray
    small: np.ndarray  # the same at the model input's resolution (the faithfulness harness uses it)
    cells: np.ndarray  # the map at the layer's own resolution, before upsampling (its units)
    layer: str | None
    layer_source: str  # "sidecar" | "auto" | "none"
    model_passes: int
    ms: float
    reason: Degenerate | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """The map at or above half its maximum: the binary mask when Grad-CAM is the only method."""
        return self.pixel_weights >= 0.5 if self.reason is None else np.zeros(self.pixel_weights.shape, bool)


def choose_layer(keras_model: Any, requested: str | None) -> tuple[str | None, str, Degenerate | None]:
    """(layer name, how it was chosen, reason when none can be used)."""
    layers = getattr(keras_model, "layers", None)
    if layers is None or not hasattr(keras_model, "inputs"):
        return (
            None,
            "none",
            Degenerate(
                "no_gradients",
                f"the model is a {type(keras_model).__name__} without Keras layers (e.g. a SavedModel "
                "serving signature): there is no feature map to differentiate",
            ),
        )
    if requested:
        names = [layer.name for layer in layers]
        if requested not in names:
            return (
                None,
                "sidecar",
                Degenerate(
                    "unknown_layer",
                    f"the sidecar's gradcam_layer {requested[:80]!r} is not a layer of the model",
                ),
            )
        layer = keras_model.get_layer(requested)
        if len(_output_shape(layer)) != 4:
            return (
                None,
                "sidecar",
                Degenerate(
                    "no_usable_layer", f"the sidecar's gradcam_layer {requested[:80]!r} has no 4-D output"
                ),
            )
        return requested, "sidecar", None
    for layer in reversed(layers):
        if type(layer).__name__ == "InputLayer":
            continue
        if len(_output_shape(layer)) == 4:
            return layer.name, "auto", None
    return (
        None,
        "none",
        Degenerate("no_usable_layer", "the model has no layer with a 4-D (feature map) output"),
    )


def _output_shape(layer: Any) -> tuple:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):  # a layer used twice or never called
        return ()


class GradcamExplainer:
    """Grad-CAM of one loaded model; built once (tf-keras-vis clones the model to make its last
    activation linear, so the score is the pre-softmax logit, as Grad-CAM asks)."""

    def __init__(self, keras_model: Any, scale: Any, n_labels: int, layer: str | None = None) -> None:
        self.n_labels = n_labels
        self.scale = scale
        self.layer, self.layer_source, self.unusable = choose_layer(keras_model, layer)
        self._gradcam = None
        if self.unusable is None:
            from tf_keras_vis.gradcam import Gradcam
            from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

            self._gradcam = Gradcam(keras_model, model_modifier=ReplaceToLinear(), clone=True)
            self._outputs = int(keras_model.outputs[0].shape[-1])

    def explain(self, image: np.ndarray, label_index: int, output_shape: tuple[int, int]) -> GradcamResult:
        """The label's map; a reason (and an all-zero map) instead of an exception or a NaN."""
        t0 = time.perf_counter()
        x = np.asarray(image, dtype=np.float32)
        if x.ndim == 2:
            x = x[..., None]
        small_shape = x.shape[:2]
        reason = self.unusable
        cells = np.zeros((1, 1), np.float32)
        passes = 0
        if reason is None and not 0 <= int(label_index) < self.n_labels:
            reason = Degenerate(
                "unknown_label", f"label {label_index} is not one of the model's {self.n_labels}"
            )
        if reason is None:
            cells, reason = self._run(x, int(label_index))
            passes = PASSES
        small = _resize(cells, small_shape)
        full = _resize(cells, output_shape)
        return GradcamResult(
            label_index=int(label_index),
            pixel_weights=full,
            small=small,
            cells=cells,
            layer=self.layer,
            layer_source=self.layer_source,
            model_passes=passes,
            ms=(time.perf_counter() - t0) * 1000,
            reason=reason,
            params={"layer": self.layer, "layer_source": self.layer_source, "label_index": int(label_index)},
        )

    def _run(self, x: np.ndarray, label: int) -> tuple[np.ndarray, Degenerate | None]:
        import tensorflow as tf

        seen: dict[str, float] = {}

        def record(grads: Any) -> Any:
            seen["max_abs"] = float(tf.reduce_max(tf.abs(grads)))
            return grads

        def score(output: Any) -> Any:
            if self._outputs == 1:  # one sigmoid unit: label 1 is its logit, label 0 the opposite
                return output[:, 0] if label == 1 else -output[:, 0]
            return output[:, label]

        assert self._gradcam is not None
        seed = np.asarray(self.scale(tf.constant(x[None])))
        cam = self._gradcam(
            score,
            seed,
            penultimate_layer=self.layer,
            seek_penultimate_conv_layer=False,
            gradient_modifier=record,
            expand_cam=False,  # upsampled here, bilinear, straight to the source's resolution
            normalize_cam=False,
        )
        cam = np.asarray(cam, dtype=np.float32)[0]
        cam = np.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
        if not math.isfinite(seen.get("max_abs", 0.0)) or seen.get("max_abs", 0.0) == 0.0:
            return np.zeros(cam.shape, np.float32), Degenerate(
                "zero_gradient",
                f"the score of label {label} does not change with layer {self.layer}'s activations "
                "(a label the model never predicts, or a saturated model)",
            )
        peak = float(cam.max())
        if not peak > 0:
            return np.zeros(cam.shape, np.float32), Degenerate(
                "no_positive_evidence", f"the weighted activations of layer {self.layer} are nowhere positive"
            )
        return np.clip(cam / peak, 0.0, 1.0).astype(np.float32), None


def _resize(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear, as Grad-CAM maps are shown (a coarse map, smoothly upsampled)."""
    if small.shape == tuple(shape):
        return small.astype(np.float32, copy=False)
    img = Image.fromarray(small.astype(np.float32), mode="F")
    out = np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def for_model(model: Any, layer: str | None = None) -> GradcamExplainer:
    """The explainer of a :class:`~gpu_service.inference.model.LoadedModel` (its input scaling
    applied before the Keras model, as ``predict`` does); ``layer`` None: the sidecar's, else auto."""
    from gpu_service.inference.model import scaling_fn

    info = model.info
    scale = scaling_fn(info.scaling, info.channels)
    return GradcamExplainer(
        model.keras_model, scale, len(info.labels), layer if layer is not None else info.gradcam_layer
    )
