"""The local stack's own pieces, each with real neighbours: the webhook receiver over HTTP, and
the Eventarc stand-in between fake-gcs-server notifications in the Pub/Sub emulator and a
real functions-framework CloudEvent function."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import functions_framework
import pytest
import requests
from werkzeug.serving import make_server as make_wsgi_server

from gpu_service.webhook_signature import signed_headers
from infra.local import eventarc_bridge, webhook_receiver
from infra.local.emulators import FakeGcsServer, create_subscription, create_topic, gcloud_storage_env
from infra.local.stack import Ports, Stack, StackConfig, StackError
from tests.conftest import PROJECT, unique

SECRET = "s3cret-for-tests"


def _serve(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    settings = webhook_receiver.ReceiverSettings(
        secret=SECRET, log_path=tmp_path / "hooks.jsonl", attempts_path=tmp_path / "attempts.jsonl", port=0
    )
    server = webhook_receiver.make_server(settings)
    _serve(server)
    yield f"http://127.0.0.1:{server.server_port}", settings.log_path, settings.attempts_path
    server.shutdown()
    server.server_close()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _post(url: str, body: dict, *, secret: str = SECRET, now: float | None = None, key: str = "k1"):
    raw = json.dumps(body).encode()
    headers = signed_headers(secret, raw, idempotency=key, correlation_id="c" * 32, now=now)
    return requests.post(url + "/webhook", data=raw, headers=headers, timeout=10)


def test_receiver_records_signed_calls_and_refuses_bad_ones(receiver):
    url, log, attempts = receiver
    body = {"status": "completed", "correlation_id": "c" * 32}
    assert _post(url, body).status_code == 200
    assert _post(url, body, secret="wrong").status_code == 401
    assert _post(url, body, now=time.time() - 3600).status_code == 401  # outside the replay window
    unsigned = requests.post(url + "/webhook", json=body, timeout=10)
    assert unsigned.status_code == 401

    records = _lines(log)
    assert len(records) == 1
    assert records[0]["body"] == body
    assert records[0]["headers"]["Idempotency-Key"] == "k1"
    assert set(records[0]) == {"received_at", "headers", "body"}
    assert [a["status"] for a in _lines(attempts)] == [200, 401, 401, 401]


def test_receiver_fails_on_request_then_accepts(receiver):
    url, log, attempts = receiver
    control = requests.post(url + "/_control", json={"fail_next": 2}, timeout=10).json()
    assert control["fail_next"] == 2
    statuses = [_post(url, {"n": i}, key="same").status_code for i in range(3)]
    assert statuses == [503, 503, 200]
    assert [r["body"] for r in _lines(log)] == [{"n": 2}]
    assert [(a["status"], a["outcome"]) for a in _lines(attempts)] == [
        (503, "injected_failure"),
        (503, "injected_failure"),
        (200, "accepted"),
    ]
    assert requests.get(url + "/_control", timeout=10).json()["fail_next"] == 0


def test_receiver_writes_whole_lines_under_concurrency(receiver):
    url, log, _ = receiver
    threads = [threading.Thread(target=_post, args=(url, {"n": i, "pad": "x" * 5000})) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["body"]["n"] for r in _lines(log)) == list(range(20))


# ---- Eventarc stand-in -------------------------------------------------------------------------

FUNCTION_SOURCE = """
import json, os
import functions_framework

FAILS = {"left": int(os.environ.get("DUMMY_FAIL_FIRST", "0"))}

@functions_framework.cloud_event
def record(event):
    if FAILS["left"] > 0:
        FAILS["left"] -= 1
        raise RuntimeError("failing on purpose")
    with open(os.environ["DUMMY_EVENTS"], "a") as out:
        out.write(json.dumps({"attributes": dict(event.get_attributes()), "data": event.get_data()}) + "\\n")
