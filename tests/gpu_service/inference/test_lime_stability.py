"""Heat map, stability figure, adaptive sampling and degenerate inputs of the LIME explanation."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import sklearn.linear_model

from devkit.synthetic import make_radiograph
from gpu_service.inference import lime_stability, render
from gpu_service.inference.explain import LimeParams, explain, fudged_image, segment, upsample_segments
from gpu_service.inference.pixels import to_model_input
from gpu_service.results import record as result


def _image(size: int = 64, seed: int = 0) -> np.ndarray:
    sample = make_radiograph(np.random.default_rng(seed), size=size, nodule=True)
    return to_model_input(sample.image, (size, size), 1)


class OneRegionModel:
    """Scores 'nodule' 0.8 when one superpixel is shown as it is, 0.2 when it is hidden; ignores the rest."""

    def __init__(self, image: np.ndarray, params: LimeParams) -> None:
        segments = segment(image, params)
        fudged = fudged_image(image, segments, params.hide_color)
        spread = [
            np.abs(image[segments == s] - fudged[segments == s]).sum() for s in range(segments.max() + 1)
        ]
        self.segment = int(np.argmax(spread))  # the superpixel most changed by hiding it
        self.where = segments == self.segment
        self.original = image[self.where]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        shown = np.array([np.array_equal(np.asarray(img)[self.where], self.original) for img in batch])
        p = np.where(shown, 0.8, 0.2)
        return np.stack([1 - p, p], axis=1)


class NoisyModel:
    """Scores that ignore the image: every explanation of it is noise."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        p = self.rng.uniform(0.05, 0.95, len(batch))
        return np.stack([1 - p, p], axis=1)


def test_heat_map_has_the_output_size_and_the_weights_sign() -> None:
    image = _image(64, seed=3)
    params = LimeParams(num_samples=300, seed=1)
    model = OneRegionModel(image, params)
    expl = explain(image, model, 1, params, (300, 200))
    assert expl.pixel_weights is not None and expl.pixel_weights.shape == (300, 200) == expl.mask.shape
    weights = np.asarray(expl.pixel_weights)
    assert weights.shape == (300, 200)
    assert weights.dtype == np.float32 and np.isfinite(weights).all()
    assert np.isclose(np.abs(weights).max(), 1.0) and weights.min() >= -1.0
    full = upsample_segments(expl.segments, (300, 200))
    for s, w in expl.weights.items():  # one value per superpixel, its weight / max |weight|
        np.testing.assert_allclose(
            weights[full == s], w / max(abs(v) for v in expl.weights.values()), atol=1e-6
        )

    gray = np.full((300, 200), 128, dtype=np.uint8)
    signed = np.zeros((300, 200), dtype=np.float32)
    signed[:100] = 1.0  # supports
    signed[200:] = -1.0  # speaks against
    rgb = render.heatmap_rgb(gray, signed)
    assert rgb.shape == (300, 200, 3) and rgb.dtype == np.uint8
    assert (rgb[:100, :, 0] > rgb[:100, :, 2]).all(), "positive weights are warm"
    assert (rgb[200:, :, 2] > rgb[200:, :, 0]).all(), "negative weights are cold"
    assert (rgb[100:200] == 128).all(), "zero weight leaves the image as it is"
    png = render.heatmap_png(gray, expl.pixel_weights)
    assert png.startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        render.heatmap_rgb(gray, signed[:10])


def test_stability_is_one_when_the_model_looks_at_one_superpixel_and_sampling_stops_early() -> None:
    image = _image(64, seed=5)
    params = LimeParams(num_samples=1000, sample_step=100, target_stability=0.9, seed=2)
    model = OneRegionModel(image, params)
    expl = explain(image, model, 1, params, (64, 64))
    assert expl.top_segments == [model.segment]
    assert expl.stability == 1.0
    assert expl.samples_used == 100, "an easy image stops after the first step"
    assert expl.reason is None


def test_a_noisy_model_draws_every_sample_and_is_unstable() -> None:
    image = _image(64, seed=6)
    params = LimeParams(num_samples=600, sample_step=100, target_stability=0.9, seed=2)
    expl = explain(image, NoisyModel(), 1, params, (64, 64))
    assert expl.samples_used == 600
    assert expl.stability < 0.9


def test_the_demo_model_stops_early_and_is_bit_identical_for_the_same_seed() -> None:
    from gpu_service.inference.model import load_model

    model = load_model()
    h, w = model.info.input_size
    image = _image(h, seed=7)
    params = LimeParams(target_stability=0.9, seed=3)
    first = explain(image, model.predict, 1, params, (200, 200))
    second = explain(image, model.predict, 1, params, (200, 200))
    assert first.samples_used < params.num_samples and first.stability >= 0.9
    assert first.samples_used == second.samples_used and first.stability == second.stability
    assert first.weights == second.weights and first.top_segments == second.top_segments
    assert np.asarray(first.pixel_weights).tobytes() == np.asarray(second.pixel_weights).tobytes()
    np.testing.assert_array_equal(first.mask, second.mask)
    other = explain(image, model.predict, 1, LimeParams(target_stability=0.9, seed=4), (200, 200))
    assert other.weights != first.weights


