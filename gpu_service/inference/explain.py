"""LIME for images: what `lime_image.LimeImageExplainer.explain_instance` computes (segmentation,
sampling, cosine distances, kernel, `LimeBase`'s feature selection and ridge regression), without
its per-sample loop: a batch of perturbations is one gather + select (lime_perturb.py), built in
a background thread while the previous batch is in `predict_fn` (the only way to the model, so a
batcher can sit behind it). On top of lime: signed per-pixel weights (the heat map), a bootstrap
stability figure and, with `target_stability`, adaptive sampling (lime_stability.py); with
`target_stability=None, min_relative_weight=0` the weights and mask equal lime's."""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import numpy as np
from lime.lime_base import LimeBase
from lime.wrappers.scikit_image import SegmentationAlgorithm
from PIL import Image
from sklearn.utils import check_random_state
from threadpoolctl import ThreadpoolController

from gpu_service.inference import lime_stability
from gpu_service.inference.lime_perturb import Perturber, predict_all
from gpu_service.inference.pixels import resize
from gpu_service.inference.upsampled import Upsampled, WeightMap, upsample

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")
FEATURE_SELECTIONS = ("auto", "none", "forward_selection", "highest_weights", "lasso_path")
_BLAS = ThreadpoolController()  # scoped limits below; threadpoolctl comes with scikit-learn


@dataclass(frozen=True)
class LimeParams:
    """Explanation settings; every field lands in the result record so a result can be reproduced."""

    num_samples: int = 1000  # perturbations drawn; with target_stability, the most drawn
    batch_size: int = 256  # perturbed images per predict_fn call
    segmentation: str = "slic"  # slic | quickshift | felzenszwalb (lime's SegmentationAlgorithm)
    # Measured by scripts/check_faithfulness.py: ~85 SLIC superpixels of a 128-px copy,
    # low compactness (edges follow intensity, so a nodule tends to be one superpixel), a mask of
    # the superpixels weighing >= half the strongest, and adaptive sampling to stability 0.9.
    # lime's own behaviour: n_segments=50, compactness=10, min_relative_weight=0, target_stability=None.
    n_segments: int = 120  # slic target (SLIC makes fewer at low compactness: ~85 here)
    num_features: int = 5  # superpixels in the mask (lime's get_image_and_mask num_features)
    seed: int = 0
    compactness: float = 1.0  # slic, on the Lab image as lime feeds it
    sigma: float = 1.0  # slic / felzenszwalb smoothing
    kernel_size: float = 4.0  # quickshift (lime's defaults)
    max_dist: float = 200.0
    ratio: float = 0.2
    scale: float = 100.0  # felzenszwalb
    min_size: int = 50
    # SLIC cost grows with pixels; 100 superpixels need fewer than a 224x224 input has, and the
    # mask is upsampled anyway: segment a copy no larger than this (labels upsampled).
    segmentation_max_side: int = 128
    kernel_width: float = 0.25
    hide_color: float | None = None  # None: each superpixel hidden by its mean colour (lime's default)
    min_weight: float = 0.0
    feature_selection: str = "auto"
    device: str = "auto"  # auto (TF on a GPU if TF is loaded, else numpy) | cpu (numpy) | tensorflow
    # Mask superpixels must weigh at least this share of the largest |weight| (0: lime's top-k).
    min_relative_weight: float = 0.5
    # None: fixed mode (num_samples, as lime). Else stop once the stability reaches it.
    target_stability: float | None = 0.9
    sample_step: int = 100  # adaptive mode: perturbations between two stability checks
    n_bootstrap: int = 50  # resamples behind the stability figure

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
        minimums |= {"segmentation_max_side": 1, "min_size": 0, "sample_step": 1, "n_bootstrap": 2}
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
        if not (isinstance(self.min_relative_weight, numbers.Real) and 0 <= self.min_relative_weight < 1):
            raise ValueError(f"min_relative_weight must be in [0, 1), got {self.min_relative_weight!r}")
        target = self.target_stability
        if target is not None and not (isinstance(target, numbers.Real) and 0 < target <= 1):
            raise ValueError(f"target_stability must be in (0, 1] or None, got {target!r}")


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
    # float32 over output_shape: each pixel's superpixel weight / max |weight|, in [-1, 1]
    # (positive supports label_index), held at the model input's resolution (np.asarray(...)
    # gives the full array); None only if the explanation has no weights at all.
    pixel_weights: WeightMap | None = None
    stability: float = 1.0  # mean bootstrap Jaccard of the top superpixels, in [0, 1]
    samples_used: int = 0  # perturbations evaluated by the model
    reason: lime_stability.Degenerate | None = None  # why there is nothing to localise, if so


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


