"""The whole pipeline through the running local stack: real uploads with ``gcloud storage cp``
and ``gsutil cp``, fake-gcs-server notifications, the Eventarc stand-in, the ingest function
under functions-framework, the Pub/Sub emulator's push subscription, the inference service
under gunicorn and a signature-checking webhook receiver. Assertions are on what a user
would see: the webhook log and the objects written next to the upload."""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from devkit.synthetic import make_radiograph, to_dicom_dataset
from gpu_service.inference.explain import Explanation
from gpu_service.results.webhook_signature import idempotency_key
from infra.local.emulators import create_subscription, pull
from infra.local.eventarc_bridge import deliver, notification_to_cloudevent
from pipeline_common import naming

pytestmark = pytest.mark.e2e

ARTIFACTS = {
    naming.MASK_SUFFIX: "mask",
    naming.OVERLAY_SUFFIX: "overlay",
    naming.HEATMAP_SUFFIX: "heatmap",
    naming.RESULT_SUFFIX: "result",
    naming.SEG_SUFFIX: "seg",
    naming.SR_SUFFIX: "sr",
}
if "pixel_weights" in Explanation.__dataclass_fields__:  # the explanation's weight map, as a SEG too
    ARTIFACTS[naming.HEATMAP_SEG_SUFFIX] = "heatmap"


def write_radiograph(path: Path, seed: int, nodule: bool = True, size: int = 192) -> Path:
    sample = make_radiograph(np.random.default_rng(seed), size=size, nodule=nodule)
    to_dicom_dataset(sample.image, modality="DX").save_as(path, enforce_file_format=True)
    return path


