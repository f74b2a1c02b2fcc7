"""LIME for images: what `lime_image.LimeImageExplainer.explain_instance` computes (segmentation,
sampling, cosine distances, kernel, `LimeBase`'s feature selection and ridge regression), without
its per-sample loop: a batch of perturbations is one gather + select, built in a background
thread while the previous batch is in `predict_fn` (the only way to the model, so a batcher
can sit behind it)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import numpy as np
from lime.lime_base import LimeBase
from lime.wrappers.scikit_image import SegmentationAlgorithm
from PIL import Image
from sklearn.utils import check_random_state
from threadpoolctl import ThreadpoolController

from gpu_service.pixels import resize

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")
FEATURE_SELECTIONS = ("auto", "none", "forward_selection", "highest_weights", "lasso_path")
_BLAS = ThreadpoolController()  # scoped limits below; threadpoolctl comes with scikit-learn
CHUNK_ROWS = 32  # perturbations built per step: the keep-mask of a chunk stays in cache


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
    # SLIC cost grows with pixels; 50 superpixels need far fewer than a 128x128 or 224x224 input
    # has, and the mask is upsampled anyway: segment a copy no larger than this (labels upsampled).
    segmentation_max_side: int = 64
    kernel_width: float = 0.25
    hide_color: float | None = None  # None: each superpixel hidden by its mean colour (lime's default)
    min_weight: float = 0.0
    feature_selection: str = "auto"
    device: str = "auto"  # auto (TF on a GPU if TF is loaded, else numpy) | cpu (numpy) | tensorflow

    def __post_init__(self) -> None:
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {self.segmentation!r}")
        if self.device not in ("auto", "cpu", "tensorflow"):
            raise ValueError(f"device must be auto, cpu or tensorflow, got {self.device!r}")
        if self.feature_selection not in FEATURE_SELECTIONS:
            raise ValueError(
                f"feature_selection must be one of {FEATURE_SELECTIONS}, got {self.feature_selection!r}"
            )
        minimums = {"num_samples": 2, "batch_size": 1, "num_features": 1, "n_segments": 1}
        minimums |= {"segmentation_max_side": 1, "min_size": 0}
        for name, low in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("kernel_width", "compactness", "kernel_size", "max_dist", "scale"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.sigma, numbers.Real) and math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
        if not (isinstance(self.ratio, numbers.Real) and 0 <= self.ratio <= 1):
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio!r}")
        if self.hide_color is not None and not math.isfinite(self.hide_color):
            raise ValueError(f"hide_color must be finite or None, got {self.hide_color!r}")


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
    on a copy no larger than `segmentation_max_side`, then labels are upsampled (nearest,
    which never drops a label when enlarging, so they stay consecutive).
    """
    h, w = image.shape[:2]
    scale = min(1.0, params.segmentation_max_side / max(h, w))
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    gray = image.ndim == 2 or image.shape[-1] != 3
    work = _gray(image) if gray else image
    if small != (h, w):
        work = resize(work.astype(np.float32), small)
    work = work.astype(np.float64)
    if gray:
        work = np.repeat(work[..., None], 3, axis=-1)
    labels = np.asarray(segmentation_algorithm(params)(work))
    _, inverse = np.unique(labels, return_inverse=True)
    return upsample_segments(inverse.reshape(labels.shape).astype(np.int32), (h, w))


