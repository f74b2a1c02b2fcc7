"""The renderings' PNG encoder, read back by Pillow's decoder (an independent implementation)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from gpu_service.inference import png


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 7), (7, 1), (3, 5), (64, 33), (513, 257), (1, 1, 3), (2, 9, 3), (100, 61, 3)],
)
def test_round_trip_is_exact(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)  # every byte value: the Up filter wraps
    data = png.encode(array)
    decoded = _decode(data)
    assert decoded.dtype == np.uint8
    assert decoded.shape == array.shape
    assert np.array_equal(decoded, array)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == ("L" if array.ndim == 2 else "RGB")


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (7, 1), (3, 8), (5, 9), (64, 33), (513, 257), (2500, 3000)]
)
def test_a_bool_mask_round_trips_as_one_bit_grayscale(shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(sum(shape)).random(shape) < 0.3  # widths that fill and leave bits
    data = png.encode(mask)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "1" and img.size == (shape[1], shape[0])
    assert data[24] == 1 and data[25] == 0  # IHDR: bit depth 1, colour type 0 (grayscale)
    decoded = _decode(data)
    assert decoded.dtype == bool and np.array_equal(decoded, mask)
    assert np.array_equal(_decode(png.encode(mask[::2, ::3])), mask[::2, ::3])  # a view


def test_a_mask_and_a_smooth_image_compress_well() -> None:
    mask = np.zeros((2048, 2048), dtype=np.uint8)
    mask[500:900, 600:1100] = 255
    ramp = np.tile(np.arange(1024, dtype=np.uint16) // 4, (1024, 1)).astype(np.uint8)
    assert len(png.encode(mask)) < 32 * 1024  # 4 MiB of pixels
    assert len(png.encode(ramp)) < 64 * 1024  # 1 MiB of pixels
    assert np.array_equal(_decode(png.encode(mask)), mask)
    assert len(png.encode(mask > 0)) < len(png.encode(mask)) // 2  # 1 bit a pixel


def test_scanlines_are_up_filtered_and_every_chunk_checks() -> None:
    array = np.array([[10, 20, 30], [15, 5, 30]], dtype=np.uint8)
    data = png.encode(array)
    assert data[:8] == png.SIGNATURE
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = np.frombuffer(data[offset : offset + 4], dtype=">u4")
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        crc = int.from_bytes(data[offset + 8 + length : offset + 12 + length], "big")
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        offset += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    raw = zlib.decompress(chunks[1][1])
    assert list(raw) == [2, 10, 20, 30, 2, 5, (5 - 20) % 256, 0]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), dtype=np.uint16),
        np.zeros((4,), dtype=np.uint8),
        np.zeros((0, 4), dtype=np.uint8),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((4, 4, 3, 1), dtype=np.uint8),
        np.zeros((4, 4, 3), dtype=bool),  # a mask has one channel
        np.zeros((0, 4), dtype=bool),
    ],
)
def test_refuses_what_is_not_a_rendering(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        png.encode(bad)


def test_non_contiguous_views_encode_as_their_values() -> None:
    base = np.arange(64 * 64 * 3, dtype=np.uint32).astype(np.uint8).reshape(64, 64, 3)
    view = base[::2, 1::3, ::-1]
    assert np.array_equal(_decode(png.encode(view)), view)
