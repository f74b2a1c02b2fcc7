"""One ruler for every explanation method (LIME, Grad-CAM) on the same held-out synthetic nodules.

    .venv/bin/python scripts/check_faithfulness.py [--n 40] [--randomise-n 6] [--model URI]

Held-out positives come from a generator stream training never saw, half of them at the lung's
edge, smaller or larger and at source sizes training never used (where the demo model v1 was
blind; v2 is trained on these positions and sizes: scripts/train_demo_model.py), plus as many
negatives for the specificity. Each goes through the service's domain path: Part-10 DICOM bytes
-> read_dicom -> decode -> to_model_input -> model -> explanation. Per method, in one run:
- pointing game: the map's top unit (LIME: the top superpixel; Grad-CAM: the feature-map cell
  with the largest value, 8 x 8 input pixels on the demo model) covers part of the nodule: the
  classic pointing game (Zhang et al. 2016: the maximum within the object, with a tolerance),
  the tolerance being the method's own unit; over all positives, and over those the model calls
  positive. Printed beside it, the stricter "the top unit holds the nodule's centre pixel" (a
  nodule whose centre is near a cell's edge can light the neighbouring cell);
- precision: the share of the map's positive mass within twice the nodule's radius;
- deletion / insertion AUC (Petsiuk et al. 2018) of the predicted class's probability, hiding
  (deletion, from the image) or revealing (insertion, from the image with every superpixel
  hidden) LIME's superpixels one at a time (hidden = its mean, as LIME hides it), in the order
  of the map's mean over each superpixel, and in a random order in the same run; AUC = the mean
  score over the curve's points;
- randomisation (Adebayo et al. 2018): the median Spearman rank correlation between the trained
  model's map and the maps of the cascade-randomised models (weights re-initialised layer by
  layer from the top), over `--randomise-n` images and every stage; a randomised map that is
  empty or constant has no rank correlation: it is reported as `empty_randomised` (the share of
  such maps) and not counted;
- stability (LIME's bootstrap figure; Grad-CAM has none: n/a), median model passes per image,
  seconds per image (the method's own time).
The last lines are one per method, in the issue's format; exits non-zero when a goal is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from scipy.stats import spearmanr

from devkit.synthetic import NODULE_RADIUS_FRACTION, make_radiograph, to_dicom_dataset
from gpu_service.inference import gradcam
from gpu_service.inference.explain import LimeParams, explain, fudged_image, segment
from gpu_service.inference.model import LoadedModel, load_model
from gpu_service.inference.pixels import decode, read_dicom, to_model_input

METHODS = ("lime", "gradcam")
GOALS = (
    "pointing_game >= 0.95, deletion_auc <= 0.5 x random, insertion_auc >= 1.5 x random, "
    "rank_correlation_randomised < 0.2; LIME stability >= 0.9 at median passes <= 500; Grad-CAM passes <= 3"
)


@dataclasses.dataclass(frozen=True)
class Case:
    x: np.ndarray  # model input
    shape: tuple[int, int]  # original resolution
    center: tuple[int, int]
    radius: float
    unfavoured: bool
    detected: bool  # the model calls it a nodule


@dataclasses.dataclass
class Map:
    """One method's answer for one image, in the forms the measures need."""

    full: np.ndarray  # at the source's resolution
    small: np.ndarray  # at the model input's resolution
    top: np.ndarray  # bool, model input's resolution: the unit the map points at (empty: none)
    passes: int
    seconds: float
    stability: float | None


def _dicom_input(image: np.ndarray, model: LoadedModel) -> tuple[np.ndarray, tuple[int, int]]:
    buf = io.BytesIO()
    to_dicom_dataset(image, bits=12).save_as(buf, enforce_file_format=True)
    decoded = decode(read_dicom(buf.getvalue()))
    x = to_model_input(decoded, model.info.input_size, model.info.channels)
    return x, (int(decoded.pixels.shape[0]), int(decoded.pixels.shape[1]))


