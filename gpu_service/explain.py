"""LIME for images, with lime's own algorithm and none of its per-sample overhead.

We keep exactly what `lime_image.LimeImageExplainer.explain_instance` computes: its
segmentation wrapper, its sampling (`randint(0, 2)` rows, first row all ones), cosine
distances, its kernel and `LimeBase`'s feature selection and ridge regression. Only the
slow part is replaced: lime builds each perturbed image in a Python loop over samples and
segments and calls the model ten images at a time. Here a batch of perturbations is one
gather + select (on the accelerator when TensorFlow sees one), built in a background
thread while the previous batch is in `predict_fn`, and batches are large.

`predict_fn` is the only way to the model, so a cross-request batcher can sit behind it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from lime.lime_base import LimeBase
from lime.wrappers.scikit_image import SegmentationAlgorithm
from PIL import Image
from sklearn.utils import check_random_state

from gpu_service.pixels import resize

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")


@dataclass(frozen=True)
class LimeParams:
    """Explanation settings; every field lands in the result record so a result can be reproduced."""

    num_samples: int = 1000
    batch_size: int = 256  # perturbed images per predict_fn call
    segmentation: str = "slic"  # slic | quickshift | felzenszwalb (lime's SegmentationAlgorithm)
    n_segments: int = 50  # slic target
    num_features: int = 5  # superpixels in the mask (lime's get_image_and_mask num_features)
    seed: int = 0
    compactness: float = 10.0  # slic, on the Lab image as lime feeds it
    sigma: float = 1.0  # slic / felzenszwalb smoothing
    kernel_size: float = 4.0  # quickshift (lime's defaults)
    max_dist: float = 200.0
    ratio: float = 0.2
    scale: float = 100.0  # felzenszwalb
    min_size: int = 50
    segmentation_max_side: int = 256  # segment a downscaled copy when the input is larger
    kernel_width: float = 0.25
    hide_color: float | None = None  # None: each superpixel hidden by its mean colour (lime's default)
    min_weight: float = 0.0
    feature_selection: str = "auto"
    device: str = "auto"  # auto (TF on a GPU if TF is loaded, else numpy) | cpu (numpy) | tensorflow

    def __post_init__(self) -> None:
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {SEGMENTATIONS}")
        if self.device not in ("auto", "cpu", "tensorflow"):
            raise ValueError("device must be auto, cpu or tensorflow")
        if self.num_samples < 2 or self.batch_size < 1 or self.num_features < 1:
            raise ValueError("num_samples >= 2, batch_size >= 1 and num_features >= 1 are required")


@dataclass(frozen=True)
class Explanation:
    label_index: int
    mask: np.ndarray  # bool, output_shape: the top positive superpixels
    weights: dict[int, float]  # every superpixel's weight for label_index
    segments: np.ndarray  # int32 (h, w) superpixel labels 0..n-1 at the model input's resolution
    top_segments: list[int]
    intercept: float
    local_score: float  # R^2 of the local linear model
    params: dict[str, Any]  # JSON-safe
    timings_ms: dict[str, float] = field(default_factory=dict)


def segment(image: np.ndarray, params: LimeParams) -> np.ndarray:
    """Superpixels of the model-input image, labelled 0..n-1.

    Segmentation runs on the 3-channel image lime would use (gray2rgb for grayscale) and
    on a copy no larger than `segmentation_max_side`, then labels are upsampled (nearest).
    """
    h, w = image.shape[:2]
    rgb = (
        image if image.ndim == 3 and image.shape[-1] == 3 else np.repeat(_gray(image)[..., None], 3, axis=-1)
    )
    rgb = rgb.astype(np.float64)
    scale = min(1.0, params.segmentation_max_side / max(h, w))
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    work = resize(rgb.astype(np.float32), small).astype(np.float64) if small != (h, w) else rgb
    algo = segmentation_algorithm(params)
    labels = np.asarray(algo(work))
    if labels.shape != (h, w):
        labels = upsample_segments(labels, (h, w))
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(h, w).astype(np.int32)


def segmentation_algorithm(params: LimeParams) -> SegmentationAlgorithm:
    if params.segmentation == "slic":
        return SegmentationAlgorithm(
            "slic",
            n_segments=params.n_segments,
            compactness=params.compactness,
            sigma=params.sigma,
            start_label=0,
        )
    if params.segmentation == "quickshift":
        return SegmentationAlgorithm(
            "quickshift",
            kernel_size=params.kernel_size,
            max_dist=params.max_dist,
            ratio=params.ratio,
            random_seed=params.seed,
        )
    return SegmentationAlgorithm(
        "felzenszwalb", scale=params.scale, sigma=params.sigma, min_size=params.min_size
    )


def upsample_segments(segments: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (labels stay labels)."""
    if segments.shape == tuple(shape):
        return segments.astype(np.int32, copy=False)
    img = Image.fromarray(segments.astype(np.int32))
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)).astype(np.int32)


def fudged_image(image: np.ndarray, segments: np.ndarray, hide_color: float | None) -> np.ndarray:
    """What a hidden superpixel looks like: its mean colour (lime's default) or `hide_color`.

    The means are taken exactly as lime takes them (np.mean per segment and channel), so
    the hidden pixels are bit-identical to lime's; it is one pass over segments, not samples.
    """
    fudged = image.copy()
    if hide_color is not None:
        fudged[:] = hide_color
        return fudged
    for x in np.unique(segments):
        where = segments == x
        values = image[where]
        fudged[where] = [np.mean(values[:, c]) for c in range(image.shape[-1])]
    return fudged


