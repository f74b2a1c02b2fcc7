"""Grad-CAM (Selvaraju et al. 2017) for one image and one label, on ``tf.GradientTape``.

One forward and one backward pass: the label's pre-activation score is differentiated with
respect to a 4-D feature map (the sidecar's ``"gradcam_layer"``, else the last layer with a 4-D
output, i.e. the last convolutional map before pooling); the map's channels, weighted by their
mean gradient, are summed and kept where positive, then upsampled (bilinear) to the source.
Every input it cannot explain gets a reason instead of an exception (docs/contracts.md,
"Explanation methods"). Never NaN: a map is finite, in [0, 1]. Why not tf-keras-vis: see
:class:`GradcamExplainer`.
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
    """Grad-CAM of one loaded model. Built once: a copy of the model whose last activation is
    linear (the score is the pre-softmax logit, as Grad-CAM asks), a two-output sub-model (the
    layer's activations and the scores) and one compiled ``tf.function`` for the forward and
    backward pass.

    Written on ``tf.GradientTape`` rather than tf-keras-vis: tf-keras-vis 0.8.7 does work with our
    Keras 3.15 (same maps), but it builds its two-output sub-model again on every call and runs
    it eagerly: measured on a 2-core CPU at a 1024 x 1024 output, 80 ms a map on the demo model
    (10 x one forward pass) and 1,020 ms on a DenseNet-121 (12 x), against the compiled pass here
    (benchmarks/bench_explain.py prints both models side by side)."""

    def __init__(self, keras_model: Any, scale: Any, n_labels: int, layer: str | None = None) -> None:
        self.n_labels = n_labels
        self.layer, self.layer_source, self.unusable = choose_layer(keras_model, layer)
        self._fn: Any = None
        if self.unusable is None:
            try:
                self._fn = _compiled(keras_model, self.layer, scale)
            except Exception as exc:  # noqa: BLE001 - a model Keras cannot clone or cut
                self.unusable = Degenerate(
                    "no_gradients",
                    f"the model cannot be cut at layer {self.layer}: {type(exc).__name__}: {exc}",
                )

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
        cam, largest = self._fn(x[None], np.int32(label))
        cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        largest = float(largest)
        if not math.isfinite(largest) or largest == 0.0:
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


def _compiled(keras_model: Any, layer: str | None, scale: Any) -> Any:
    """(x, label) -> (the ReLU of the gradient-weighted activations at the layer's resolution,
    the largest |gradient|), one forward and one backward pass in one compiled function."""
    import keras
    import tensorflow as tf

    linear = keras.models.clone_model(keras_model)
    linear.set_weights(keras_model.get_weights())
    last = linear.layers[-1]
    if getattr(last, "activation", None) is not None:
        last.activation = keras.activations.linear  # logits: a softmax saturates the gradient
    output = linear.outputs[0]
    cut = keras.Model(linear.inputs, [linear.get_layer(layer).output, output])
    single = int(output.shape[-1]) == 1  # one sigmoid unit: label 1 is its logit, label 0 the opposite

    @tf.function(reduce_retracing=True)
    def run(x: Any, label: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            features, scores = cut(scale(x), training=False)
            scores = tf.cast(scores, tf.float32)
            if single:
                score = tf.where(label == 1, scores[:, 0], -scores[:, 0])
            else:
                score = tf.gather(scores, label, axis=1)
        grads = tape.gradient(score, features, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(tf.cast(features, tf.float32) * weights, axis=-1))
        return cam[0], tf.reduce_max(tf.abs(grads))

    return run


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