def held_out(model: LoadedModel, n: int, seed: int, target: int) -> list[Case]:
    """Positives from a stream training never saw; every second one at the lung's edge, with a
    radius outside devkit's default range, at a source size training never used."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        unfavoured = i % 2 == 1
        if unfavoured:
            small = (0.02, NODULE_RADIUS_FRACTION[0])
            large = (NODULE_RADIUS_FRACTION[1], 0.08)
            sample = make_radiograph(
                rng,
                size=int(rng.choice([512, 768, 1024])),
                nodule=True,
                reach=(0.65, 0.95),
                radius_fraction=small if i % 4 == 1 else large,
            )
        else:
            sample = make_radiograph(rng, size=int(rng.choice([256, 512, 1024])), nodule=True)
        x, shape = _dicom_input(sample.image, model)
        assert sample.nodule_center is not None and sample.nodule_radius is not None
        detected = bool(model.predict(x[None])[0].argmax() == target)
        cases.append(Case(x, shape, sample.nodule_center, sample.nodule_radius, unfavoured, detected))
    return cases


def specificity(model: LoadedModel, n: int, seed: int, target: int) -> float:
    rng = np.random.default_rng(seed + 7)
    calls = []
    for _ in range(n):
        x, _ = _dicom_input(make_radiograph(rng, size=int(rng.choice([256, 512, 1024]))).image, model)
        calls.append(model.predict(x[None])[0].argmax() != target)
    return float(np.mean(calls))


def lime_map(model: LoadedModel, case: Case, params: LimeParams, target: int, shape=None) -> Map:
    t0 = time.perf_counter()
    result = explain(case.x, model.predict, target, params, shape or case.shape)
    seconds = time.perf_counter() - t0
    top = (
        result.segments == result.top_segments[0] if result.top_segments else np.zeros(case.x.shape[:2], bool)
    )
    per_segment = np.zeros(int(result.segments.max()) + 1, np.float32)
    for s, w in result.weights.items():
        per_segment[s] = w
    weights = result.pixel_weights  # held small (inference/upsampled.py): the full map, once
    full = np.asarray(weights) if weights is not None else np.zeros(case.shape, np.float32)
    return Map(full, per_segment[result.segments], top, result.samples_used, seconds, result.stability)


def gradcam_map(explainer: gradcam.GradcamExplainer, case: Case, target: int, shape=None) -> Map:
    result = explainer.explain(case.x, target, shape or case.shape)
    cells, (h, w) = result.cells, case.x.shape[:2]
    top = np.zeros((h, w), bool)
    if result.reason is None:
        row, col = np.unravel_index(int(np.argmax(cells)), cells.shape)
        rows = (np.arange(h) * cells.shape[0] // h) == row
        cols = (np.arange(w) * cells.shape[1] // w) == col
        top = rows[:, None] & cols[None, :]
    return Map(result.pixel_weights, result.small, top, result.model_passes, result.ms / 1000, None)


def pointing(case: Case, top: np.ndarray) -> tuple[bool, bool]:
    """(the top unit covers part of the nodule, the top unit holds its centre), at the model input."""
    h, w = top.shape
    sy, sx = h / case.shape[0], w / case.shape[1]
    cy, cx = case.center[0] * sy, case.center[1] * sx
    yy, xx = np.ogrid[0:h, 0:w]
    disk = ((yy + 0.5 - cy - 0.5 * sy) / sy) ** 2 + ((xx + 0.5 - cx - 0.5 * sx) / sx) ** 2 <= case.radius**2
    centre = top[min(int(cy), h - 1), min(int(cx), w - 1)]
    return bool((top & disk).any()), bool(centre)


def precision(case: Case, full: np.ndarray) -> float:
    positive = np.clip(np.nan_to_num(full), 0, None)
    total = float(positive.sum())
    if total == 0:
        return 0.0
    yy, xx = np.ogrid[0 : case.shape[0], 0 : case.shape[1]]
    near = (yy + 0.5 - case.center[0] - 0.5) ** 2 + (xx + 0.5 - case.center[1] - 0.5) ** 2 <= (
        2 * case.radius
    ) ** 2
    return float(positive[near].sum()) / total


def curves(model: LoadedModel, case: Case, small: np.ndarray, params: LimeParams, rng) -> dict[str, float]:
    """Deletion and insertion AUC of the predicted class, in the map's order and a random one."""
    segments = segment(case.x, params)
    fudged = fudged_image(case.x, segments, params.hide_color)
    n = int(segments.max()) + 1
    label = int(model.predict(case.x[None])[0].argmax())
    means = np.bincount(segments.ravel(), weights=small.ravel(), minlength=n) / np.maximum(
        np.bincount(segments.ravel(), minlength=n), 1
    )
    out = {}
    for name, order in (("", np.argsort(-means, kind="stable")), ("_random", rng.permutation(n))):
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        steps = np.arange(n + 1)[:, None, None]  # step k: the first k superpixels of the order
        first_k = rank[segments][None] < steps  # (n + 1, h, w)
        hidden = first_k[..., None]
        deletion = np.where(hidden, fudged[None], case.x[None])
        insertion = np.where(hidden, case.x[None], fudged[None])
        out["deletion" + name] = float(model.predict(deletion)[:, label].mean())
        out["insertion" + name] = float(model.predict(insertion)[:, label].mean())
    return out


