"""A map computed at the model input's resolution and laid over the source by nearest-neighbour
sampling (Pillow's NEAREST, as LIME's mask is), kept at its own resolution until a caller needs
pixels: a rendering samples it straight down to display resolution, and a pointwise function
(the heat-map SEG's bands) is applied to the small map before upsampling. Both give what the
full-resolution array would, pixel for pixel (nearest sampling only copies values), without
building it: 30 MiB of float32 and ~30 ms at 3000 x 2500.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


def sample_indices(n_in: int, n_out: int) -> np.ndarray:
    """Which of ``n_in`` pixels each of ``n_out`` takes when sampled at pixel centres, the
    display renderings' nearest sampling (render._sample)."""
    index = ((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.intp)
    return np.minimum(index, n_in - 1)


def _pillow_indices(n_in: int, n_out: int, axis: int) -> np.ndarray:
    """Which of ``n_in`` rows (``axis`` 0) or columns (1) each of ``n_out`` takes in Pillow's
    NEAREST resize, asked of Pillow itself (a line of indices resized along that axis): the
    small map's upsampling is Pillow's by construction, rounding of its stepping included."""
    ramp = np.arange(n_in, dtype=np.int32)
    img = Image.fromarray(ramp[:, None] if axis == 0 else ramp[None, :], mode="I")
    size = (1, n_out) if axis == 0 else (n_out, 1)
    return np.asarray(img.resize(size, Image.Resampling.NEAREST), dtype=np.intp).ravel()


def upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``small`` at ``shape`` by Pillow's NEAREST: float32 and uint8 maps by Pillow itself (one
    pass in C; the result is read-only), a bool map through uint8 (a new, writable bool array),
    any other type by gathering the rows and columns Pillow would take. ``small`` itself when it
    already has ``shape``."""
    if small.shape == tuple(shape):
        return small
    if small.dtype == bool:
        return upsample(small.view(np.uint8), shape).astype(bool)
    if small.dtype in (np.float32, np.uint8):
        img = Image.fromarray(np.ascontiguousarray(small), mode="F" if small.dtype == np.float32 else "L")
        return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST))
    rows, cols = _pillow_indices(small.shape[0], shape[0], 0), _pillow_indices(small.shape[1], shape[1], 1)
    return small[np.ix_(rows, cols)]


@dataclass(frozen=True, eq=False)
class Upsampled:
    """``small`` shown at ``shape`` (height, width) by nearest-neighbour sampling."""

    small: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if self.small.ndim != 2 or len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"a 2-D map and a (height, width) >= 1, got {self.small.shape}, {self.shape}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    @property
    def dtype(self) -> np.dtype:
        return self.small.dtype

    def full(self) -> np.ndarray:
        """The map at ``shape``: what callers that need every pixel get (tests, np.asarray)."""
        return upsample(self.small, self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.full()
        if dtype is not None:
            out = out.astype(dtype, copy=bool(copy))
        return out.copy() if copy and out is self.small else out

    def sampled(self, shape: tuple[int, int]) -> np.ndarray:
        """``sample(self.full(), shape)`` from the small map: each display pixel's index in the
        full map, then that pixel's index in the small one."""
        if tuple(shape) == self.shape:
            return self.full()
        rows = _pillow_indices(self.small.shape[0], self.shape[0], 0)[sample_indices(self.shape[0], shape[0])]
        cols = _pillow_indices(self.small.shape[1], self.shape[1], 1)[sample_indices(self.shape[1], shape[1])]
        return self.small[np.ix_(rows, cols)]

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> Upsampled:
        """A pointwise ``fn`` of the map: applied to the small map, which nearest sampling makes
        equal to applying it to the full one."""
        return Upsampled(fn(self.small), self.shape)


# A weight map over the source: a full-resolution array (Grad-CAM's, bilinear) or LIME's Upsampled.
WeightMap = np.ndarray | Upsampled
