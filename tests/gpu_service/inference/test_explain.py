"""LIME: equivalence with lime_image, determinism, batching through predict_fn, faithfulness."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from lime import lime_image

from devkit.synthetic import make_radiograph, nodule_mask
from gpu_service.inference.explain import Explanation, LimeParams, explain, segment, upsample_segments
from gpu_service.inference.pixels import to_model_input

# lime's own mode: every sample drawn (no adaptive stop), the mask is lime's top-k positive.
FIXED = {"target_stability": None, "min_relative_weight": 0.0}


def _image(size: int = 64, channels: int = 3, seed: int = 0, nodule: bool = True) -> np.ndarray:
    sample = make_radiograph(np.random.default_rng(seed), size=size, nodule=nodule)
    return to_model_input(sample.image, (size, size), channels)


class LinearSoftmax:
    """A deterministic per-sample classifier (computed image by image, so batching cannot change it)."""

    def __init__(self, shape: tuple[int, ...], seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(2, *shape)) / np.sqrt(np.prod(shape))
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        out = np.empty((len(batch), 2))
        for i, img in enumerate(np.asarray(batch, dtype=np.float64)):
            logits = np.array([np.sum(img * self.w[0]), np.sum(img * self.w[1])]) * 20
            e = np.exp(logits - logits.max())
            out[i] = e / e.sum()
        return out


def _lime_reference(image, predict_fn, segments, label, num_samples, seed, batch_size=10):
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    return explainer.explain_instance(
        image,
        predict_fn,
        labels=(label,),
        hide_color=None,
        top_labels=None,
        num_features=100000,
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=lambda _img: segments,
        random_seed=seed,
    )


def test_weights_equal_lime_image_explainer() -> None:
    image = _image(64, 3, seed=2)
    fn = LinearSoftmax(image.shape)
    params = LimeParams(num_samples=300, batch_size=64, n_segments=30, seed=7, **FIXED)
    ours = explain(image, fn, 1, params, (64, 64))
    ref = _lime_reference(image, fn, ours.segments, 1, 300, seed=7)
    ref_weights = dict(ref.local_exp[1])
    assert set(ref_weights) == set(ours.weights) == set(range(int(ours.segments.max()) + 1))
    for k, w in ref_weights.items():
        assert abs(ours.weights[k] - w) <= 1e-6, (k, ours.weights[k], w)
    assert abs(ours.intercept - ref.intercept[1]) <= 1e-6
    assert abs(ours.local_score - ref.score) <= 1e-6
    _, ref_mask = ref.get_image_and_mask(
        1, positive_only=True, num_features=params.num_features, hide_rest=False
    )
    np.testing.assert_array_equal(ours.mask, ref_mask.astype(bool))


def test_weights_equal_lime_with_the_demo_model() -> None:
    """Same batches in both (batch_size equal), so the real model sees bit-identical inputs."""
    from gpu_service.inference.model import load_model

    model = load_model()
    h, w = model.info.input_size
    image = _image(h, model.info.channels, seed=3)
    params = LimeParams(num_samples=200, batch_size=50, seed=11, **FIXED)
    ours = explain(image, model.predict, None, params, (h, w))
    # lime turns a one-channel image into RGB; hand the model its one channel back.
    ref = _lime_reference(
        np.repeat(image, 3, axis=-1),
        lambda b: model.predict(b[..., :1]),
        ours.segments,
        ours.label_index,
        200,
        seed=11,
        batch_size=50,
    )
    for k, wt in ref.local_exp[ours.label_index]:
        assert abs(ours.weights[k] - wt) <= 1e-6


def test_cosine_distances_match_sklearn() -> None:
    import sklearn.metrics

    from gpu_service.inference.explain import cosine_distances_to_first

    data = np.random.default_rng(0).integers(0, 2, (500, 40))
    data[0] = 1
    data[7] = 0  # an all-hidden row: sklearn treats its norm as 1
    ref = sklearn.metrics.pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    np.testing.assert_allclose(cosine_distances_to_first(data), ref, atol=1e-12)


def test_predict_fn_gets_large_batches_and_the_result_is_deterministic() -> None:
    image = _image(64, 1, seed=4)
    fn = LinearSoftmax(image.shape)
    params = LimeParams(num_samples=1000, batch_size=256, seed=5, **FIXED)
    first = explain(image, fn, None, params, (300, 200))
    assert fn.calls == [256, 256, 256, 232]
    second = explain(image, fn, None, params, (300, 200))
    np.testing.assert_array_equal(first.mask, second.mask)
    assert first.weights == second.weights
    assert first.mask.shape == (300, 200) and first.mask.dtype == bool
    assert 1 <= len(first.top_segments) <= params.num_features
    assert all(first.weights[s] > 0 for s in first.top_segments)
    assert first.samples_used == 1000 and 0.0 <= first.stability <= 1.0
    full = upsample_segments(first.segments, (300, 200))
    np.testing.assert_array_equal(first.mask, np.isin(full, first.top_segments))
    assert first.params["num_samples"] == 1000 and first.params["n_superpixels"] == len(first.weights)
    other = explain(
        image, fn, None, LimeParams(num_samples=1000, batch_size=256, seed=6, **FIXED), (300, 200)
    )
    assert other.weights != first.weights


def test_tensorflow_perturbations_equal_numpy() -> None:
    """The accelerator path (forced here on CPU) builds bit-identical perturbations."""
    image = _image(48, 3, seed=9)
    fn = LinearSoftmax(image.shape)
    a = explain(image, fn, 0, LimeParams(num_samples=120, batch_size=50, device="cpu"), (48, 48))
    b = explain(image, fn, 0, LimeParams(num_samples=120, batch_size=50, device="tensorflow"), (48, 48))
    assert a.params["perturbation_backend"] == "numpy" and b.params["perturbation_backend"].startswith(
        "tensorflow"
    )
    assert a.weights == b.weights


@pytest.mark.parametrize("algorithm", ["slic", "quickshift", "felzenszwalb"])
def test_segmentations_cover_the_image_with_consecutive_labels(algorithm: str) -> None:
    image = _image(320, 1, seed=8)
    segments = segment(image, LimeParams(segmentation=algorithm, segmentation_max_side=128))
    assert segments.shape == (320, 320)
    labels = np.unique(segments)
    np.testing.assert_array_equal(labels, np.arange(len(labels)))
    assert 5 <= len(labels) <= 2000


def test_bad_predict_fn_output_is_rejected() -> None:
    image = _image(32, 1)
    with pytest.raises(ValueError):
        explain(image, lambda b: np.ones((len(b),)), None, LimeParams(num_samples=20), (32, 32))
    with pytest.raises(ValueError):
        LimeParams(segmentation="watershed")


def test_pointing_game_on_synthetic_positives() -> None:
    """A small version of scripts/check_faithfulness.py, with its bar: the top superpixel hits the nodule."""
    from gpu_service.inference.model import load_model

    model = load_model()
    nodule = model.info.labels.index("nodule")
    rng = np.random.default_rng(99)
    hits = 0
    n = 20
    for _ in range(n):
        sample = make_radiograph(rng, size=256, nodule=True)
        x = to_model_input(sample.image, model.info.input_size, model.info.channels)
        result: Explanation = explain(
            x, model.predict, nodule, LimeParams(num_samples=1000, seed=0), (256, 256)
        )
        top = upsample_segments(result.segments, (256, 256)) == result.top_segments[0]
        hits += bool(np.any(top & nodule_mask(sample)))
    assert hits / n >= 0.8


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_segments", 0),
        ("kernel_width", 0.0),
        ("kernel_width", float("nan")),
        ("segmentation_max_side", 0),
        ("num_samples", 1),
        ("batch_size", 0),
        ("num_features", 0),
        ("feature_selection", "best"),
    ],
)
def test_bad_params_are_rejected_with_the_field_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        LimeParams(**{field: value})


def test_label_index_out_of_range_is_rejected() -> None:
    image = _image(32, 1)
    fn = LinearSoftmax(image.shape)
    for bad in (2, -1):
        with pytest.raises(ValueError, match="label_index"):
            explain(image, fn, bad, LimeParams(num_samples=20), (32, 32))


def test_mask_is_resized_not_the_label_map() -> None:
    """The mask equals the old label-map route (upsample labels, then select) at any output size."""
    image = _image(96, 1, seed=12)
    fn = LinearSoftmax(image.shape)
    for shape in ((96, 96), (1000, 700), (50, 61)):
        result = explain(image, fn, 1, LimeParams(num_samples=100, num_features=3), shape)
        assert result.segments.shape == (96, 96) and result.mask.shape == shape
        full = upsample_segments(result.segments, shape)
        np.testing.assert_array_equal(result.mask, np.isin(full, result.top_segments))


class RecordingPredict:
    """Forwards to the model and records what type of batch it was handed."""

    def __init__(self, predict, accepts_tensors: bool) -> None:
        self._predict = predict
        self.accepts_tensors = accepts_tensors
        self.types: list[str] = []

    def __call__(self, batch):
        self.types.append(type(batch).__module__.split(".")[0])
        return self._predict(batch)


def test_tensorflow_path_hands_tensors_only_to_a_predict_that_accepts_them() -> None:
    from gpu_service.inference.model import load_model

    model = load_model()
    h, w = model.info.input_size
    image = _image(h, model.info.channels, seed=13)
    params = LimeParams(num_samples=60, batch_size=25, device="tensorflow", **FIXED)
    tensors = RecordingPredict(model.predict, accepts_tensors=True)
    arrays = RecordingPredict(model.predict, accepts_tensors=False)
    a = explain(image, tensors, 1, params, (h, w))
    b = explain(image, arrays, 1, params, (h, w))
    c = explain(
        image, model.predict, 1, LimeParams(num_samples=60, batch_size=25, device="cpu", **FIXED), (h, w)
    )
    assert set(tensors.types) == {"tensorflow"} and set(arrays.types) == {"numpy"}
    for k, wt in c.weights.items():
        assert abs(a.weights[k] - wt) <= 1e-6 and abs(b.weights[k] - wt) <= 1e-6