def cascade(model: LoadedModel) -> list[tuple[str, LoadedModel]]:
    """The model with its weighted layers re-initialised from the top, one more layer per stage."""
    import keras

    keras.utils.set_random_seed(1234)
    trained = model.keras_model
    fresh = keras.models.clone_model(trained)  # same architecture, the layers' own initialisers
    weighted = [i for i, layer in enumerate(trained.layers) if layer.get_weights()]
    stages = []
    current = keras.models.clone_model(trained)
    current.set_weights(trained.get_weights())
    for i in reversed(weighted):
        current.layers[i].set_weights(fresh.layers[i].get_weights())
        copy = keras.models.clone_model(current)
        copy.set_weights(current.get_weights())
        stages.append((trained.layers[i].name, LoadedModel(copy, model.info)))
    return stages


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho of two maps' pixels; None when either is empty or constant (no ranks)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def measure(method: str, model: LoadedModel, cases: list[Case], args: Any, target: int) -> dict[str, Any]:
    params = LimeParams()  # = the service's defaults
    explainer = gradcam.for_model(model) if method == "gradcam" else None

    def one(m: LoadedModel, case: Case, shape=None) -> Map:
        if method == "lime":
            return lime_map(m, case, params, target, shape)
        ex = explainer if m is model else gradcam.for_model(m, explainer.layer)  # type: ignore[union-attr]
        return gradcam_map(ex, case, target, shape)

    rng = np.random.default_rng(args.seed)
    maps = [one(model, case) for case in cases]
    curve = [curves(model, case, m.small, params, rng) for case, m in zip(cases, maps, strict=True)]
    correlations, empty = [], 0
    for _, randomised in cascade(model):
        for case, m in zip(cases[: args.randomise_n], maps, strict=False):
            rho = rank_correlation(m.small, one(randomised, case, case.x.shape[:2]).small)
            if rho is None:
                empty += 1
            else:
                correlations.append(rho)
    total = len(correlations) + empty
    stabilities = [m.stability for m in maps if m.stability is not None]
    hits = [pointing(c, m.top) for c, m in zip(cases, maps, strict=True)]
    detected = [h for (h, _), c in zip(hits, cases, strict=True) if c.detected]
    edge = [h for (h, _), c in zip(hits, cases, strict=True) if c.unfavoured]
    return {
        "P": float(np.mean([h for h, _ in hits])),
        "P_centre": float(np.mean([c for _, c in hits])),
        "P_detected": float(np.mean(detected)) if detected else float("nan"),
        "P_edge": float(np.mean(edge)) if edge else float("nan"),
        "Q": float(np.mean([precision(c, m.full) for c, m in zip(cases, maps, strict=True)])),
        **{k: float(np.mean([c[k] for c in curve])) for k in curve[0]},
        "C": float(np.median(correlations)) if correlations else float("nan"),
        "E": empty / total if total else float("nan"),
        "S": float(np.median(stabilities)) if stabilities else None,
        "N": float(np.median([m.passes for m in maps])),
        "T": float(np.mean([m.seconds for m in maps])),
    }


