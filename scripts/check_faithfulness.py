"""Pointing game: does LIME's top superpixel land on the planted nodule?

    .venv/bin/python scripts/check_faithfulness.py [--n 100] [--samples 1000] [--model URI]

Held-out synthetic positives (a generator stream the training never saw) go through the
service's whole domain path: Part-10 DICOM bytes -> read_dicom -> decode -> to_model_input
-> model -> explain. An image is a hit when the top-weighted superpixel for "nodule",
upsampled to the original resolution, overlaps the planted nodule's disk. Prints the
fraction (must be >= 0.8) and exits non-zero below it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from gpu_service.explain import LimeParams, explain, upsample_segments  # noqa: E402
from gpu_service.model import load_model  # noqa: E402
from gpu_service.pixels import decode, read_dicom, to_model_input  # noqa: E402
from gpu_service.synthetic import make_radiograph, nodule_mask, to_dicom_dataset  # noqa: E402

THRESHOLD = 0.8


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100, help="held-out positive images")
    parser.add_argument("--samples", type=int, default=1000, help="LIME samples per image")
    parser.add_argument("--segmentation", default="slic")
    parser.add_argument("--model", default=None, help="model URI (default: bundled demo)")
    parser.add_argument("--seed", type=int, default=424242, help="data seed (training used 20240131/+1)")
    args = parser.parse_args()

    model = load_model(args.model)
    model.warmup()
    target = model.info.labels.index("nodule")
    params = LimeParams(num_samples=args.samples, segmentation=args.segmentation)
    rng = np.random.default_rng(args.seed)
    hits = detected = 0
    started = time.perf_counter()
    for _ in range(args.n):
        size = int(rng.choice([256, 512, 1024]))
        sample = make_radiograph(rng, size=size, nodule=True)
        buf = io.BytesIO()
        to_dicom_dataset(sample.image, bits=12).save_as(buf, enforce_file_format=True)
        image = decode(read_dicom(buf.getvalue()))
        x = to_model_input(image, model.info.input_size, model.info.channels)
        result = explain(x, model.predict, target, params, image.pixels.shape[:2])
        detected += int(model.predict(x[None])[0].argmax() == target)
        if result.top_segments:
            top = upsample_segments(result.segments, image.pixels.shape[:2]) == result.top_segments[0]
            hits += bool(np.any(top & nodule_mask(sample)))
    elapsed = time.perf_counter() - started
    fraction = hits / args.n
    print(f"model {model.info.name} {model.info.version} sha256 {model.info.sha256[:12]}")
    print(f"images: {args.n} held-out positives, LIME {args.samples} samples, {params.segmentation}")
    print(f"classified as nodule: {detected / args.n:.3f}")
    print(f"pointing game (top superpixel overlaps the nodule): {fraction:.3f}  [{hits}/{args.n}]")
    print(f"time: {elapsed:.1f}s ({elapsed / args.n:.2f}s per image)")
    if fraction < THRESHOLD:
        print(f"FAIL: {fraction:.3f} < {THRESHOLD}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
