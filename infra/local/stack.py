"""The local stack's topology: which processes, emulators, topics and push subscriptions make up
the pipeline on one machine. Its command line is :mod:`infra.local.stack_cli` (``make up``);
process supervision is :mod:`infra.local.supervision`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from infra.local import eventarc_bridge, ohif, orthanc, viewer
from infra.local import review_component as review
from infra.local.emulators import (
    LOOPBACK,
    EmulatorError,
    FakeGcsServer,
    PubSubEmulator,
    create_subscription,
    create_topic,
    pull,
    wait_http,
    write_boto_config,
)
from infra.local.stack_config import INHERITED_ENV, Ports, StackConfig, StackError, busy_ports
from infra.local.supervision import (
    exit_on_termination,
    inherited_env,
    is_owned,
    probe,
    process_record,
    signals_deferred,
    spawn_recorded,
    stop_recorded,
    wait_ready,
    write_private,
)
from infra.local.topology import (
    BRIDGE_TIMEOUT_S,
    DEAD_LETTER_RECORDER,
    DEAD_LETTER_SUBSCRIPTION,
    DEAD_LETTER_TOPIC,
    DELIVERY_SUBSCRIPTION,
    DELIVERY_TOPIC,
    INFERENCE_MAX_DELIVERY_ATTEMPTS,
    INFERENCE_SUBSCRIPTION,
    INFERENCE_TOPIC,
    NOTIFY_ACK_DEADLINE_S,
    NOTIFY_DEAD_LETTER_TOPIC,
    NOTIFY_MAX_DELIVERY_ATTEMPTS,
    NOTIFY_SUBSCRIPTION,
    NOTIFY_TOPIC,
    relay_routes,
    stack_env,
)

__all__ = ["DEAD_LETTER_SUBSCRIPTION", "Ports", "Stack", "StackConfig", "StackError", "exit_on_termination"]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Stack:
    """``up`` starts, each in its own process group, logging under ``ROOT/logs/``: the Pub/Sub
    emulator, fake-gcs-server (notifying the emulator), the Django webhook target, the service under
    gunicorn, the function under functions-framework, the Eventarc stand-in (which also stores each
    uploaded DICOM source in Orthanc, the PACS stand-in), Orthanc and OHIF; then the push
    subscriptions, as in production. ``ROOT/stack.env`` then tells a shell how to reach them."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []
        # How each component was started (command, environment, url, health path): for restart().
        self._specs: dict[str, tuple[list[str], dict[str, str], str, str]] = {}

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
        write_private(c.state_file, json.dumps(state, indent=2))

    def _load(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.config.state_file.read_text())
        except (OSError, ValueError):
            return None

    def _record(self, name: str, pid: int, url: str, health: str | None, log: Path) -> None:
        self.records.append(process_record(name, pid, url, health, log))
        self._save()

    def running(self) -> list[dict[str, Any]]:
        state = self._load()
        return [r for r in (state or {}).get("components", []) if is_owned(r)]

    # ---- environment -------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """What a shell (``source .local/stack.env``), the demo and the tests need."""
        return stack_env(self.config)

    def process_env(self, name: str) -> dict[str, str]:
        """The environment a child of this stack was started with (e.g. to run the Django
        project's management commands as its webhook receiver runs)."""
        return dict(self._specs[name][1])

    def _child_env(self, extra: dict[str, str]) -> dict[str, str]:
        """The process basics (:data:`INHERITED_ENV`), the stack's values, then ``extra``."""
        env = inherited_env(os.environ, INHERITED_ENV)
        env.update(self.env())
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def _spawn(
        self, name: str, cmd: list[str], env: dict[str, str], url: str, health: str
    ) -> tuple[subprocess.Popen, Path]:
        """Start one child in its own session and record it at once (signals held in between)."""
        self._specs[name] = (cmd, env, url, health)
        log = self.config.log_dir / f"{name}.log"
        proc = spawn_recorded(
            cmd, cwd=REPO, env=env, log=log, record=lambda pid: self._record(name, pid, url, health, log)
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
        if c.ohif_dist is not None and ohif.missing(c.ohif_dist):
            problems.append(str(ohif.missing(c.ohif_dist)))
        if problems:
            raise StackError("cannot start the local stack:\n  " + "\n  ".join(problems))
        c.root.mkdir(parents=True, exist_ok=True)
        c.log_dir.mkdir(parents=True, exist_ok=True)
        (c.root / "gcloud").mkdir(exist_ok=True)
        c.env_file.unlink(missing_ok=True)
        # The webhook logs describe this stack's run (fake-gcs-server keeps objects in memory only).
        for log in (c.webhook_log, c.webhook_log.with_suffix(".attempts.jsonl"), c.trace_file):
            log.unlink(missing_ok=True)
        shutil.rmtree(c.root / "orthanc", ignore_errors=True)  # the DICOMweb store too
        self.records = []
        try:
            self._start_all()
        except BaseException:
            self.down()
            raise
        env = self.env()
        write_private(
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
        for topic in (
            NOTIFY_TOPIC,
            NOTIFY_DEAD_LETTER_TOPIC,
            INFERENCE_TOPIC,
            DEAD_LETTER_TOPIC,
            DELIVERY_TOPIC,
            review.TOPIC,
            review.DEAD_LETTER_TOPIC,
        ):
            create_topic(pubsub.host, c.project, topic)
        # Dead letters are kept (a pull subscription nobody acknowledges) so that they can be inspected.
        create_subscription(
            pubsub.host, c.project, DEAD_LETTER_SUBSCRIPTION, DEAD_LETTER_TOPIC, ack_deadline_s=60
        )
        create_subscription(
            pubsub.host, c.project, NOTIFY_DEAD_LETTER_TOPIC + "-hold", NOTIFY_DEAD_LETTER_TOPIC
        )
        create_subscription(pubsub.host, c.project, review.DEAD_LETTER_SUBSCRIPTION, review.DEAD_LETTER_TOPIC)

        gcs = FakeGcsServer(
            http_port=c.ports.gcs,
            https_port=c.ports.gcs_https,
            notify_project=c.project,
            notify_topic=NOTIFY_TOPIC,
            pubsub_host=pubsub.host,
            workdir=c.root / "gcs",
        )
        if c.gcs_backend:
            gcs.backend = c.gcs_backend
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
                "push-relay": c.url("relay"), review.NAME: c.url("review"),
                "orthanc": c.url("orthanc"), "ohif-viewer": c.url("ohif")}  # fmt: skip

        def spawn(name: str, cmd: list[str], env: dict[str, str], health: str) -> None:
            p, log = self._spawn(name, cmd, env, urls[name], health)
            procs.append((name, p, log, health))

        webhook_env = self._child_env(
            {**viewer.site_env(c.root, c.viewer_password, c.webhook_fail_first), **c.webhook_env}
        )
        try:
            viewer.prepare(webhook_env, REPO)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise StackError(str(exc)) from None
        spawn(
            "webhook-receiver",
            viewer.command(LOOPBACK, c.ports.webhook, BIN),
            webhook_env,
            viewer.HEALTH_PATH,
        )
        spawn("orthanc", self._orthanc_command(), self._child_env({}), "/system")
        if c.ohif_dist is not None:
            cmd = ohif.command(py, c.ports.ohif, c.ohif_dist)
            spawn("ohif-viewer", cmd, self._child_env({}), ohif.HEALTH_PATH)

        service_env = self._child_env(
            {
                "PORT": str(c.ports.service),
                "LOG_LEVEL": "INFO",
                "DELIVERY_TOPIC": DELIVERY_TOPIC,
                "MAX_DELIVERY_ATTEMPTS": str(INFERENCE_MAX_DELIVERY_ATTEMPTS),
                "DEAD_LETTER_SUBSCRIPTION": DEAD_LETTER_SUBSCRIPTION,
                "MALLOC_ARENA_MAX": "2",  # as the image sets it (gpu_service/Dockerfile)
                **c.service_env,
            }
        )
        cmd = [
            str(BIN / "gunicorn"), "-c", "gpu_service/gunicorn.conf.py", "--no-control-socket",
            "--bind", f"{LOOPBACK}:{c.ports.service}", "gpu_service.app:create_app()",
        ]  # fmt: skip
        spawn("inference-service", cmd, service_env, "/readyz")
        cmd, extra = (
            review.command(BIN, LOOPBACK, c.ports.review),
            review.env(c.ports.review, c.url("webhook")),
        )
        spawn(review.NAME, cmd, self._child_env(extra), review.HEALTH_PATH)

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
                "BRIDGE_MAX_ATTEMPTS": str(NOTIFY_MAX_DELIVERY_ATTEMPTS),
                # The hospital's PACS stand-in: each uploaded DICOM source is stored in Orthanc.
                "BRIDGE_PACS_URL": orthanc.urls(c.url("orthanc"))["DICOMWEB_URL"],
            }
        )
        spawn("eventarc-bridge", [py, "-m", "infra.local.eventarc_bridge"], bridge_env, "/healthz")

        deadline = time.monotonic() + c.ready_timeout_s
        for name, proc, log, health in procs:
            try:
                if name == "inference-service":
                    wait_ready(urls[name] + health, deadline, proc, log)
                else:
                    wait_http(urls[name] + health, max(1.0, deadline - time.monotonic()), proc, log)
            except EmulatorError as exc:
                raise StackError(f"{name} did not start (log: {log}):\n{exc}") from None

        # Subscriptions last: nothing is pushed before its endpoint answers.
        for name, topic in (
            (INFERENCE_SUBSCRIPTION, INFERENCE_TOPIC),
            (DELIVERY_SUBSCRIPTION, DELIVERY_TOPIC),
            (DEAD_LETTER_RECORDER, DEAD_LETTER_TOPIC),
            (review.SUBSCRIPTION, review.TOPIC),
        ):
            create_subscription(pubsub.host, c.project, name, topic, ack_deadline_s=600)
        spawn("push-relay", [py, "-m", "infra.local.push_relay"], self._relay_env(), "/healthz")
        name, proc, log, health = procs[-1]
        try:
            wait_http(urls[name] + health, c.ready_timeout_s, proc, log)
        except EmulatorError as exc:
            raise StackError(f"{name} did not start (log: {log}):\n{exc}") from None
        create_subscription(
            pubsub.host, c.project, NOTIFY_SUBSCRIPTION, NOTIFY_TOPIC,
            push_endpoint=c.url("bridge") + "/", ack_deadline_s=NOTIFY_ACK_DEADLINE_S,
            dead_letter_topic=NOTIFY_DEAD_LETTER_TOPIC, max_delivery_attempts=NOTIFY_MAX_DELIVERY_ATTEMPTS,
            min_backoff_s=1, max_backoff_s=10,
        )  # fmt: skip
        self.started_in_s = time.monotonic() - t0

    def _relay_env(self) -> dict[str, str]:
        c = self.config
        routes = relay_routes(c.project, c.url("service"), c.url("review"))
        return self._child_env({"RELAY_PORT": str(c.ports.relay), "RELAY_ROUTES": json.dumps(routes)})

    def _orthanc_command(self) -> list[str]:
        c = self.config
        return orthanc.stack_command(c.root, c.ports.orthanc, c.orthanc_refuse_study_prefix)

    def start_orthanc(self) -> None:
        """Start the DICOMweb store again (after a test stopped it); recorded like the others."""
        self.restart("orthanc")

    def restart(self, name: str, timeout_s: float = 120) -> None:
        """Start a component this stack started before (a test stopped it) with the same command."""
        cmd, env, url, health = self._specs[name]
        self.records = [r for r in self.records if r["name"] != name or is_owned(r)]  # the stopped one
        proc, log = self._spawn(name, cmd, env, url, health)
        wait_http(url + health, timeout_s, proc, log)

    def held(self, subscription: str) -> list[dict[str, Any]]:
        """The messages on a hold subscription (up to 1,000), left there."""
        c = self.config
        return pull(f"{LOOPBACK}:{c.ports.pubsub}", c.project, subscription, 1000, ack=False)

    def dead_letters(self) -> list[dict[str, Any]]:
        """The inference messages held on the dead-letter hold subscription."""
        return self.held(DEAD_LETTER_SUBSCRIPTION)

    def review_dead_letters(self) -> list[dict[str, Any]]:
        """The review decisions held on the review dead-letter hold subscription."""
        return self.held(review.DEAD_LETTER_SUBSCRIPTION)

    def _link_log(self, target: Path, name: str) -> None:
        link = self.config.log_dir / f"{name}.log"
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    def down(self) -> list[str]:
        """Stop every process group this stack recorded, newest first; returns the names stopped."""
        state = self._load()
        records = (state or {}).get("components", []) or self.records
        stopped = stop_recorded(records)
        self.config.state_file.unlink(missing_ok=True)
        self.config.env_file.unlink(missing_ok=True)
        self.records = []
        return [r["name"] for r in stopped]

    def status(self) -> list[dict[str, Any]]:
        state = self._load()
        return [probe(record) for record in (state or {}).get("components", [])]

    def event_stats(self) -> dict[str, Any] | None:
        """The Eventarc stand-in's counts of events delivered, still retried and given up on."""
        components = (self._load() or {}).get("components", [])
        bridge = next((r for r in components if r["name"] == "eventarc-bridge"), None)
        return eventarc_bridge.fetch_stats(bridge["url"]) if bridge else None
