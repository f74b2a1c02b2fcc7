"""The local stack's own pieces, each with real neighbours: the Eventarc stand-in between
fake-gcs-server notifications in the Pub/Sub emulator and a real functions-framework CloudEvent
function. (The webhook target, Django, is tested in test_results_site.py.)"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import functions_framework
import pytest
import requests
from werkzeug.serving import make_server as make_wsgi_server

from infra.local import eventarc_bridge
from infra.local.emulators import (
    FakeGcsServer,
    create_subscription,
    create_topic,
    gcloud_storage_env,
    port_is_free,
    private_gcloud_env,
)
from infra.local.stack import Ports, Stack, StackConfig, StackError
from infra.local.stack_config import ephemeral_range
from tests.conftest import PROJECT, unique
from tests.support import REPO

pytestmark = pytest.mark.slow  # starts servers


def _serve(server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    env = {**private_gcloud_env(tmp_path / "gcloud"), **gcloud_storage_env(gcs)}
    subprocess.run(
        ["gcloud", "storage", "cp", str(upload), "gs://uploads/in/x.dcm"],
        env=env,
        stdin=subprocess.DEVNULL,
        check=True,
        capture_output=True,
        timeout=120,
    )

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (events.exists() and events.read_text().strip()):
        time.sleep(0.2)
    time.sleep(4)  # a duplicate delivery would show up by now
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


@pytest.mark.parametrize(
    ("value", "on_the_wire"),
    [
        # The CloudEvents HTTP binding's own example, then what object names bring.
        ("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
        (
            "objects/wards/응급실 A/환자 01.DCM",
            "objects/wards/%EC%9D%91%EA%B8%89%EC%8B%A4%20A/%ED%99%98%EC%9E%90%2001.DCM",
        ),
        ('objects/a#b?c[1]*d+e%20"f', "objects/a#b?c[1]*d+e%2520%22f"),
        ("plain/ascii-name.dcm", "plain/ascii-name.dcm"),
    ],
)
def test_cloudevent_header_values_are_percent_encoded_as_the_http_binding_says(value, on_the_wire):
    assert eventarc_bridge.encode_header_value(value) == on_the_wire
    assert urllib.parse.unquote(on_the_wire) == value
    on_the_wire.encode("ascii")  # what http.client will accept


def _notification(bucket: str, name: str, message_id: str = "41") -> dict:
    data = {"bucket": bucket, "name": name, "generation": "1700000000000001", "size": "400"}
    attributes = {"eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1", "bucketId": bucket,
                  "objectId": name}  # fmt: skip
    message = {"messageId": message_id, "attributes": attributes,
               "data": base64.b64encode(json.dumps(data).encode()).decode()}  # fmt: skip
    return {"message": message, "subscription": "projects/p/subscriptions/s"}


def test_bridge_delivers_any_object_name_exactly(cloudevent_function):
    """A Unicode name with spaces and URL characters reaches a real function intact in the data;
    the two failures the function makes first leave it pending, as the emulator redelivers."""
    function_url, events = cloudevent_function
    bridge = eventarc_bridge.make_server(eventarc_bridge.BridgeSettings(target_url=function_url, port=0))
    _serve(bridge)
    name = "wards/응급실 A/환자 01#2?x[1]*%41+.DCM"
    url = f"http://127.0.0.1:{bridge.server_port}"
    try:
        answers = [
            requests.post(url, json=_notification("b", name), timeout=30).status_code for _ in range(2)
        ]
        pending = requests.get(url + "/stats", timeout=10).json()["pending"]
        answers.append(requests.post(url, json=_notification("b", name), timeout=30).status_code)
        stats = requests.get(url + "/stats", timeout=10).json()
    finally:
        bridge.shutdown()
    assert answers == [502, 502, 204] and pending == 1
    (received,) = _lines(events)
    assert received["data"]["name"] == name
    assert urllib.parse.unquote(received["attributes"]["subject"]) == "objects/" + name
    assert (stats["delivered"], stats["pending"], stats["failed"]) == (1, 0, 0)


class _Refusing(BaseHTTPRequestHandler):
    status = 400

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(
    ("function_status", "bridge_answer", "failed", "pending"), [(400, 204, 1, 0), (503, 502, 0, 1)]
)
def test_bridge_gives_up_loudly_on_what_can_never_succeed(
    capsys, function_status, bridge_answer, failed, pending
):
    """A 4xx from the function is an ERROR naming the object and a failed event, never a silent retry loop;
    a 5xx stays pending, to be redelivered."""
    handler = type("Handler", (_Refusing,), {"status": function_status})
    function = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    _serve(function)
    bridge = eventarc_bridge.make_server(
        eventarc_bridge.BridgeSettings(target_url=f"http://127.0.0.1:{function.server_port}/", port=0)
    )
    _serve(bridge)
    name = "wards/응급실 A/환자 02.dcm"
    try:
        answer = requests.post(
            f"http://127.0.0.1:{bridge.server_port}/", json=_notification("b", name), timeout=30
        )
        stats = requests.get(f"http://127.0.0.1:{bridge.server_port}/stats", timeout=10).json()
    finally:
        bridge.shutdown()
        function.shutdown()
    assert answer.status_code == bridge_answer
    assert (stats["failed"], stats["pending"]) == (failed, pending)
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    if failed:
        (error,) = [line for line in logged if line["severity"] == "ERROR"]
        assert error["object"] == f"gs://b/{name}" and "HTTP 400" in error["reason"]
        assert stats["failures"] == [
            {"event_id": "41", "object": f"gs://b/{name}", "reason": error["reason"]}
        ]
    else:
        assert not [line for line in logged if line["severity"] == "ERROR"]


def test_bridge_gives_up_at_the_dead_letter_limit(capsys):
    handler = type("Handler", (_Refusing,), {"status": 503})
    function = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    _serve(function)
    settings = eventarc_bridge.BridgeSettings(
        target_url=f"http://127.0.0.1:{function.server_port}/", port=0, max_attempts=3
    )
    bridge = eventarc_bridge.make_server(settings)
    _serve(bridge)
    try:
        for attempt in (1, 2, 3):
            envelope = {**_notification("b", "x.dcm"), "deliveryAttempt": attempt}
            answer = requests.post(f"http://127.0.0.1:{bridge.server_port}/", json=envelope, timeout=30)
            assert answer.status_code == 502, (
                "refused, so that Pub/Sub keeps it (redelivery, then dead letter)"
            )
        stats = requests.get(f"http://127.0.0.1:{bridge.server_port}/stats", timeout=10).json()
    finally:
        bridge.shutdown()
        function.shutdown()
    assert (stats["pending"], stats["failed"]) == (0, 1)
    assert "dead-letter" in stats["failures"][0]["reason"]


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


# ---- the stack's own process handling ----------------------------------------------------------


def test_free_ports_are_distinct_free_and_outside_the_ephemeral_range():
    low, high = ephemeral_range()
    for _ in range(5):
        ports = [port for _, port in Ports.free().items()]
        assert len(set(ports)) == len(ports)
        assert all(port_is_free(p) for p in ports)
        if low > 21000:
            assert all(not low <= p <= high for p in ports), ports


def test_children_see_the_stack_values_not_the_developers_shell(tmp_path, monkeypatch):
    for name, value in {
        "MODEL_URI": "/home/me/model-best.h5",
        "OUTPUT_BUCKET": "prod-results",
        "LIME_NUM_SAMPLES": "5000",
        "WEBHOOK_URL": "https://prod.example/hook",
        "PUSH_AUDIENCE": "https://prod.example",
        "ALLOWED_MODALITIES": "CT",
        "CLOUDSDK_CORE_ACCOUNT": "me@example.com",
        "LANG": "C.UTF-8",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_SERVICE_ENV", raising=False)
    monkeypatch.delenv("LOCAL_FUNCTION_ENV", raising=False)
    stack = Stack(StackConfig(root=tmp_path, ports=Ports.free()))
    env = stack._child_env({"PORT": "1"})
    for leaked in ("MODEL_URI", "OUTPUT_BUCKET", "LIME_NUM_SAMPLES", "PUSH_AUDIENCE", "ALLOWED_MODALITIES"):
        assert leaked not in env, leaked
    assert env["WEBHOOK_URL"] == stack.env()["WEBHOOK_URL"]
    assert env["CLOUDSDK_CONFIG"] == str(tmp_path / "gcloud") and "CLOUDSDK_CORE_ACCOUNT" not in env
    assert env["PATH"] == os.environ["PATH"] and env["LANG"] == "C.UTF-8" and env["PORT"] == "1"

    # `make up`/`make demo`: only the documented overrides get through.
    monkeypatch.setenv("LOCAL_SERVICE_ENV", "LIME_NUM_SAMPLES=200 LOG_LEVEL=DEBUG")
    monkeypatch.setenv("LOCAL_FUNCTION_ENV", "ALLOWED_MODALITIES='DX,CR'")
    config = StackConfig.from_env(tmp_path)
    assert config.service_env == {
        "MODEL_URI": "/home/me/model-best.h5",
        "LIME_NUM_SAMPLES": "200",
        "LOG_LEVEL": "DEBUG",
    }
    assert config.function_env == {"ALLOWED_MODALITIES": "DX,CR"}
    monkeypatch.setenv("LOCAL_FUNCTION_ENV", "not-an-assignment")
    with pytest.raises(StackError, match="LOCAL_FUNCTION_ENV"):
        StackConfig.from_env(tmp_path)


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _sleeper_stack(tmp_path: Path) -> Stack:
    stack = Stack(StackConfig(root=tmp_path, ports=Ports.free()))
    stack.config.log_dir.mkdir(parents=True, exist_ok=True)
    return stack


def test_down_stops_a_group_whose_leader_died(tmp_path):
    """The leader exits, its child (like java under gcloud) keeps running in the group: down stops it."""
    stack = _sleeper_stack(tmp_path)
    pid_file = tmp_path / "child.pid"
    cmd = ["bash", "-c", f"sleep 300 & echo $! > {pid_file}; exit 0"]
    leader, _ = stack._spawn("orphaned", cmd, stack._child_env({}), "http://127.0.0.1:1", "/")
    leader.wait(timeout=10)
    child = int(pid_file.read_text())
    assert not _gone(child, timeout=0.5), "the child outlived its leader"
    blocked = re.search(r"SigBlk:\s*([0-9a-f]+)", Path(f"/proc/{child}/status").read_text())
    assert blocked and int(blocked.group(1), 16) == 0, "children must not inherit blocked signals"
    assert [r["name"] for r in stack.running()] == ["orphaned"]
    assert stack.down() == ["orphaned"]
    assert _gone(child), "down() left the orphaned group running"


def test_a_failed_start_stops_the_children_already_started(tmp_path, monkeypatch):
    stack = _sleeper_stack(tmp_path)
    started: list[int] = []

    def start_all(self: Stack) -> None:
        proc, _ = self._spawn("first", ["sleep", "300"], self._child_env({}), "http://127.0.0.1:1", "/")
        started.append(proc.pid)
        self._spawn("second", ["/nonexistent/binary"], self._child_env({}), "http://127.0.0.1:2", "/")

    monkeypatch.setattr(Stack, "_start_all", start_all)
    with pytest.raises(FileNotFoundError):
        stack.up()
    assert started and _gone(started[0]), "the first child was left running"
    assert not stack.config.state_file.exists()


SIGTERM_SCRIPT = """
import sys, time
from pathlib import Path
from infra.local.stack import Ports, Stack, StackConfig, exit_on_termination

def start_all(self):
    for n in range(2):
        cmd = ["sleep", "300"]
        proc, _ = self._spawn(f"sleeper-{n}", cmd, self._child_env({}), "http://127.0.0.1:1", "/")
        print(proc.pid, flush=True)
    time.sleep(300)

Stack._start_all = start_all
exit_on_termination()
Stack(StackConfig(root=Path(sys.argv[1]), ports=Ports.free())).up()
"""


def test_sigterm_during_up_stops_every_child(tmp_path):
    """A CI timeout kills `make up` with SIGTERM: the children (own sessions) must not outlive it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, str(tmp_path / "root")],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        children = [int(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert all(_gone(pid) for pid in children), "a child outlived `up`"
        assert not (tmp_path / "root" / "stack.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
