"""The result's DICOM objects pass dciodvfy (dicom3tools, the Debian validator) with no error:
the SEG, the heat-map SEGs (LIME's and Grad-CAM's) and the SR of the synthetic radiograph and of
pydicom test files of every kind the pipeline completes (DX, CT, MR, RGB and palette secondary
captures, JPEG 2000, a source whose identity was removed), and the assessment SR and region SEG of
every kind of radiologist decision (accept, reject, correct with a polygon or a point) over the same
sources."""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from devkit import synthetic
from gpu_service.dicom import objects as dicom_objects
from gpu_service.dicom.objects import GRADCAM_HEATMAP, HEATMAP, SEG, SR, Algorithm, Finding
from gpu_service.inference.pixels import decode, read_dicom, to_uint8

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(
    DCIODVFY is None, reason="dciodvfy not found (Debian package dicom3tools; make test installs it)"
)
ALGORITHM = Algorithm(
    name="demo-nodule-cnn",
    version="1.0.0",
    sha256="cd" * 32,
    lime_parameters={"num_samples": 1000, "num_features": 5, "seed": 0},
    correlation_id="0123456789abcdef0123456789abcdef",
    methods=("lime", "gradcam"),
    gradcam_layer="evidence",
)
TEST_FILES = (
    "CT_small.dcm",  # CT in patient coordinates
    "MR_small.dcm",  # MR
    "JPEG2000.dcm",  # projection, no spacing, JPEG 2000
    "SC_rgb_small_odd.dcm",  # RGB secondary capture, odd size
    "examples_palette.dcm",  # palette colour
    "examples_overlay.dcm",  # overlay planes
    "693_J2KI.dcm",  # Patient Identity Removed YES without a method; no Frame of Reference: SR only
    "image_dfl.dcm",  # deflated transfer syntax
)


def _synthetic(**header) -> bytes:
    sample = synthetic.make_radiograph(np.random.default_rng(5), size=128, nodule=True)
    buffer = io.BytesIO()
    synthetic.to_dicom_dataset(sample.image, modality="DX", **header).save_as(
        buffer, enforce_file_format=True
    )
    return buffer.getvalue()


SOURCES = {
    "synthetic DX": lambda: _synthetic(),
    "synthetic DX, Imager Pixel Spacing": lambda: _synthetic(ImagerPixelSpacing=[0.143, 0.143]),
    **{name: (lambda name=name: get_testdata_file(name)) for name in TEST_FILES},
}


