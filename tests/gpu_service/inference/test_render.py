"""The PNG renderings: the mask at the source's resolution, the preview, overlay and heat map at
the documented display size (docs/contracts.md, "Display size")."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import find_boundaries

from gpu_service.inference import render


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _mask(shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[shape[0] // 6 : shape[0] // 2, shape[1] // 3 : shape[1] // 2 + 5] = True
    mask[-3:, :5] = True
    return mask


def test_mask_and_overlay_png() -> None:
    image = (np.arange(60 * 80) % 256).astype(np.uint8).reshape(60, 80)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    mask_img = _png(render.mask_png(mask))
    assert mask_img.size == (80, 60) and mask_img.mode == "1"  # 1-bit grayscale
    values = np.asarray(mask_img.convert("L"))
    assert set(np.unique(values)) == {0, 255} and np.array_equal(values == 255, mask)
    overlay = np.asarray(_png(render.overlay_png(image, mask)))
    assert overlay.shape == (60, 80, 3)
    assert np.array_equal(overlay[0, 0], [image[0, 0]] * 3)  # untouched outside
    assert not np.array_equal(overlay[20, 30], [image[20, 30]] * 3)  # tinted inside
    assert _png(render.preview_png(image)).size == (80, 60)
    with pytest.raises(ValueError):
        render.overlay_png(image, mask[:10])


@pytest.mark.parametrize(
    ("shape", "max_side", "expected"),
    [
        ((512, 512), 1024, (512, 512)),  # small enough: the source's size
        ((1024, 700), 1024, (1024, 700)),
        ((2048, 2048), 1024, (1024, 1024)),
        ((2500, 3000), 1024, (853, 1024)),  # 3000 wide x 2500 high
        ((3000, 2500), 1024, (1024, 853)),
        ((3000, 2), 1024, (1024, 1)),  # never below 1 px
        ((8, 5), 4, (4, 3)),  # 2.5 rounded half up
        ((2048, 2048), 0, (2048, 2048)),  # 0: no bound
        ((2048, 2048), None, (2048, 2048)),
    ],
)
def test_display_shape_bounds_the_long_side_and_keeps_the_aspect_ratio(
    shape: tuple[int, int], max_side: int | None, expected: tuple[int, int]
) -> None:
    assert render.display_shape(shape, max_side) == expected


@pytest.mark.parametrize("shape", [(2048, 2048), (2500, 3000), (300, 200)])
def test_renderings_have_the_display_size_and_the_mask_the_sources(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = _mask(shape)
    weights = rng.uniform(-1, 1, shape).astype(np.float32)
    colour = np.stack([image, 255 - image, image // 2], axis=2)  # an RGB source
    height, width = render.display_shape(shape, 256)
    for name, data, mode in [
        ("preview", render.preview_png(image, 256), "L"),
        ("overlay", render.overlay_png(image, mask, 256), "RGB"),
        ("heatmap", render.heatmap_png(image, weights, 256), "RGB"),
        ("preview rgb", render.preview_png(colour, 256), "RGB"),
        ("overlay rgb", render.overlay_png(colour, mask, 256), "RGB"),
        ("heatmap rgb", render.heatmap_png(colour, weights, 256), "RGB"),
    ]:
        img = _png(data)
        assert (img.size, img.mode) == ((width, height), mode), name
    mask_png = _png(render.mask_png(mask))
    mask_img = np.asarray(mask_png.convert("L"))
    assert mask_png.mode == "1" and mask_img.shape == shape
    assert np.array_equal(mask_img == 255, mask)  # pixel-exact
    assert set(np.unique(mask_img)) == {0, 255}


def test_preview_is_the_area_average_of_the_image() -> None:
    image = np.random.default_rng(2).integers(0, 256, (400, 300), dtype=np.uint8)
    small = np.asarray(_png(render.preview_png(image, 100)))
    assert small.shape == (100, 75)
    blocks = image.reshape(100, 4, 75, 4).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(small - blocks).max() <= 1  # Pillow's BOX filter, 8-bit rounding


def _reference_overlay(image_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What render.overlay_rgb drew before it was reworked (find_boundaries, float blend)."""
    rgb = np.repeat(image_u8[..., None], 3, axis=2) if image_u8.ndim == 2 else image_u8
    out = rgb.astype(np.float32)
    out[mask] = (1.0 - render.OVERLAY_ALPHA) * out[mask] + render.OVERLAY_ALPHA * np.asarray(
        render.OVERLAY_COLOR, dtype=np.float32
    )
    edges = find_boundaries(mask, mode="outer")
    for _ in range(max(1, round(max(mask.shape) / 512)) - 1):
        edges = find_boundaries(edges | mask, mode="outer") | edges
    out[edges] = np.asarray(render.BOUNDARY_COLOR, dtype=np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(60, 80), (1100, 700)])
