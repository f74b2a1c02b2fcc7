"""The result's Segmentations (highdicom): the mask as a BINARY segment, and each explanation method's
weight map, when there is one, as BINARY segments of its positive part in bands. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from highdicom.spatial import get_image_coordinate_system
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from gpu_service.dicom.common import (
    GRADCAM_HEATMAP,
    HEATMAP,
    MANUFACTURER,
    SEG,
    SERIES_NUMBERS,
    Algorithm,
    Finding,
    algorithm_parameters,
    finding_code,
    n_frames_of,
    object_uid,
)
from gpu_service.inference.upsampled import Upsampled, WeightMap


def _segment_algorithm(algorithm: Algorithm) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version[:64],
        source=MANUFACTURER,
        parameters=algorithm_parameters(algorithm),
    )


# A projection image (no patient coordinates) without any pixel spacing gets this in the SEG's
# Pixel Measures: what viewers assume for such an image (Cornerstone draws it at 1 mm a pixel),
# so the SEG lines up with it. A projection has no slice: Slice Thickness, which the Pixel
# Measures macro and highdicom's reader require beside Pixel Spacing, is the source's when it
# has one, else this nominal value.
FALLBACK_SPACING_MM = 1.0
NOMINAL_SLICE_THICKNESS_MM = 1.0
NOMINAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Recommended Display CIELab Value of each SEG's segment, as RGB: the mask red, as the PNG
# overlay draws it; the heat maps' bands (BAND_RGB) from pale yellow (weakest) to deep orange
# (strongest) (viewers warn when a segment has no colour).
DISPLAY_RGB = {SEG: (230, 40, 40)}
HEATMAP_BANDS = 4
BAND_RGB = ((255, 235, 120), (255, 200, 40), (255, 150, 0), (255, 90, 0))
CONTENT_LABELS = {SEG: "LIME", HEATMAP: "LIMEWEIGHTS", GRADCAM_HEATMAP: "GRADCAM"}


def _spacing(source: Dataset) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = source.get(keyword)
        try:
            spacing = [float(v) for v in value] if value is not None else []
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(v > 0 for v in spacing):
            return spacing
    return None


def pixel_measures(source: Dataset) -> hd.PixelMeasuresSequence | None:
    """The SEG's Pixel Measures for a projection source (no patient coordinates), which highdicom
    leaves out and OHIF's SEG viewport needs: the source's Pixel Spacing, else its Imager Pixel
    Spacing, else :data:`FALLBACK_SPACING_MM`. None for a source in patient coordinates: highdicom
    copies its measures."""
    if get_image_coordinate_system(source) is not None or n_frames_of(source) > 1:
        return None
    spacing = _spacing(source) or [FALLBACK_SPACING_MM, FALLBACK_SPACING_MM]
    try:
        thickness = float(source.get("SliceThickness") or 0) or NOMINAL_SLICE_THICKNESS_MM
    except (TypeError, ValueError):
        thickness = NOMINAL_SLICE_THICKNESS_MM
    return hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=thickness)


def on_frame(mask: np.ndarray, n_frames: int, frame_index: int) -> np.ndarray:
    """The mask on the decoded frame of a multi-frame source, the other frames empty."""
    if n_frames <= 1:
        return mask
    out = np.zeros((n_frames, *mask.shape), dtype=mask.dtype)
    out[frame_index] = mask
    return out


def why_no_segmentation(source: Dataset) -> str | None:
    """A reason when the source cannot carry a SEG that highdicom validates, else None."""
    if not source.get("StudyInstanceUID"):
        return "the source has no Study Instance UID: a derived object could not join its study"
    frames = n_frames_of(source)
    if frames > 1 and not source.get("FrameOfReferenceUID"):
        return "multi-frame source without a Frame of Reference UID: a SEG cannot locate its frames"
    if frames > 1 and not source.get("PerFrameFunctionalGroupsSequence"):
        # highdicom places a multi-frame source's frames by their per-frame plane positions;
        # without them (legacy multi-frame) it would merge the frames into one.
        return "multi-frame source without per-frame functional groups: a SEG cannot tell its frames apart"
    return None


def _segmentation(
    source: Dataset,
    pixels: np.ndarray,
    role: str,
    label: str,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int,
    segments: tuple[tuple[str, tuple[int, int, int]], ...] | None = None,
    **kind: Any,
) -> Dataset:
    """``role``'s SEG instance over the source, with the algorithm identification: one segment
    (``label``, the role's colour), or ``segments`` (label, RGB) numbered from 1, in which case
    ``pixels`` holds each pixel's segment number (0: none)."""
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{text} for {finding.label}"[:64],
            segmented_property_category=codes.SCT.Finding,
            segmented_property_type=finding_code(finding.label, algorithm.label_codes, algorithm.name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_segment_algorithm(algorithm),
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        )
        for number, (text, rgb) in enumerate(segments or ((label, DISPLAY_RGB[role]),), start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=on_frame(pixels, n_frames_of(source), frame_index),
        segment_descriptions=descriptions,
        series_instance_uid=object_uid(dedup_key, algorithm.sha256, f"{role}-series"),
        series_number=SERIES_NUMBERS[role],
        sop_instance_uid=object_uid(dedup_key, algorithm.sha256, role),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.sha256[:16],
        content_label=CONTENT_LABELS[role],
        content_description=f"{label} for {finding.label}"[:64],
        omit_empty_frames=False,
        pixel_measures=pixel_measures(source),
        **kind,
    )
    return orient_projection(seg, source)


def orient_projection(seg: Dataset, source: Dataset) -> Dataset:
    """What a SEG of a projection image (no Image Orientation) needs beside highdicom's build;
    every SEG we write over a source goes through here (the AI's and the reviewer's)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PlaneOrientationSequence" not in shared:
        # General Image: Patient Orientation is Type 2C, required when the image has no
        # Image Orientation (Patient): the source's, else empty (unknown).
        seg.PatientOrientation = source.get("PatientOrientation") or ""
        # OHIF (Cornerstone's SEG loader) reads the frames' orientation and refuses a SEG
        # without one; a projection has none, and Cornerstone gives its image the identity
        # orientation: the SEG says the same, so the two line up (it places nothing in space).
        shared.PlaneOrientationSequence = hd.PlaneOrientationSequence("PATIENT", NOMINAL_ORIENTATION)
    return seg


def build_segmentation(
    source: Dataset,
    mask: np.ndarray,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
) -> Dataset:
    """Segment 1 = the first explanation method's mask (BINARY: LIME's, or with Grad-CAM first,
    its map at or above half its maximum), at the source's resolution, referencing the source."""
    gradcam_first = tuple(algorithm.methods[:1]) == ("gradcam",)
    seg = _segmentation(
        source,
        np.asarray(mask, dtype=bool),
        SEG,
        "Grad-CAM evidence" if gradcam_first else "LIME evidence",
        finding,
        algorithm,
        dedup_key,
        frame_index,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
    )
    if gradcam_first:
        seg.ContentLabel = CONTENT_LABELS[GRADCAM_HEATMAP]
    return seg


