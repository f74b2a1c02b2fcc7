"""PNG renderings of one result: the image as decoded, the LIME mask, an overlay and a heat map.

Pure functions from arrays to PNG bytes. Browsers cannot show DICOM, so the web front
end shows ``STEM.png``; the mask keeps the original resolution so it can be laid over
that image pixel for pixel.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

OVERLAY_COLOR = (255, 64, 32)  # warm red: visible on grayscale radiographs
BOUNDARY_COLOR = (255, 220, 0)
OVERLAY_ALPHA = 0.35
# Heat map: diverging, red = supports the predicted label, blue = speaks against it; the
# tint's opacity grows with |weight| (scaled by the largest), so weak regions leave the image
# readable. Our own few lines: matplotlib's colormaps would be a large dependency for two colours.
SUPPORT_COLOR = (230, 30, 20)
AGAINST_COLOR = (30, 90, 255)
HEATMAP_MAX_ALPHA = 0.6


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def preview_png(image_u8: np.ndarray) -> bytes:
    """The 8-bit windowed image (HxW grayscale or HxWx3 RGB)."""
    if image_u8.dtype != np.uint8 or image_u8.ndim not in (2, 3):
        raise ValueError("preview needs an HxW or HxWx3 uint8 array")
    return _png(np.ascontiguousarray(image_u8))


def mask_png(mask: np.ndarray) -> bytes:
    """Binary mask as 8-bit grayscale: 255 inside the explanation, 0 elsewhere."""
    if mask.ndim != 2:
        raise ValueError("mask must be HxW")
    return _png(np.where(mask.astype(bool), 255, 0).astype(np.uint8))


def overlay_rgb(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the explanation tinted and outlined; same HxW as the image."""
    rgb = np.repeat(image_u8[..., None], 3, axis=2) if image_u8.ndim == 2 else image_u8[..., :3]
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"mask {mask.shape} does not match image {rgb.shape[:2]}")
    inside = mask.astype(bool)
    out = rgb.astype(np.float32)
    color = np.asarray(OVERLAY_COLOR, dtype=np.float32)
    out[inside] = (1.0 - OVERLAY_ALPHA) * out[inside] + OVERLAY_ALPHA * color
    # A line a few pixels wide stays visible when a large image is shown scaled down.
    edges = find_boundaries(inside, mode="outer")
    thickness = max(1, round(max(mask.shape) / 512))
    for _ in range(thickness - 1):
        edges = find_boundaries(edges | inside, mode="outer") | edges
    out[edges] = np.asarray(BOUNDARY_COLOR, dtype=np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay_png(image_u8: np.ndarray, mask: np.ndarray) -> bytes:
    return _png(overlay_rgb(image_u8, mask))


def heatmap_rgb(image_u8: np.ndarray, pixel_weights: np.ndarray) -> np.ndarray:
    """The image tinted by signed weights in [-1, 1] (red > 0, blue < 0); same HxW as the image."""
    rgb = np.repeat(image_u8[..., None], 3, axis=2) if image_u8.ndim == 2 else image_u8[..., :3]
    if rgb.shape[:2] != pixel_weights.shape:
        raise ValueError(f"weights {pixel_weights.shape} do not match image {rgb.shape[:2]}")
    w = np.clip(np.nan_to_num(pixel_weights.astype(np.float32), nan=0.0), -1.0, 1.0)
    alpha = (HEATMAP_MAX_ALPHA * np.abs(w))[..., None]
    color = np.where(
        (w > 0)[..., None],
        np.asarray(SUPPORT_COLOR, dtype=np.float32),
        np.asarray(AGAINST_COLOR, dtype=np.float32),
    )
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * color
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def heatmap_png(image_u8: np.ndarray, pixel_weights: np.ndarray) -> bytes:
    return _png(heatmap_rgb(image_u8, pixel_weights))
