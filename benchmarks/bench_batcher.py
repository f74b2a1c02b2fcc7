"""Throughput of the inference stage (decode, predict, LIME) with 1, 2 and 4 concurrent requests,
with and without the shared cross-request batcher, side by side in one run on one machine.

Each request does what the service does between download and write: parse and decode a
DICOM, one prediction, one LIME explanation (``--num-samples`` perturbations in batches of
``--lime-batch``). "direct": every request thread calls the model itself; "batched": all
calls go through one :class:`gpu_service.inference.batcher.Batcher` (``--max-batch`` rows,
``--wait-ms``). Storage and the webhook are left out: they are I/O, not model time.

    .venv/bin/python benchmarks/bench_batcher.py                  # a few minutes on a small CPU
    .venv/bin/python benchmarks/bench_batcher.py --images 32 --num-samples 1000   # GPU-sized
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import queue
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from devkit import synthetic
from gpu_service.inference.batcher import Batcher
from gpu_service.inference.explain import LimeParams
from gpu_service.inference.model import LoadedModel, load_model
from gpu_service.inference.pixels import decode, read_dicom, to_model_input, to_uint8
from gpu_service.pipeline.processing import infer
from gpu_service.timing import StageTimer


def make_dicoms(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        sample = synthetic.make_radiograph(rng, size=size, nodule=bool(i % 2))
        buffer = io.BytesIO()
        synthetic.to_dicom_dataset(sample.image).save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def one_request(model: LoadedModel, batcher: Batcher | None, data: bytes, params: LimeParams) -> None:
    """What Processor does between download and write, announced to the batcher like it."""
    decoded = decode(read_dicom(data))
    x = to_model_input(decoded, model.info.input_size, model.info.channels)
    predict_fn = batcher.predict if batcher is not None else model.predict
    with batcher.caller() if batcher is not None else contextlib.nullcontext():
        infer(predict_fn, to_uint8(decoded), x, params, StageTimer())


def run(model: LoadedModel, dicoms: list[bytes], concurrency: int, batched: bool, args) -> tuple[float, str]:
    params = LimeParams(num_samples=args.num_samples, batch_size=args.lime_batch, seed=0)
    batcher = Batcher(model.predict, args.max_batch, args.wait_ms) if batched else None
    work: queue.Queue[bytes] = queue.Queue()
    for d in dicoms:
        work.put(d)
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            try:
                data = work.get_nowait()
            except queue.Empty:
                return
            try:
                one_request(model, batcher, data, params)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    note = ""
    if batcher is not None:
        batcher.close()
        s = batcher.stats
        note = (
            f"{s.rows / max(1, s.batches):.0f} rows/batch, up to {s.max_submissions_in_batch} requests/batch"
        )
    if errors:
        raise errors[0]
    return len(dicoms) / elapsed * 60.0, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8, help="requests per configuration")
    parser.add_argument("--size", type=int, default=512, help="DICOM image side in pixels")
    parser.add_argument("--num-samples", type=int, default=256, help="LIME perturbations per image")
    parser.add_argument("--lime-batch", type=int, default=64, help="perturbations per predict call")
    parser.add_argument("--max-batch", type=int, default=256, help="batcher: rows per model call")
    parser.add_argument("--wait-ms", type=float, default=10.0, help="batcher: max wait to fill a batch")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the best counts")
    parser.add_argument("--model", default=None, help="model URI (default: bundled demo)")
    args = parser.parse_args()

    import tensorflow as tf

    model = load_model(args.model, max_batch_size=args.max_batch)
    model.warmup()
    dicoms = make_dicoms(args.images, args.size)
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"]
    print(f"model {model.info.name} {model.info.version} input {model.info.input_size}x{model.info.channels}")
    print(f"device {', '.join(devices)}; CPU cores {os.cpu_count()}; {args.images} images of {args.size}px;"
          f" LIME {args.num_samples} samples in batches of {args.lime_batch};"
          f" batcher max {args.max_batch} rows / {args.wait_ms} ms")  # fmt: skip
    one_request(model, None, dicoms[0], LimeParams(num_samples=args.lime_batch, batch_size=args.lime_batch))

    rows = []
    for c in args.concurrency:
        # Interleaved and best-of-N, so load from other processes on a shared machine hits both alike.
        direct, batched, note = 0.0, 0.0, ""
        for _ in range(max(1, args.repeat)):
            direct = max(direct, run(model, dicoms, c, False, args)[0])
            rate, info = run(model, dicoms, c, True, args)
            if rate > batched:
                batched, note = rate, info
        rows.append((c, direct, batched, note))
        print(f"  concurrency {c}: direct {direct:7.1f} img/min, batched {batched:7.1f} img/min", flush=True)

    print()
    print(
        "| concurrent requests | direct (images/min) | shared batcher (images/min) "
        "| batched/direct | batches |"
    )
    print("|---:|---:|---:|---:|---|")
    for c, direct, batched, note in rows:
        print(f"| {c} | {direct:.1f} | {batched:.1f} | {batched / direct:.2f}x | {note} |")


if __name__ == "__main__":
    main()
