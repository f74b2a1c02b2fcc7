"""Grad-CAM on tiny Keras models whose evidence is known, the real demo model, and every input it
cannot explain (a reason, never a NaN or an exception)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devkit.synthetic import make_radiograph
from gpu_service.inference import gradcam
from gpu_service.inference.model import LoadedModel, ModelInfo, load_model
from gpu_service.inference.pixels import to_model_input

SIDE = 32


def _info(**overrides) -> ModelInfo:
    values = dict(
        name="tiny", version="0", sha256="0" * 64, labels=["normal", "nodule"],
        input_size=(SIDE, SIDE), channels=1, scaling="unit",
    )  # fmt: skip
    values.update(overrides)
    return ModelInfo(**values)


def _spot_model(dead_label: int | None = None):
    """Evidence = brightness: a 3x3 mean filter (the 4-D map), global max pooling, then
    "nodule" = +brightness and "normal" = -brightness. ``dead_label``'s weights are zero and its
    bias very low: a label the model never predicts, whose score no pixel moves."""
    import keras
    from keras import layers

    inputs = keras.Input((SIDE, SIDE, 1))
    x = layers.Conv2D(1, 3, padding="same", use_bias=False, name="evidence")(inputs)
    x = layers.GlobalMaxPooling2D()(x)
    out = layers.Dense(2, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, out)
    model.get_layer("evidence").set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32)])
    kernel, bias = np.array([[-8.0, 8.0]], np.float32), np.array([4.0, -4.0], np.float32)
    if dead_label is not None:
        kernel[0, dead_label], bias[dead_label] = 0.0, -50.0
    model.get_layer("probabilities").set_weights([kernel, bias])
    return model


def _image(at: tuple[int, int]) -> np.ndarray:
    x = np.full((SIDE, SIDE, 1), 0.1, np.float32)
    x[at[0] - 2 : at[0] + 3, at[1] - 2 : at[1] + 3] = 1.0
    return x


def _explainer(model, layer: str | None = None) -> gradcam.GradcamExplainer:
    return gradcam.for_model(LoadedModel(model, _info()), layer)


def _is_clean(result: gradcam.GradcamResult) -> None:
    for array in (result.pixel_weights, result.small, result.cells):
        assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1


@pytest.mark.parametrize("at", [(6, 24), (20, 9), (27, 27)])
def test_gradcam_peaks_where_the_evidence_is(at: tuple[int, int]) -> None:
    explainer = _explainer(_spot_model())
    assert (explainer.layer, explainer.layer_source) == ("evidence", "auto")
    result = explainer.explain(_image(at), 1, (SIDE * 4, SIDE * 4))
    assert result.reason is None and result.model_passes == gradcam.PASSES == 2
    _is_clean(result)
    assert result.pixel_weights.shape == (SIDE * 4, SIDE * 4) and result.pixel_weights.max() == pytest.approx(
        1.0
    )
    peak = np.unravel_index(np.argmax(result.small), result.small.shape)
    assert abs(peak[0] - at[0]) <= 2 and abs(peak[1] - at[1]) <= 2
    # the map is weighted evidence, not the image: far from the spot it is (nearly) nothing
    far = result.small.copy()
    far[max(0, at[0] - 4) : at[0] + 5, max(0, at[1] - 4) : at[1] + 5] = 0
    assert far.max() < 0.2


def test_the_sidecar_layer_is_used_and_an_unknown_one_is_a_reason() -> None:
    model = _spot_model()
    chosen = _explainer(model, "evidence")
    assert (chosen.layer, chosen.layer_source) == ("evidence", "sidecar")
    result = _explainer(model, "conv5_block16_concat").explain(_image((8, 8)), 1, (SIDE, SIDE))
    assert result.reason is not None and result.reason.code == "unknown_layer"
    assert result.model_passes == 0 and not result.pixel_weights.any() and not result.mask.any()
    _is_clean(result)


def test_a_model_without_a_4d_layer_gets_a_reason() -> None:
    import keras
    from keras import layers

    inputs = keras.Input((SIDE, SIDE, 1))
    out = layers.Dense(2, activation="softmax")(layers.Flatten()(inputs))
    result = _explainer(keras.Model(inputs, out)).explain(_image((8, 8)), 1, (SIDE, SIDE))
    assert result.reason is not None and result.reason.code == "no_usable_layer"
    _is_clean(result)


def test_a_label_the_model_never_predicts_has_a_zero_gradient_reason() -> None:
    model = _spot_model(dead_label=0)
    probs = LoadedModel(model, _info()).predict(np.stack([_image((8, 8)), np.zeros((SIDE, SIDE, 1))]))
    assert (probs.argmax(axis=1) == 1).all()  # label 0 is never predicted
    result = _explainer(model).explain(_image((8, 8)), 0, (SIDE, SIDE))
    assert result.reason is not None and result.reason.code == "zero_gradient"
    assert result.model_passes == 2 and not result.pixel_weights.any()
    _is_clean(result)


def test_an_unknown_label_is_a_reason() -> None:
    result = _explainer(_spot_model()).explain(_image((8, 8)), 7, (SIDE, SIDE))
    assert result.reason is not None and result.reason.code == "unknown_label"
    _is_clean(result)


def test_a_savedmodel_with_only_a_serving_signature_has_no_gradients(tmp_path: Path) -> None:
    path = tmp_path / "served"
    _spot_model().export(str(path), verbose=False)
    (tmp_path / "served.json").write_text(json.dumps({"labels": ["normal", "nodule"]}))
    loaded = load_model(str(path))
    assert loaded.predict(_image((8, 8))[None]).shape == (1, 2)  # it predicts, through the signature
    result = gradcam.for_model(loaded).explain(_image((8, 8)), 1, (SIDE, SIDE))
    assert result.reason is not None and result.reason.code == "no_gradients"
    _is_clean(result)


def test_the_demo_model_points_at_a_synthetic_nodule() -> None:
    """The bundled model: Grad-CAM's strongest cell holds the nodule, for a few held-out images."""
    model = load_model()
    explainer = gradcam.for_model(model)
    assert explainer.unusable is None
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(4):
        sample = make_radiograph(rng, size=256, nodule=True)
        x = to_model_input(sample.image, model.info.input_size, model.info.channels)
        result = explainer.explain(x, model.info.labels.index("nodule"), (256, 256))
        _is_clean(result)
        cells = result.cells
        row, col = np.unravel_index(np.argmax(cells), cells.shape)
        cy, cx = sample.nodule_center
        hits += (int(cy * cells.shape[0] / 256), int(cx * cells.shape[1] / 256)) == (row, col)
    assert hits >= 3