def _errors(data: bytes, path: Path) -> list[str]:
    path.write_bytes(data)
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("name", list(SOURCES))
def test_seg_heatmap_segs_and_sr_pass_dciodvfy(name: str, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = read_dicom(SOURCES[name]())
        decoded = decode(source)
        shape = to_uint8(decoded).shape[:2]
    mask = np.zeros(shape, dtype=bool)
    mask[shape[0] // 4 : shape[0] // 2, shape[1] // 3 : shape[1] // 2] = True
    weights = np.linspace(-1.0, 1.0, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]  # a smooth Grad-CAM-like blob in [0, 1]
    cam = np.exp(-(((yy - shape[0] / 3) / (shape[0] / 6)) ** 2 + ((xx - shape[1] / 2) / (shape[1] / 6)) ** 2))
    finding = Finding(["normal", "nodule"], [0.2, 0.8], 1)
    objects = dicom_objects.build_objects(
        source,
        mask,
        finding,
        ALGORITHM,
        f"b/{name}#1",
        decoded.frame_index,
        pixel_weights=weights,
        gradcam_weights=cam.astype(np.float32),
    )
    expected = {SR} if name == "693_J2KI.dcm" else {SEG, HEATMAP, GRADCAM_HEATMAP, SR}
    assert set(objects.objects) == expected, objects.absent
    for role in objects.objects:
        errors = _errors(objects.encoded(role), tmp_path / f"{role}.dcm")
        assert errors == [], (name, role)
    for role in {SEG, HEATMAP, GRADCAM_HEATMAP} & expected:
        seg = pydicom.dcmread(io.BytesIO(objects.encoded(role)))
        assert "PixelMeasuresSequence" in seg.SharedFunctionalGroupsSequence[0], (name, role)


def test_grad_cam_first_seg_passes_dciodvfy(tmp_path: Path) -> None:
    """EXPLANATION_METHODS=gradcam: the binary SEG is Grad-CAM's mask (Content Label GRADCAM)."""
    source = read_dicom(SOURCES["synthetic DX"]())
    shape = to_uint8(decode(source)).shape[:2]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cam = np.exp(-(((yy - 40) / 12.0) ** 2 + ((xx - 70) / 12.0) ** 2)).astype(np.float32)
    algorithm = dataclasses.replace(ALGORITHM, methods=("gradcam",), lime_parameters={})
    objects = dicom_objects.build_objects(
        source, cam >= 0.5, Finding(["normal", "nodule"], [0.2, 0.8], 1), algorithm, "b/gc#1",
        gradcam_weights=cam,
    )  # fmt: skip
    assert set(objects.objects) == {SEG, GRADCAM_HEATMAP, SR}, objects.absent
    assert objects.objects[SEG].ContentLabel == "GRADCAM"
    for role in objects.objects:
        assert _errors(objects.encoded(role), tmp_path / f"{role}.dcm") == [], role


REVIEWS = {
    "accept": {"decision": "accept"},
    "reject": {
        "decision": "reject",
        "reason_code": "false_positive",
        "reason_text": "granuloma, not a nodule",
    },
    "correct, polygon": {
        "decision": "correct",
        "corrected_label": "normal",
        "reason_code": "wrong_region",
        "region": {"type": "polygon", "points": [[0.1, 0.1], [0.6, 0.1], [0.6, 0.5], [0.2, 0.6]]},
    },
    "correct, point": {
        "decision": "correct",
        "corrected_label": "normal",
        "region": {"type": "point", "x": 0.5, "y": 0.5, "radius": 0.25},
    },
}


def _scaled(fields: dict, rows: int, columns: int) -> dict:
    """The review's region (given in fractions of the image) in the source's pixels."""
    region = fields.get("region")
    if region is None:
        return fields
    if region["type"] == "polygon":
        region = {"type": "polygon", "points": [[x * columns, y * rows] for x, y in region["points"]]}
    else:
        region = {
            "type": "point",
            "x": region["x"] * columns,
            "y": region["y"] * rows,
            "radius": region["radius"] * max(rows, columns),
        }
    return {**fields, "region": region}


@pytest.mark.parametrize("review", list(REVIEWS))
@pytest.mark.parametrize(
    # The synthetic radiograph in make test-fast; every other source (about 25 s) in make test.
    "name",
    [n if n == "synthetic DX" else pytest.param(n, marks=pytest.mark.slow) for n in SOURCES],
)
def test_review_sr_and_seg_pass_dciodvfy(name: str, review: str, tmp_path: Path) -> None:
    """The assessment objects of every decision kind over every source the AI objects cover."""
    from datetime import UTC, datetime

    from gpu_service.dicom.review import build_review_objects
    from gpu_service.dicom.review_codes import REVIEW_SEG, REVIEW_SR, Assessment

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = read_dicom(SOURCES[name]())
        decoded = decode(source)
        shape = to_uint8(decoded).shape[:2]
    mask = np.zeros(shape, dtype=bool)
    mask[: shape[0] // 2, : shape[1] // 2] = True
    ai = dicom_objects.build_objects(
        source,
        mask,
        Finding(["normal", "nodule"], [0.2, 0.8], 1),
        ALGORITHM,
        f"b/{name}#1",
        decoded.frame_index,
    )
    assessment = Assessment(
        review_id=f"review {name} {review}",
        decided_at=datetime(2026, 11, 30, 9, 15, tzinfo=UTC),
        reviewer_name="Doe^Jane",
        reviewer_organisation="St Elsewhere Hospital",
        **_scaled(REVIEWS[review], int(source.Rows), int(source.Columns)),
    )
    built, absent = build_review_objects(
        dicom_objects.source_header(source),
        ai.objects[SR],
        assessment,
        "nodule",
        ALGORITHM.name,
        ai.objects.get(SEG),
        decoded.frame_index,
    )
    with_region = "region" in REVIEWS[review]
    assert (REVIEW_SEG in built) == (with_region and SEG in ai.objects), absent
    for role, ds in built.items():
        assert _errors(dicom_objects.encode(ds), tmp_path / f"{role}.dcm") == [], (name, review, role)
    assert built[REVIEW_SR].VerificationFlag == "VERIFIED"
