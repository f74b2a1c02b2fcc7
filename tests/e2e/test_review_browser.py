"""A radiologist reviews a result in Chromium on the local stack, and the review shows up where
the issue asks: Orthanc's QIDO-RS lists the VERIFIED assessment SR (and the corrected region's
SEG) in the study, the SR references the AI SR and names the reviewer, dciodvfy finds no error in
either, the quality page counts the decision and ``manage.py export_reviews`` holds it.

Playwright drives Debian's Chromium (``/usr/bin/chromium``) against the stack's Django, logged in
as the stack's reviewer (``make demo KEEP=1`` prints that login)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from infra.local.stack import REPO
from tests.e2e.test_dicom_e2e import dicomweb
from tests.e2e.test_ohif_browser import CHROMIUM, CHROMIUM_FLAGS
from tests.e2e.test_review_e2e import _db_value, _series_of, completed_upload, receipt, review_srs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _dciodvfy_errors(dataset: Any, path: Path) -> list[str]:
    dataset.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _reviewed_count(page: Any, sha256: str) -> int:
    section = page.locator(f"section.model[data-sha256='{sha256}'] dd.reviewed")
    return int(section.inner_text()) if section.count() else 0


def _export(local_stack: Any) -> list[dict[str, Any]]:
    """``manage.py export_reviews`` as the stack's Django runs (its settings and database)."""
    env = local_stack.stack.process_env("webhook-receiver")
    since = datetime.now(UTC).date().isoformat()
    done = subprocess.run(
        [sys.executable, "-m", "django", "export_reviews", "--since", since],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_a_review_in_chromium_is_stored_verified_counted_and_exported(local_stack, tmp_path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install chromium (infra/local/check_prereqs.sh)")
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is missing: apt-get install dicom3tools (infra/local/check_prereqs.sh)")
    from playwright.sync_api import sync_playwright

    name, study, record = completed_upload(local_stack, tmp_path, "review-browser", seed=43)
    ai_sr = record["dicom"]["sop_instance_uids"]["sr"]
    labels = list(record["prediction"]["scores"])
    pk = _db_value(local_stack, "SELECT id FROM dicom_results_inferenceresult WHERE source_name = ?", name)
    env, base = local_stack.env, local_stack.env["VIEWER_URL"]
    sha256 = record["model"]["sha256"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}accounts/login/?next=/results/quality/")
            page.fill("#id_username", env["REVIEWER_USER"])
            page.fill("#id_password", env["VIEWER_PASSWORD"])
            with page.expect_navigation():
                page.click("#login button[type=submit]")
            before = _reviewed_count(page, sha256)

            page.goto(f"{base}{pk}/")
            page.wait_for_function("() => document.getElementById('image').complete"
                                   " && document.getElementById('image').naturalWidth > 0")  # fmt: skip
            # The radiologist corrects the label and draws the region that shows it.
            other = next(label for label in labels if label != record["prediction"]["label"])
            page.check("#decision-correct")
            page.select_option("#corrected-label", other)
            page.select_option("#reason-code", "wrong_region")
            page.click("#draw-region")
            # Corners inside the part of the image the viewport shows (the page may be scrolled).
            page.locator("#viewport").scroll_into_view_if_needed()
            stage = page.locator("#stage").bounding_box()
            view = page.locator("#viewport").bounding_box()
            left = max(stage["x"], view["x"])
            right = min(stage["x"] + stage["width"], view["x"] + view["width"])
            top = max(stage["y"], view["y"], 0)
            bottom = min(stage["y"] + stage["height"], view["y"] + view["height"], 900)
            for fx, fy in ((0.4, 0.4), (0.6, 0.4), (0.6, 0.6), (0.4, 0.6)):
                page.mouse.click(left + fx * (right - left), top + fy * (bottom - top))
            assert page.inner_text("#region-summary") == "4 points"
            with page.expect_navigation():
                page.click("#submit-review")
            assert f"correct: wrong region → {other}" in page.locator("#history tr.in-force").inner_text()

            review_id = _db_value(
                local_stack,
                "SELECT review_id FROM dicom_results_reviewdecision WHERE result_id = ? ORDER BY id DESC",
                pk,
            )
            review_id = str(uuid.UUID(review_id))  # SQLite keeps a UUIDField as 32 hex digits
            stored = receipt(local_stack, review_id, timeout_s=120)
            assert stored is not None and stored["status"] == "stored", stored
            page.reload()
            assert "stored in PACS" in page.locator("#history tr.in-force").inner_text()

            page.goto(f"{base}quality/")
            assert _reviewed_count(page, sha256) == before + 1  # the quality page counts it
        finally:
            browser.close()

    # Orthanc's QIDO-RS lists the assessment SR and the region's SEG in the study.
    sr_uid, seg_uid = stored["sr_sop_instance_uid"], stored["seg_sop_instance_uid"]
    assert review_srs(local_stack, study, ai_sr) == [sr_uid]
    client = dicomweb(local_stack)
    sr = client.retrieve_instance(study, _series_of(local_stack, study, sr_uid), sr_uid)
    seg = client.retrieve_instance(study, _series_of(local_stack, study, seg_uid), seg_uid)
    assert sr.VerificationFlag == "VERIFIED"
    reviewer = _db_value(
        local_stack, "SELECT reviewer_name FROM dicom_results_reviewdecision WHERE result_id = ?", pk
    )
    assert reviewer and str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == reviewer
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for ser in s.ReferencedSeriesSequence for r in ser.ReferencedSOPSequence}  # fmt: skip
    assert ai_sr in evidence  # it references the AI SR
    assert seg.SegmentationType == "BINARY" and seg.pixel_array.any()
    assert _dciodvfy_errors(sr, tmp_path / "review.sr.dcm") == []
    assert _dciodvfy_errors(seg, tmp_path / "review.seg.dcm") == []

    # The retraining export holds it, with the corrected label and the region's SEG.
    (line,) = [x for x in _export(local_stack) if x["imageGcsUri"] == record["image_uri"]]
    assert line["classificationAnnotation"] == {"displayName": other}
    assert line["review"]["decision"] == "correct" and line["review"]["review_id"] == review_id
    assert line["review"]["corrected_seg_uri"] == stored["seg_uri"] != ""