"""


@pytest.fixture
def cloudevent_function(tmp_path: Path, monkeypatch) -> Iterator[tuple[str, Path]]:
    """A real functions-framework CloudEvent function that records what it receives and fails twice."""
    source = tmp_path / "dummy_main.py"
    source.write_text(FUNCTION_SOURCE)
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("DUMMY_EVENTS", str(events))
    monkeypatch.setenv("DUMMY_FAIL_FIRST", "2")
    app = functions_framework.create_app(target="record", source=str(source), signature_type="cloudevent")
    server = make_wsgi_server("127.0.0.1", 0, app, threaded=True)
    _serve(server)
    yield f"http://127.0.0.1:{server.server_port}/", events
    server.shutdown()


@pytest.fixture
def notifying_gcs(pubsub_emulator, tmp_path: Path) -> Iterator[tuple[FakeGcsServer, str]]:
    topic = unique("notify")
    create_topic(pubsub_emulator.host, PROJECT, topic)
    server = FakeGcsServer(
        notify_project=PROJECT, notify_topic=topic, pubsub_host=pubsub_emulator.host, workdir=tmp_path / "gcs"
    ).start()
    yield server, topic
    server.stop()


def test_bridge_turns_notifications_into_finalized_cloudevents_with_retries(
    pubsub_emulator, notifying_gcs, cloudevent_function, tmp_path
):
    gcs, topic = notifying_gcs
    function_url, events = cloudevent_function
    bridge = eventarc_bridge.make_server(eventarc_bridge.BridgeSettings(target_url=function_url, port=0))
    _serve(bridge)
    create_subscription(
        pubsub_emulator.host, PROJECT, unique("bridge"), topic,
        push_endpoint=f"http://127.0.0.1:{bridge.server_port}/", min_backoff_s=1, max_backoff_s=2,
    )  # fmt: skip
    gcs.create_bucket("uploads")
    upload = tmp_path / "x.dcm"
    upload.write_bytes(b"DICM" * 100)
    env = {**os.environ, **gcloud_storage_env(gcs), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}
    subprocess.run(
        ["gcloud", "storage", "cp", str(upload), "gs://uploads/in/x.dcm"],
        env=env,
        check=True,
        capture_output=True,
    )

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (events.exists() and events.read_text().strip()):
        time.sleep(0.2)
    bridge.shutdown()
    received = _lines(events)
    assert len(received) == 1, "the function failed twice; the emulator must redeliver until it succeeds"
    attributes, data = received[0]["attributes"], received[0]["data"]
    assert attributes["type"] == "google.cloud.storage.object.v1.finalized"
    assert attributes["source"] == "//storage.googleapis.com/projects/_/buckets/uploads"
    assert attributes["subject"] == "objects/in/x.dcm"
    assert attributes["specversion"] == "1.0"
    assert attributes["id"]
    assert data["bucket"] == "uploads" and data["name"] == "in/x.dcm"
    assert isinstance(data["generation"], str) and int(data["generation"]) > 0
    assert data["size"] == "400"


def test_bridge_ignores_notifications_outside_the_trigger():
    message = {
        "messageId": "7",
        "attributes": {
            "eventType": "OBJECT_DELETE",
            "payloadFormat": "JSON_API_V1",
            "bucketId": "b",
            "objectId": "o",
        },
        "data": base64.b64encode(json.dumps({"bucket": "b", "name": "o"}).encode()).decode(),
    }
    event = eventarc_bridge.notification_to_cloudevent(message)
    assert event is not None and event["type"] == "google.cloud.storage.object.v1.deleted"
    message["attributes"]["payloadFormat"] = "NONE"
    assert eventarc_bridge.notification_to_cloudevent(message) is None


def test_stack_refuses_a_busy_port_and_names_its_owner(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = dataclasses.replace(Ports.free(), webhook=port)
        owner = f"pid {os.getpid()}" if shutil.which("ss") else "another process"
        with pytest.raises(
            StackError, match=rf"port {port} \(webhook\) is in use by .*{owner}.*LOCAL_WEBHOOK_PORT"
        ):
            Stack(StackConfig(root=tmp_path, ports=ports)).up()
    assert not (tmp_path / "stack.json").exists(), "nothing was started"