def heatmap_bands(weights: WeightMap) -> np.ndarray:
    """Each pixel's band of positive weight: 0 (none: weight <= 0 or NaN), else ceil(4 w) capped
    at 4. Counted as how many of the bands' lower edges the weight exceeds: four comparisons,
    where clipping, NaN-cleaning and ceiling took six passes over the map (NaN exceeds none).
    An :class:`Upsampled` map (LIME's) is banded at its own resolution, then upsampled: the
    same pixels, as a band is a function of the weight alone."""
    if isinstance(weights, Upsampled):
        return weights.map(heatmap_bands).full()
    w = np.asarray(weights, dtype=np.float32)
    bands = np.zeros(w.shape, dtype=np.uint8)
    for k in range(HEATMAP_BANDS):
        bands += w > np.float32(k / HEATMAP_BANDS)
    return bands


def build_heatmap(
    source: Dataset,
    weights: WeightMap,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
) -> Dataset:
    """The LIME weight map's positive part as four BINARY segments, one per band of weight
    ((0, 0.25], (0.25, 0.5], (0.5, 0.75], (0.75, 1]), pale yellow to deep orange.

    Its positive part only: the positive weights are the evidence *for* the finding, the same
    side the binary mask shows. Bands of a BINARY SEG rather than one FRACTIONAL segment: OHIF
    3.13 (Cornerstone's SEG loader) refuses a FRACTIONAL SEG whose values are not all 0 or the
    maximum, and its Label Map SEG (DICOM 2024) is unknown to the dciodvfy we validate with; a
    viewer draws these bands as a four-step colour map. The exact weights are in the record
    (``weights``) and ``STEM.heatmap.png``. Half the bytes of the 8-bit fractional map, too.
    """
    return _banded(source, weights, HEATMAP, "LIME weight", finding, algorithm, dedup_key, frame_index)


def build_gradcam_heatmap(
    source: Dataset,
    weights: WeightMap,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
) -> Dataset:
    """The Grad-CAM map (in [0, 1]: the map / its maximum) in the same four bands as LIME's."""
    return _banded(source, weights, GRADCAM_HEATMAP, "Grad-CAM", finding, algorithm, dedup_key, frame_index)


def _banded(
    source: Dataset,
    weights: WeightMap,
    role: str,
    label: str,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int,
) -> Dataset:
    step = 1.0 / HEATMAP_BANDS
    segments = tuple(
        (f"{label} {k * step:.2f}-{(k + 1) * step:.2f}", BAND_RGB[k]) for k in range(HEATMAP_BANDS)
    )
    return _segmentation(
        source,
        heatmap_bands(weights),
        role,
        f"{label} (positive)",
        finding,
        algorithm,
        dedup_key,
        frame_index,
        segments=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
    )
