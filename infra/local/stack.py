"""The whole pipeline on one machine, with real components on loopback.

``python -m infra.local.stack up|down|status|check-ports`` (``make up``/``down``/``status``).

What ``up`` starts, in order, each in its own process group with its log under
``ROOT/logs/`` and its PID recorded in ``ROOT/stack.json``:

1. Google's Pub/Sub emulator (``gcloud beta emulators pubsub start``).
2. fake-gcs-server (http for ``gcloud storage``, https for ``gsutil``), publishing
   ``OBJECT_FINALIZE`` notifications of the upload bucket to the emulator.
3. The webhook receiver (stand-in Django), the inference service under gunicorn, the
   ingest function under functions-framework and the Eventarc stand-in.
4. Push subscriptions like production: notifications -> Eventarc stand-in -> function,
   and the inference topic -> service, each with a retry policy and a dead-letter topic.

Then it writes ``ROOT/stack.env`` (``export NAME=value`` lines) so that a shell, the
demo and the tests reach the same endpoints. ``down`` stops exactly the process groups
it recorded (after checking each PID still belongs to the process it started), including a
group whose leader died while its other members (java, gunicorn workers) hold ports.

The children see a clean environment (:data:`INHERITED_ENV`) plus the stack's own values:
a Cloud Run setting exported in the developer's shell never changes the local pipeline by
accident. Deliberate overrides: ``MODEL_URI`` (bring your own model) and
``LOCAL_SERVICE_ENV`` / ``LOCAL_FUNCTION_ENV`` (``"NAME=value NAME=value"``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import requests

from infra.local import orthanc
from infra.local.emulators import (
    LOOPBACK,
    EmulatorError,
    FakeGcsServer,
    PubSubEmulator,
    create_subscription,
    create_topic,
    free_port,
    gcloud_storage_env,
    port_is_free,
    process_group_exists,
    stop_process_group,
    wait_http,
    write_boto_config,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Names, as in production (infra/terraform): one place for the stack, the demo and the tests.
NOTIFY_TOPIC = "gcs-object-notifications"
NOTIFY_SUBSCRIPTION = "eventarc-ingest-dicom"
NOTIFY_DEAD_LETTER_TOPIC = "eventarc-ingest-dicom-dead-letter"
NOTIFY_ACK_DEADLINE_S = 60
# The bridge answers each push within the ack deadline: a delivery still running when the
# deadline passes would be pushed again while the first one is in flight.
BRIDGE_TIMEOUT_S = NOTIFY_ACK_DEADLINE_S - 15
INFERENCE_TOPIC = "dicom-inference-requests"
INFERENCE_SUBSCRIPTION = "dicom-inference-push"
DEAD_LETTER_TOPIC = "dicom-inference-dead-letter"
DEAD_LETTER_SUBSCRIPTION = "dicom-inference-dead-letter-hold"
WEBHOOK_PATH = "/webhook"

# What the children inherit from the shell that starts them: what a process needs to run
# (and to find a GPU), nothing that configures the pipeline. Names, or prefixes ending in "*".
INHERITED_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TEMP", "TMP",
    "PYTHON*", "VIRTUAL_ENV", "JAVA_HOME", "JAVA_TOOL_OPTIONS", "CLOUDSDK_PYTHON*",
    "LD_LIBRARY_PATH", "CUDA_*", "NVIDIA_*", "TF_*", "XLA_FLAGS", "OMP_NUM_THREADS",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
)  # fmt: skip
# Shell variables passed on deliberately (README, "Bring your own model").
SERVICE_PASSTHROUGH = ("MODEL_URI",)
WEBHOOK_PASSTHROUGH = ("WEBHOOK_FAIL_STATUS", "WEBHOOK_TOLERANCE_S")


def inherited_env(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    exact = {n for n in INHERITED_ENV if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in INHERITED_ENV if n.endswith("*"))
    return {k: v for k, v in environ.items() if k in exact or k.startswith(prefixes)}


def parse_env_list(raw: str, source: str) -> dict[str, str]:
    """``"A=1 B='two words'"`` (shell quoting) as a dict; anything else is a mistake worth stopping for."""
    out = {}
    for item in shlex.split(raw):
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise StackError(f"{source}: expected NAME=value items, got {item!r}")
        out[name] = value
    return out


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    """Loopback ports, each overridable with ``LOCAL_<NAME>_PORT``."""

    pubsub: int = 8085
    gcs: int = 9090
    gcs_https: int = 9443
    function: int = 8081
    service: int = 8082
    webhook: int = 8083
    bridge: int = 8084
    orthanc: int = 8086  # not 8042: the Debian package may run a system Orthanc there

    @classmethod
    def from_env(cls) -> Ports:
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"LOCAL_{f.name.upper()}_PORT")
            values[f.name] = int(raw) if raw else f.default
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports nobody uses now, for test stacks that must not collide with ``make up``.

        Drawn below the kernel's ephemeral range: a port the kernel hands out for outgoing
        connections (``free_port``) can be taken by any client between our check and the bind.
        """
        low, _ = ephemeral_range()
        candidates = list(range(20000, low)) if low > 21000 else []
        random.SystemRandom().shuffle(candidates)
        chosen: list[int] = []
        for port in candidates:
            if len(chosen) == len(fields(cls)):
                break
            if port not in chosen and port_is_free(port):
                chosen.append(port)
        while len(chosen) < len(fields(cls)):  # no room below the range: ask the kernel
            port = free_port()
            if port not in chosen:
                chosen.append(port)
        assert len(set(chosen)) == len(chosen)
        return cls(*chosen)

    def items(self) -> list[tuple[str, int]]:
        return list(asdict(self).items())


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


