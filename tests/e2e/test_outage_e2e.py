"""Downstream outages longer than the inference subscription's retry budget, on the local stack:
every upload in flight completes exactly once after recovery, with no recompute, and a message
that does reach the dead-letter topic is recorded, counted, logged and replayed once
(docs/contracts.md, "Delivery after a downstream outage" and "Dead letters")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infra.local.emulators import stop_process_group
from infra.local.stack import DEAD_LETTER_SUBSCRIPTION, REPO
from infra.local.stack_cli import status_report
from infra.local.supervision import is_owned
from tests.e2e.test_dicom_e2e import expected_instances, instances, prefix, write_radiograph

pytestmark = pytest.mark.e2e

N = int(os.environ.get("E2E_OUTAGE_UPLOADS", "30"))
# The old budget: 5 pushes, backoff from 2 s (2 + 4 + 8 + 16 s), after which a message was
# dead-lettered (infra/local/stack.py). Each outage below outlasts it after the last hand-off.
OLD_BUDGET_S = 30


def _stop(local_stack: Any, name: str) -> None:
    for record in local_stack.stack.records:
        if record["name"] == name and is_owned(record):
            stop_process_group(record["pid"])


def _service_log(local_stack: Any) -> Path:
    return local_stack.stack.config.log_dir / "inference-service.log"


def _lines(path: Path, start: int) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace")[start:].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _count(path: Path, start: int, message: str, names: set[str]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for entry in _lines(path, start):
        if entry.get("message") == message and entry.get("object") in counts:
            counts[entry["object"]] += 1
    return counts


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _uploads(local_stack: Any, tmp_path: Path, what: str, seed: int) -> tuple[dict[str, str], dict[str, str]]:
    """N radiographs of distinct studies in one `gcloud storage cp`: {file: object}, {object: study}."""
    folder = tmp_path / what
    folder.mkdir()
    written = [write_radiograph(folder / f"r{i:02d}.dcm", seed=seed + i) for i in range(N)]
    pre = prefix(what)
    local_stack.gcloud_cp([p for p, _ in written], f"gs://{local_stack.bucket}/{pre}")
    names = {p.name: pre + p.name for p, _ in written}
    return names, {pre + p.name: study for p, study in written}


def _ride_out(local_stack: Any, tmp_path: Path, component: str, what: str, seed: int) -> None:
    log = _service_log(local_stack)
    start = len(log.read_text(errors="replace"))
    _stop(local_stack, component)
    try:
        names, studies = _uploads(local_stack, tmp_path, what, seed)
        objects = set(names.values())

        def handed_off() -> bool:
            return all(_count(log, start, "downstream unavailable; delivery handed off", objects).values())

        _wait(handed_off, 600, f"all {N} uploads handed off while {component} is down")
        time.sleep(OLD_BUDGET_S + 10)  # longer than the old budget after the last hand-off
        assert not [n for n in objects if local_stack.webhooks_for(n)], "delivered while down"
    finally:
        local_stack.stack.restart(component)
    outcomes = local_stack.outcomes(names, timeout_s=600)
    assert {o.status for o in outcomes.values()} == {"completed"}, [
        o.record.get("error") for o in outcomes.values()
    ]
    time.sleep(5)  # a duplicate delivery would show up by now
    assert {n: len(local_stack.webhooks_for(n)) for n in objects} == dict.fromkeys(objects, 1)
    # The model and LIME ran once per upload: the deliveries after recovery recomputed nothing.
    assert _count(log, start, "model and explanation computed", objects) == dict.fromkeys(objects, 1)
    for outcome in outcomes.values():
        assert instances(local_stack, studies[outcome.object_name]) == expected_instances(
            outcome.record["dicom"]
        )
    dead = [m for m in local_stack.stack.dead_letters() if m.get("attributes", {}).get("object") in objects]
    assert dead == []


def test_thirty_uploads_ride_out_an_orthanc_outage(local_stack, tmp_path) -> None:
    _ride_out(local_stack, tmp_path, "orthanc", "orthanc-outage", seed=300)


def test_thirty_uploads_ride_out_a_django_outage(local_stack, tmp_path) -> None:
    _ride_out(local_stack, tmp_path, "webhook-receiver", "django-outage", seed=400)


def test_a_dead_letter_is_recorded_counted_logged_and_replayed_once(local_stack, tmp_path, capsys) -> None:
    """The service is down longer than the inference subscription's budget: the message is
    dead-lettered. Once the service is back: a record beside the upload, an ERROR line, `make
    status` counts it and exits 1; the documented command replays it through the normal path."""
    log = _service_log(local_stack)
    start = len(log.read_text(errors="replace"))
    path, study = write_radiograph(tmp_path / "poison.dcm", seed=500)
    name = prefix("dead-letter") + "poison.dcm"
    _stop(local_stack, "inference-service")
    try:
        local_stack.gcloud_cp([path], f"gs://{local_stack.bucket}/{name}")

        def dead_lettered() -> bool:
            return any(
                m.get("attributes", {}).get("object") == name for m in local_stack.stack.dead_letters()
            )

        _wait(dead_lettered, 300, "the message to be dead-lettered")
    finally:
        local_stack.stack.restart("inference-service", timeout_s=300)
    record_name = name.removesuffix(".dcm") + ".dead-letter.json"
    _wait(lambda: record_name in local_stack.objects(name.rsplit("/", 1)[0]), 120, "the dead-letter record")
    record = json.loads(local_stack.objects(record_name)[record_name].download_as_bytes())
    assert record["schema"] == "dicom-dead-letter/1" and record["source"]["name"] == name
    assert DEAD_LETTER_SUBSCRIPTION in record["replay"]
    errors = [e for e in _lines(log, start) if e.get("severity") == "ERROR" and e.get("object") == name]
    assert any("dead-lettered" in e["message"] for e in errors)
    assert local_stack.webhooks_for(name) == []

    assert status_report(local_stack.stack) == 1  # what `make status` prints and exits with
    printed = capsys.readouterr().out
    assert "dead letters: 1 held" in printed and name in printed, printed
    assert "some components are not running" not in printed, printed

    env = {**os.environ, **local_stack.run_env()}
    replay = record["replay"].replace("python", sys.executable, 1).split()
    done = subprocess.run(replay, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = local_stack.outcomes({"poison": name}, timeout_s=120)["poison"]
    assert outcome.status == "completed"
    time.sleep(3)
    assert len(local_stack.webhooks_for(name)) == 1
    assert instances(local_stack, study) == expected_instances(outcome.record["dicom"])
    assert not [m for m in local_stack.stack.dead_letters() if m.get("attributes", {}).get("object") == name]
