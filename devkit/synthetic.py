"""Synthetic chest-radiograph-like images, with or without a nodule, as arrays and as DICOM.

They train the bundled demo model, feed the faithfulness check (the nodule's position is
known, so we can tell whether LIME points at it) and give every test a realistic DICOM
without shipping patient data. All sizes are relative, so a nodule stays visible at any
resolution once the image is resized to the model's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Digital X-Ray Image Storage - For Presentation.
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"
SECONDARY_CAPTURE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"

# Nodule radius as a fraction of the image side: at a 128-pixel model input that is 4-8 px.
NODULE_RADIUS_FRACTION = (0.035, 0.06)


@dataclass(frozen=True)
class SyntheticImage:
    image: np.ndarray  # float32 HxW in [0, 1]; bright = dense, as displayed (MONOCHROME2)
    nodule_center: tuple[int, int] | None  # (row, col)
    nodule_radius: float | None  # pixels


def _lung_fields(rr: np.ndarray, cc: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """Two soft ellipses (dark, air-filled lungs) and their geometry, in unit coordinates."""
    fields = np.zeros_like(rr)
    geometry = []
    for side in (-1, 1):
        cy = 0.5 + rng.uniform(-0.03, 0.03)
        cx = 0.5 + side * rng.uniform(0.18, 0.23)
        ry = rng.uniform(0.30, 0.36)
        rx = rng.uniform(0.13, 0.17)
        d = ((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2
        fields = np.maximum(fields, 1.0 / (1.0 + np.exp(np.clip((d - 1.0) * 8.0, -60, 60))))
        geometry.append((cy, cx, ry, rx))
    return fields, geometry


def make_radiograph(
    rng: np.random.Generator,
    size: int = 256,
    nodule: bool = False,
    *,
    radius_fraction: tuple[float, float] = NODULE_RADIUS_FRACTION,
    reach: tuple[float, float] = (0.0, 0.65),
) -> SyntheticImage:
    """A frontal chest-like image: bright body, dark lungs, ribs, noise; optionally one nodule.

    The nodule is a small round opacity placed at a random point inside a lung field, where
    a radiologist would look for it: `reach` is its distance from the lung's centre as a
    share of the lung's radii, `radius_fraction` its radius as a share of the side. The
    defaults are what the demo model was trained on; other values (nodules at the lung's
    edge, smaller or larger) test explanations away from the training distribution.
    """
    if size < 16:
        raise ValueError("size must be at least 16 pixels")
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    rr, cc = np.meshgrid(axis, axis, indexing="ij")

    body = 1.0 / (1.0 + np.exp((np.abs(cc - 0.5) - rng.uniform(0.40, 0.46)) * 30.0))
    img = 0.15 + 0.55 * body
    lungs, geometry = _lung_fields(rr, cc, rng)
    img = img - rng.uniform(0.30, 0.38) * lungs

    # Ribs: slanted, gently curved bright bands across the lungs.
    spacing = rng.uniform(0.075, 0.095)
    phase = rng.uniform(0, spacing)
    curve = rr + 0.25 * (cc - 0.5) ** 2
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (curve - phase) / spacing)
    img = img + rng.uniform(0.06, 0.10) * ribs**4 * lungs

    # Mediastinum / spine: bright vertical band.
    img = img + 0.20 * np.exp(-(((cc - 0.5) / 0.06) ** 2))

    center: tuple[int, int] | None = None
    radius: float | None = None
    if nodule:
        cy, cx, ry, rx = geometry[rng.integers(0, 2)]
        angle = rng.uniform(0, 2 * np.pi)
        dist = reach[0] + (reach[1] - reach[0]) * np.sqrt(rng.uniform(0, 1))
        ny, nx = cy + dist * ry * np.sin(angle), cx + dist * rx * np.cos(angle)
        radius = float(rng.uniform(*radius_fraction) * size)
        center = (int(np.clip(round(ny * size), 0, size - 1)), int(np.clip(round(nx * size), 0, size - 1)))
        r2 = ((rr * size - center[0] - 0.5) ** 2 + (cc * size - center[1] - 0.5) ** 2) / radius**2
        blob = 1.0 / (1.0 + np.exp(np.clip((r2 - 1.0) * 6.0, -60, 60)))
        img = img + rng.uniform(0.22, 0.32) * blob

    # Low-frequency exposure variation plus quantum noise.
    img = img * (1.0 + rng.uniform(-0.08, 0.08) * (rr - 0.5) + rng.uniform(-0.05, 0.05) * (cc - 0.5))
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.025), img.shape)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return SyntheticImage(image=img, nodule_center=center, nodule_radius=radius)


def nodule_mask(sample: SyntheticImage, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean disk of the planted nodule, at the image's resolution or rescaled to `shape`."""
    h, w = sample.image.shape[:2]
    out_h, out_w = shape or (h, w)
    if sample.nodule_center is None or sample.nodule_radius is None:
        return np.zeros((out_h, out_w), dtype=bool)
    sy, sx = out_h / h, out_w / w
    cy, cx = (sample.nodule_center[0] + 0.5) * sy, (sample.nodule_center[1] + 0.5) * sx
    yy, xx = np.mgrid[0:out_h, 0:out_w]
    return ((yy + 0.5 - cy) / (sample.nodule_radius * sy)) ** 2 + (
        (xx + 0.5 - cx) / (sample.nodule_radius * sx)
    ) ** 2 <= 1.0


_UID_KEYWORDS = {
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
    "frame_of_reference_uid": "FrameOfReferenceUID",
}


def to_dicom_dataset(
    image01: np.ndarray,
    *,
    modality: str = "DX",
    patient_id: str = "DEMO-0001",
    bits: int = 12,
    **uids: Any,
) -> pydicom.Dataset:
    """A valid Part-10 dataset (file meta, explicit VR little endian) holding `image01`.

    `uids` accepts study_instance_uid, series_instance_uid, sop_instance_uid (new ones are
    generated when absent) and any other DICOM keyword (e.g. BodyPartExamined="CHEST"),
    so tests can build exactly the header they need. Pixels are stored unsigned with
    `bits` bits (8 or up to 16), MONOCHROME2, with a full-range window.
    """
    arr = np.asarray(image01, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError("image01 must be a 2-D grayscale array")
    if not 1 <= bits <= 16:
        raise ValueError("bits must be in 1..16")
    max_value = (1 << bits) - 1
    stored = np.round(np.clip(arr, 0.0, 1.0) * max_value)
    allocated = 8 if bits <= 8 else 16
    stored = stored.astype(np.uint8 if allocated == 8 else np.uint16)

    sop_class = {"DX": DX_SOP_CLASS, "CR": CR_SOP_CLASS}.get(modality.upper(), SECONDARY_CAPTURE_SOP_CLASS)
    sop_instance = str(uids.pop("sop_instance_uid", None) or generate_uid())

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = str(uids.pop("study_instance_uid", None) or generate_uid())
    ds.SeriesInstanceUID = str(uids.pop("series_instance_uid", None) or generate_uid())
    ds.Modality = modality.upper()
    ds.PatientID = patient_id
    ds.PatientName = "DEMO^SYNTHETIC"
    ds.StudyDate = "20240101"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = allocated
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = max_value / 2
    ds.WindowWidth = max_value + 1
    for key, value in uids.items():
        keyword = _UID_KEYWORDS.get(key, key)
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    return ds
