"""One request's processing, stage by stage, before and after the rendering rework, in one run.

    .venv/bin/python benchmarks/bench_pipeline.py [--sizes 512 2048 3000x2500] [--repeat 5]
    .venv/bin/python benchmarks/bench_pipeline.py --profile 2048   # cProfile of one request instead

Each request is the service's own `Processor` (gpu_service/pipeline/processing.py) with the
bundled demo model and the production LIME defaults, against a real Cloud Storage emulator
(fake-gcs-server, started here on loopback, memory backend): download, decode, predict, explain,
render, write (the four PNGs), dicom (SEG, heat-map SEG, SR built, encoded and written),
write_record. No DICOMweb store and no webhook are configured (no STOW-RS, no webhook stage).
Batching is off: one caller, the model called directly.

Three variants, interleaved, `--repeat` times each per size (a busy neighbour slows all alike),
every request on a fresh upload:
- before: what commit bbd50c9 did in the stages the rendering rework changed: render.py as of
  bbd50c9, copied verbatim below (`LegacyRender`): every rendering at the source's resolution, the
  overlay's outline by repeated `find_boundaries` at full resolution, float blends, PNG zlib
  level 6; decoding pixel by pixel (`pixels.LUT_MIN_PIXELS` out of reach); LIME's weight map at
  full resolution. The outputs one after the other. Today's code otherwise;
- previous: main as it was at commit 37178d4, the start of issue 17's third pass (`Previous`, its
  code copied below): LIME's weight map upsampled to a full-resolution float32 array (the heat
  map sampled from it, the heat-map SEG's bands computed over it); the lookup table gathered by
  one `np.take`; the 8-bit preview made on the request's thread after the model input, and shrunk
  to display size in stage `render`; the mask PNG 8-bit (0/255); every DICOM object built before
  the first is encoded and written;
- after: as shipped: the weight map kept at the model input's resolution (inference/upsampled.py),
  the gather a chunk at a time (inference/lut.py), the preview and its display copy made on an
  output thread beside the model input's resize, a 1-bit mask PNG, each DICOM object encoded and
  written as soon as it is built.
Earlier passes' figures (dab686a against bbd50c9) are in docs/benchmarks.md.

Per size it prints each stage's median (ms), the request's wall time, the time in model calls
(every call of the model's `predict`, the prediction and LIME's perturbations, timed around the
call) and everything else, with its share of the request. Goals (issue 17) for the 2048 x 2048
and 3000 x 2500 images: everything except model calls <= 300 ms and <= 25 % of the request.
Peak memory: one more request per size and variant under `tracemalloc` (Python and numpy
allocations; TensorFlow's own allocator is not traced), untimed; and the process's peak RSS.
Sizes are `N` (N x N) or `WxH` (W columns, H rows).
"""

from __future__ import annotations

import argparse
import contextvars
import cProfile
import io
import os
import pstats
import resource
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from devkit.synthetic import make_radiograph, to_dicom_dataset
from gpu_service.dicom import objects as dicom_objects
from gpu_service.dicom import result_objects
from gpu_service.inference import explain, lut, pixels
from gpu_service.inference.model import load_model
from gpu_service.pipeline import processing, renderings
from gpu_service.request import InferenceRequest
from gpu_service.settings import Settings
from gpu_service.wiring import build_processor
from infra.local.emulators import FakeGcsServer
from pipeline_common import naming

PROJECT = "bench-pipeline"
STAGES = ("download", "decode", "predict", "explain", "render", "write", "dicom", "write_record")
PROCESSORS: list[processing.Processor] = []  # the benchmark's, whose output pool a variant swaps


