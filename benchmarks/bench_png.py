"""The renderings' PNG encoders side by side, in one run: time, size, and whether two threads overlap.

    .venv/bin/python benchmarks/bench_png.py [--size 2048] [--repeat 7]

The four renderings of one synthetic radiograph of `--size`² (preview, overlay and heat map at
`RENDER_MAX_SIDE` 1024, the mask at the source's resolution), as the service draws them
(`render.display_arrays`), each encoded by:
- pillow: what main used before (Pillow, zlib level 1, run-length strategy for one channel);
- zlib-up: our PNG container (gpu_service/inference/png.py) with the standard library's zlib, level 1;
- shipped: gpu_service/inference/png.py (libdeflate level 1, every row Up-filtered).
Best of `--repeat`, in ms, and the file size. Then the four encoded twice over on two threads:
the wall time against twice the serial time says whether the encoder lets a second thread run
(the service compresses on I/O threads while the DICOM objects are built).
"""

from __future__ import annotations

import argparse
import io
import threading
import time
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from devkit.synthetic import make_radiograph
from gpu_service.inference import png, render


def pillow(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    options = {"compress_type": zlib.Z_RLE} if array.ndim == 2 else {}
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=1, **options)
    return buffer.getvalue()


def zlib_up(array: np.ndarray) -> bytes:
    """The shipped container and filter with the standard library's zlib at level 1."""
    return png.container(array, zlib.compress(png.filtered_rows(np.ascontiguousarray(array)), 1))


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "pillow": pillow,
    "zlib-up": zlib_up,
    "shipped": png.encode,
}


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    image = make_radiograph(np.random.default_rng(args.size), size=args.size, nodule=True).image
    image_u8 = np.rint(image * 255).astype(np.uint8)
    mask = np.zeros(image_u8.shape, dtype=bool)
    mask[args.size // 4 : args.size // 2, args.size // 3 : args.size // 2] = True
    yy, xx = np.mgrid[0 : args.size, 0 : args.size]
    weights = np.sin(yy / 97.0) * np.cos(xx / 131.0)  # signed, smooth: superpixel-like patches
    weights = np.round(weights * 8).astype(np.float32) / 8
    arrays = render.display_arrays(image_u8, mask, weights, render.DEFAULT_MAX_SIDE)
    for name, fn in ENCODERS.items():  # every encoder gives back the same pixels
        for role, array in arrays.items():
            with Image.open(io.BytesIO(fn(array))) as img:
                assert np.array_equal(np.asarray(img), array), (name, role)
    print(
        f"{args.size}² radiograph, renderings at {render.DEFAULT_MAX_SIDE}, best of {args.repeat} (ms / KiB)"
    )
    print(f"  {'rendering':<22}" + "".join(f"{n:>20}" for n in ENCODERS))
    totals = dict.fromkeys(ENCODERS, 0.0)
    for role, array in arrays.items():
        cells = []
        for name, fn in ENCODERS.items():
            ms = best_ms(lambda fn=fn, array=array: fn(array), args.repeat)
            totals[name] += ms
            cells.append(f"{ms:8.1f} / {len(fn(array)) / 1024:7.0f}")
        print(f"  {role + ' ' + 'x'.join(map(str, array.shape)):<22}" + "".join(f"{c:>20}" for c in cells))
    print(f"  {'all four':<22}" + "".join(f"{totals[n]:>20.1f}" for n in ENCODERS))
    print("\ntwo threads, each encoding the four (ms): serial x 2 vs threaded; 2.0 = no overlap")
    for name, fn in ENCODERS.items():

        def four(fn: Callable[[np.ndarray], bytes] = fn) -> None:
            for array in arrays.values():
                fn(array)

        serial = best_ms(lambda: (four(), four()), 3)

        def threaded() -> None:
            threads = [threading.Thread(target=four) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        both = best_ms(threaded, 3)
        print(f"  {name:<10} serial {serial:7.1f}   threaded {both:7.1f}   ratio {2 * both / serial:4.2f}")


if __name__ == "__main__":
    main()