def missed(method: str, f: dict[str, Any]) -> list[str]:
    checks = [
        ("pointing_game", f["P"] >= 0.95),
        ("deletion_auc", f["deletion"] <= 0.5 * f["deletion_random"]),
        ("insertion_auc", f["insertion"] >= 1.5 * f["insertion_random"]),
        ("rank_correlation_randomised", f["C"] < 0.2),
    ]
    if method == "lime":
        checks += [("stability", (f["S"] or 0) >= 0.9), ("median_passes", f["N"] <= 500)]
    else:
        checks += [("median_passes", f["N"] <= 3)]
    return [name for name, ok in checks if not ok]


def line(method: str, f: dict[str, Any]) -> str:
    stability = "n/a" if f["S"] is None else f"{f['S']:.3f}"
    return (
        f"faithfulness {method}: pointing_game={f['P']:.3f} precision={f['Q']:.3f} "
        f"deletion_auc={f['deletion']:.3f} deletion_auc_random={f['deletion_random']:.3f} "
        f"insertion_auc={f['insertion']:.3f} insertion_auc_random={f['insertion_random']:.3f} "
        f"rank_correlation_randomised={f['C']:.3f} empty_randomised={f['E']:.3f} stability={stability} "
        f"median_passes={f['N']:.0f} s_per_image={f['T']:.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=40, help="held-out positive images (as many negatives)")
    parser.add_argument("--randomise-n", type=int, default=6, help="images in the randomisation test")
    parser.add_argument("--model", default=None, help="model URI (default: bundled demo)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: lime,gradcam")
    parser.add_argument("--seed", type=int, default=424242, help="data seed (training used 20240131/+1)")
    args = parser.parse_args()

    model = load_model(args.model)
    model.warmup()
    target = model.info.labels.index("nodule")
    cases = held_out(model, args.n, args.seed, target)
    print(f"model {model.info.name} {model.info.version} sha256 {model.info.sha256[:12]}")
    print(
        f"images: {args.n} held-out positives ({args.n // 2} at the lung's edge / unusual sizes), "
        f"{args.n} negatives; randomisation on {args.randomise_n} images x every cascade stage"
    )
    sensitivity = float(np.mean([c.detected for c in cases]))
    print(
        f"held-out sensitivity={sensitivity:.3f} "
        f"(edge/unusual sizes {np.mean([c.detected for c in cases if c.unfavoured]):.3f}) "
        f"specificity={specificity(model, args.n, args.seed, target):.3f}"
    )
    figures, failures = {}, {}
    for method in args.methods.split(","):
        f = figures[method] = measure(method, model, cases, args, target)
        failures[method] = missed(method, f)
        print(
            f"{method}: pointing game over all positives {f['P']:.3f}, on those called positive "
            f"{f['P_detected']:.3f}, edge/unusual sizes {f['P_edge']:.3f}; top unit holding the "
            f"centre pixel {f['P_centre']:.3f}; "
            f"goals missed: {', '.join(failures[method]) or 'none'}"
        )
    print(f"goals: {GOALS}")
    for method, f in figures.items():
        print(line(method, f))
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