class LegacyRender:
    """gpu_service/inference/render.py as of commit bbd50c9 (full resolution, level 6): "before".
    ``max_side`` is accepted and ignored, so today's processing.py can call it."""

    OVERLAY_COLOR = (255, 64, 32)
    BOUNDARY_COLOR = (255, 220, 0)
    OVERLAY_ALPHA = 0.35
    SUPPORT_COLOR = (230, 30, 20)
    AGAINST_COLOR = (30, 90, 255)
    HEATMAP_MAX_ALPHA = 0.6

    @staticmethod
    def _png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=6)
        return buffer.getvalue()

    @classmethod
    def preview_png(cls, image_u8: np.ndarray, max_side: int | None = None) -> bytes:
        if image_u8.dtype != np.uint8 or image_u8.ndim not in (2, 3):
            raise ValueError("preview needs an HxW or HxWx3 uint8 array")
        return cls._png(np.ascontiguousarray(image_u8))

    @classmethod
    def mask_png(cls, mask: np.ndarray) -> bytes:
        if mask.ndim != 2:
            raise ValueError("mask must be HxW")
        return cls._png(np.where(mask.astype(bool), 255, 0).astype(np.uint8))

    @classmethod
    def overlay_rgb(cls, image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
        rgb = np.repeat(image_u8[..., None], 3, axis=2) if image_u8.ndim == 2 else image_u8[..., :3]
        if rgb.shape[:2] != mask.shape:
            raise ValueError(f"mask {mask.shape} does not match image {rgb.shape[:2]}")
        inside = mask.astype(bool)
        out = rgb.astype(np.float32)
        color = np.asarray(cls.OVERLAY_COLOR, dtype=np.float32)
        out[inside] = (1.0 - cls.OVERLAY_ALPHA) * out[inside] + cls.OVERLAY_ALPHA * color
        edges = find_boundaries(inside, mode="outer")
        thickness = max(1, round(max(mask.shape) / 512))
        for _ in range(thickness - 1):
            edges = find_boundaries(edges | inside, mode="outer") | edges
        out[edges] = np.asarray(cls.BOUNDARY_COLOR, dtype=np.float32)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    @classmethod
    def overlay_png(cls, image_u8: np.ndarray, mask: np.ndarray, max_side: int | None = None) -> bytes:
        return cls._png(cls.overlay_rgb(image_u8, mask))

    @classmethod
    def heatmap_rgb(cls, image_u8: np.ndarray, pixel_weights: np.ndarray) -> np.ndarray:
        rgb = np.repeat(image_u8[..., None], 3, axis=2) if image_u8.ndim == 2 else image_u8[..., :3]
        if rgb.shape[:2] != pixel_weights.shape:
            raise ValueError(f"weights {pixel_weights.shape} do not match image {rgb.shape[:2]}")
        w = np.clip(np.nan_to_num(pixel_weights.astype(np.float32), nan=0.0), -1.0, 1.0)
        alpha = (cls.HEATMAP_MAX_ALPHA * np.abs(w))[..., None]
        color = np.where(
            (w > 0)[..., None],
            np.asarray(cls.SUPPORT_COLOR, dtype=np.float32),
            np.asarray(cls.AGAINST_COLOR, dtype=np.float32),
        )
        out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * color
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    @classmethod
    def heatmap_png(cls, image_u8: np.ndarray, weights: np.ndarray, max_side: int | None = None) -> bytes:
        return cls._png(cls.heatmap_rgb(image_u8, weights))

    @classmethod
    def display_arrays(
        cls,
        image_u8: np.ndarray,
        mask: np.ndarray,
        weights: np.ndarray | None,
        max_side: int | None = None,
        small: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The renderings as bbd50c9 drew them (its *_png functions, without the encoding)."""
        arrays = {
            "preview": np.ascontiguousarray(image_u8),
            "mask": np.where(mask.astype(bool), 255, 0).astype(np.uint8),
            "overlay": cls.overlay_rgb(image_u8, mask),
        }
        if weights is not None:
            arrays["heatmap"] = cls.heatmap_rgb(image_u8, weights)
        return arrays

    @classmethod
    def heatmap_on_display(
        cls, image_u8: np.ndarray, shape: tuple[int, ...], weights: np.ndarray
    ) -> np.ndarray:
        return cls.heatmap_rgb(image_u8, weights)  # bbd50c9's "display" is the source's resolution

    png = _png


class InlinePool:
    """Runs a submitted task at once on the caller's thread: the outputs one after the other."""

    @staticmethod
    def submit(fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, as a pool would
            future.set_exception(exc)
        return future


class Previous:
    """The code paths of commit 37178d4 that "after" changed, copied from it."""

    @staticmethod
    def weight_map(segments: np.ndarray, weights: dict[int, float], shape: tuple[int, int]) -> np.ndarray:
        """LIME's weight map upsampled to the source's resolution, every pixel a float32: what
        37178d4 returned, and the same Pillow resize that ``Upsampled.full`` does."""
        return np.asarray(SHIPPED["weight_map"](segments, weights, shape))

    @staticmethod
    def decode(self: processing.Processor, data: bytes, timer: Any) -> Any:
        """The 8-bit preview on the request's thread after the model input; no display copy (the
        renderings shrink the image themselves, in stage ``render``)."""
        with timer.stage("decode"):
            ds = pixels.read_dicom(data)
            image = pixels.decode(ds)
            info = self.model.info
            model_input = pixels.to_model_input(image, info.input_size, info.channels)
            return processing._Decoded(ds, image, pixels.to_uint8(image), None, model_input)

    @staticmethod
    def start_writes(pool: Any, outputs: Any, request: Any, dataset: Any, drawn: list, timer: Any) -> Any:
        """The mask as an 8-bit PNG (0/255), the other renderings as shipped."""
        eight_bit = [
            (suffix, role, array.view(np.uint8) * np.uint8(255) if array.dtype == bool else array)
            for suffix, role, array in drawn
        ]
        return SHIPPED["start_writes"](pool, outputs, request, dataset, eight_bit, timer)

    @staticmethod
    def write_objects(*, write: Any, pool: Any = None, **kwargs: Any) -> Any:
        """Every object built first, then each encoded and written (the writes on the pool)."""
        objects = dicom_objects.build_objects(
            kwargs["source"],
            kwargs["mask"],
            kwargs["finding"],
            kwargs["algorithm"],
            kwargs["dedup_key"],
            kwargs["frame_index"],
            pixel_weights=kwargs["pixel_weights"],
            gradcam_weights=kwargs.get("gradcam_weights"),
        )
        suffixes = result_objects.SUFFIXES
        pending = []
        try:
            for role, ds in objects.objects.items():
                data = dicom_objects.encode(ds)
                run = contextvars.copy_context().run
                pending.append(
                    pool.submit(run, write, suffixes[role], role, data, result_objects.CONTENT_TYPE)
                )
        finally:
            wait(pending)
        for future in pending:
            future.result()
        uris = {role: kwargs["uri"](suffixes[role]) for role in objects.objects}
        section = result_objects.dicom_section(objects, uris, kwargs["dicomweb_url"], None)
        return result_objects.WrittenObjects(section, list(objects.objects.values()))


VARIANTS = ("before", "previous", "after")
SHIPPED: dict[str, Any] = {
    "render": renderings.render,
    "start_writes": renderings.start_writes,
    "weight_map": explain.weight_map,
    "gather": lut.gather,
    "decode": processing.Processor._decode,
    "write_objects": result_objects.write_objects,
}


def _ship() -> None:
    renderings.render = SHIPPED["render"]
    renderings.start_writes = SHIPPED["start_writes"]
    explain.weight_map = SHIPPED["weight_map"]
    lut.gather = SHIPPED["gather"]
    processing.Processor._decode = SHIPPED["decode"]
    result_objects.write_objects = SHIPPED["write_objects"]


@contextmanager
def variant(name: str) -> Iterator[None]:
    """Sets up one of :data:`VARIANTS` for the requests run inside."""
    lut_min = pixels.LUT_MIN_PIXELS
    pools = {p: p._pool for p in PROCESSORS}
    if name in ("before", "previous"):  # the weight map at full resolution; decode as it was
        explain.weight_map = Previous.weight_map  # type: ignore[assignment]
        processing.Processor._decode = Previous.decode  # type: ignore[assignment,method-assign]
    if name == "before":
        renderings.render = LegacyRender  # type: ignore[assignment]
        pixels.LUT_MIN_PIXELS = 1 << 62
        for p in PROCESSORS:
            p._pool = InlinePool()  # type: ignore[assignment]
    if name == "previous":
        lut.gather = np.take  # one take, the whole 16-bit index converted to intp first
        renderings.start_writes = Previous.start_writes  # type: ignore[assignment]
        result_objects.write_objects = Previous.write_objects  # type: ignore[assignment]
    try:
        yield
    finally:
        _ship()
        pixels.LUT_MIN_PIXELS = lut_min
        for p, pool in pools.items():
            p._pool = pool


class ModelClock:
    """Wraps the model's ``predict``: the time spent inside model calls, per request."""

    def __init__(self, predict: Callable[[Any], Any]) -> None:
        self._predict = predict
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, batch: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._predict(batch)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def parse_size(text: str) -> tuple[int, int]:
    """(rows, columns) of ``N`` or ``WxH``."""
    if "x" in text:
        w, h = (int(v) for v in text.lower().split("x"))
        return h, w
    return int(text), int(text)


def dicom_of(rows: int, columns: int) -> bytes:
    side = max(rows, columns)
    image = make_radiograph(np.random.default_rng(side), size=side, nodule=True).image
    top, left = (side - rows) // 2, (side - columns) // 2
    ds = to_dicom_dataset(image[top : top + rows, left : left + columns], modality="DX", bits=12)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Bench:
    def __init__(self, bucket: str, processor: processing.Processor, clock: ModelClock) -> None:
        from google.cloud import storage

        self.bucket = storage.Client(project=PROJECT).bucket(bucket)
        self.processor = processor
        self.clock = clock

    def upload(self, data: bytes) -> InferenceRequest:
        name = f"bench/{uuid.uuid4().hex}.dcm"
        blob = self.bucket.blob(name)
        blob.upload_from_string(data, content_type="application/dicom")
        blob.reload()
        gen = str(blob.generation)
        return InferenceRequest(
            self.bucket.name, name, gen, naming.correlation_id(self.bucket.name, name, gen), len(data)
        )

    def run(self, request: InferenceRequest) -> dict[str, float]:
        """One request, processed as a push would: stage times, wall time and model time (ms)."""
        self.clock.seconds, self.clock.calls = 0.0, 0
        start = time.perf_counter()
        result = self.processor.process(request, 1)
        wall = (time.perf_counter() - start) * 1000
        if result.outcome.value != "completed":
            raise RuntimeError(f"request {request.name}: {result.outcome} {result.error_code}")
        out = dict(result.timings_ms)
        out["request"] = wall
        out["model calls"] = self.clock.seconds * 1000
        out["model call count"] = self.clock.calls
        return out


def peak_traced_mb(bench: Bench, data: bytes) -> float:
    request = bench.upload(data)
    tracemalloc.start()
    try:
        bench.run(request)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows)


def report(label: str, results: dict[str, list[dict[str, float]]], peaks: dict[str, float]) -> None:
    names = list(results)

    def row(name: str, values: list[float], fmt: str = ".1f") -> None:
        print(f"  {name:<28}" + "".join(f"{v:>14{fmt}}" for v in values))

    print(f"\n{label}: median of {len(results[names[0]])} requests each (ms)")
    print(f"  {'stage':<28}" + "".join(f"{n:>14}" for n in names))
    derived = {"request", "model calls", "model call count"}
    extra = sorted({k for rows in results.values() for r in rows for k in r} - set(STAGES) - derived)
    for stage in (*STAGES, *extra):
        row(stage, [med(results[n], stage) for n in names])
    row("request (wall)", [med(results[n], "request") for n in names])
    row("  in model calls", [med(results[n], "model calls") for n in names])
    outside = {
        n: (
            statistics.median(r["request"] - r["model calls"] for r in rows),
            statistics.median((r["request"] - r["model calls"]) / r["request"] for r in rows),
        )
        for n, rows in results.items()
    }
    row("  everything else", [outside[n][0] for n in names])
    row("  everything else, share", [outside[n][1] for n in names], ".0%")
    row("model calls per request", [med(results[n], "model call count") for n in names], ".0f")
    row("peak traced memory (MiB)", [peaks[n] for n in names], ".0f")
    for n in names:
        if n != "before":
            ms_ok, share_ok = outside[n][0] <= 300, outside[n][1] <= 0.25
            print(f"  goals, {n}: everything else <= 300 ms {'met' if ms_ok else 'NOT met'}; "
                  f"<= 25 % of the request {'met' if share_ok else 'NOT met'}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["512", "2048", "3000x2500"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--profile", metavar="SIZE", help="cProfile one request (after) of this size instead")
    args = parser.parse_args()

    server = FakeGcsServer().start()
    os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        server.create_bucket(bucket)
        settings = Settings(project=PROJECT, batching=False)
        model = load_model()
        model.warmup()
        wired = build_processor(settings, model, batching=False)
        clock = ModelClock(model.predict)
        clock.accepts_tensors = getattr(model.predict, "accepts_tensors", False)  # type: ignore[attr-defined]
        wired.processor.predict_fn = clock
        PROCESSORS.append(wired.processor)
        bench = Bench(bucket, wired.processor, clock)
        if args.profile:
            return profile(bench, dicom_of(*parse_size(args.profile)))
        print(f"demo model {model.info.name} {model.info.version}, production LIME defaults, "
              f"RENDER_MAX_SIDE {settings.render_max_side}, fake-gcs-server on loopback, "
              f"{os.cpu_count()} CPUs; before = bbd50c9's render and decode, previous = 37178d4")  # fmt: skip
        for text in args.sizes:
            rows, columns = parse_size(text)
            data = dicom_of(rows, columns)
            for name in args.variants:  # one untimed request each: caches, connections
                with variant(name):
                    bench.run(bench.upload(data))
            results: dict[str, list[dict[str, float]]] = {name: [] for name in args.variants}
            for _ in range(args.repeat):
                for name in args.variants:
                    request = bench.upload(data)
                    with variant(name):
                        results[name].append(bench.run(request))
            peaks = {}
            for name in args.variants:
                with variant(name):
                    peaks[name] = peak_traced_mb(bench, data)
            report(f"{columns} x {rows} ({len(data) / 2**20:.1f} MiB DICOM)", results, peaks)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\nprocess peak RSS over the whole run: {rss:.0f} MiB (model and TensorFlow included)")
        wired.close()
        return 0
    finally:
        server.stop()


def profile(bench: Bench, data: bytes) -> int:
    bench.run(bench.upload(data))
    request = bench.upload(data)
    profiler = cProfile.Profile()
    profiler.enable()
    timings = bench.run(request)
    profiler.disable()
    print({k: round(v, 1) for k, v in timings.items()})
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
