"""The result as standard DICOM objects (IHE AI Results): a Segmentation of the LIME mask and a
TID 1500 Measurement Report, both in the source's study, built and validated by highdicom.

Pure: no I/O. UIDs are derived from the upload's dedup key, the model's SHA-256 and the object's
role, so a redelivery rebuilds the very same instances and storing them twice is idempotent.
A source that cannot carry an object gets none, with the reason in :attr:`DicomObjects.absent`;
nothing here raises for a bad source (the record says why instead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from gpu_service.dicom.common import (
    GRADCAM_HEATMAP,
    HEATMAP,
    ROLES,
    SEG,
    SERIES_DESCRIPTIONS,
    SR,
    Algorithm,
    Finding,
    copy_deidentification,
    encode,
    finding_code,
    object_uid,
    source_header,
)
from gpu_service.dicom.seg import (
    build_gradcam_heatmap,
    build_heatmap,
    build_segmentation,
    why_no_segmentation,
)
from gpu_service.dicom.sr import build_report
from gpu_service.inference.upsampled import WeightMap

__all__ = [
    "GRADCAM_HEATMAP", "HEATMAP", "ROLES", "SEG", "SR", "Algorithm", "DicomObjects", "Finding",
    "build_heatmap", "build_objects", "build_report", "build_segmentation", "encode", "finding_code",
    "object_uid", "source_header", "warmup",
]  # fmt: skip


@dataclass
class DicomObjects:
    objects: dict[str, Dataset]  # role -> dataset, only those built
    absent: dict[str, str]  # role -> why it was not built
    study_instance_uid: str | None

    def encoded(self, role: str) -> bytes:
        return encode(self.objects[role])


def build_objects(
    source: Dataset,
    mask: np.ndarray,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
    pixel_weights: WeightMap | None = None,
    gradcam_weights: WeightMap | None = None,
    on_built: Callable[[str, Dataset], None] | None = None,
) -> DicomObjects:
    """The SEG (and the heat-map SEG when weights exist, the Grad-CAM one when Grad-CAM ran) and
    the SR; never raises for a bad source. ``on_built(role, dataset)``: called with each object
    as soon as it is complete, in that order, so a caller can encode and write one while the
    next is built; what it raises propagates."""
    objects: dict[str, Dataset] = {}
    absent: dict[str, str] = {}
    try:
        header = source_header(source)
    except Exception as exc:  # noqa: BLE001 - an unreadable header gets no objects, and says why
        reason = f"unreadable source header: {type(exc).__name__}: {exc}"
        return DicomObjects({}, {SEG: reason, SR: reason}, None)
    study = str(header.get("StudyInstanceUID") or "") or None
    try:
        reason = why_no_segmentation(header)
    except Exception as exc:  # noqa: BLE001 - an unconvertible value in the header
        reason = f"unreadable source header: {type(exc).__name__}: {exc}"

    def built(role: str, ds: Dataset) -> None:
        ds.SeriesDescription = SERIES_DESCRIPTIONS[role]
        copy_deidentification(ds, header)
        objects[role] = ds
        if on_built is not None:
            on_built(role, ds)

    if reason is None:
        segmentation: Dataset | None = None
        try:
            segmentation = build_segmentation(header, mask, finding, algorithm, dedup_key, frame_index)
        except Exception as exc:  # noqa: BLE001 - highdicom refuses sources it cannot segment
            reason = f"highdicom cannot build a SEG of this source: {type(exc).__name__}: {exc}"
        if segmentation is not None:
            built(SEG, segmentation)
    if reason is not None:
        absent[SEG] = reason
    for role, build, weights, what in (
        (HEATMAP, build_heatmap, pixel_weights, "the heat-map SEG"),
        (GRADCAM_HEATMAP, build_gradcam_heatmap, gradcam_weights, "the Grad-CAM SEG"),
    ):
        if weights is None:
            continue
        if SEG not in objects:
            absent[role] = absent[SEG]
            continue
        heatmap: Dataset | None = None
        try:
            heatmap = build(header, weights, finding, algorithm, dedup_key, frame_index)
        except Exception as exc:  # noqa: BLE001
            absent[role] = f"highdicom cannot build {what}: {type(exc).__name__}: {exc}"
        if heatmap is not None:
            built(role, heatmap)
    if study is None:
        absent[SR] = "the source has no Study Instance UID: a derived object could not join its study"
    else:
        report: Dataset | None = None
        try:
            report = build_report(header, finding, algorithm, dedup_key, objects.get(SEG), frame_index)
        except Exception as exc:  # noqa: BLE001
            absent[SR] = f"highdicom cannot build the SR: {type(exc).__name__}: {exc}"
        if report is not None:
            built(SR, report)
    return DicomObjects(objects, absent, study)


def warmup() -> None:
    """Build and encode once at start-up: highdicom's first build loads its code tables (about
    0.3 s), which the first request would pay otherwise."""
    from pydicom.uid import ExplicitVRLittleEndian

    source = Dataset()
    source.file_meta = Dataset()
    source.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in {
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "SOPInstanceUID": object_uid("warmup", "0", "source"),
        "StudyInstanceUID": object_uid("warmup", "0", "study"),
        "SeriesInstanceUID": object_uid("warmup", "0", "series"),
        "Modality": "DX",
        "Rows": 8,
        "Columns": 8,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 8,
        "BitsStored": 8,
        "HighBit": 7,
        "PixelRepresentation": 0,
    }.items():
        setattr(source, keyword, value)
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4] = True
    built = build_objects(
        source, mask, Finding(["a", "b"], [0.5, 0.5], 0), Algorithm("warmup", "0", "0"), "warmup"
    )
    for role in built.objects:
        built.encoded(role)
