"""A radiologist's decision through the local stack: upload, result, decision in Django, then
dicom-review/1 on the Pub/Sub emulator, the review component, Orthanc and the signed receipt back
in Django (docs/contracts.md, "Review of a result"). The decision is posted to the review form of
the running Django, logged in as the stack's reviewer. Orthanc down when the decision arrives:
redelivered, one SR once it is back."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from tests.e2e.test_dicom_e2e import (
    SR_CLASS,
    _stop_orthanc,
    _wait_for_log,
    dicomweb,
    instances,
    prefix,
    write_radiograph,
)

pytestmark = pytest.mark.e2e


def decide(local_stack: Any, name: str, **fields: Any) -> str:
    """The radiologist's decision through the running Django, as the browser sends it: log in as the
    stack's reviewer, open the result's page (its hidden review tokens and CSRF token), POST the
    review form to ``/results/<pk>/review/``."""
    env = local_stack.env
    base = env["VIEWER_URL"]  # http://host:port/results/
    session = requests.Session()
    login = base + "accounts/login/"
    session.get(login, timeout=30).raise_for_status()
    answer = session.post(login, timeout=30, allow_redirects=False, data={
        "username": env["REVIEWER_USER"], "password": env["VIEWER_PASSWORD"],
        "csrfmiddlewaretoken": session.cookies["csrftoken"],
    })  # fmt: skip
    assert answer.status_code == 302, "the reviewer could not log in"
    pk = _db_value(local_stack, "SELECT id FROM dicom_results_inferenceresult WHERE source_name = ?", name)
    page = session.get(f"{base}{pk}/", timeout=30)
    page.raise_for_status()
    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.text))
    assert {"csrfmiddlewaretoken", "review_id", "opened_at"} <= set(form), sorted(form)
    posted = session.post(f"{base}{pk}/review/", data={**form, **fields}, timeout=60, allow_redirects=False)
    assert posted.status_code == 303, posted.text[-2000:]
    review_id = str(uuid.UUID(form["review_id"]))
    sql = "SELECT published_at FROM dicom_results_reviewdecision WHERE review_id = ?"
    published = _db_value(local_stack, sql, review_id.replace("-", ""))
    assert published, "the decision was not published to the review topic"
    return review_id


def _db_value(local_stack: Any, sql: str, *args: Any) -> Any:
    db = local_stack.stack.config.root / "results.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(sql, args).fetchone()
    return row[0] if row else None


def receipt(local_stack: Any, review_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The ReviewReceipt Django stored for the decision (read from the stack's SQLite file)."""
    db = local_stack.stack.config.root / "results.sqlite3"
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute(
                "SELECT r.* FROM dicom_results_reviewreceipt r JOIN dicom_results_reviewdecision d"
                " ON r.review_id = d.id WHERE d.review_id = ?",
                (review_id.replace("-", ""),),
            ).fetchone()
        if row is not None or time.monotonic() > deadline:
            return dict(row) if row is not None else None
        time.sleep(1)


def completed_upload(local_stack: Any, tmp_path: Path, what: str, seed: int) -> tuple[str, str, dict]:
    name = prefix(what) + "chest.dcm"
    path, study = write_radiograph(tmp_path / "chest.dcm", seed=seed)
    local_stack.gcloud_cp([path], f"gs://{local_stack.bucket}/{name}")
    outcome = local_stack.outcomes({"chest": name})["chest"]
    assert outcome.status == "completed", outcome.record.get("error")
    return name, study, outcome.record


def review_srs(local_stack: Any, study: str, ai_sr: str) -> list[str]:
    return [uid for cls, uid in instances(local_stack, study) if cls == SR_CLASS and uid != ai_sr]


def test_a_decision_becomes_a_verified_sr_in_the_study(local_stack, tmp_path) -> None:
    name, study, record = completed_upload(local_stack, tmp_path, "review", seed=41)
    ai_sr = record["dicom"]["sop_instance_uids"]["sr"]
    review_id = decide(local_stack, name, decision="reject", reason_code="false_positive", reason_text="scar")
    stored = receipt(local_stack, review_id, timeout_s=120)
    assert stored is not None and stored["status"] == "stored", stored
    assert review_srs(local_stack, study, ai_sr) == [stored["sr_sop_instance_uid"]]  # QIDO-RS lists it
    uid = stored["sr_sop_instance_uid"]
    sr = dicomweb(local_stack).retrieve_instance(study, _series_of(local_stack, study, uid), uid)
    assert sr.VerificationFlag == "VERIFIED"
    sql = "SELECT reviewer_name, reviewer_organisation FROM dicom_results_reviewdecision WHERE review_id = ?"
    db = local_stack.stack.config.root / "results.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        name_, organisation = conn.execute(sql, (review_id.replace("-", ""),)).fetchone()
    observer = sr.VerifyingObserverSequence[0]
    assert name_ and (str(observer.VerifyingObserverName), observer.VerifyingOrganization) == (
        name_,
        organisation,
    )
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for ser in s.ReferencedSeriesSequence for r in ser.ReferencedSOPSequence}  # fmt: skip
    assert ai_sr in evidence  # it references the AI SR
    if shutil.which("dciodvfy"):
        path = tmp_path / "review.sr.dcm"
        sr.save_as(path, enforce_file_format=True)
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        assert [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")] == []
    objects = local_stack.objects(name.rsplit("/", 1)[0] + "/")
    stem = name.removesuffix(".dcm")
    latest = json.loads(objects[stem + ".review.json"].download_as_bytes())
    assert latest["review_id"] == review_id and latest["decision"] == "reject"
    assert stem + f".{review_id}.review.sr.dcm" in objects


def _series_of(local_stack: Any, study: str, sop_uid: str) -> str:
    found = dicomweb(local_stack).search_for_instances(study_instance_uid=study)
    return next(i["0020000E"]["Value"][0] for i in found if i["00080018"]["Value"][0] == sop_uid)


def test_orthanc_down_when_the_decision_arrives_gives_one_sr_once_it_is_back(local_stack, tmp_path) -> None:
    name, study, record = completed_upload(local_stack, tmp_path, "review-down", seed=42)
    ai_sr = record["dicom"]["sop_instance_uids"]["sr"]
    log = local_stack.stack.config.log_dir / "review-component.log"
    start = len(log.read_text(errors="replace"))
    _stop_orthanc(local_stack)
    try:
        review_id = decide(local_stack, name, decision="accept")
        assert _wait_for_log(log, "asking for redelivery", start, 60), "no failed store attempt logged"
        time.sleep(3)  # a few redeliveries while the store is down
        assert receipt(local_stack, review_id, timeout_s=0) is None
    finally:
        local_stack.stack.start_orthanc()
    stored = receipt(local_stack, review_id, timeout_s=120)
    assert stored is not None and stored["status"] == "stored", stored
    assert review_srs(local_stack, study, ai_sr) == [stored["sr_sop_instance_uid"]]
    assert pydicom.uid.UID(stored["sr_sop_instance_uid"]).is_valid
    assert local_stack.stack.review_dead_letters() == []  # redelivered, never dead-lettered
