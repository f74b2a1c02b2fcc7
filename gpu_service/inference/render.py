"""PNG renderings of one result: the image as decoded, the LIME mask, an overlay and a heat map.

Pure functions from arrays to PNG bytes. Browsers cannot show DICOM, so the web front end shows
``STEM.png``. The mask keeps the source's resolution, so it can be laid over the source pixel for
pixel; the three renderings meant to be looked at (preview, overlay, heat map) are drawn at a
display resolution, their long side at most ``max_side`` (``RENDER_MAX_SIDE``, docs/contracts.md),
with the source's aspect ratio. Everything is computed at that display resolution: the image is
shrunk first (area average), the mask and the weights are sampled down (nearest, no new values),
and the overlay's outline is drawn on the display-resolution mask, so the only steps that cost in
proportion to the source's pixels are the image's shrinking (one pass) and the mask PNG.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from gpu_service.inference import png as png_codec
from gpu_service.inference.upsampled import Upsampled, WeightMap, sample_indices

OVERLAY_COLOR = (255, 64, 32)  # warm red: visible on grayscale radiographs
BOUNDARY_COLOR = (255, 220, 0)
OVERLAY_ALPHA = 0.35
# Heat map: diverging, red = supports the predicted label, blue = speaks against it; the
# tint's opacity grows with |weight| (scaled by the largest), so weak regions leave the image
# readable. Our own few lines: matplotlib's colormaps would be a large dependency for two colours.
SUPPORT_COLOR = (230, 30, 20)
AGAINST_COLOR = (30, 90, 255)
HEATMAP_MAX_ALPHA = 0.6
# Display renderings' long side when the caller gives none (the service passes RENDER_MAX_SIDE).
DEFAULT_MAX_SIDE = 1024
# The outline is this share of the rendering's long side wide (at least 1 px): 2 px at 1024.
OUTLINE_PER_SIDE = 512


def png(array: np.ndarray) -> bytes:
    """One rendering's PNG (libdeflate releases the GIL while it compresses: threads overlap it)."""
    return png_codec.encode(array)