def selected_mask(segments: np.ndarray, top: list[int], output_shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the `top` superpixels at `output_shape`.

    Built at the label map's (model input) resolution and only the 1-byte mask is resized
    (nearest, as the weight map), so a 10k x 10k original costs a 100 MB bool, not a 400 MB
    int32 label map.
    """
    selected = np.zeros(int(segments.max()) + 1, dtype=bool)
    selected[top] = True
    return upsample(selected[segments], output_shape)


def weight_map(segments: np.ndarray, weights: dict[int, float], output_shape: tuple[int, int]) -> Upsampled:
    """Signed per-pixel weights over `output_shape`, divided by the largest |weight| (all 0 if none).

    Kept at the label map's resolution and laid over the source like `selected_mask` (nearest),
    so the heat map and the binary mask share their superpixel edges; the renderings and the
    heat-map SEG read it from there (upsampled.py), not from a full-resolution copy.
    """
    per_segment = np.zeros(int(segments.max()) + 1, dtype=np.float32)
    for f, w in weights.items():
        per_segment[f] = w
    largest = float(np.max(np.abs(per_segment)))
    if largest > 0 and math.isfinite(largest):
        per_segment = (per_segment / largest).astype(np.float32)
    return Upsampled(per_segment[segments], output_shape)


def explain(
    image: np.ndarray,
    predict_fn: Callable[[np.ndarray], np.ndarray],
    label_index: int | None,
    params: LimeParams,
    output_shape: tuple[int, int],
) -> Explanation:
    """LIME explanation of `image` (model input, (h, w, c) in [0, 1]) for one label.

    label_index None explains the predicted class (argmax on the unperturbed image, which
    is the first sample). The mask holds the top `num_features` positive superpixels (those
    weighing at least `min_relative_weight` x the strongest), upsampled to `output_shape` (the
    original image's resolution); `pixel_weights` all weights, at the same size. With
    `target_stability`, samples are scored `sample_step` at a time until the bootstrap
    stability reaches it (lime_stability.py); the samples are lime's, drawn up front.
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
    with _BLAS.limit(limits=1, user_api="blas"):
        distances = cosine_distances_to_first(data)
    kernel_weights = kernel(distances, params.kernel_width)
    tensors_ok = bool(getattr(predict_fn, "accepts_tensors", False))
    perturb = Perturber(image, fudged, segments, params.device, tensors_ok)

    def label_of(scores: np.ndarray) -> int:
        if not np.all(np.isfinite(scores)):
            raise ValueError("predict_fn returned non-finite scores")
        label = int(np.argmax(scores[0])) if label_index is None else int(label_index)
        if label >= scores.shape[1]:
            raise ValueError(
                f"label_index {label} is out of range: the model returns {scores.shape[1]} scores"
            )
        return label

    top_options = {"num_features": params.num_features, "min_weight": params.min_weight}
    top_options["min_relative_weight"] = params.min_relative_weight
    labels, stability = lime_stability.sample_adaptively(
        lambda rows: predict_all(rows, perturb, predict_fn, params.batch_size),
        data,
        kernel_weights,
        label_of,
        step=params.sample_step,
        target=params.target_stability,
        n_bootstrap=params.n_bootstrap,
        seed=params.seed,
        **top_options,
    )
    used = len(labels)
    data, distances, kernel_weights = data[:used], distances[:used], kernel_weights[:used]
    label = label_of(labels)
    timings["predict"] = (time.perf_counter() - t1) * 1000

    t2 = time.perf_counter()
    y = labels[:, label]
    reason = None
    with _BLAS.limit(limits=1, user_api="blas"):
        base = LimeBase(
            partial(kernel, kernel_width=params.kernel_width), verbose=False, random_state=random_state
        )
        intercept, local_exp, score, _local_pred = base.explain_instance_with_data(
            data, labels, distances, label, n_features, feature_selection=params.feature_selection
        )
        weights = {int(f): float(w) for f, w in local_exp}
        if np.ptp(image) == 0 or lime_stability.is_constant(y):  # lime's weights are noise around 0
            reason = lime_stability.BLANK_IMAGE if np.ptp(image) == 0 else lime_stability.CONSTANT_OUTPUT
            weights = dict.fromkeys(weights, 0.0)
        elif n_features == 1:
            reason = lime_stability.SINGLE_SUPERPIXEL
        ordered = [int(f) for f, _ in local_exp]  # lime's order (by |weight|), so ties break as lime's do
        top = [ordered[i] for i in lime_stability.select_top([weights[f] for f in ordered], **top_options)]
        if reason in (lime_stability.CONSTANT_OUTPUT, lime_stability.BLANK_IMAGE):
            stability = 1.0
        elif stability is None or top != lime_stability.full_fit_top(data, y, kernel_weights, **top_options):
            stability = lime_stability.bootstrap_stability(
                data, y, kernel_weights, top, n_bootstrap=params.n_bootstrap, seed=params.seed, **top_options
            )
    mask = selected_mask(segments, top, output_shape)
    pixel_weights = weight_map(segments, weights, output_shape)
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
        intercept=_finite(np.asarray(intercept).ravel()[0]),
        local_score=_finite(score),
        params=run_params,
        timings_ms={k: round(v, 2) for k, v in timings.items()},
        pixel_weights=pixel_weights,
        stability=float(stability),
        samples_used=used,
        reason=reason,
    )


def _finite(value: Any) -> float:
    """A JSON-safe float: lime's R^2 is NaN for a constant target, and a record never holds NaN."""
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _gray(image: np.ndarray) -> np.ndarray:
    return image[..., 0] if image.ndim == 3 else image
