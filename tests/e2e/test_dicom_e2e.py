"""The result as DICOM objects through the whole local stack: upload with ``gcloud storage cp``, and
Orthanc's DICOMweb (QIDO-RS with dicomweb-client) then holds the SEG and SR in the source's study;
Orthanc down then up again gives the objects exactly once; a refusal gives a ``failed`` webhook."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image

from devkit.synthetic import make_radiograph, to_dicom_dataset
from infra.local.emulators import stop_process_group
from infra.local.supervision import is_owned as _owned
from tests.e2e.conftest import REFUSED_STUDY_PREFIX

pytestmark = pytest.mark.e2e

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
# role -> (modality, SOP class); "heatmap" exists when the explanation has a weight map
ROLES = {"seg": ("SEG", SEG_CLASS), "sr": ("SR", SR_CLASS), "heatmap": ("SEG", SEG_CLASS)}


def expected_instances(dicom: dict) -> list[tuple[str, str]]:
    assert {"seg", "sr"} <= set(dicom["sop_instance_uids"])
    return sorted((ROLES[role][1], uid) for role, uid in dicom["sop_instance_uids"].items())


def write_radiograph(path: Path, seed: int, study_uid: str | None = None) -> tuple[Path, str]:
    sample = make_radiograph(np.random.default_rng(seed), size=160, nodule=True)
    ds = to_dicom_dataset(sample.image, modality="DX")
    if study_uid:
        ds.StudyInstanceUID = study_uid
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


def dicomweb(local_stack) -> DICOMwebClient:
    return DICOMwebClient(local_stack.env["DICOMWEB_URL"])


def instances(local_stack, study_uid: str, results_only: bool = True) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of every instance Orthanc holds in the study: the results'
    only, or the source too (the Eventarc stand-in stores each upload there, as the PACS)."""
    found = dicomweb(local_stack).search_for_instances(study_instance_uid=study_uid)
    held = sorted((i["00080016"]["Value"][0], i["00080018"]["Value"][0]) for i in found)
    return [i for i in held if i[0] in (SEG_CLASS, SR_CLASS)] if results_only else held


def prefix(what: str) -> str:
    return f"e2e-dicom/{what}-{uuid.uuid4().hex[:8]}/"


def test_upload_puts_seg_and_sr_series_into_the_source_study(local_stack, tmp_path) -> None:
    name = prefix("good") + "chest.dcm"
    path, study = write_radiograph(tmp_path / "chest.dcm", seed=31)
    local_stack.gcloud_cp([path], f"gs://{local_stack.bucket}/{name}")
    outcome = local_stack.outcomes({"chest": name})["chest"]
    assert outcome.status == "completed", outcome.record.get("error")
    dicom = outcome.record["dicom"]
    assert dicom["study_instance_uid"] == study and dicom["absent"] == {}

    # The results' series, and the source's, which the local stack's PACS stand-in stored.
    source = pydicom.dcmread(path, stop_before_pixels=True)
    series = dicomweb(local_stack).search_for_series(study_instance_uid=study)
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    assert modalities == sorted([*(ROLES[role][0] for role in dicom["series_instance_uids"]), "DX"])
    assert sorted(s["0020000E"]["Value"][0] for s in series) == sorted(
        [*dicom["series_instance_uids"].values(), source.SeriesInstanceUID]
    )
    assert instances(local_stack, study) == expected_instances(dicom)
    assert (source.SOPClassUID, source.SOPInstanceUID) in instances(local_stack, study, results_only=False)
    objects = local_stack.objects(name.rsplit("/", 1)[0] + "/")
    assert {n.rsplit("/", 1)[1] for n in objects} >= {"chest.dcm", "chest.seg.dcm", "chest.sr.dcm"}
    # The SEG's pixels are the PNG mask's, pixel for pixel, at the source's resolution.
    stem = name.removesuffix(".dcm")
    seg = hd.seg.segread(io.BytesIO(objects[stem + ".seg.dcm"].download_as_bytes()))
    png = np.asarray(Image.open(io.BytesIO(objects[stem + ".lime.png"].download_as_bytes()))) > 0
    assert np.array_equal(np.asarray(seg.pixel_array).astype(bool).reshape(png.shape), png)
    assert png.shape == (160, 160) and png.any()


def _stop_orthanc(local_stack) -> None:
    for record in local_stack.stack.records:
        if record["name"] == "orthanc" and _owned(record):
            stop_process_group(record["pid"])


def _wait_for_log(path: Path, needle: str, start: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace")[start:]:
            return True
        time.sleep(0.5)
    return False


def test_orthanc_down_then_up_redelivers_and_stores_exactly_once(local_stack, tmp_path) -> None:
    log = local_stack.stack.config.log_dir / "inference-service.log"
    start = len(log.read_text(errors="replace"))
    name = prefix("down") + "chest.dcm"
    path, study = write_radiograph(tmp_path / "chest.dcm", seed=32)
    _stop_orthanc(local_stack)
    try:
        local_stack.gcloud_cp([path], f"gs://{local_stack.bucket}/{name}")
        assert _wait_for_log(log, "DICOMweb store unreachable", start, 120), "no failed store attempt logged"
        assert _wait_for_log(log, "result staged for the redelivery", start, 60), "nothing staged"
        assert local_stack.webhooks_for(name) == []  # nothing delivered while the store is down
    finally:
        local_stack.stack.start_orthanc()
    outcome = local_stack.outcomes({"chest": name}, timeout_s=240)["chest"]
    assert outcome.status == "completed", outcome.record.get("error")
    time.sleep(5)  # a duplicate delivery would show up by now
    assert len(local_stack.webhooks_for(name)) == 1
    # The redelivery stored the staged objects: it did not run the model and LIME again.
    assert "no recompute" in log.read_text(errors="replace")[start:]
    dicom = outcome.record["dicom"]
    assert instances(local_stack, study) == expected_instances(dicom)


def test_objects_the_store_refuses_give_a_failed_webhook_with_the_reason(local_stack, tmp_path) -> None:
    name = prefix("refused") + "chest.dcm"
    path, study = write_radiograph(tmp_path / "chest.dcm", seed=33, study_uid=REFUSED_STUDY_PREFIX + "33")
    local_stack.gcloud_cp([path], f"gs://{local_stack.bucket}/{name}")
    outcome = local_stack.outcomes({"chest": name})["chest"]
    assert outcome.status == "failed"
    assert outcome.record["error"]["code"] == "dicomweb_rejected"
    assert "HTTP 403" in outcome.record["error"]["message"]
    assert "dicom" not in outcome.record
    assert instances(local_stack, study) == []
    time.sleep(3)
    assert len(local_stack.webhooks_for(name)) == 1