@dataclass(frozen=True)
class StackConfig:
    root: Path
    ports: Ports = field(default_factory=Ports)
    project: str = "local-project"
    bucket: str = "dicom-uploads"
    webhook_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    # Extra environment for the service, the function and the receiver (e.g. LIME_NUM_SAMPLES for a
    # fast test stack); nothing else from the caller's environment reaches them (INHERITED_ENV).
    service_env: dict[str, str] = field(default_factory=dict)
    function_env: dict[str, str] = field(default_factory=dict)
    webhook_env: dict[str, str] = field(default_factory=dict)
    webhook_fail_first: int = 0
    ready_timeout_s: float = 600.0
    # The DICOMweb store refuses STOW-RS to studies whose UID starts with this (tests).
    orthanc_refuse_study_prefix: str | None = None

    @classmethod
    def from_env(cls, root: Path | str = ".local") -> StackConfig:
        """``make up``/``make demo``: LOCAL_* settings, plus the deliberate overrides only."""
        service_env = {k: os.environ[k] for k in SERVICE_PASSTHROUGH if os.environ.get(k)}
        service_env.update(parse_env_list(os.environ.get("LOCAL_SERVICE_ENV", ""), "LOCAL_SERVICE_ENV"))
        function_env = parse_env_list(os.environ.get("LOCAL_FUNCTION_ENV", ""), "LOCAL_FUNCTION_ENV")
        webhook_env = {k: os.environ[k] for k in WEBHOOK_PASSTHROUGH if os.environ.get(k)}
        return cls(
            root=Path(root).resolve(),
            ports=Ports.from_env(),
            project=os.environ.get("LOCAL_PROJECT", "local-project"),
            bucket=os.environ.get("LOCAL_UPLOAD_BUCKET", "dicom-uploads"),
            webhook_secret=os.environ.get("LOCAL_WEBHOOK_SECRET") or secrets.token_hex(32),
            webhook_fail_first=int(os.environ.get("WEBHOOK_FAIL_FIRST", "0")),
            ready_timeout_s=float(os.environ.get("LOCAL_READY_TIMEOUT_S", "600")),
            service_env=service_env,
            function_env=function_env,
            webhook_env=webhook_env,
        )

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.root / "stack.env"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def webhook_log(self) -> Path:
        return self.root / "webhooks.jsonl"

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{getattr(self.ports, name)}"