def display_shape(shape: tuple[int, ...], max_side: int | None) -> tuple[int, int]:
    """(height, width) of a rendering of an image of ``shape``: the same, or shrunk so the long
    side is ``max_side`` with the aspect ratio kept (each side ``side x max_side / long side``
    rounded half up, at least 1). ``max_side`` None or 0: the source's resolution."""
    h, w = int(shape[0]), int(shape[1])
    long = max(h, w)
    if not max_side or long <= max_side:
        return h, w
    return max(1, (2 * h * max_side + long) // (2 * long)), max(1, (2 * w * max_side + long) // (2 * long))


def _shrink_image(image_u8: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area-averaged (Pillow's BOX filter: no ringing) HxW or HxWx3 uint8 at ``shape``."""
    if image_u8.shape[:2] == shape:
        return image_u8
    img = Image.fromarray(np.ascontiguousarray(image_u8))
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BOX))


def _sample(array: WeightMap, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour sampling at pixel centres: only values of ``array``. An :class:`Upsampled`
    map is sampled from its small map, to the same pixels."""
    if isinstance(array, Upsampled):
        return array.sampled(shape)
    if array.shape[:2] == shape:
        return array
    rows, cols = sample_indices(array.shape[0], shape[0]), sample_indices(array.shape[1], shape[1])
    return array[np.ix_(rows, cols)]


def _rgb(image_u8: np.ndarray) -> np.ndarray:
    """A new HxWx3 array (drawn on: never the caller's image)."""
    if image_u8.ndim == 2:
        return np.repeat(image_u8[..., None], 3, axis=2)
    return np.array(image_u8[..., :3], copy=True, order="C")


def _check_image(image_u8: np.ndarray) -> None:
    if image_u8.dtype != np.uint8 or image_u8.ndim not in (2, 3):
        raise ValueError("the image must be an HxW or HxWx3 uint8 array")


def preview_png(image_u8: np.ndarray, max_side: int | None = None) -> bytes:
    """The 8-bit windowed image (HxW grayscale or HxWx3 RGB), long side at most ``max_side``."""
    _check_image(image_u8)
    return png(np.ascontiguousarray(_shrink_image(image_u8, display_shape(image_u8.shape, max_side))))


def mask_png(mask: np.ndarray) -> bytes:
    """Binary mask as 1-bit grayscale: white (1) inside the explanation, black (0) elsewhere.
    Always at the mask's own (the source's) resolution: it is the pixel-exact result, like the SEG."""
    if mask.ndim != 2:
        raise ValueError("mask must be HxW")
    return png(np.ascontiguousarray(mask, dtype=bool))


def outer_outline(inside: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels outside ``inside`` within ``thickness`` 4-connected steps of it: what repeated
    ``skimage.segmentation.find_boundaries(mode="outer")`` thickening drew, by array shifts."""
    grown = inside.copy()
    for _ in range(max(1, thickness)):
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown & ~inside


def _tint_lut(color: tuple[int, int, int], alpha: float) -> np.ndarray:
    """(256, 3) uint8: value v blended with ``color`` at ``alpha``, rounded as the float path."""
    v = np.arange(256, dtype=np.float32)[:, None]
    blended = (1.0 - np.float32(alpha)) * v + np.float32(alpha) * np.asarray(color, dtype=np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


_OVERLAY_LUT = _tint_lut(OVERLAY_COLOR, OVERLAY_ALPHA)


def overlay_rgb(image_u8: np.ndarray, mask: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """The image with the explanation tinted and outlined, at :func:`display_shape`.

    ``mask`` is at the image's resolution; it is sampled down to the rendering's, and the outline
    (``max(1, round(long side / 512))`` px) is drawn there, outside the tinted region.
    """
    _check_image(image_u8)
    if image_u8.shape[:2] != mask.shape:
        raise ValueError(f"mask {mask.shape} does not match image {image_u8.shape[:2]}")
    return _overlay_on(_shrink_image(image_u8, display_shape(image_u8.shape, max_side)), mask)


def _overlay_on(small: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`overlay_rgb` on the image already at display resolution (``mask`` at the source's)."""
    shape = small.shape[:2]
    inside = _sample(mask if mask.dtype == bool else mask.astype(bool), shape)
    out = _rgb(small)
    if small.ndim == 2:
        out[inside] = _OVERLAY_LUT[small[inside]]
    else:
        for c in range(3):
            plane = out[..., c]
            plane[inside] = _OVERLAY_LUT[plane[inside], c]
    thickness = max(1, round(max(shape) / OUTLINE_PER_SIDE))
    out[outer_outline(inside, thickness)] = BOUNDARY_COLOR
    return out


def overlay_png(image_u8: np.ndarray, mask: np.ndarray, max_side: int | None = None) -> bytes:
    return png(overlay_rgb(image_u8, mask, max_side))


def heatmap_rgb(image_u8: np.ndarray, pixel_weights: WeightMap, max_side: int | None = None) -> np.ndarray:
    """The image tinted by signed weights in [-1, 1] (red > 0, blue < 0), at :func:`display_shape`;
    ``pixel_weights`` is at the image's resolution and sampled down (nearest)."""
    _check_image(image_u8)
    if image_u8.shape[:2] != pixel_weights.shape:
        raise ValueError(f"weights {pixel_weights.shape} do not match image {image_u8.shape[:2]}")
    return _heatmap_on(_shrink_image(image_u8, display_shape(image_u8.shape, max_side)), pixel_weights)


# The heat map's blend, as a lookup table: the weight in 1/255 steps (511 levels in [-1, 1]) by the
# pixel value (256), each entry what the float blend gives for that pair. One gather per pixel
# and channel instead of a float blend; the weight's rounding to 1/255 moves a pixel by at most
# one level (0.6 x 1/510 of 255 < 0.5 before rounding).
_WEIGHT_STEPS = 255


def _heatmap_lut() -> np.ndarray:
    w = np.arange(-_WEIGHT_STEPS, _WEIGHT_STEPS + 1, dtype=np.float32) / np.float32(_WEIGHT_STEPS)
    alpha = (np.float32(HEATMAP_MAX_ALPHA) * np.abs(w))[:, None, None]
    tint = np.where((w > 0)[:, None], np.float32(SUPPORT_COLOR), np.float32(AGAINST_COLOR))[:, None, :]
    value = np.arange(256, dtype=np.float32)[None, :, None]
    blended = (1.0 - alpha) * value + alpha * tint + np.float32(0.5)
    return np.clip(blended, 0, 255).astype(np.uint8)  # (511, 256, 3)


_HEATMAP_LUT = _heatmap_lut()


def _lut_rows(weights: np.ndarray) -> np.ndarray:
    """The heat-map table's row of each weight, flattened over (weight, value): NaN as 0, clipped
    to [-1, 1], in 1/255 steps. Pointwise, so an Upsampled map's small map can be converted."""
    w = np.nan_to_num(weights.astype(np.float32), nan=0.0)
    np.clip(w, -1.0, 1.0, out=w)
    w *= np.float32(_WEIGHT_STEPS)
    rows = np.rint(w).astype(np.intp)
    rows += _WEIGHT_STEPS
    rows *= 256
    return rows


def _heatmap_on(small: np.ndarray, pixel_weights: WeightMap) -> np.ndarray:
    """:func:`heatmap_rgb` on the image already at display resolution (weights at the source's)."""
    shape = small.shape[:2]
    if isinstance(pixel_weights, Upsampled):  # converted at the model input's resolution
        rows = pixel_weights.map(_lut_rows).sampled(shape)
    else:
        rows = _lut_rows(_sample(pixel_weights, shape))
    if small.ndim == 2:  # grayscale (radiographs): one gather of each pixel's RGB triple
        return np.take(_HEATMAP_LUT.reshape(-1, 3), rows + small, axis=0)
    out = np.empty((*shape, 3), dtype=np.uint8)
    for c in range(3):
        out[..., c] = _HEATMAP_LUT[..., c].ravel()[rows + small[..., c]]
    return out


def heatmap_png(image_u8: np.ndarray, pixel_weights: WeightMap, max_side: int | None = None) -> bytes:
    return png(heatmap_rgb(image_u8, pixel_weights, max_side))


def display_image(image_u8: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image at :func:`display_shape`, as every display rendering draws on it (area-averaged)."""
    _check_image(image_u8)
    return np.ascontiguousarray(_shrink_image(image_u8, display_shape(image_u8.shape, max_side)))


def display_arrays(
    image_u8: np.ndarray,
    mask: np.ndarray,
    pixel_weights: WeightMap | None,
    max_side: int | None,
    small: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The four renderings as arrays, ready for :func:`png`: "preview", "mask", "overlay" and,
    with weights, "heatmap"; equal to what the ``*_png`` functions draw, but the image is shrunk
    to display resolution once for all three (each ``*_png`` call shrinks it again). ``small``:
    :func:`display_image` of the image, when the caller made it already."""
    _check_image(image_u8)
    if image_u8.shape[:2] != mask.shape:
        raise ValueError(f"mask {mask.shape} does not match image {image_u8.shape[:2]}")
    if mask.ndim != 2:
        raise ValueError("mask must be HxW")
    if small is None:
        small = display_image(image_u8, max_side)
    elif small.shape[:2] != display_shape(image_u8.shape, max_side) or small.ndim != image_u8.ndim:
        raise ValueError(f"display image {small.shape} is not the image's display size")
    inside = mask if mask.dtype == bool else mask.astype(bool)
    arrays = {
        "preview": small,
        "mask": np.ascontiguousarray(inside),
        "overlay": _overlay_on(small, inside),
    }
    if pixel_weights is not None:
        if image_u8.shape[:2] != pixel_weights.shape:
            raise ValueError(f"weights {pixel_weights.shape} do not match image {image_u8.shape[:2]}")
        arrays["heatmap"] = _heatmap_on(small, pixel_weights)
    return arrays


def heatmap_on_display(
    small: np.ndarray, source_shape: tuple[int, ...], pixel_weights: WeightMap
) -> np.ndarray:
    """The heat map over an image :func:`display_arrays` already shrank (its "preview"), the
    weights at the source's resolution: one more method's map without shrinking again."""
    if tuple(source_shape[:2]) != pixel_weights.shape:
        raise ValueError(f"weights {pixel_weights.shape} do not match image {tuple(source_shape[:2])}")
    return _heatmap_on(small, pixel_weights)
