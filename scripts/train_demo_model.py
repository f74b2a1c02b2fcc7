"""Train the bundled demo model (normal vs nodule) on synthetic radiographs, reproducibly, on CPU.

    .venv/bin/python scripts/train_demo_model.py [--out gpu_service/models/demo]

Images come from `devkit.synthetic` at several sizes and go through the same
`pixels.to_model_input` resize the service uses, so the model sees at training time what a
DICOM of any size becomes at inference time. Prints the held-out accuracy (must be >= 0.95),
sensitivity and specificity.

Version 2: positives are drawn where scripts/check_faithfulness.py asks about them (anywhere
in a lung field up to its edge, `REACH`, and radii from `RADIUS_FRACTION`), so the harness's
pointing game measures the explainer, not the model's blind spot; the last convolution works
on a 16 x 16 map (one pooling fewer than version 1 and a 4 x 4 map), so Grad-CAM, which can
point no finer than that map, can point at a 4-8 px nodule.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np

from devkit.synthetic import make_radiograph, nodule_mask
from gpu_service.inference.pixels import to_model_input

INPUT_SIZE = (128, 128)
CHANNELS = 1
LABELS = ["normal", "nodule"]
SOURCE_SIZES = (128, 192, 256, 384, 512)
# Where and how large the nodules are: the faithfulness harness's positives (version 1 trained
# on devkit.synthetic's defaults, reach (0, 0.65) and radius (0.035, 0.06), only).
REACH = (0.0, 0.95)
RADIUS_FRACTION = (0.02, 0.08)
VERSION = "2.0.0"
MIN_ACCURACY = 0.95


def occlude(x: np.ndarray, nodule: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Hide random superpixels with their mean, as a LIME perturbation does; say if the nodule survives.

    Training on such images teaches the model that a flat patch is not a finding and that a
    hidden nodule means "normal", so its scores on LIME's perturbations answer the question
    LIME asks (what if this region were not there?) instead of being off-distribution noise.
    """
    from skimage.segmentation import slic

    segments = slic(
        np.repeat(x, 3, axis=-1), n_segments=int(rng.integers(20, 80)), compactness=10, start_label=0
    )
    hidden = rng.random(segments.max() + 1) < rng.uniform(0.2, 0.6)
    out = x.copy()
    for label in np.flatnonzero(hidden):
        where = segments == label
        out[where] = out[where].mean()
    visible = nodule & ~hidden[segments]
    survives = bool(nodule.any()) and visible.sum() >= 0.5 * nodule.sum()
    return out, survives


def make_dataset(n: int, seed: int, occluded: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced images at mixed source sizes, resized to the model input like a DICOM would be.

    A fraction `occluded` of them gets LIME-like superpixel hiding (labels follow the nodule).
    """
    rng = np.random.default_rng(seed)
    x = np.empty((n, *INPUT_SIZE, CHANNELS), np.float32)
    y = np.empty(n, np.int64)
    for i in range(n):
        label = i % 2
        size = int(rng.choice(SOURCE_SIZES))
        sample = make_radiograph(
            rng, size=size, nodule=bool(label), reach=REACH, radius_fraction=RADIUS_FRACTION
        )
        x[i] = to_model_input(sample.image, INPUT_SIZE, CHANNELS)
        y[i] = label
        if rng.random() < occluded:
            x[i], survives = occlude(x[i], nodule_mask(sample, INPUT_SIZE), rng)
            y[i] = int(survives)
    order = rng.permutation(n)
    return x[order], y[order]


def build_model():
    import keras
    from keras import layers

    inputs = keras.Input((*INPUT_SIZE, CHANNELS), name="image")
    x = inputs
    # A strided first layer halves the resolution at once: 4x cheaper per image on a CPU,
    # and a 4-8 px nodule still spans several output pixels. Two poolings, not four: the last
    # feature map is 16 x 16 (8 input pixels a cell), fine enough for Grad-CAM to point.
    for i, filters in enumerate((16, 32, 48)):
        x = layers.Conv2D(filters, 3, strides=2 if i == 0 else 1, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        if i < 2:
            x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="evidence")(x)
    # Max pooling keeps "is there a nodule anywhere", the question the label asks.
    x = layers.GlobalMaxPooling2D()(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="demo_nodule_cnn")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "gpu_service/models/demo"))
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--occluded", type=float, default=0.5, help="fraction with LIME-like hiding")
    parser.add_argument("--seed", type=int, default=20240131)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()

    t0 = time.perf_counter()
    x_train, y_train = make_dataset(args.train, args.seed, occluded=args.occluded)
    x_test, y_test = make_dataset(args.test, args.seed + 1)  # held out: a different generator stream
    print(f"data: {len(x_train)} train, {len(x_test)} held-out images in {time.perf_counter() - t0:.1f}s")

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        # Label smoothing keeps scores off 0/1, so hiding evidence moves them (LIME needs that).
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.05),
        metrics=["accuracy"],
    )
    t1 = time.perf_counter()
    model.fit(
        x_train,
        keras.utils.to_categorical(y_train, len(LABELS)),
        batch_size=32,
        epochs=args.epochs,
        shuffle=True,
        verbose=2,
    )
    print(f"training: {time.perf_counter() - t1:.1f}s")
    predicted = model.predict(x_test, batch_size=256, verbose=0).argmax(axis=1)
    accuracy = float(np.mean(predicted == y_test))
    sensitivity = float(np.mean(predicted[y_test == 1] == 1))
    specificity = float(np.mean(predicted[y_test == 0] == 0))
    print(
        f"held-out accuracy: {accuracy:.4f}, sensitivity {sensitivity:.4f}, "
        f"specificity {specificity:.4f} on {len(x_test)} images"
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Save without optimizer state: the shipped file holds only what inference needs.
    export = keras.models.clone_model(model)
    export.set_weights(model.get_weights())
    export.save(out / "model.keras")
    sidecar = {
        "name": "demo-nodule-cnn",
        "version": VERSION,
        "labels": LABELS,
        "input_scaling": "unit",
        "input_size": list(INPUT_SIZE),
        "channels": CHANNELS,
        "output": "probabilities",
        "description": (
            "Demo only, trained on synthetic images by scripts/train_demo_model.py; not for clinical use."
        ),
        "training": {
            "seed": args.seed,
            "train_images": args.train,
            "epochs": args.epochs,
            "occluded_fraction": args.occluded,
            "label_smoothing": 0.05,
            "held_out_images": args.test,
            "held_out_accuracy": round(float(accuracy), 4),
            "held_out_sensitivity": round(sensitivity, 4),
            "held_out_specificity": round(specificity, 4),
            "nodule_reach": list(REACH),
            "nodule_radius_fraction": list(RADIUS_FRACTION),
        },
    }
    (out / "model.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    size_kb = (out / "model.keras").stat().st_size / 1024
    print(f"wrote {out / 'model.keras'} ({size_kb:.0f} KiB) and model.json")
    if accuracy < MIN_ACCURACY:
        print(f"FAIL: held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