def test_fixed_mode_draws_num_samples_and_reports_its_stability() -> None:
    image = _image(64, seed=8)
    params = LimeParams(num_samples=250, target_stability=None, seed=1)
    model = OneRegionModel(image, params)
    expl = explain(image, model, 1, params, (64, 64))
    assert expl.samples_used == 250 and expl.stability == 1.0


@pytest.mark.parametrize("target", [None, 0.9])
def test_a_blank_image_gets_a_reason_not_a_nan(target: float | None) -> None:
    from gpu_service.inference.model import load_model

    model = load_model()
    h, w = model.info.input_size
    blank = np.full((h, w, 1), 0.3, dtype=np.float32)
    expl = explain(
        blank, model.predict, None, LimeParams(num_samples=300, target_stability=target), (512, 512)
    )
    assert expl.reason is lime_stability.BLANK_IMAGE
    assert expl.top_segments == [] and not expl.mask.any()
    assert expl.stability == 1.0 and expl.pixel_weights is not None
    assert not np.asarray(expl.pixel_weights).any()
    assert expl.samples_used == (100 if target else 300)
    assert np.isfinite([expl.intercept, expl.local_score, *expl.weights.values()]).all()
    fields = result.explanation_quality(expl, "gs://b/x.heatmap.png")
    assert fields["reason"]["code"] == "blank_image" and fields["stability"] == 1.0
    json.dumps(fields, allow_nan=False)


def test_a_model_with_constant_scores_gets_a_reason() -> None:
    image = _image(64, seed=9)
    expl = explain(
        image, lambda b: np.tile([0.3, 0.7], (len(b), 1)), None, LimeParams(num_samples=200), (64, 64)
    )
    assert expl.reason is lime_stability.CONSTANT_OUTPUT and expl.stability == 1.0 and expl.top_segments == []
    assert expl.label_index == 1


def test_a_single_superpixel_gets_a_reason() -> None:
    image = _image(64, seed=10)
    params = LimeParams(num_samples=200, n_segments=1, segmentation="slic")

    def contrast(batch: np.ndarray) -> np.ndarray:  # hiding the one superpixel flattens the image
        p = np.clip(np.asarray(batch).std(axis=(1, 2, 3)) * 5, 0, 1)
        return np.stack([1 - p, p], axis=1)

    expl = explain(image, contrast, 1, params, (64, 64))
    assert expl.params["n_superpixels"] == 1
    assert expl.reason is lime_stability.SINGLE_SUPERPIXEL
    assert expl.top_segments == [0] and expl.mask.all() and expl.stability == 1.0
    assert np.isfinite(expl.pixel_weights).all()


def test_closed_form_ridge_equals_sklearn_weighted_ridge() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (300, 40)).astype(float)
    y = rng.normal(size=300)
    s = rng.random(300)
    reference = sklearn.linear_model.Ridge(alpha=1.0).fit(x, y, sample_weight=s).coef_
    np.testing.assert_allclose(lime_stability.ridge_coefficients(x, y, s[None])[0], reference, atol=1e-10)


def test_top_k_and_jaccard() -> None:
    w = np.array([0.5, -1.0, 0.05, 0.3, 0.0])
    assert lime_stability.select_top(w, 5) == [0, 3, 2]
    assert lime_stability.select_top(w, 5, min_relative_weight=0.2) == [0, 3]
    assert lime_stability.select_top(w, 1) == [0]
    assert lime_stability.jaccard([], []) == 1.0 and lime_stability.jaccard([1, 2], [2, 3]) == 1 / 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_stability", 0.0),
        ("target_stability", 1.5),
        ("min_relative_weight", 1.0),
        ("sample_step", 0),
        ("n_bootstrap", 1),
    ],
)
def test_bad_adaptive_params_are_rejected_with_the_field_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        LimeParams(**{field: value})


def test_sampling_settings_reach_the_parameters_and_bad_ones_are_named() -> None:
    from gpu_service.settings import Settings, lime_params

    defaults = lime_params(Settings.from_env({}))
    assert defaults == LimeParams() and defaults.target_stability is not None
    adaptive = lime_params(
        Settings.from_env(
            {"LIME_TARGET_STABILITY": "0.8", "LIME_MAX_SAMPLES": "700", "LIME_MIN_RELATIVE_WEIGHT": "0.25"}
        )
    )
    assert (adaptive.target_stability, adaptive.num_samples, adaptive.min_relative_weight) == (0.8, 700, 0.25)
    fixed = lime_params(Settings.from_env({"LIME_TARGET_STABILITY": "0", "LIME_NUM_SAMPLES": "300"}))
    assert (fixed.target_stability, fixed.num_samples) == (None, 300)
    for key, value in (
        ("LIME_TARGET_STABILITY", "1.5"),
        ("LIME_TARGET_STABILITY", "high"),
        ("LIME_MAX_SAMPLES", "1"),
        ("LIME_MIN_RELATIVE_WEIGHT", "1"),
    ):
        with pytest.raises(ValueError, match=key):
            Settings.from_env({key: value})