@lru_cache(maxsize=32)  # lime's wrapper inspects signatures on construction; params are frozen
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

    The means are taken exactly as lime takes them (np.mean per segment and channel over
    the segment's pixels in raster order, which a stable sort by label preserves), so the
    hidden pixels are bit-identical to lime's; one sort, not one full-image pass per segment.
    """
    if hide_color is not None:
        return np.full_like(image, hide_color)
    labels = segments.ravel()
    flat = image.reshape(labels.size, -1)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    groups = np.split(flat[order], np.cumsum(counts)[:-1])
    means = np.array(
        [
            [np.mean(g[:, c]) for c in range(flat.shape[1])] if len(g) else [0.0] * flat.shape[1]
            for g in groups
        ],
        dtype=image.dtype,
    )
    return means[segments].reshape(image.shape)


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
    """Builds perturbed batches: pixel p of sample n is image[p] if rows[n, segments[p]] else fudged[p].

    numpy (CPU): per chunk of rows, one gather of the 0/1 rows by the flat label map and
    one masked copy into the batch. TensorFlow (accelerator): the same as one gather +
    where on the device; the tensor goes to predict_fn as is when it `accepts_tensors`.
    """

    def __init__(
        self,
        image: np.ndarray,
        fudged: np.ndarray,
        segments: np.ndarray,
        device: str,
        tensors_ok: bool = False,
    ) -> None:
        self.shape = image.shape
        h, w, c = image.shape
        self.labels = segments.ravel().astype(np.intp)
        self.image = image.reshape(h * w, c) if c > 1 else image.reshape(h * w)
        self.fudged = fudged.reshape(h * w, c) if c > 1 else fudged.reshape(h * w)
        self.backend = "numpy"
        self.tensors_ok = tensors_ok
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

    def __call__(self, rows: np.ndarray, pool: ThreadPoolExecutor | None = None) -> Any:
        """One batch; with `pool`, numpy fills its halves on two threads (for when nothing else runs)."""
        keep_rows = rows.astype(bool)
        if self._tf_fn is not None:
            batch = self._tf_fn(keep_rows)
            return batch if self.tensors_ok else batch.numpy()
        n = len(keep_rows)
        out = np.empty((n, *self.image.shape), dtype=self.image.dtype)
        if pool is None or n < 2 * CHUNK_ROWS:
            self._fill(keep_rows, out)
        else:
            half = n // 2
            parts = [pool.submit(self._fill, keep_rows[a:b], out[a:b]) for a, b in ((0, half), (half, n))]
            for part in parts:
                part.result()
        return out.reshape(n, *self.shape)

    def _fill(self, keep_rows: np.ndarray, out: np.ndarray) -> None:
        for i in range(0, len(keep_rows), CHUNK_ROWS):
            keep = np.take(keep_rows[i : i + CHUNK_ROWS], self.labels, axis=1)
            if self.image.ndim == 2:
                keep = keep[..., None]
            chunk = out[i : i + CHUNK_ROWS]
            np.copyto(chunk, self.fudged)
            np.copyto(chunk, self.image, where=keep)


def _predict_all(
    data: np.ndarray, perturb: _Perturber, predict_fn: Callable[[Any], np.ndarray], batch_size: int
) -> np.ndarray:
    """Run every perturbation through predict_fn, building batch i+1 while batch i predicts.

    The first batch has nothing to overlap with, so it is built on two threads; the others
    on one, beside the model.
    """
    starts = list(range(0, len(data), batch_size))
    outputs = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="lime-perturb") as pool:
        batch = perturb(data[:batch_size], pool)
        pending = None
        for i, _ in enumerate(starts):
            if pending is not None:
                batch = pending.result()
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                pending = pool.submit(perturb, data[nxt : nxt + batch_size])
            preds = np.asarray(predict_fn(batch))
            if preds.ndim != 2 or preds.shape[0] != len(batch):
                raise ValueError(f"predict_fn returned shape {preds.shape} for a batch of {len(batch)}")
            outputs.append(preds)
            del batch
    return np.concatenate(outputs, axis=0)


def selected_mask(segments: np.ndarray, top: list[int], output_shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the `top` superpixels at `output_shape`.

    Built at the label map's (model input) resolution and only the 1-byte mask is resized
    (nearest, the same sampling as `upsample_segments`), so a 10k x 10k original costs a
    100 MB bool, not a 400 MB int32 label map.
    """
    selected = np.zeros(int(segments.max()) + 1, dtype=np.uint8)
    selected[top] = 1
    small = selected[segments]
    if small.shape == tuple(output_shape):
        return small.astype(bool)
    img = Image.fromarray(small)
    return np.asarray(img.resize((output_shape[1], output_shape[0]), Image.Resampling.NEAREST)).astype(bool)


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
    if image.ndim != 3 or 0 in image.shape:
        raise ValueError(f"image must be (h, w, c), got {image.shape}")
    if len(output_shape) != 2 or min(output_shape) < 1:
        raise ValueError(f"output_shape must be (height, width) >= 1, got {tuple(output_shape)}")
    if label_index is not None and (isinstance(label_index, bool) or int(label_index) < 0):
        raise ValueError(f"label_index must be a class index >= 0 or None, got {label_index!r}")
    timings: dict[str, float] = {}

    # The BLAS calls here are tiny (colour conversion, a 1000 x 50 ridge), and an idle OpenBLAS
    # pool busy-waits ~0.1 s after each call, stealing a core from the model that runs next.
    with _BLAS.limit(limits=1, user_api="blas"):
        segments = segment(image, params)
        fudged = fudged_image(image, segments, params.hide_color)
    n_features = int(segments.max()) + 1
    timings["segmentation"] = (time.perf_counter() - t0) * 1000

    t1 = time.perf_counter()
    random_state = check_random_state(params.seed)
    data = random_state.randint(0, 2, params.num_samples * n_features).reshape(
        (params.num_samples, n_features)
    )
    data[0, :] = 1
    tensors_ok = bool(getattr(predict_fn, "accepts_tensors", False))
    perturb = _Perturber(image, fudged, segments, params.device, tensors_ok)
    labels = _predict_all(data, perturb, predict_fn, params.batch_size)
    if not np.all(np.isfinite(labels)):
        raise ValueError("predict_fn returned non-finite scores")
    timings["predict"] = (time.perf_counter() - t1) * 1000

    t2 = time.perf_counter()
    label = int(np.argmax(labels[0])) if label_index is None else int(label_index)
    if label >= labels.shape[1]:
        raise ValueError(f"label_index {label} is out of range: the model returns {labels.shape[1]} scores")
    with _BLAS.limit(limits=1, user_api="blas"):
        distances = cosine_distances_to_first(data)
        base = LimeBase(
            partial(kernel, kernel_width=params.kernel_width), verbose=False, random_state=random_state
        )
        intercept, local_exp, score, _local_pred = base.explain_instance_with_data(
            data, labels, distances, label, n_features, feature_selection=params.feature_selection
        )
    weights = {int(f): float(w) for f, w in local_exp}
    top = [int(f) for f, w in local_exp if w > 0 and w > params.min_weight][: params.num_features]
    mask = selected_mask(segments, top, output_shape)
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
