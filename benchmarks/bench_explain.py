"""Explanation time, side by side in one run: each method (LIME, Grad-CAM, both as
``EXPLANATION_METHODS=lime,gradcam`` runs them) against one forward pass; then LIME's own
comparison: the prototype's way, lime with our segmentation, ours, the floor.

    .venv/bin/python benchmarks/bench_explain.py [--samples 1000] [--repeat 5] [--no-densenet]
    .venv/bin/python benchmarks/bench_explain.py --methods-only   # the per-method table alone

The per-method table (first): for each model, the median of `--repeat` interleaved runs of one
forward pass (`LoadedModel.predict` of one image), LIME with the service's defaults (adaptive),
Grad-CAM (one forward and one backward pass, tf-keras-vis) and both through the service's
`infer` (prediction + both maps), each at a 1024 x 1024 output, and each / the forward pass.

For each model (the bundled demo CNN and a DenseNet-121-sized Keras model with random
weights) and the same synthetic radiograph it prints, each timed `--repeat` times,
interleaved (so a busy neighbour slows all alike), as median (and min):
- floor: the same number of images through `LoadedModel.predict` in large batches, i.e.
  N x the model's per-image time, which no LIME with N samples can beat;
- ours: `gpu_service.inference.explain.explain` through `LoadedModel.predict` (batch 256), mask at
  1024x1024, everything included (segmentation, perturbation, regression, mask), in lime's
  fixed mode (N samples, lime's segmentation and top-k, the earlier defaults);
- adaptive: the service's defaults (finer superpixels, stop once the bootstrap stability
  reaches the target, at most N samples): time, samples used and stability, beside the
  fixed run's stability;
- prototype: `lime_image.LimeImageExplainer` with its defaults (quickshift, batch_size 10)
  calling the Keras model's `predict`, as the original Celery worker did;
- lime + our SLIC: the same explainer and classifier with `segmentation_fn` = our
  segmentation, so prototype/ours splits into the segmentation choice and the rest;
- lime + our SLIC + batch 256: also through `LoadedModel.predict` in our batch size, so what
  is left is lime's per-sample perturbation loop against our vectorised one.
Goals: ours/floor <= 1.15; prototype/ours >= 10 on the demo model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from devkit.synthetic import make_radiograph
from gpu_service.inference import gradcam
from gpu_service.inference.explain import Explanation, LimeParams, explain, segment
from gpu_service.inference.model import LoadedModel, ModelInfo, load_model
from gpu_service.inference.pixels import to_model_input
from gpu_service.pipeline.explanations import infer
from gpu_service.timing import StageTimer

OUTPUT_SHAPE = (1024, 1024)


def densenet() -> LoadedModel:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.DenseNet121(weights=None, input_shape=(224, 224, 3), classes=2)
    info = ModelInfo(
        name="densenet121-random",
        version="0",
        sha256="n/a",
        labels=["normal", "nodule"],
        input_size=(224, 224),
        channels=3,
        scaling="imagenet",
    )
    return LoadedModel(model, info)


def time_lime(
    model: LoadedModel, image: np.ndarray, samples: int, *, ours_segmentation: bool, fast_predict: bool
) -> float:
    """lime_image.LimeImageExplainer, as the prototype called it unless told otherwise."""
    from lime import lime_image

    keras_model = model.keras_model
    channels = model.info.channels

    def classifier_fn(images: np.ndarray) -> np.ndarray:  # lime hands RGB; a 1-channel model takes one
        if fast_predict:
            return model.predict(images[..., :channels])
        return keras_model.predict(images[..., :channels], verbose=0)

    kwargs: dict = {}
    if ours_segmentation:
        params = LimeParams(num_samples=samples)
        kwargs["segmentation_fn"] = lambda img: segment(img, params)
    if fast_predict:
        kwargs["batch_size"] = 256
    explainer = lime_image.LimeImageExplainer()
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # lime's tqdm bar
        explainer.explain_instance(
            rgb, classifier_fn, top_labels=5, hide_color=None, num_samples=samples, **kwargs
        )
    return time.perf_counter() - started


# The earlier defaults (lime's fixed mode and segmentation); the adaptive rows use LimeParams' defaults.
FIXED = {
    "n_segments": 50,
    "compactness": 10.0,
    "segmentation_max_side": 64,
    "target_stability": None,
    "min_relative_weight": 0.0,
}


def time_ours(
    model: LoadedModel, image: np.ndarray, samples: int, batch: int, adaptive: bool = False
) -> tuple[float, Explanation]:
    params = LimeParams(num_samples=samples, batch_size=batch, **({} if adaptive else FIXED))
    started = time.perf_counter()
    result = explain(image, model.predict, None, params, OUTPUT_SHAPE)
    return time.perf_counter() - started, result


def time_floor(model: LoadedModel, image: np.ndarray, samples: int, batch: int) -> float:
    rng = np.random.default_rng(0)
    data = np.clip(image[None] + rng.normal(0, 0.01, (samples, *image.shape)).astype(np.float32), 0, 1)
    started = time.perf_counter()
    for i in range(0, samples, batch):
        model.predict(data[i : i + batch])
    return time.perf_counter() - started


def run(name: str, model: LoadedModel, samples: int, repeat: int, batch: int, prototype: bool) -> None:
    sample = make_radiograph(np.random.default_rng(7), size=OUTPUT_SHAPE[0], nodule=True)
    image = to_model_input(sample.image, model.info.input_size, model.info.channels)
    model.warmup()
    model.predict(np.repeat(image[None], batch, axis=0))  # trace/allocate at the full batch too
    timers = {
        "floor": lambda: time_floor(model, image, samples, batch),
        "ours": lambda: time_ours(model, image, samples, batch)[0],
        "adaptive": lambda: time_ours(model, image, samples, batch, adaptive=True)[0],
    }
    if prototype:
        timers["prototype"] = lambda: time_lime(
            model, image, samples, ours_segmentation=False, fast_predict=False
        )
        timers["lime_slic"] = lambda: time_lime(
            model, image, samples, ours_segmentation=True, fast_predict=False
        )
        timers["lime_slic_256"] = lambda: time_lime(
            model, image, samples, ours_segmentation=True, fast_predict=True
        )
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(repeat):  # interleaved, so a busy neighbour slows all alike
        for key, timer in timers.items():
            times[key].append(timer())
    _, fixed = time_ours(model, image, samples, batch)
    _, adaptive = time_ours(model, image, samples, batch, adaptive=True)
    stages = fixed.timings_ms
    med = {k: float(np.median(v)) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    ratios = [o / f for o, f in zip(times["ours"], times["floor"], strict=True)]

    def line(label: str, key: str, extra: str = "") -> None:
        print(f"{label:52s} {med[key]:8.3f} s  (min {low[key]:.3f})  {extra}")

    print(
        f"\n== {name}: input {model.info.input_size} x{model.info.channels}, {samples} samples, "
        f"batch {batch}, {repeat} interleaved runs, median (min)"
    )
    line(
        "floor (N x per-image time, large batches)", "floor", f"{1000 * med['floor'] / samples:.3f} ms/image"
    )
    line(
        "ours (gpu_service.inference.explain)",
        "ours",
        f"ours/floor = {med['ours'] / med['floor']:.3f} (min/min {low['ours'] / low['floor']:.3f}, "
        f"median of per-run ratios {np.median(ratios):.3f})",
    )
    print(f"{'':52s} stages of one more run (ms): {stages}; stability {fixed.stability:.3f}")
    line(
        "adaptive (service defaults)",
        "adaptive",
        f"adaptive/ours = {med['adaptive'] / med['ours']:.3f}, samples used {adaptive.samples_used} "
        f"of {samples}, stability {adaptive.stability:.3f}, {adaptive.params['n_superpixels']} superpixels "
        f"(fixed: {fixed.params['n_superpixels']})"
        + (f", reason {adaptive.reason.code}" if adaptive.reason else ""),
    )
    print(
        f"{'':52s} floor at the samples used: "
        f"{med['floor'] * adaptive.samples_used / samples:.3f} s (adaptive/that = "
        f"{med['adaptive'] / (med['floor'] * adaptive.samples_used / samples):.2f})"
    )
    if prototype:
        line(
            "prototype (lime defaults: quickshift, batch 10)",
            "prototype",
            f"prototype/ours = {med['prototype'] / med['ours']:.1f}x",
        )
        line(
            "lime + our SLIC (batch 10, keras predict)",
            "lime_slic",
            f"lime_slic/ours = {med['lime_slic'] / med['ours']:.1f}x  (same segmentation)",
        )
        line(
            "lime + our SLIC + LoadedModel.predict, batch 256",
            "lime_slic_256",
            f"/ours = {med['lime_slic_256'] / med['ours']:.2f}x  (lime's per-sample loop only)",
        )


def time_methods(model: LoadedModel, repeat: int) -> dict[str, float]:
    """Median seconds of one forward pass, LIME (service defaults), Grad-CAM and both, interleaved."""
    sample = make_radiograph(np.random.default_rng(7), size=OUTPUT_SHAPE[0], nodule=True)
    image = to_model_input(sample.image, model.info.input_size, model.info.channels)
    preview = np.zeros(OUTPUT_SHAPE, np.uint8)  # infer reads only its shape
    model.warmup()
    explainer = gradcam.for_model(model)
    label = int(model.predict(image[None])[0].argmax())
    explainer.explain(image, label, OUTPUT_SHAPE)  # first call builds tf-keras-vis' sub-model
    both = ("lime", "gradcam")
    timers = {
        "forward": lambda: model.predict(image[None]),
        "lime": lambda: explain(image, model.predict, label, LimeParams(), OUTPUT_SHAPE),
        "gradcam": lambda: explainer.explain(image, label, OUTPUT_SHAPE),
        "lime,gradcam": lambda: infer(
            model.predict, preview, image, LimeParams(), StageTimer(), both, explainer
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(repeat):
        for key, fn in timers.items():
            started = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - started)
    return {k: float(np.median(v)) for k, v in times.items()}


def print_methods(columns: dict[str, dict[str, float]], repeat: int) -> None:
    names = list(columns)
    print(f"\n== explanation methods, median of {repeat} interleaved runs, 1024 x 1024 output")
    print(f"{'':16s}" + "".join(f"{n:>44s}" for n in names))
    for key in ("forward", "lime", "gradcam", "lime,gradcam"):
        cells = []
        for n in names:
            t, fwd = columns[n][key], columns[n]["forward"]
            cells.append(f"{1000 * t:10.1f} ms = {t / fwd:8.1f} x forward pass")
        print(f"{key:16s}" + "".join(f"{c:>44s}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=1000, help="LIME samples for the demo model")
    parser.add_argument(
        "--densenet-samples", type=int, default=1000, help="LIME samples for DenseNet-121 (0: skip)"
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="interleaved runs of every variant (median reported), demo model",
    )
    parser.add_argument("--no-densenet", action="store_true", help="demo model only")
    parser.add_argument("--quick", action="store_true", help="demo 1000 samples, DenseNet 100, one repeat")
    parser.add_argument("--no-prototype", action="store_true", help="skip the lime runs")
    parser.add_argument("--methods-only", action="store_true", help="the per-method table only")
    args = parser.parse_args()
    if args.quick:
        args.densenet_samples, args.repeat = min(args.densenet_samples, 100), 1
    if args.no_densenet:
        args.densenet_samples = 0

    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices()]
    print(f"TensorFlow {tf.__version__} on {devices}, {os.cpu_count()} CPUs")
    demo = load_model()
    columns = {"demo CNN": time_methods(demo, args.repeat)}
    if not args.no_densenet:
        columns["DenseNet-121-sized (random weights)"] = time_methods(densenet(), max(1, min(args.repeat, 3)))
    print_methods(columns, args.repeat)
    if args.methods_only:
        return 0
    run("demo CNN", load_model(), args.samples, args.repeat, args.batch, not args.no_prototype)
    if args.densenet_samples:
        run(
            "DenseNet-121 (random weights)",
            densenet(),
            args.densenet_samples,
            1,
            args.batch,
            not args.no_prototype,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
