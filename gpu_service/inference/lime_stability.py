"""How far to trust a LIME mask: bootstrap stability of its top superpixels, from samples already run.

LIME's answer is a weighted ridge regression over random perturbations; another draw of
perturbations can give another top-k. Instead of asking the model again, we resample the
rows already evaluated (with replacement), refit the same regression (lime's `Ridge(alpha=1)`
with the kernel weights, on every superpixel) and compare each refit's top-k with the full
fit's: stability = mean Jaccard overlap (docs/contracts.md). The same figure drives adaptive
sampling (S-LIME's idea): stop drawing perturbations once it reaches the target.

A closed-form solve replaces sklearn's `Ridge` here: the resamples differ only in their row
weights (bootstrap counts x kernel weights), so each refit is one small d x d solve, where
`Ridge.fit` would re-validate and re-centre the whole matrix every time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

RIDGE_ALPHA = 1.0  # lime_base.LimeBase's default model_regressor
_BLAS = ThreadpoolController()  # small solves: one thread, no idle pool spinning beside the model


@dataclass(frozen=True)
class Degenerate:
    """Why an explanation has nothing to localise; it goes to the record as `explanation.reason`."""

    code: str
    message: str


CONSTANT_OUTPUT = Degenerate(
    "constant_model_output",
    "the model gave the same score for every perturbation: no region changes the prediction",
)
BLANK_IMAGE = Degenerate(
    "blank_image",
    "the image has one value everywhere: hiding any region changes nothing, there is nothing to point at",
)
SINGLE_SUPERPIXEL = Degenerate(
    "single_superpixel",
    "the segmentation found one superpixel: the explanation cannot point at a region",
)


def select_top(
    weights: np.ndarray, num_features: int, min_weight: float = 0.0, min_relative_weight: float = 0.0
) -> list[int]:
    """The superpixels of a mask: positive, above `min_weight` and above `min_relative_weight`
    x the largest |weight|, at most `num_features`, strongest first.

    With `min_relative_weight` 0 this is lime's `get_image_and_mask(positive_only=True)`.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return []
    floor = max(float(min_weight), float(min_relative_weight) * float(np.max(np.abs(w))))
    order = np.argsort(-w, kind="stable")
    return [int(i) for i in order[:num_features] if w[i] > 0 and w[i] > floor]


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|a & b| / |a | b|; two empty sets agree (1.0), so a mask that is empty every time is stable."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


def ridge_coefficients(
    data: np.ndarray, y: np.ndarray, row_weights: np.ndarray, alpha: float = RIDGE_ALPHA
) -> np.ndarray:
    """Coefficients of min sum_i s_i (y_i - b - x_i . w)^2 + alpha |w|^2, one row per weight vector.

    `row_weights` is (B, n); the result (B, d). The same estimator as sklearn's
    `Ridge(alpha, fit_intercept=True).fit(X, y, sample_weight=s)` (weighted centring, then
    the normal equations).
    """
    x = np.asarray(data, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64)
    s_all = np.atleast_2d(np.asarray(row_weights, dtype=np.float64))
    d = x.shape[1]
    out = np.zeros((len(s_all), d))
    eye = alpha * np.eye(d)
    for b, s in enumerate(s_all):
        total = s.sum()
        if total <= 0:
            continue
        mx = (s @ x) / total
        my = float(s @ yv) / total
        xs = x * s[:, None]
        gram = xs.T @ x - total * np.outer(mx, mx)
        rhs = xs.T @ yv - total * mx * my
        out[b] = np.linalg.solve(gram + eye, rhs)
    return out


def bootstrap_stability(
    data: np.ndarray,
    y: np.ndarray,
    kernel_weights: np.ndarray,
    reference_top: Sequence[int],
    *,
    num_features: int,
    min_weight: float,
    min_relative_weight: float,
    n_bootstrap: int,
    seed: int,
) -> float:
    """Mean Jaccard of each bootstrap refit's top-k with `reference_top` (the full fit's), in [0, 1].

    The resamples come from their own generator, seeded by (seed, rows), so the figure for
    the same rows is the same whatever ran before, and lime's random stream is untouched.
    """
    n = len(data)
    if n < 2 or n_bootstrap < 1:
        return 1.0 if not reference_top else 0.0
    rng = np.random.default_rng([int(seed), int(n)])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap).astype(np.float64)
    coefs = ridge_coefficients(data, y, counts * np.asarray(kernel_weights, dtype=np.float64)[None, :])
    overlaps = [
        jaccard(select_top(c, num_features, min_weight, min_relative_weight), reference_top) for c in coefs
    ]
    value = float(np.mean(overlaps))
    return value if np.isfinite(value) else 0.0


def full_fit_top(
    data: np.ndarray,
    y: np.ndarray,
    kernel_weights: np.ndarray,
    *,
    num_features: int,
    min_weight: float,
    min_relative_weight: float,
) -> list[int]:
    """The top-k of the full (unresampled) fit, for the stability check between batches."""
    coefs = ridge_coefficients(data, y, np.asarray(kernel_weights, dtype=np.float64)[None, :])[0]
    return select_top(coefs, num_features, min_weight, min_relative_weight)


def is_constant(y: np.ndarray) -> bool:
    """True when the explained score did not move (beyond float32 noise) under any perturbation.

    A hidden superpixel of a flat region takes its mean, which can differ from its pixels by
    an ulp; a float32 model turns that into score changes of ~1e-7, which are not a signal.
    """
    yv = np.asarray(y, dtype=np.float64)
    return bool(yv.size == 0 or np.ptp(yv) <= 1e-6 * max(1.0, float(np.max(np.abs(yv)))))


def sample_adaptively(
    evaluate: Callable[[np.ndarray], np.ndarray],
    data: np.ndarray,
    kernel_weights: np.ndarray,
    label_of: Callable[[np.ndarray], int],
    *,
    step: int,
    target: float | None,
    num_features: int,
    min_weight: float,
    min_relative_weight: float,
    n_bootstrap: int,
    seed: int,
) -> tuple[np.ndarray, float | None]:
    """Model scores for the first rows of `data`, `step` rows at a time, and their stability.

    After each step the top-k of the rows so far is bootstrapped; sampling stops once the
    stability reaches `target` (None: never, every row is evaluated) or the rows run out.
    The rows are drawn up front, so where it stops depends only on the seed and the model.
    The stability is None when the last step was not measured (fixed mode, or rows ran out).
    """
    outputs: list[np.ndarray] = []
    n = 0
    while True:
        stop = len(data) if target is None else min(len(data), n + step)
        outputs.append(np.asarray(evaluate(data[n:stop])))
        n = stop
        labels = np.concatenate(outputs, axis=0) if len(outputs) > 1 else outputs[0]
        if target is None or n >= len(data):
            return labels, None  # not measured here: the caller measures its final fit
        y = labels[:, label_of(labels)]
        if is_constant(y):
            return labels, 1.0
        options = {"num_features": num_features, "min_weight": min_weight}
        options["min_relative_weight"] = min_relative_weight
        with _BLAS.limit(limits=1, user_api="blas"):
            top = full_fit_top(data[:n], y, kernel_weights[:n], **options)
            stability = bootstrap_stability(
                data[:n], y, kernel_weights[:n], top, n_bootstrap=n_bootstrap, seed=seed, **options
            )
        if stability >= target:
            return labels, stability
