"""LIME's weight map held at the model input's resolution gives, pixel for pixel, what its
full-resolution array gives: the renderings' sampling, the heat-map SEG's bands, the array itself."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_service.dicom import seg
from gpu_service.inference import render
from gpu_service.inference.upsampled import Upsampled, upsample

# (small, full) shapes: shrinking ratios that are not whole, primes, one-pixel sides, no change
SHAPES = [
    ((224, 224), (2500, 3000)),
    ((224, 224), (2048, 2048)),
    ((7, 13), (1009, 997)),
    ((224, 224), (100, 37)),  # a source smaller than the model's input
    ((1, 224), (1, 5)),
    ((5, 1), (3001, 1)),
    ((31, 17), (31, 17)),
]


def _pillow_nearest(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(small, mode="F") if small.dtype == np.float32 else Image.fromarray(small)
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST))


@pytest.mark.parametrize(("small_shape", "shape"), SHAPES)
def test_the_full_array_is_pillows_nearest_resize(
    small_shape: tuple[int, int], shape: tuple[int, int]
) -> None:
    small = np.random.default_rng(1).uniform(-1, 1, small_shape).astype(np.float32)
    up = Upsampled(small, shape)
    full = np.asarray(up)
    assert full.shape == up.shape == shape and full.dtype == np.float32
    np.testing.assert_array_equal(full, _pillow_nearest(small, shape))
    np.testing.assert_array_equal(np.asarray(up, dtype=np.float64), full.astype(np.float64))


@pytest.mark.parametrize(("small_shape", "shape"), SHAPES)
def test_sampling_for_display_equals_sampling_the_full_array(
    small_shape: tuple[int, int], shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(2)
    up = Upsampled(rng.uniform(-1, 1, small_shape).astype(np.float32), shape)
    full = up.full()
    displays = {render.display_shape(shape, side) for side in (1, 2, 97, 512, 1024, 4096)}
    displays |= {(int(rng.integers(1, shape[0] + 1)), int(rng.integers(1, shape[1] + 1))) for _ in range(20)}
    for display in displays:
        np.testing.assert_array_equal(
            up.sampled(display), render._sample(full, display), err_msg=str(display)
        )
        np.testing.assert_array_equal(render._sample(up, display), render._sample(full, display))


def test_sampling_agrees_over_many_random_shapes() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        small_shape = tuple(int(v) for v in rng.integers(1, 260, 2))
        shape = tuple(int(v) for v in rng.integers(1, 3200, 2))
        display = (int(rng.integers(1, shape[0] + 1)), int(rng.integers(1, shape[1] + 1)))
        up = Upsampled(rng.uniform(-1, 1, small_shape).astype(np.float32), shape)
        np.testing.assert_array_equal(up.sampled(display), render._sample(up.full(), display))


@pytest.mark.parametrize(("small_shape", "shape"), SHAPES)
def test_heatmap_seg_bands_equal_the_full_arrays(
    small_shape: tuple[int, int], shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(4)
    small = rng.uniform(-1, 1, small_shape).astype(np.float32)
    edges = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
    small.ravel()[: min(small.size, edges.size)] = edges[: small.size]
    up = Upsampled(small, shape)
    bands = seg.heatmap_bands(up)
    assert bands.dtype == np.uint8 and bands.shape == shape
    np.testing.assert_array_equal(bands, seg.heatmap_bands(up.full()))


def test_the_heat_map_rendering_is_the_full_arrays() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (1500, 1100), dtype=np.uint8)
    up = Upsampled(rng.uniform(-1, 1, (224, 224)).astype(np.float32), (1500, 1100))
    for side in (None, 1024, 300):
        np.testing.assert_array_equal(
            render.heatmap_rgb(image, up, side), render.heatmap_rgb(image, up.full(), side)
        )


def test_a_boolean_map_comes_back_writable_and_boolean() -> None:
    small = np.zeros((4, 4), dtype=bool)
    small[1:3, 1:3] = True
    full = upsample(small, (40, 40))
    assert full.dtype == bool and full.flags.writeable and full.sum() == 400
    full[0, 0] = True  # the caller's to draw on


def test_a_map_that_is_not_2d_or_an_empty_shape_is_refused() -> None:
    with pytest.raises(ValueError):
        Upsampled(np.zeros((2, 2, 3), np.float32), (4, 4))
    with pytest.raises(ValueError):
        Upsampled(np.zeros((2, 2), np.float32), (0, 4))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.intp, np.float64, np.int16])
def test_every_dtype_upsamples_as_pillows_nearest(dtype: type) -> None:
    small = np.random.default_rng(6).integers(0, 200, (13, 7)).astype(dtype)
    expected = _pillow_nearest(small.astype(np.float32), (101, 50)).astype(dtype)
    np.testing.assert_array_equal(upsample(small, (101, 50)), expected)