def write_corrupt_jpeg(path: Path) -> Path:
    """A valid header over JPEG pixel data that is noise after its first marker: only decoding can tell."""
    sample = make_radiograph(np.random.default_rng(7), size=128)
    ds = to_dicom_dataset(sample.image, modality="DX", bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + np.random.default_rng(8).bytes(3000)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def settle(seconds: float = 5.0) -> None:
    """Give a duplicate delivery time to show up before asserting "exactly once"."""
    time.sleep(seconds)


def run_prefix(what: str) -> str:
    return f"e2e/{what}-{uuid.uuid4().hex[:8]}/"


def test_stack_env_file_is_what_a_user_sources(local_stack):
    """``source .local/stack.env`` alone sends gcloud storage and gsutil to the local bucket."""
    script = (
        f"source {local_stack.stack.config.env_file} && "
        "gcloud storage ls gs://$UPLOAD_BUCKET/ >/dev/null && gsutil ls gs://$UPLOAD_BUCKET/ >/dev/null && "
        "echo $SERVICE_URL $WEBHOOK_CONTROL_URL $FUNCTION_URL $WEBHOOK_LOG"
    )
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "BOTO_", "STORAGE_", "PUBSUB_"))
    }
    done = subprocess.run(
        ["bash", "-c", script],
        env=clean,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    service, control, function, webhook_log = done.stdout.split()
    assert requests.get(service + "/readyz", timeout=10).status_code == 200
    assert requests.get(control, timeout=10).json()["log"] == webhook_log
    assert requests.get(function, timeout=10).status_code < 500


def test_good_image_gives_one_completed_webhook_and_three_artifacts(local_stack, tmp_path):
    prefix = run_prefix("good")
    name = prefix + "chest.dcm"
    local_stack.gcloud_cp(
        [write_radiograph(tmp_path / "chest.dcm", seed=1)], f"gs://{local_stack.bucket}/{name}"
    )

    outcome = local_stack.outcomes({"chest": name})["chest"]
    assert outcome.status == "completed", outcome.record.get("error")
    settle()
    hooks = local_stack.webhooks_for(name)
    assert len(hooks) == 1
    body, headers = hooks[0]["body"], hooks[0]["headers"]

    objects = local_stack.objects(prefix)
    source = objects[name]
    stem = naming.stem(name)
    assert body["schema"] == "dicom-inference-result/1"
    assert body["source"] == {
        "bucket": local_stack.bucket,
        "name": name,
        "uri": f"gs://{local_stack.bucket}/{name}",
        "generation": str(source.generation),
    }
    assert body["correlation_id"] == naming.correlation_id(local_stack.bucket, name, source.generation)
    assert headers["x-correlation-id"] == body["correlation_id"]
    assert headers["webhook-id"] == idempotency_key(
        local_stack.bucket, name, source.generation, body["model"]["sha256"]
    )
    assert body["study_modality"] == "DX"
    assert body["prediction"]["label"] in body["prediction"]["scores"]
    assert 0.0 <= body["prediction"]["score"] <= 1.0
    assert body["explanation"]["method"] == "lime"
    assert body["explanation"]["mask_uri"] == f"gs://{local_stack.bucket}/{stem}{naming.MASK_SUFFIX}"
    assert body["explanation"]["overlay_uri"] == f"gs://{local_stack.bucket}/{stem}{naming.OVERLAY_SUFFIX}"
    assert body["explanation"]["heatmap_uri"] == f"gs://{local_stack.bucket}/{stem}{naming.HEATMAP_SUFFIX}"
    assert 0.0 <= body["explanation"]["stability"] <= 1.0 and body["explanation"]["samples_used"] >= 1

    # The artifacts beside the upload, marked as pipeline outputs of this very generation.
    for suffix, role in ARTIFACTS.items():
        blob = objects.get(stem + suffix)
        assert blob is not None, f"missing {stem + suffix}"
        assert blob.metadata[naming.MARKER_KEY] == role
        assert (
            blob.metadata["dicom-pipeline-source"] == f"gs://{local_stack.bucket}/{name}#{source.generation}"
        )
        assert blob.metadata["dicom-pipeline-correlation-id"] == body["correlation_id"]
    assert json.loads(objects[stem + naming.RESULT_SUFFIX].download_as_bytes()) == body
    mask = Image.open(io.BytesIO(objects[stem + naming.MASK_SUFFIX].download_as_bytes()))
    assert mask.size == (192, 192), "the mask is at the original resolution"
    assert np.asarray(mask).any(), "LIME highlighted something"
    # The outputs did not trigger the pipeline again: nothing else appeared (no rejection of an output).
    assert set(objects) == {name, stem + naming.PREVIEW_SUFFIX, *(stem + s for s in ARTIFACTS)}

    # Django holds exactly one row for it, with the prediction that was sent.
    with sqlite3.connect(local_stack.root / "results.sqlite3") as db:
        rows = db.execute(
            "select webhook_id, status, label, score, overlay_uri from dicom_results_inferenceresult"
            " where source_uri = ? and source_generation = ?",
            (body["source"]["uri"], str(source.generation)),
        ).fetchall()
    prediction = body["prediction"]
    assert rows == [(headers["webhook-id"], "completed", prediction["label"], prediction["score"],
                     body["explanation"]["overlay_uri"])]  # fmt: skip
    # The captured delivery (stored bytes, recorded headers) replayed: a duplicate as it is,
    # refused under another webhook-id (the id is signed).
    raw = objects[stem + naming.RESULT_SUFFIX].download_as_bytes()
    signed = {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type")}
    url = local_stack.env["WEBHOOK_URL"]
    assert requests.post(url, data=raw, headers=signed, timeout=30).status_code == 200
    replay = {**signed, "webhook-id": "0" * 64}
    assert requests.post(url, data=raw, headers=replay, timeout=30).status_code == 401


def test_non_dicom_upload_gives_rejection_record_and_no_webhook(local_stack, tmp_path):
    prefix = run_prefix("not-dicom")
    name = prefix + "letter.dcm"
    letter = tmp_path / "letter.dcm"
    letter.write_text("Dear colleague, please find the images attached.\n" * 20)
    local_stack.gcloud_cp([letter], f"gs://{local_stack.bucket}/{name}")

    outcome = local_stack.outcomes({"letter": name})["letter"]
    assert outcome.status == "rejected"
    record = outcome.record
    assert record["schema"] == "dicom-rejection/1"
    assert record["status"] == "rejected"
    assert record["reason"] == "not_dicom"
    assert record["source"]["name"] == name
    rejection = local_stack.objects(prefix)[naming.output_name(name, naming.REJECTION_SUFFIX)]
    assert rejection.metadata[naming.MARKER_KEY] == "rejection"
    settle()
    assert local_stack.webhooks_for(name) == []
    assert sorted(local_stack.objects(prefix)) == sorted(
        [name, naming.output_name(name, naming.REJECTION_SUFFIX)]
    )


def test_corrupt_image_gives_a_failed_webhook(local_stack, tmp_path):
    prefix = run_prefix("corrupt")
    name = prefix + "broken.dcm"
    local_stack.gcloud_cp([write_corrupt_jpeg(tmp_path / "broken.dcm")], f"gs://{local_stack.bucket}/{name}")

    outcome = local_stack.outcomes({"broken": name})["broken"]
    assert outcome.status == "failed"
    assert outcome.record["error"]["code"] == "decode_failed"
    assert outcome.record["prediction"] is None
    settle()
    assert len(local_stack.webhooks_for(name)) == 1
    result = local_stack.objects(prefix).get(naming.output_name(name, naming.RESULT_SUFFIX))
    assert result is not None and json.loads(result.download_as_bytes())["status"] == "failed"


def test_twenty_uploads_at_once_each_arrive_exactly_once(local_stack, tmp_path):
    prefix = run_prefix("burst")
    folder = tmp_path / "burst"
    folder.mkdir()
    files = [
        write_radiograph(folder / f"img-{i:02d}.dcm", seed=100 + i, nodule=i % 2 == 0) for i in range(20)
    ]
    started = time.monotonic()
    local_stack.gcloud_cp(files, f"gs://{local_stack.bucket}/{prefix}")  # one command, parallel uploads

    names = {p.name: prefix + p.name for p in files}
    outcomes = local_stack.outcomes(names, timeout_s=480)
    elapsed = time.monotonic() - started
    print(f"\n20 uploads -> 20 webhooks in {elapsed:.0f}s")
    assert {o.status for o in outcomes.values()} == {"completed"}
    settle(10)
    for name in names.values():
        assert len(local_stack.webhooks_for(name)) == 1, name
    keys = [h["headers"]["webhook-id"] for n in names.values() for h in local_stack.webhooks_for(n)]
    assert len(set(keys)) == 20


def test_webhook_that_fails_twice_ends_with_exactly_one_delivery(local_stack, tmp_path):
    """Uploaded with ``gsutil cp`` (BOTO_CONFIG to fake-gcs-server over https)."""
    prefix = run_prefix("retry")
    name = prefix + "retry.dcm"
    assert local_stack.control(fail_next=2, match=name)["fail_next"] == 2
    local_stack.gsutil_cp(
        write_radiograph(tmp_path / "retry.dcm", seed=3), f"gs://{local_stack.bucket}/{name}"
    )

    outcome = local_stack.outcomes({"retry": name})["retry"]
    assert outcome.status == "completed"
    settle()
    hooks = local_stack.webhooks_for(name)
    assert len(hooks) == 1
    key = hooks[0]["headers"]["webhook-id"]
    mine = [a for a in local_stack.attempts() if a["webhook_id"] == key]
    assert [a["outcome"] for a in mine] == ["injected_failure", "injected_failure", "accepted"]
    assert local_stack.control()["fail_next"] == 0


def test_webhook_down_longer_than_the_service_retries_is_redelivered_by_pubsub(local_stack, tmp_path):
    """The service gives up after WEBHOOK_MAX_ATTEMPTS (5) and answers the push with 5xx; Pub/Sub
    redelivers and the stored record is sent again, so the result still arrives, once."""
    prefix = run_prefix("redeliver")
    name = prefix + "late.dcm"
    assert local_stack.control(fail_next=6, match=name)["fail_next"] == 6
    local_stack.gcloud_cp(
        [write_radiograph(tmp_path / "late.dcm", seed=4)], f"gs://{local_stack.bucket}/{name}"
    )

    outcome = local_stack.outcomes({"late": name}, timeout_s=180)["late"]
    assert outcome.status == "completed"
    settle()
    hooks = local_stack.webhooks_for(name)
    assert len(hooks) == 1
    key = hooks[0]["headers"]["webhook-id"]
    mine = [a["outcome"] for a in local_stack.attempts() if a["webhook_id"] == key]
    assert mine == ["injected_failure"] * 6 + ["accepted"]
    # One result object, the one that was delivered.
    stored = local_stack.objects(prefix)[naming.output_name(name, naming.RESULT_SUFFIX)]
    assert json.loads(stored.download_as_bytes()) == hooks[0]["body"]


def test_the_same_notification_twice_gives_one_webhook(local_stack, tmp_path):
    """Cloud Storage notifications and Eventarc are at least once: the same upload announced
    again (a re-published notification, and one CloudEvent posted twice to the function) must
    not reach Django as a second result."""
    host, project = local_stack.env["PUBSUB_EMULATOR_HOST"], local_stack.env["GOOGLE_CLOUD_PROJECT"]
    capture = f"e2e-capture-{uuid.uuid4().hex[:8]}"
    create_subscription(host, project, capture, local_stack.env["NOTIFY_TOPIC"])
    try:
        prefix = run_prefix("duplicate")
        name = prefix + "twice.dcm"
        local_stack.gcloud_cp(
            [write_radiograph(tmp_path / "twice.dcm", seed=5)], f"gs://{local_stack.bucket}/{name}"
        )
        outcome = local_stack.outcomes({"twice": name})["twice"]
        assert outcome.status == "completed", outcome.record.get("error")
        settle()
        assert len(local_stack.webhooks_for(name)) == 1

        notification = None
        deadline = time.monotonic() + 30
        while notification is None and time.monotonic() < deadline:
            for message in pull(host, project, capture):
                attributes = message.get("attributes") or {}
                if attributes.get("objectId") == name and attributes.get("eventType") == "OBJECT_FINALIZE":
                    notification = message
            time.sleep(0.5)
        assert notification is not None, "fake-gcs-server's notification was not captured"

        # The notification again, through the emulator, the Eventarc stand-in and the function ...
        topic = f"http://{host}/v1/projects/{project}/topics/{local_stack.env['NOTIFY_TOPIC']}:publish"
        again = {"data": notification["data"], "attributes": notification["attributes"]}
        requests.post(topic, json={"messages": [again]}, timeout=10).raise_for_status()
        # ... and one CloudEvent delivered twice (same id), as an Eventarc redelivery would.
        event = notification_to_cloudevent(notification)
        assert event is not None
        for _ in range(2):
            assert 200 <= deliver(event, local_stack.env["FUNCTION_URL"], 30) < 300

        settle(15)
        hooks = local_stack.webhooks_for(name)
        assert [h["body"]["status"] for h in hooks] == ["completed"], (
            f"{len(hooks)} webhooks for one upload announced three times"
        )
    finally:
        requests.delete(f"http://{host}/v1/projects/{project}/subscriptions/{capture}", timeout=10)


def test_nothing_reached_the_dead_letter_topic(local_stack):
    assert local_stack.dead_letters() == []


def test_unprocessable_message_is_dead_lettered_not_retried_forever(local_stack):
    """A message the service can never process is refused, retried by the subscription's policy,
    then kept on the dead-letter topic: no crash loop, nothing silently dropped."""
    host, project = local_stack.env["PUBSUB_EMULATOR_HOST"], local_stack.env["GOOGLE_CLOUD_PROJECT"]
    marker = uuid.uuid4().hex
    data = base64.b64encode(json.dumps({"schema": "not-a-request", "marker": marker}).encode()).decode()
    topic = f"http://{host}/v1/projects/{project}/topics/{local_stack.env['INFERENCE_TOPIC']}:publish"
    requests.post(topic, json={"messages": [{"data": data}]}, timeout=10).raise_for_status()

    deadline = time.monotonic() + 180
    found = []
    while time.monotonic() < deadline and not found:
        time.sleep(2)
        found = [
            m for m in local_stack.dead_letters() if marker in base64.b64decode(m["message"]["data"]).decode()
        ]
    assert found, "the unprocessable message never reached the dead-letter topic"