def cosine_distances_to_first(data: np.ndarray) -> np.ndarray:
    """lime's `pairwise_distances(data, data[0], metric="cosine")`, without sklearn's per-call checks.

    Same formula (1 - cos, clipped to [0, 2]); rows of a 0/1 matrix with an all-ones first row.
    """
    x = data.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms == 0.0] = 1.0
    sim = (x @ x[0]) / (norms * norms[0])
    return np.clip(1.0 - sim, 0.0, 2.0)


def kernel(d: np.ndarray, kernel_width: float) -> np.ndarray:
    """lime_image's default kernel."""
    return np.sqrt(np.exp(-(d**2) / kernel_width**2))


class _Perturber:
    """Builds perturbed batches: out = where(Z[:, segments], image, fudged), vectorised."""

    def __init__(self, image: np.ndarray, fudged: np.ndarray, segments: np.ndarray, device: str) -> None:
        self.image, self.fudged, self.segments = image, fudged, segments
        self.backend = "numpy"
        self._tf_fn = None
        tf = sys.modules.get("tensorflow")  # only when the service already loaded TF for the model
        if device == "tensorflow":
            import tensorflow as tf
        use_tf = device == "tensorflow" or (
            device == "auto" and tf is not None and bool(tf.config.list_logical_devices("GPU"))
        )
        if use_tf:
            self.backend = "tensorflow-gpu" if tf.config.list_logical_devices("GPU") else "tensorflow"
            image_t = tf.constant(image)
            fudged_t = tf.constant(fudged)
            segments_t = tf.constant(segments)

            @tf.function(input_signature=[tf.TensorSpec([None, None], tf.bool)], reduce_retracing=True)
            def build(z):
                keep = tf.gather(z, segments_t, axis=1)[..., None]
                return tf.where(keep, image_t, fudged_t)

            self._tf_fn = build

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        keep = rows.astype(bool)
        if self._tf_fn is not None:
            return self._tf_fn(keep).numpy()
        return np.where(keep[:, self.segments][..., None], self.image, self.fudged)


def _predict_all(
    data: np.ndarray, perturb: _Perturber, predict_fn: Callable[[np.ndarray], np.ndarray], batch_size: int
) -> np.ndarray:
    """Run every perturbation through predict_fn, building batch i+1 while batch i predicts."""
    starts = list(range(0, len(data), batch_size))
    outputs = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lime-perturb") as pool:
        pending = pool.submit(perturb, data[starts[0] : starts[0] + batch_size])
        for i, _ in enumerate(starts):
            batch = pending.result()
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                pending = pool.submit(perturb, data[nxt : nxt + batch_size])
            preds = np.asarray(predict_fn(batch))
            if preds.ndim != 2 or preds.shape[0] != len(batch):
                raise ValueError(f"predict_fn returned shape {preds.shape} for a batch of {len(batch)}")
            outputs.append(preds)
    return np.concatenate(outputs, axis=0)


def explain(
    image: np.ndarray,
    predict_fn: Callable[[np.ndarray], np.ndarray],
    label_index: int | None,
    params: LimeParams,
    output_shape: tuple[int, int],
) -> Explanation:
    """LIME explanation of `image` (model input, (h, w, c) in [0, 1]) for one label.

    label_index None explains the predicted class (argmax on the unperturbed image, which
    is the first sample). The mask holds the top `num_features` positive superpixels,
    upsampled to `output_shape` (the original image's resolution).
    """
    t0 = time.perf_counter()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"image must be (h, w, c), got {image.shape}")
    timings: dict[str, float] = {}

    segments = segment(image, params)
    n_features = int(segments.max()) + 1
    fudged = fudged_image(image, segments, params.hide_color)
    timings["segmentation"] = (time.perf_counter() - t0) * 1000

    t1 = time.perf_counter()
    random_state = check_random_state(params.seed)
    data = random_state.randint(0, 2, params.num_samples * n_features).reshape(
        (params.num_samples, n_features)
    )
    data[0, :] = 1
    perturb = _Perturber(image, fudged, segments, params.device)
    labels = _predict_all(data, perturb, predict_fn, params.batch_size)
    if not np.all(np.isfinite(labels)):
        raise ValueError("predict_fn returned non-finite scores")
    timings["predict"] = (time.perf_counter() - t1) * 1000

    t2 = time.perf_counter()
    label = int(np.argmax(labels[0])) if label_index is None else int(label_index)
    distances = cosine_distances_to_first(data)
    base = LimeBase(
        partial(kernel, kernel_width=params.kernel_width), verbose=False, random_state=random_state
    )
    intercept, local_exp, score, _local_pred = base.explain_instance_with_data(
        data, labels, distances, label, n_features, feature_selection=params.feature_selection
    )
    weights = {int(f): float(w) for f, w in local_exp}
    top = [int(f) for f, w in local_exp if w > 0 and w > params.min_weight][: params.num_features]
    full_segments = upsample_segments(segments, output_shape)
    selected = np.zeros(n_features, dtype=bool)
    selected[top] = True
    mask = selected[full_segments]
    timings["regression"] = (time.perf_counter() - t2) * 1000
    timings["total"] = (time.perf_counter() - t0) * 1000

    run_params = dataclasses.asdict(params)
    run_params.update(
        {
            "method": "lime",
            "n_superpixels": n_features,
            "label_index": label,
            "input_shape": list(image.shape),
            "output_shape": [int(output_shape[0]), int(output_shape[1])],
            "perturbation_backend": perturb.backend,
            "distance_metric": "cosine",
        }
    )
    return Explanation(
        label_index=label,
        mask=mask,
        weights=weights,
        segments=segments,
        top_segments=top,
        intercept=float(np.asarray(intercept).ravel()[0]),
        local_score=float(score),
        params=run_params,
        timings_ms={k: round(v, 2) for k, v in timings.items()},
    )


def _gray(image: np.ndarray) -> np.ndarray:
    return image[..., 0] if image.ndim == 3 else image
