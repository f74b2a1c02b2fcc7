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
it recorded (after checking each PID still belongs to the process it started).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import requests

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
INFERENCE_TOPIC = "dicom-inference-requests"
INFERENCE_SUBSCRIPTION = "dicom-inference-push"
DEAD_LETTER_TOPIC = "dicom-inference-dead-letter"
DEAD_LETTER_SUBSCRIPTION = "dicom-inference-dead-letter-hold"
WEBHOOK_PATH = "/webhook"

# Environment variables a user may have exported for Cloud Run that must not leak into the
# local service: the emulator's pushes carry no OIDC token, so auth would reject every one.
_NOT_LOCAL = ("PUSH_AUDIENCE", "PUSH_SERVICE_ACCOUNT", "GOOGLE_APPLICATION_CREDENTIALS")


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

    @classmethod
    def from_env(cls) -> Ports:
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"LOCAL_{f.name.upper()}_PORT")
            values[f.name] = int(raw) if raw else f.default
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Ports nobody uses now, for test stacks that must not collide with ``make up``."""
        return cls(**{f.name: free_port() for f in fields(cls)})

    def items(self) -> list[tuple[str, int]]:
        return list(asdict(self).items())


@dataclass(frozen=True)
class StackConfig:
    root: Path
    ports: Ports = field(default_factory=Ports)
    project: str = "local-project"
    bucket: str = "dicom-uploads"
    webhook_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    # Extra environment for the service and the function (e.g. LIME_NUM_SAMPLES for a fast test stack).
    service_env: dict[str, str] = field(default_factory=dict)
    function_env: dict[str, str] = field(default_factory=dict)
    webhook_fail_first: int = 0
    ready_timeout_s: float = 600.0

    @classmethod
    def from_env(cls, root: Path | str = ".local") -> StackConfig:
        return cls(
            root=Path(root).resolve(),
            ports=Ports.from_env(),
            project=os.environ.get("LOCAL_PROJECT", "local-project"),
            bucket=os.environ.get("LOCAL_UPLOAD_BUCKET", "dicom-uploads"),
            webhook_secret=os.environ.get("LOCAL_WEBHOOK_SECRET") or secrets.token_hex(32),
            webhook_fail_first=int(os.environ.get("WEBHOOK_FAIL_FIRST", "0")),
            ready_timeout_s=float(os.environ.get("LOCAL_READY_TIMEOUT_S", "600")),
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
        return [r for r in (state or {}).get("components", []) if _alive(r)]

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
        env = {k: v for k, v in os.environ.items() if k not in _NOT_LOCAL}
        env.update(self.env())
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "functions"), str(REPO)])
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
        log = self.config.log_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
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
        try:
            pubsub.start()
        except BaseException:
            pubsub.stop()
            raise
        assert pubsub.proc is not None
        self._link_log(c.root / "pubsub" / "pubsub-emulator.log", "pubsub-emulator")
        self._record(
            "pubsub-emulator",
            pubsub.proc.pid,
            f"http://{pubsub.host}",
            "/",
            c.log_dir / "pubsub-emulator.log",
        )
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
        except BaseException:
            gcs.stop()
            raise
        assert gcs.proc is not None
        self._link_log(c.root / "gcs" / "fake-gcs-server.log", "fake-gcs-server")
        self._record(
            "fake-gcs-server", gcs.proc.pid, gcs.endpoint, "/storage/v1/b", c.log_dir / "fake-gcs-server.log"
        )
        gcs.create_bucket(c.bucket)
        write_boto_config(gcs, c.root / "boto.cfg")

        procs: list[tuple[str, subprocess.Popen, Path, str]] = []
        py = sys.executable
        webhook_env = self._child_env(
            {"WEBHOOK_PORT": str(c.ports.webhook), "WEBHOOK_FAIL_FIRST": str(c.webhook_fail_first)}
        )
        p, log = self._spawn("webhook-receiver", [py, "-m", "infra.local.webhook_receiver"], webhook_env)
        procs.append(("webhook-receiver", p, log, "/healthz"))

        service_env = self._child_env({"PORT": str(c.ports.service), "LOG_LEVEL": "INFO", **c.service_env})
        cmd = [
            str(BIN / "gunicorn"), "-c", "gpu_service/gunicorn.conf.py", "--no-control-socket",
            "--bind", f"{LOOPBACK}:{c.ports.service}", "gpu_service.app:create_app()",
        ]  # fmt: skip
        p, log = self._spawn("inference-service", cmd, service_env)
        procs.append(("inference-service", p, log, "/readyz"))

        function_env = self._child_env(
            {"INFERENCE_TOPIC": INFERENCE_TOPIC, "LOG_LEVEL": "INFO", **c.function_env}
        )
        cmd = [
            str(BIN / "functions-framework"), "--target", "ingest_dicom", "--source", "functions/main.py",
            "--signature-type", "cloudevent", "--host", LOOPBACK, "--port", str(c.ports.function),
        ]  # fmt: skip
        p, log = self._spawn("ingest-function", cmd, function_env)
        procs.append(("ingest-function", p, log, "/"))

        bridge_env = self._child_env({"BRIDGE_PORT": str(c.ports.bridge), "FUNCTION_URL": c.url("function")})
        p, log = self._spawn("eventarc-bridge", [py, "-m", "infra.local.eventarc_bridge"], bridge_env)
        procs.append(("eventarc-bridge", p, log, "/healthz"))

        urls = {"webhook-receiver": c.url("webhook"), "inference-service": c.url("service"),
                "ingest-function": c.url("function"), "eventarc-bridge": c.url("bridge")}  # fmt: skip
        for name, proc, log, health in procs:
            self._record(name, proc.pid, urls[name], health, log)
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
            push_endpoint=c.url("bridge") + "/", ack_deadline_s=60,
            dead_letter_topic=NOTIFY_DEAD_LETTER_TOPIC, max_delivery_attempts=10, min_backoff_s=1, max_backoff_s=10,
        )  # fmt: skip
        self.started_in_s = time.monotonic() - t0

    def _link_log(self, target: Path, name: str) -> None:
        link = self.config.log_dir / f"{name}.log"
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    def down(self) -> list[str]:
        """Stop every process group this stack recorded, newest first; returns the names stopped."""
        state = self._load()
        records = (state or {}).get("components", []) or self.records
        # All at once: gunicorn and the emulators each take seconds to drain.
        stopped = [r for r in reversed(records) if _alive(r)]
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
            alive = _alive(record)
            healthy = None
            if alive and record.get("health"):
                try:
                    healthy = requests.get(record["url"] + record["health"], timeout=3).status_code < 500
                except requests.RequestException:
                    healthy = False
            rows.append({**record, "alive": alive, "healthy": healthy})
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
        print(f"{r['name']:<18} {r['pid']:>7}  {state:<10} {r['url']:<28} {r['log']}")
    if all(r["alive"] and r["healthy"] is not False for r in rows):
        print(f"\nall running; `source {stack.config.env_file}` to use it")
        return 0
    print("\nsome components are not running: see their logs; `make down` then `make up`")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "check-ports"])
    parser.add_argument("--root", default=os.environ.get("LOCAL_ROOT", str(REPO / ".local")))
    args = parser.parse_args(argv)
    stack = Stack(StackConfig.from_env(args.root))
    if args.command == "check-ports":
        if stack.running():
            return 0  # ours: `up` will say it is already running
        problems = busy_ports(stack.config.ports)
        for p in problems:
            print(f"prerequisite missing: {p}", file=sys.stderr)
        return 1 if problems else 0
    if args.command == "up":
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
