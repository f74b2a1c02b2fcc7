"""The local stack's Django (django-dicom-results in infra/local/results_site) under gunicorn,
over HTTP: the webhook log, the attempts log and failure injection that tools and the
end-to-end tests rely on, and the checks the issue asks of the running stack (forged,
replayed under another ``webhook-id``, stale: all refused; real ones land once)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gpu_service.results.webhook_signature import new_secret, signed_headers
from infra.local import viewer
from infra.local.emulators import free_port, stop_process_group, wait_http
from infra.local.stack import REPO
from infra.local.stack_config import INHERITED_ENV
from infra.local.supervision import inherited_env

pytestmark = pytest.mark.slow  # starts servers

SECRET = new_secret()


@dataclass
class Site:
    url: str
    log: Path
    attempts: Path
    db: Path
    password: str

    def rows(self) -> list[tuple[str, str, str]]:
        import sqlite3

        with sqlite3.connect(self.db) as con:
            return con.execute(
                "select webhook_id, status, label from dicom_results_inferenceresult order by id"
            ).fetchall()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    port = free_port()
    log = root / "webhooks.jsonl"
    env = {
        **inherited_env(os.environ, INHERITED_ENV),
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_LOG": str(log),
        "WEBHOOK_ATTEMPTS_LOG": str(root / "attempts.jsonl"),
        "GOOGLE_CLOUD_PROJECT": "test-project",
        **viewer.site_env(root, password := "pw-" + new_secret()[6:18]),
    }
    viewer.prepare(env, REPO)
    out = (root / "django.log").open("ab")
    proc = subprocess.Popen(viewer.command("127.0.0.1", port, Path(sys.executable).parent), cwd=REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}{viewer.HEALTH_PATH}", 60, proc, root / "django.log")
        yield Site(
            f"http://127.0.0.1:{port}", log, root / "attempts.jsonl", viewer.database_path(root), password
        )
    finally:
        stop_process_group(proc.pid)
        out.close()


@pytest.fixture
def fresh(site: Site) -> Site:
    """The same server, with empty logs for this test (the site appends; truncating is safe)."""
    for path in (site.log, site.attempts):
        path.write_text("")
    requests.post(site.url + viewer.CONTROL_PATH, json={"fail_next": 0}, timeout=10)
    return site


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _record(name: str, label: str = "nodule") -> dict:
    return {
        "schema": "dicom-inference-result/1",
        "status": "completed",
        "correlation_id": "c" * 32,
        "prediction": {"label": label, "score": 0.9, "scores": {label: 0.9}},
        "source": {"bucket": "b", "name": name, "uri": f"gs://b/{name}", "generation": "1"},
        "model": {"name": "m", "version": "1", "sha256": "0" * 64},
        "timings_ms": {},
        "completed_at": "2026-11-30T00:00:00Z",
    }


def _post(url: str, body: dict, *, key: str, secret: str = SECRET, now: float | None = None, headers=None):
    raw = json.dumps(body).encode()
    signed = headers or signed_headers(secret, raw, webhook_id=key, correlation_id="c" * 32, now=now)
    return requests.post(url + viewer.WEBHOOK_PATH, data=raw, headers=signed, timeout=30)


def test_signed_calls_are_recorded_and_forged_replayed_or_stale_ones_refused(fresh):
    body = _record("ward/a.dcm")
    raw = json.dumps(body).encode()
    captured = signed_headers(SECRET, raw, webhook_id="id-a", correlation_id="c" * 32)
    assert _post(fresh.url, body, key="id-a", headers=captured).status_code == 201
    assert _post(fresh.url, body, key="id-a", headers=captured).status_code == 200  # duplicate: 2xx, no row
    assert _post(fresh.url, body, key="id-b", secret=new_secret()).status_code == 401  # forged
    replay = {**captured, "webhook-id": "id-replayed"}
    assert _post(fresh.url, body, key="", headers=replay).status_code == 401  # replay under a new id
    assert _post(fresh.url, body, key="id-c", now=time.time() - 3600).status_code == 401  # stale
    assert (
        requests.post(fresh.url + viewer.WEBHOOK_PATH, json=body, timeout=10).status_code == 401
    )  # unsigned

    records = _lines(fresh.log)
    assert [r["headers"]["webhook-id"] for r in records] == ["id-a", "id-a"]  # duplicates included
    assert records[0]["body"] == body and set(records[0]) == {"received_at", "headers", "body"}
    assert [(a["status"], a["outcome"]) for a in _lines(fresh.attempts)] == [
        (201, "accepted"), (200, "duplicate"), (401, "bad_signature"), (401, "bad_signature"),
        (401, "bad_signature"), (401, "bad_signature"),
    ]  # fmt: skip
    assert [r for r in fresh.rows() if r[0].startswith("id-")] == [("id-a", "completed", "nodule")]


def test_fails_on_request_then_accepts(fresh):
    control = requests.post(fresh.url + viewer.CONTROL_PATH, json={"fail_next": 2}, timeout=10).json()
    assert control["fail_next"] == 2
    statuses = [_post(fresh.url, _record("ward/retry.dcm"), key="retry").status_code for _ in range(3)]
    assert statuses == [503, 503, 201]
    assert [r["headers"]["webhook-id"] for r in _lines(fresh.log)] == ["retry"]
    assert [(a["status"], a["outcome"]) for a in _lines(fresh.attempts)] == [
        (503, "injected_failure"), (503, "injected_failure"), (201, "accepted"),
    ]  # fmt: skip
    assert requests.get(fresh.url + viewer.CONTROL_PATH, timeout=10).json()["fail_next"] == 0


def test_fails_only_the_calls_that_match_and_never_forged_ones(fresh):
    """A failure meant for one object is not used up by a webhook for another, nor by a forgery."""
    control = requests.post(fresh.url + viewer.CONTROL_PATH, json={"fail_next": 2, "match": "study-7/"},
                            timeout=10).json()  # fmt: skip
    assert (control["fail_next"], control["match"]) == (2, "study-7/")
    mine = _record("in/study-7/x.dcm")
    statuses = [
        _post(fresh.url, _record("other/x.dcm"), key="m-a").status_code,
        _post(fresh.url, mine, key="m-b", secret=new_secret()).status_code,
        _post(fresh.url, mine, key="m-b").status_code,
        _post(fresh.url, mine, key="m-b").status_code,
        _post(fresh.url, mine, key="m-b").status_code,
    ]
    assert statuses == [201, 401, 503, 503, 201]
    assert [r["headers"]["webhook-id"] for r in _lines(fresh.log)] == ["m-a", "m-b"]
    assert requests.get(fresh.url + viewer.CONTROL_PATH, timeout=10).json()["fail_next"] == 0


def test_concurrent_duplicates_give_one_row_and_whole_log_lines(fresh):
    body = _record("ward/concurrent.dcm")
    statuses: list[int] = []

    def send() -> None:
        statuses.append(_post(fresh.url, body, key="same-delivery").status_code)

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 19 + [201]
    assert len(_lines(fresh.log)) == 20  # every accepted call, duplicates included, whole lines
    assert [r for r in fresh.rows() if r[0] == "same-delivery"] == [("same-delivery", "completed", "nodule")]


def test_viewer_needs_a_login(fresh):
    answer = requests.get(fresh.url + viewer.VIEWER_PATH, allow_redirects=False, timeout=10)
    assert answer.status_code == 302 and "/login/" in answer.headers["Location"]


def _logged_in(site: Site, username: str, next_path: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    login = site.url + viewer.VIEWER_PATH + "accounts/login/"
    form = session.get(login, timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    fields = {
        "username": username,
        "password": site.password,
        "next": next_path,
        "csrfmiddlewaretoken": token,
    }
    return session, session.post(login, data=fields, timeout=10)


def test_the_radiologist_reviews_from_the_worklist_and_the_viewer_user_may_not(fresh):
    assert _post(fresh.url, _record("ward/to-review.dcm"), key="id-review").status_code == 201
    with sqlite3.connect(fresh.db) as con:
        (pk,) = con.execute(
            "select id from dicom_results_inferenceresult where webhook_id = 'id-review'"
        ).fetchone()
    reviewer, worklist = _logged_in(fresh, viewer.REVIEWER_USER, viewer.WORKLIST_PATH)
    assert worklist.status_code == 200 and worklist.url.endswith(viewer.WORKLIST_PATH), worklist.url
    assert "ward/to-review.dcm" in worklist.text
    script = reviewer.get(fresh.url + "/static/dicom_results/reading.js", timeout=10)
    assert script.status_code == 200 and "source pixel" in script.text  # the static files are served
    detail = f"{fresh.url}{viewer.VIEWER_PATH}{pk}/"
    page = reviewer.get(detail, timeout=10)
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.text))
    answer = reviewer.post(detail + "review/", data={**fields, "decision": "accept"}, allow_redirects=False,
                           timeout=10)  # fmt: skip
    assert answer.status_code == 303, answer.text[-500:]
    with sqlite3.connect(fresh.db) as con:
        query = "select decision, reviewer_name, reviewer_organisation from dicom_results_reviewdecision"
        stored = con.execute(query + " where result_id = ?", (pk,)).fetchall()
    assert stored == [("accept", "Demo Radiologist", "Local demo hospital")]

    staff, _ = _logged_in(fresh, viewer.VIEWER_USER, viewer.VIEWER_PATH)
    page = staff.get(detail, timeout=10)
    assert page.status_code == 200 and 'id="review-form"' not in page.text and "Demo Radiologist" in page.text
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page.text))
    refused = staff.post(
        detail + "review/", data={**fields, "decision": "accept"}, allow_redirects=False, timeout=10
    )
    assert refused.status_code == 403