@pytest.mark.parametrize("channels", [1, 3])
def test_overlay_at_its_own_size_is_what_find_boundaries_drew(shape: tuple[int, int], channels: int) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (*shape, 3) if channels == 3 else shape, dtype=np.uint8)
    mask, untouched = _mask(shape), image.copy()
    assert np.array_equal(render.overlay_rgb(image, mask, max_side=None), _reference_overlay(image, mask))
    assert np.array_equal(image, untouched)  # drawn on a copy, never on the caller's image


def test_shrunk_overlay_tints_the_sampled_mask_and_outlines_it_outside() -> None:
    shape = (2000, 1500)
    image = np.full(shape, 100, np.uint8)
    mask = _mask(shape)
    overlay = render.overlay_rgb(image, mask, max_side=400)
    assert overlay.shape == (400, 300, 3)
    rows = ((np.arange(400) + 0.5) * 5).astype(int)
    cols = ((np.arange(300) + 0.5) * 5).astype(int)
    small = mask[np.ix_(rows, cols)]
    tinted = np.all(overlay == render._OVERLAY_LUT[100], axis=2)
    outline = np.all(overlay == render.BOUNDARY_COLOR, axis=2)
    assert np.array_equal(tinted, small)  # every sampled mask pixel tinted, nothing else
    assert not (outline & small).any() and outline.any()
    assert np.array_equal(outline, render.outer_outline(small, 1))  # 400 / 512 -> 1 px


def test_heatmap_colours_follow_the_sign_and_size_of_the_weights() -> None:
    image = np.full((10, 30), 128, np.uint8)
    weights = np.zeros((10, 30), np.float32)
    weights[:, :10], weights[:, 20:] = 1.0, -0.5
    rgb = render.heatmap_rgb(image, weights)
    assert rgb[0, 0, 0] > 180 and rgb[0, 0, 2] < 100  # red: supports the label
    assert np.array_equal(rgb[0, 15], [128, 128, 128])  # weight 0: untouched
    assert rgb[0, 25, 2] > rgb[0, 25, 0]  # blue: speaks against it
    with pytest.raises(ValueError):
        render.heatmap_rgb(image, weights[:5])


@pytest.mark.parametrize(("shape", "max_side"), [((300, 200), 1024), ((2048, 1536), 1024), ((97, 131), 64)])
def test_display_arrays_encode_to_the_same_pngs_as_one_call_each(
    shape: tuple[int, int], max_side: int
) -> None:
    """The service renders through display_arrays (the image shrunk once for all three): the same
    bytes as the documented *_png functions, at the documented sizes."""
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = np.zeros(shape, dtype=bool)
    mask[shape[0] // 3 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = True
    weights = np.clip(rng.normal(0, 0.5, shape), -1, 1).astype(np.float32)
    arrays = render.display_arrays(image, mask, weights, max_side)
    assert render.png(arrays["preview"]) == render.preview_png(image, max_side)
    assert render.png(arrays["mask"]) == render.mask_png(mask)
    assert render.png(arrays["overlay"]) == render.overlay_png(image, mask, max_side)
    assert render.png(arrays["heatmap"]) == render.heatmap_png(image, weights, max_side)
    display = render.display_shape(shape, max_side)
    assert arrays["preview"].shape == display and arrays["overlay"].shape == (*display, 3)
    assert arrays["heatmap"].shape == (*display, 3) and arrays["mask"].shape == shape


@pytest.mark.parametrize(("shape", "max_side"), [((2500, 3000), 1024), ((300, 200), 1024), ((97, 131), 64)])
def test_display_arrays_drawn_on_a_display_image_made_earlier_are_the_same(
    shape: tuple[int, int], max_side: int
) -> None:
    """The service shrinks the image while the model input is resized, and hands it over: the
    renderings are drawn on what it hands over, and equal their own shrinking's."""
    rng = np.random.default_rng(12)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = _mask(shape)
    small = render.display_image(image, max_side)
    assert small.shape == render.display_shape(shape, max_side)
    given = render.display_arrays(image, mask, None, max_side, small=small)
    own = render.display_arrays(image, mask, None, max_side)
    assert given.keys() == own.keys()
    for name in own:
        np.testing.assert_array_equal(given[name], own[name], err_msg=name)
    dark = render.display_arrays(image, mask, None, max_side, small=np.zeros_like(small))
    assert not dark["preview"].any()  # drawn on the image handed over, not shrunk again
    with pytest.raises(ValueError):
        render.display_arrays(image, mask, None, max_side, small=small[:-1])
