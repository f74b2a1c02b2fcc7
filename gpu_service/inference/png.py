"""PNG encoding of the renderings: 8-bit grayscale or RGB, or 1-bit grayscale for a binary mask,
every row Up-filtered, deflated by libdeflate (the ``deflate`` package) at level 1. Pure: array
in, PNG bytes out.

Our own PNG container (the signature and three chunks of the PNG specification, a few lines)
rather than Pillow's encoder, for what Pillow lacks: it tries all five filters on every row (it
has no option to fix one), compresses with stock zlib, and does so in 64 KiB chunks, taking the
GIL back between them, so beside a thread that runs Python (highdicom's DICOM build) every chunk
waits for the interpreter's switch interval. libdeflate compresses the whole image in one call
without the GIL. Measured on the 2-core CPU (benchmarks/bench_png.py, docs/benchmarks.md), the four
renderings of a 2048 x 2048 image: Pillow at zlib level 1, 152 ms; this, 40 ms, files no larger.
"""

from __future__ import annotations

import struct
import zlib

import deflate
import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVEL = 1
_FILTER_UP = 2  # PNG filter type 2: each byte minus the byte above it (the first row: minus 0)
_COLOUR_TYPES = {1: 0, 3: 2}  # samples per pixel -> PNG colour type (0 grayscale, 2 truecolour)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def filtered_rows(array: np.ndarray) -> np.ndarray:
    """The image's scanlines as the IDAT stream holds them before compression: each row's filter
    byte (Up), then the row minus the row above it, modulo 256. Up costs one subtraction per byte
    and suits both images with smooth columns (radiographs) and masks (identical rows vanish).
    A bool image's rows are packed 8 pixels a byte, the first pixel in the high bit (1-bit PNG)."""
    rows = np.packbits(array, axis=1) if array.dtype == bool else array.reshape(array.shape[0], -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = _FILTER_UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8: wraps modulo 256, as PNG says
    return out


def encode(array: np.ndarray) -> bytes:
    """An HxW (grayscale) or HxWx3 (RGB) uint8 array as PNG bytes (non-interlaced, 8 bits), or an
    HxW bool array (a mask) as 1-bit grayscale: 1 white, 0 black, an eighth of the bytes to filter
    and compress (a 3000 x 2500 mask: 17 -> 2.4 ms)."""
    if array.dtype == bool and array.ndim != 2:
        raise ValueError("a 1-bit PNG rendering is an HxW bool array")
    if array.dtype not in (np.uint8, np.bool_) or array.ndim not in (2, 3) or 0 in array.shape[:2]:
        raise ValueError("a PNG rendering is a non-empty HxW or HxWx3 uint8 array, or an HxW bool array")
    samples = 1 if array.ndim == 2 else array.shape[2]
    if samples not in _COLOUR_TYPES:
        raise ValueError(f"a PNG rendering has 1 or 3 samples per pixel, not {samples}")
    return container(array, bytes(deflate.zlib_compress(filtered_rows(np.ascontiguousarray(array)), LEVEL)))


def container(array: np.ndarray, idat: bytes) -> bytes:
    """The PNG file of ``array`` (as :func:`encode` checked it) around its compressed scanlines."""
    height, width = array.shape[:2]
    colour = _COLOUR_TYPES[1 if array.ndim == 2 else array.shape[2]]
    depth = 1 if array.dtype == bool else 8
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
