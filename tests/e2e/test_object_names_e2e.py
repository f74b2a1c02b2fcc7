"""Object names as hospitals write them, through the whole local stack: Unicode folders,
spaces, URL characters and names near Cloud Storage's 1024-byte limit give the same outcomes
as ASCII names (one completed webhook with its artifacts, or one rejection record), each
with the exact name.

`gcloud storage cp` and `gsutil cp` read `?`, `[` and `*` in a destination as wildcards and
refuse it, so names with those characters are uploaded with the client library, as an
application would write them.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from google.cloud import storage

from devkit.synthetic import make_radiograph, to_dicom_dataset
from infra.local.demo import storage_client
from pipeline_common import naming

pytestmark = pytest.mark.e2e

KOREAN_PATIENT_ID = "환자-01"
KOREAN_PATIENT_NAME = "김희중^이"
COMPLETED_OUTPUTS = {
    naming.PREVIEW_SUFFIX: "preview",
    naming.MASK_SUFFIX: "mask",
    naming.OVERLAY_SUFFIX: "overlay",
    naming.HEATMAP_SUFFIX: "heatmap",
    naming.RESULT_SUFFIX: "result",
}


def korean_radiograph(path: Path, seed: int) -> Path:
    """A radiograph whose text is in the Korean character set (ISO 2022 IR 149 code extensions)."""
    sample = make_radiograph(np.random.default_rng(seed), size=160, nodule=True)
    ds = to_dicom_dataset(sample.image, modality="DX")
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 149"]
    ds.PatientID = KOREAN_PATIENT_ID
    ds.PatientName = KOREAN_PATIENT_NAME
    ds.save_as(path, enforce_file_format=True)
    assert b"\x1b$)C" in path.read_bytes(), "the file holds ISO 2022 IR 149 escape sequences"
    return path


def upload(local_stack, how: str, source: Path, name: str) -> None:
    destination = f"gs://{local_stack.bucket}/{name}"
    if how == "gcloud":
        local_stack.gcloud_cp([source], destination)
    elif how == "gsutil":
        local_stack.gsutil_cp(source, destination)
    else:
        bucket: storage.Bucket = storage_client(local_stack.env).bucket(local_stack.bucket)
        bucket.blob(name).upload_from_filename(str(source))


def long_name(prefix: str) -> str:
    """A name of exactly 1024 bytes: its outputs cannot keep the whole stem."""
    head = prefix + "긴 이름/"
    filler = "가" * ((naming.MAX_NAME_BYTES - len(head.encode()) - 4) // 3)
    name = head + filler
    name += "x" * (naming.MAX_NAME_BYTES - len(name.encode()) - 4) + ".dcm"
    assert len(name.encode()) == naming.MAX_NAME_BYTES
    return name


NAMES = {
    "korean": "wards/응급실 A/환자 01.DCM",
    "url-characters": "wards/a b#c%41+d&e=f;g'h.dcm",
    "wildcards": "wards/q?x[1]*y#z%20+.dcm",
}
CASES = [
    ("gcloud", "korean"),
    ("gsutil", "korean"),
    ("gcloud", "url-characters"),
    ("gsutil", "url-characters"),
    ("library", "wildcards"),
    ("gcloud", "long"),
]


@pytest.mark.parametrize(("how", "kind"), CASES)
def test_any_name_gives_one_completed_webhook_with_the_exact_name(local_stack, tmp_path, how, kind):
    prefix = f"e2e/names-{uuid.uuid4().hex[:8]}/"
    name = long_name(prefix) if kind == "long" else prefix + NAMES[kind]
    source = korean_radiograph(tmp_path / "scan.dcm", seed=11)
    upload(local_stack, how, source, name)

    outcome = local_stack.outcomes({"scan": name})["scan"]
    assert outcome.status == "completed", outcome.record.get("error")
    hooks = local_stack.webhooks_for(name)
    assert len(hooks) == 1
    body = hooks[0]["body"]
    objects = local_stack.objects(prefix)
    generation = str(objects[name].generation)
    assert body["source"] == {
        "bucket": local_stack.bucket,
        "name": name,
        "uri": f"gs://{local_stack.bucket}/{name}",
        "generation": generation,
    }
    assert body["patient_id"] == pydicom.dcmread(source).PatientID == KOREAN_PATIENT_ID
    assert body["explanation"]["mask_uri"] == (
        f"gs://{local_stack.bucket}/{naming.output_name(name, naming.MASK_SUFFIX)}"
    )
    for suffix, role in COMPLETED_OUTPUTS.items():
        out = naming.output_name(name, suffix)
        assert len(out.encode()) <= naming.MAX_NAME_BYTES
        if kind != "long":
            assert out == naming.stem(name) + suffix, "outputs keep the exact name"
        blob = objects.get(out)
        assert blob is not None, f"missing {out!r}"
        assert blob.metadata[naming.MARKER_KEY] == role
        assert blob.metadata["dicom-pipeline-source"] == f"gs://{local_stack.bucket}/{name}#{generation}"
    stored = json.loads(objects[naming.output_name(name, naming.RESULT_SUFFIX)].download_as_bytes())
    assert stored == body
    with sqlite3.connect(local_stack.root / "results.sqlite3") as db:  # the hospital's Django
        rows = db.execute(
            "select label, source_uri from dicom_results_inferenceresult where source_generation = ?",
            (generation,),
        ).fetchall()
    assert rows == [(body["prediction"]["label"], f"gs://{local_stack.bucket}/{name}")]
    # The outputs started nothing (no rejection records for them) and nothing else appeared.
    assert set(objects) == {name, *(naming.output_name(name, s) for s in COMPLETED_OUTPUTS)}


@pytest.mark.parametrize("how", ["gcloud", "gsutil", "library"])
def test_any_name_that_is_not_dicom_gives_one_rejection_record_with_the_exact_name(
    local_stack, tmp_path, how
):
    prefix = f"e2e/names-{uuid.uuid4().hex[:8]}/"
    name = prefix + ("wards/q?x[1]*y#z%20+.dcm" if how == "library" else "wards/응급실 A/소견서 #2 50%+.dcm")
    letter = tmp_path / "letter.dcm"
    letter.write_text("소견서: 영상을 첨부합니다.\n" * 20, encoding="utf-8")
    upload(local_stack, how, letter, name)

    outcome = local_stack.outcomes({"letter": name})["letter"]
    assert outcome.status == "rejected"
    assert outcome.record["reason"] == "not_dicom"
    assert outcome.record["source"]["name"] == name
    assert outcome.record["source"]["uri"] == f"gs://{local_stack.bucket}/{name}"
    assert local_stack.webhooks_for(name) == []
    assert set(local_stack.objects(prefix)) == {name, naming.output_name(name, naming.REJECTION_SUFFIX)}


def test_no_event_was_given_up_on(local_stack):
    """Every notification of the names above reached the function: none pending, none failed."""
    stats = local_stack.stack.event_stats()
    assert stats is not None
    assert stats["failed"] == 0, stats["failures"]
