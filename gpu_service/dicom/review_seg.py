"""The radiologist's corrected region as a BINARY Segmentation of the source (highdicom): the
polygon or disc drawn in the viewer, rasterised at the source's resolution. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from skimage.measure import points_in_poly

from gpu_service.dicom.common import MANUFACTURER, n_frames_of
from gpu_service.dicom.review_codes import REVIEW_SEG, SERIES_DESCRIPTIONS, SERIES_NUMBERS, review_uid
from gpu_service.dicom.seg import on_frame, orient_projection, pixel_measures

MAX_POLYGON_POINTS = 1000
REGION_RGB = (40, 200, 80)  # green: not the AI's red


class RegionError(ValueError):
    """The region is malformed or lies outside the image."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise RegionError("bad_region", "region coordinates must be finite numbers")
    return float(value)


def region_points(region: Mapping[str, Any]) -> tuple[str, np.ndarray, float]:
    """(kind, points as an (n, 2) x/y array, radius) of a well-formed region, else RegionError."""
    kind = region.get("type") if isinstance(region, Mapping) else None
    if kind == "polygon":
        raw = region.get("points")
        if not isinstance(raw, list) or not 3 <= len(raw) <= MAX_POLYGON_POINTS:
            raise RegionError("bad_region", f"a polygon has 3 to {MAX_POLYGON_POINTS} points")
        if not all(isinstance(p, list | tuple) and len(p) == 2 for p in raw):
            raise RegionError("bad_region", "each polygon point is [x, y]")
        return kind, np.array([[_number(x), _number(y)] for x, y in raw]), 0.0
    if kind == "point":
        radius = _number(region.get("radius"))
        if radius <= 0:
            raise RegionError("bad_region", "a point's radius must be positive")
        return kind, np.array([[_number(region.get("x")), _number(region.get("y"))]]), radius
    raise RegionError("bad_region", "region type must be 'polygon' or 'point'")


def check_region(region: Mapping[str, Any], rows: int, columns: int) -> None:
    """RegionError unless every point lies in [0, columns] x [0, rows]."""
    _, points, _ = region_points(region)
    xs, ys = points[:, 0], points[:, 1]
    if xs.min() < 0 or ys.min() < 0 or xs.max() > columns or ys.max() > rows:
        raise RegionError("region_outside_image", f"the region leaves the {columns}x{rows} image")


def rasterise(region: Mapping[str, Any], rows: int, columns: int) -> np.ndarray:
    """A pixel is in the region when its centre is (skimage's point-in-polygon, or the disc's
    distance); a region that covers no pixel centre gets the pixels under its points, so no
    region is empty."""
    check_region(region, rows, columns)
    kind, points, radius = region_points(region)
    yy, xx = np.mgrid[0:rows, 0:columns]
    centres_x, centres_y = xx + 0.5, yy + 0.5
    if kind == "polygon":
        inside = points_in_poly(np.column_stack([centres_x.ravel(), centres_y.ravel()]), points)
        mask = inside.reshape(rows, columns)
    else:
        (x, y), r2 = points[0], radius * radius
        mask = (centres_x - x) ** 2 + (centres_y - y) ** 2 <= r2
    if not mask.any():  # a sliver or a tiny disc between pixel centres: never an empty region
        for x, y in points:
            mask[min(int(y), rows - 1), min(int(x), columns - 1)] = True
    return mask


def build_region_segmentation(
    source: Dataset,
    region: Mapping[str, Any],
    label_code: hd.sr.CodedConcept,
    review_id: str,
    frame_index: int = 0,
) -> Dataset:
    """Segment 1 = the drawn region (BINARY, MANUAL), on the decoded frame of the source."""
    rows, columns = int(source.Rows), int(source.Columns)
    mask = on_frame(rasterise(region, rows, columns), n_frames_of(source), frame_index)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Radiologist region",
        segmented_property_category=codes.SCT.Finding,
        segmented_property_type=label_code,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        display_color=hd.color.CIELabColor.from_rgb(*REGION_RGB),
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=review_uid(review_id, "review-seg-series"),
        series_number=SERIES_NUMBERS[REVIEW_SEG],
        sop_instance_uid=review_uid(review_id, "review-seg"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="radiologist review",
        software_versions="1",
        device_serial_number="review",
        content_label="REVIEW",
        content_description="Radiologist corrected region",
        omit_empty_frames=False,
        pixel_measures=pixel_measures(source),
    )
    seg.SeriesDescription = SERIES_DESCRIPTIONS[REVIEW_SEG]
    dimension_uid = review_uid(review_id, "review-seg-dimensions")  # highdicom draws a random one
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid
    return orient_projection(seg, source)