def _write_private(path: Path, text: str) -> None:
    """Owner-only: these files hold the webhook secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``: a recycled PID has a different one, so we never kill a stranger."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(record: dict[str, Any]) -> bool:
    start = _proc_start_time(record["pid"])
    return start is not None and start == record.get("start_time")


def _owned(record: dict[str, Any]) -> bool:
    """Whether the recorded process group is still ours to stop: its leader is the process we
    started, or the leader is gone but members of its group remain. The kernel never reuses a
    PID that still names a process group, so such a group can only be the one we started; a
    different live process under the leader's PID is a stranger's."""
    if _alive(record):
        return True
    return _proc_start_time(record["pid"]) is None and process_group_exists(record["pid"])


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM/SIGHUP between starting a child and recording it, so no child is
    ever running unrecorded (and so never left behind by the cleanup); the first one to arrive
    is acted on afterwards. Python-level handlers, not a blocked signal mask: a child would
    inherit the mask and ignore the SIGTERM that ``down`` sends it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are only ever handled in the main thread
        return
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    pending: list[int] = []
    old = {sig: signal.getsignal(sig) for sig in held}
    for sig in held:
        signal.signal(sig, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if pending:
            handler = old[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler in (signal.SIG_DFL, None):
                signal.raise_signal(pending[0])


def exit_on_termination() -> None:
    """SIGTERM (a CI timeout, ``kill``) and SIGHUP (a closed terminal) raise SystemExit, like
    Ctrl-C raises KeyboardInterrupt, so ``up``'s and the demo's cleanup still stops every child
    (each runs in its own session and would outlive us). A second signal is ignored while the
    cleanup runs."""

    def handler(signum: int, _frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _wait_ok(url: str, deadline: float, proc: subprocess.Popen, log: Path) -> None:
    """Wait for a 200 (``/readyz`` answers 503 until the model is loaded and warmed up)."""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            answer = requests.get(url, timeout=5)
            if answer.status_code == 200:
                return
            failed = answer.headers.get("Content-Type", "").startswith("application/json") and (
                answer.json().get("status") == "failed"
            )
            if failed:  # the model will never load: say so now instead of at the deadline
                raise EmulatorError(f"{url}: {answer.json().get('error')}")
        except requests.RequestException:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise EmulatorError(f"{url} never answered 200\n{tail}")


def port_owner(port: int) -> str:
    """Who listens on ``port``, for a message a person can act on."""
    if shutil.which("ss"):
        out = subprocess.run(
            ["ss", "-H", "-ltnp", f"sport = :{port}"], capture_output=True, text=True, check=False
        ).stdout
        found = re.findall(r'\("([^"]+)",pid=(\d+)', out)
        if found:
            return ", ".join(f"{name} (pid {pid})" for name, pid in dict.fromkeys(found))
        if out.strip():
            return "another process (run `ss -ltnp` as its owner to see which)"
    return "another process"


def busy_ports(ports: Ports) -> list[str]:
    problems = []
    for name, port in ports.items():
        if not port_is_free(port):
            problems.append(
                f"port {port} ({name}) is in use by {port_owner(port)}: stop that process, "
                f"or pick another port with LOCAL_{name.upper()}_PORT=<port>"
            )
    return problems


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []

    # ---- state -------------------------------------------------------------------------------
    def _save(self) -> None:
        c = self.config
        state = {
            "project": c.project,
            "bucket": c.bucket,
            "ports": asdict(c.ports),
            "components": self.records,
            "env": self.env() if self.records else {},
        }
        _write_private(c.state_file, json.dumps(state, indent=2))

    def _load(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.config.state_file.read_text())
        except (OSError, ValueError):
            return None

    def _record(self, name: str, pid: int, url: str, health: str | None, log: Path) -> None:
        self.records.append(
            {
                "name": name,
                "pid": pid,
                "start_time": _proc_start_time(pid),
                "url": url,
                "health": health,
                "log": str(log),
            }
        )
        self._save()

    def running(self) -> list[dict[str, Any]]:
        state = self._load()
        return [r for r in (state or {}).get("components", []) if _owned(r)]

    # ---- environment -------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What a shell (``source .local/stack.env``), the demo and the tests need."""
        c = self.config
        gcs = FakeGcsServer(http_port=c.ports.gcs, https_port=c.ports.gcs_https)
        env = {
            "GOOGLE_CLOUD_PROJECT": c.project,
            "PUBSUB_EMULATOR_HOST": f"{LOOPBACK}:{c.ports.pubsub}",
            "STORAGE_EMULATOR_HOST": gcs.endpoint,
            "UPLOAD_BUCKET": c.bucket,
            "INFERENCE_TOPIC": INFERENCE_TOPIC,
            "INFERENCE_SUBSCRIPTION": INFERENCE_SUBSCRIPTION,
            "DEAD_LETTER_SUBSCRIPTION": DEAD_LETTER_SUBSCRIPTION,
            "NOTIFY_TOPIC": NOTIFY_TOPIC,
            "WEBHOOK_LOG": str(c.webhook_log),
            "WEBHOOK_ATTEMPTS_LOG": str(c.webhook_log.with_suffix(".attempts.jsonl")),
            "WEBHOOK_URL": c.url("webhook") + WEBHOOK_PATH,
            "WEBHOOK_CONTROL_URL": c.url("webhook") + "/_control",
            "WEBHOOK_SECRET": c.webhook_secret,
            "SERVICE_URL": c.url("service"),
            "FUNCTION_URL": c.url("function"),
            "BRIDGE_URL": c.url("bridge"),
            **orthanc.urls(c.url("orthanc")),
            "LOCAL_LOG_DIR": str(c.log_dir),
            **gcloud_storage_env(gcs),
            "CLOUDSDK_CORE_PROJECT": c.project,
            # A gcloud configuration of its own: the user's accounts and settings stay out of it.
            "CLOUDSDK_CONFIG": str(c.root / "gcloud"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "BOTO_CONFIG": str(c.root / "boto.cfg"),
        }
        return env

    def _child_env(self, extra: dict[str, str]) -> dict[str, str]:
        """The process basics (:data:`INHERITED_ENV`), the stack's values, then ``extra``."""
        env = inherited_env(os.environ)
        env.update(self.env())
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "functions"), str(REPO)])
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def _spawn(
        self, name: str, cmd: list[str], env: dict[str, str], url: str, health: str
    ) -> tuple[subprocess.Popen, Path]:
        """Start one child in its own session and record it at once (signals held in between)."""
        log = self.config.log_dir / f"{name}.log"
        with log.open("ab") as out, signals_deferred():
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._record(name, proc.pid, url, health, log)
        return proc, log

    # ---- up / down / status ------------------------------------------------------------------
    def up(self) -> dict[str, str]:
        c = self.config
        if self.running():
            raise StackError(
                f"a local stack is already running from {c.root} (see `make status`; `make down` stops it)"
            )
        problems = busy_ports(c.ports)
        if problems:
            raise StackError("cannot start the local stack:\n  " + "\n  ".join(problems))
        c.root.mkdir(parents=True, exist_ok=True)
        c.log_dir.mkdir(parents=True, exist_ok=True)
        (c.root / "gcloud").mkdir(exist_ok=True)
        c.env_file.unlink(missing_ok=True)
        # The webhook logs describe this stack's run (fake-gcs-server keeps objects in memory only).
        for log in (c.webhook_log, c.webhook_log.with_suffix(".attempts.jsonl")):
            log.unlink(missing_ok=True)
        shutil.rmtree(c.root / "orthanc", ignore_errors=True)  # the DICOMweb store too
        self.records = []
        try:
            self._start_all()
        except BaseException:
            self.down()
            raise
        env = self.env()
        _write_private(
            c.env_file,
            "# Written by `make up`: source it to reach the local stack.\n"
            + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()),
        )
        return env

    def _start_all(self) -> None:
        c = self.config
        t0 = time.monotonic()
        pubsub = PubSubEmulator(project=c.project, port=c.ports.pubsub, workdir=c.root / "pubsub")
        try:  # stopped here until recorded; from then on, by down()
            pubsub.start()
            assert pubsub.proc is not None
            self._link_log(c.root / "pubsub" / "pubsub-emulator.log", "pubsub-emulator")
            with signals_deferred():
                self._record(
                    "pubsub-emulator",
                    pubsub.proc.pid,
                    f"http://{pubsub.host}",
                    "/",
                    c.log_dir / "pubsub-emulator.log",
                )
        except BaseException:
            if not self.records:
                pubsub.stop()
            raise
        for topic in (NOTIFY_TOPIC, NOTIFY_DEAD_LETTER_TOPIC, INFERENCE_TOPIC, DEAD_LETTER_TOPIC):
            create_topic(pubsub.host, c.project, topic)
        # Dead letters are kept (a pull subscription nobody acknowledges) so that they can be inspected.
        create_subscription(
            pubsub.host, c.project, DEAD_LETTER_SUBSCRIPTION, DEAD_LETTER_TOPIC, ack_deadline_s=60
        )
        create_subscription(
            pubsub.host, c.project, NOTIFY_DEAD_LETTER_TOPIC + "-hold", NOTIFY_DEAD_LETTER_TOPIC
        )

        gcs = FakeGcsServer(
            http_port=c.ports.gcs,
            https_port=c.ports.gcs_https,
            notify_project=c.project,
            notify_topic=NOTIFY_TOPIC,
            pubsub_host=pubsub.host,
            workdir=c.root / "gcs",
        )
        try:
            gcs.start()
            assert gcs.proc is not None
            self._link_log(c.root / "gcs" / "fake-gcs-server.log", "fake-gcs-server")
            with signals_deferred():
                self._record(
                    "fake-gcs-server",
                    gcs.proc.pid,
                    gcs.endpoint,
                    "/storage/v1/b",
                    c.log_dir / "fake-gcs-server.log",
                )
        except BaseException:
            if len(self.records) < 2:
                gcs.stop()
            raise
        gcs.create_bucket(c.bucket)
        write_boto_config(gcs, c.root / "boto.cfg")

        procs: list[tuple[str, subprocess.Popen, Path, str]] = []
        py = sys.executable
        urls = {"webhook-receiver": c.url("webhook"), "inference-service": c.url("service"),
                "ingest-function": c.url("function"), "eventarc-bridge": c.url("bridge"),
                "orthanc": c.url("orthanc")}  # fmt: skip

        def spawn(name: str, cmd: list[str], env: dict[str, str], health: str) -> None:
            p, log = self._spawn(name, cmd, env, urls[name], health)
            procs.append((name, p, log, health))

        webhook_env = self._child_env(
            {
                "WEBHOOK_PORT": str(c.ports.webhook),
                "WEBHOOK_FAIL_FIRST": str(c.webhook_fail_first),
                **c.webhook_env,
            }
        )
        spawn("webhook-receiver", [py, "-m", "infra.local.webhook_receiver"], webhook_env, "/healthz")
        spawn("orthanc", self.orthanc_command(), self._child_env({}), "/system")

        service_env = self._child_env({"PORT": str(c.ports.service), "LOG_LEVEL": "INFO", **c.service_env})
        cmd = [
            str(BIN / "gunicorn"), "-c", "gpu_service/gunicorn.conf.py", "--no-control-socket",
            "--bind", f"{LOOPBACK}:{c.ports.service}", "gpu_service.app:create_app()",
        ]  # fmt: skip
        spawn("inference-service", cmd, service_env, "/readyz")

        function_env = self._child_env(
            {"INFERENCE_TOPIC": INFERENCE_TOPIC, "LOG_LEVEL": "INFO", **c.function_env}
        )
        cmd = [
            str(BIN / "functions-framework"), "--target", "ingest_dicom", "--source", "functions/main.py",
            "--signature-type", "cloudevent", "--host", LOOPBACK, "--port", str(c.ports.function),
        ]  # fmt: skip
        spawn("ingest-function", cmd, function_env, "/")

        bridge_env = self._child_env(
            {
                "BRIDGE_PORT": str(c.ports.bridge),
                "FUNCTION_URL": c.url("function"),
                "BRIDGE_TIMEOUT_S": str(BRIDGE_TIMEOUT_S),
            }
        )
        spawn("eventarc-bridge", [py, "-m", "infra.local.eventarc_bridge"], bridge_env, "/healthz")

        deadline = time.monotonic() + c.ready_timeout_s
        for name, proc, log, health in procs:
            try:
                if name == "inference-service":
                    _wait_ok(urls[name] + health, deadline, proc, log)
                else:
                    wait_http(urls[name] + health, max(1.0, deadline - time.monotonic()), proc, log)
            except EmulatorError as exc:
                raise StackError(f"{name} did not start (log: {log}):\n{exc}") from None

        # Subscriptions last: nothing is pushed before its endpoint answers.
        create_subscription(
            pubsub.host, c.project, INFERENCE_SUBSCRIPTION, INFERENCE_TOPIC,
            push_endpoint=c.url("service") + "/", ack_deadline_s=600,
            dead_letter_topic=DEAD_LETTER_TOPIC, max_delivery_attempts=5, min_backoff_s=2, max_backoff_s=60,
        )  # fmt: skip
        create_subscription(
            pubsub.host, c.project, NOTIFY_SUBSCRIPTION, NOTIFY_TOPIC,
            push_endpoint=c.url("bridge") + "/", ack_deadline_s=NOTIFY_ACK_DEADLINE_S,
            dead_letter_topic=NOTIFY_DEAD_LETTER_TOPIC, max_delivery_attempts=10, min_backoff_s=1, max_backoff_s=10,
        )  # fmt: skip
        self.started_in_s = time.monotonic() - t0

    def orthanc_command(self) -> list[str]:
        c = self.config
        config = orthanc.write_config(c.root / "orthanc", c.ports.orthanc, c.orthanc_refuse_study_prefix)
        return orthanc.command(config)

    def start_orthanc(self) -> None:
        """Start the DICOMweb store again (after a test stopped it); recorded like the others."""
        proc, log = self._spawn(
            "orthanc", self.orthanc_command(), self._child_env({}), self.config.url("orthanc"), "/system"
        )
        wait_http(self.config.url("orthanc") + "/system", 60, proc, log)

    def _link_log(self, target: Path, name: str) -> None:
        link = self.config.log_dir / f"{name}.log"
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    def down(self) -> list[str]:
        """Stop every process group this stack recorded, newest first; returns the names stopped."""
        state = self._load()
        records = (state or {}).get("components", []) or self.records
        # All at once: gunicorn and the emulators each take seconds to drain. A group whose
        # leader died is stopped too: its java emulator or gunicorn workers still hold ports.
        stopped = [r for r in reversed(records) if _owned(r)]
        with ThreadPoolExecutor(max_workers=max(1, len(stopped))) as pool:
            list(pool.map(lambda r: stop_process_group(r["pid"]), stopped))
        self.config.state_file.unlink(missing_ok=True)
        self.config.env_file.unlink(missing_ok=True)
        self.records = []
        return [r["name"] for r in stopped]

    def status(self) -> list[dict[str, Any]]:
        state = self._load()
        rows = []
        for record in (state or {}).get("components", []):
            alive = _owned(record)
            healthy = None
            if alive and record.get("health"):
                try:
                    healthy = requests.get(record["url"] + record["health"], timeout=3).status_code < 500
                except requests.RequestException:
                    healthy = False
            rows.append({**record, "alive": alive, "leader_exited": alive and not _alive(record),
                         "healthy": healthy})  # fmt: skip
        return rows


