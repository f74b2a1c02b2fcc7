"""Synthetic radiographs: reproducible, nodule where it says, valid Part-10 DICOM."""

from __future__ import annotations

import io

import numpy as np
import pydicom

from devkit.synthetic import make_radiograph, nodule_mask, to_dicom_dataset
from gpu_service.inference.pixels import decode, read_dicom


def test_same_seed_same_image_and_nodule_is_a_bright_disk() -> None:
    a = make_radiograph(np.random.default_rng(1), size=200, nodule=True)
    b = make_radiograph(np.random.default_rng(1), size=200, nodule=True)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.dtype == np.float32 and a.image.shape == (200, 200)
    assert a.image.min() >= 0.0 and a.image.max() <= 1.0
    disk = nodule_mask(a)
    assert disk.any() and a.nodule_radius is not None
    assert disk.sum() < 0.05 * disk.size
    assert a.image[disk].mean() > a.image[nodule_mask(a, (200, 200)) ^ _ring(a)].mean()
    normal = make_radiograph(np.random.default_rng(2), size=200, nodule=False)
    assert normal.nodule_center is None and not nodule_mask(normal).any()


def _ring(sample) -> np.ndarray:
    big = type(sample)(sample.image, sample.nodule_center, sample.nodule_radius * 2.5)
    return nodule_mask(big)


def test_dicom_round_trip_with_header_overrides() -> None:
    image = make_radiograph(np.random.default_rng(3), size=96).image
    ds = to_dicom_dataset(
        image,
        modality="CR",
        patient_id="P-1",
        study_instance_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        ViewPosition="AP",
    )
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert data[128:132] == b"DICM"
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.Modality == "CR" and back.PatientID == "P-1" and back.ViewPosition == "AP"
    assert back.StudyInstanceUID == "1.2.3" and back.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert back.BitsStored == 12 and back.Rows == 96
    np.testing.assert_allclose(decode(read_dicom(data)).pixels, image, atol=1e-3)
    eight = to_dicom_dataset(image, bits=8)
    assert eight.BitsAllocated == 8 and len(eight.PixelData) == 96 * 96
