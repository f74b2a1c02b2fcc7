"""The PNG renderings of the mask and the overlay."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gpu_service.inference import render

# -- settings ------------------------------------------------------------------------------


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_mask_and_overlay_png() -> None:
    image = (np.arange(60 * 80) % 256).astype(np.uint8).reshape(60, 80)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    mask_img = _png(render.mask_png(mask))
    assert mask_img.size == (80, 60) and mask_img.mode == "L"
    values = np.asarray(mask_img)
    assert set(np.unique(values)) == {0, 255} and np.array_equal(values == 255, mask)
    overlay = np.asarray(_png(render.overlay_png(image, mask)))
    assert overlay.shape == (60, 80, 3)
    assert np.array_equal(overlay[0, 0], [image[0, 0]] * 3)  # untouched outside
    assert not np.array_equal(overlay[20, 30], [image[20, 30]] * 3)  # tinted inside
    assert _png(render.preview_png(image)).size == (80, 60)
    with pytest.raises(ValueError):
        render.overlay_png(image, mask[:10])
