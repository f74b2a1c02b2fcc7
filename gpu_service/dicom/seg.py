"""The result's Segmentations (highdicom): the LIME mask as a BINARY segment, and the continuous
weight map, when there is one, as a FRACTIONAL segment. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from gpu_service.dicom.common import (
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


def _segment_algorithm(algorithm: Algorithm) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version[:64],
        source=MANUFACTURER,
        parameters=algorithm_parameters(algorithm),
    )


def seg_frame_number(source: Dataset, frame_index: int) -> int:
    """The SEG frame that holds the mask of source frame ``frame_index``: every source frame has
    one (empty ones too: highdicom cannot omit them for legacy multi-frame sources)."""
    return frame_index + 1 if n_frames_of(source) > 1 else 1


def _frames(mask: np.ndarray, n_frames: int, frame_index: int) -> np.ndarray:
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
    **kind: Any,
) -> Dataset:
    """One segment of ``role``'s SEG instance over the source, with the algorithm identification."""
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"{label} for {finding.label}"[:64],
        segmented_property_category=codes.SCT.Finding,
        segmented_property_type=finding_code(finding.label, algorithm.label_codes, algorithm.name),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_segment_algorithm(algorithm),
    )
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=_frames(pixels, n_frames_of(source), frame_index),
        segment_descriptions=[description],
        series_instance_uid=object_uid(dedup_key, algorithm.sha256, f"{role}-series"),
        series_number=SERIES_NUMBERS[role],
        sop_instance_uid=object_uid(dedup_key, algorithm.sha256, role),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.sha256[:16],
        content_label="LIME" if role == SEG else "LIMEWEIGHTS",
        content_description=f"{label} for {finding.label}"[:64],
        omit_empty_frames=False,
        **kind,
    )


def build_segmentation(
    source: Dataset,
    mask: np.ndarray,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
) -> Dataset:
    """Segment 1 = the LIME mask (BINARY), at the source's resolution, referencing the source."""
    return _segmentation(
        source,
        np.asarray(mask, dtype=bool),
        SEG,
        "LIME evidence",
        finding,
        algorithm,
        dedup_key,
        frame_index,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
    )


def build_heatmap(
    source: Dataset,
    weights: np.ndarray,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
) -> Dataset:
    """The continuous LIME weight map as a FRACTIONAL (probability) segment.

    Its positive part only: a fraction is in [0, 1], and the positive weights are the evidence
    *for* the finding, the same side the binary mask shows. A FRACTIONAL SEG rather than a
    Parametric Map because highdicom builds it for any single-frame projection image it can
    segment (no frame of reference or plane positions needed) and SEG-aware viewers draw it
    as an overlay of the source; a SEG holds one segmentation type, hence its own instance.
    """
    positive = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float32)), 0.0, 1.0)
    return _segmentation(
        source,
        positive,
        HEATMAP,
        "LIME weights (positive)",
        finding,
        algorithm,
        dedup_key,
        frame_index,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
    )