def _cmd_status(stack: Stack) -> int:
    rows = stack.status()
    if not rows:
        print(f"local stack: not running (no {stack.config.state_file})")
        return 0
    print(f"{'component':<18} {'pid':>7}  {'state':<10} {'url':<28} log")
    for r in rows:
        state = "running" if r["alive"] else "stopped"
        if r["alive"] and r["healthy"] is False:
            state = "unhealthy"
        if r.get("leader_exited"):
            state = "orphaned"  # its leader died, other processes of its group remain
        print(f"{r['name']:<18} {r['pid']:>7}  {state:<10} {r['url']:<28} {r['log']}")
    if all(r["alive"] and not r["leader_exited"] and r["healthy"] is not False for r in rows):
        print(f"\nall running; `source {stack.config.env_file}` to use it")
        return 0
    print("\nsome components are not running: see their logs; `make down` then `make up`")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "check-ports"])
    parser.add_argument("--root", default=os.environ.get("LOCAL_ROOT", str(REPO / ".local")))
    args = parser.parse_args(argv)
    try:
        stack = Stack(StackConfig.from_env(args.root))
    except StackError as exc:
        print(f"local stack: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-ports":
        if stack.running():
            return 0  # ours: `up` will say it is already running
        problems = busy_ports(stack.config.ports)
        for p in problems:
            print(f"prerequisite missing: {p}", file=sys.stderr)
        return 1 if problems else 0
    if args.command == "up":
        exit_on_termination()
        if stack.running():
            print(f"the local stack is already running from {stack.config.root} (`make down` stops it)")
            return _cmd_status(stack)
        print(
            f"starting the local stack under {stack.config.root} (logs: {stack.config.log_dir}) ...",
            flush=True,
        )
        try:
            stack.up()
        except (StackError, EmulatorError) as exc:
            print(f"\nmake up failed: {exc}\nlogs: {stack.config.log_dir}", file=sys.stderr)
            return 1
        print(f"local stack up in {stack.started_in_s:.0f}s")
        _cmd_status(stack)
        return 0
    if args.command == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    return _cmd_status(stack)


if __name__ == "__main__":
    sys.exit(main())
