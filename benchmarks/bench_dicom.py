"""What the DICOM objects add per image, next to LIME, side by side in one run.

    .venv/bin/python benchmarks/bench_dicom.py [--sizes 512 2048] [--samples 1000] [--repeat 5]

For each source size (a synthetic 16-bit DX radiograph) it times, interleaved `--repeat` times
(median and min, in ms):
- LIME: `gpu_service.inference.explain.explain` with the bundled demo model, `--samples` perturbations,
  mask at the source's resolution (the service's default path);
- build: SEG (BINARY LIME mask) + TID 1500 SR with highdicom (`dicom_objects.build_objects`);
- encode: both to Part 10 bytes (what is written beside the upload);
- STOW-RS: both to a real Orthanc with the DICOMweb plugin on loopback (started here), one
  request, as the service sends them (new UIDs each time, so every store is a real insert);
and the extra time (build + encode + STOW) as a share of LIME's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from devkit.synthetic import make_radiograph, to_dicom_dataset
from gpu_service.dicom import objects as dicom_objects
from gpu_service.dicom.dicomweb_store import DicomWebStore
from gpu_service.dicom.objects import Algorithm, Finding
from gpu_service.inference.explain import LimeParams, explain
from gpu_service.inference.model import load_model
from gpu_service.inference.pixels import decode, to_model_input, to_uint8
from infra.local import orthanc
from infra.local.emulators import free_port, stop_process_group, wait_http


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    model = load_model()
    model.warmup()
    info = model.info
    params = LimeParams(num_samples=args.samples)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    port = free_port()
    config = orthanc.write_config(workdir, port)
    log = workdir / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            orthanc.command(config), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/system", 60, proc, log)
        store = DicomWebStore(f"http://127.0.0.1:{port}{orthanc.DICOMWEB_ROOT}")
        algorithm = Algorithm(info.name, info.version, info.sha256, {"num_samples": args.samples})
        print(f"demo model {info.name} {info.version}, LIME {args.samples} samples, repeat {args.repeat}, "
              f"Orthanc {orthanc.binary()} on loopback; ms, median (min)")  # fmt: skip
        header = ("source", "LIME", "build SEG+SR", "encode", "STOW-RS", "extra", "extra/LIME", "bytes")
        rows = []
        for size in args.sizes:
            sample = make_radiograph(np.random.default_rng(size), size=size, nodule=True)
            source = to_dicom_dataset(sample.image, modality="DX")
            decoded = decode(source)
            preview = to_uint8(decoded)
            model_input = to_model_input(decoded, info.input_size, info.channels)
            probs = model.predict(model_input[None])[0]
            times: dict[str, list[float]] = {k: [] for k in ("lime", "build", "encode", "stow")}
            size_bytes = 0
            # One untimed round first: imports, code tables, the first connection.
            for i in range(args.repeat + 1):
                t0 = time.perf_counter()
                expl = explain(model_input, model.predict, int(np.argmax(probs)), params, preview.shape[:2])
                t1 = time.perf_counter()
                finding = Finding(info.labels, [float(p) for p in probs], expl.label_index)
                key = f"bench/{size}.dcm#{i}-{time.time_ns()}"
                objects = dicom_objects.build_objects(source, expl.mask, finding, algorithm, key)
                t2 = time.perf_counter()
                blobs = [objects.encoded(r) for r in objects.objects]
                t3 = time.perf_counter()
                store.store(list(objects.objects.values()))
                t4 = time.perf_counter()
                ms_lime, ms_build, ms_encode, ms_stow = (
                    (b - a) * 1000 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))
                )
                size_bytes = sum(len(b) for b in blobs)
                if i == 0:
                    continue
                for k, v in zip(times, (ms_lime, ms_build, ms_encode, ms_stow), strict=True):
                    times[k].append(v)
            med = {k: statistics.median(v) for k, v in times.items()}
            low = {k: min(v) for k, v in times.items()}
            extra = med["build"] + med["encode"] + med["stow"]
            rows.append((
                f"{size}x{size} DX",
                *(f"{med[k]:.0f} ({low[k]:.0f})" for k in times),
                f"{extra:.0f}",
                f"{extra / med['lime']:.1%}",
                f"{size_bytes:,}",
            ))  # fmt: skip
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
        for row in [header, tuple("-" * w for w in widths), *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    finally:
        stop_process_group(proc.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
