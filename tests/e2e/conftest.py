"""One running local stack for the whole end-to-end session: every real component, on free
ports in a temporary directory, so it never collides with a stack that ``make up`` left running.

LIME runs with ``E2E_LIME_NUM_SAMPLES`` (default 100) perturbations instead of the service's
default, so twenty images finish in minutes on a small CPU; everything else is production
configuration.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.local import ohif
from infra.local.demo import UploadOutcome, read_webhooks, storage_client, wait_for_outcomes
from infra.local.emulators import EmulatorError, private_gcloud_env
from infra.local.stack import DEAD_LETTER_SUBSCRIPTION, Ports, Stack, StackConfig, StackError

# The local DICOMweb store (Orthanc) refuses STOW-RS to studies whose UID starts with this.
REFUSED_STUDY_PREFIX = "2.25.4242."
# What a component that lost the race for its port says (java, Go, gunicorn, Python).
BIND_FAILURE = re.compile(r"address already in use|BindException|Connection in use|is in use by", re.I)


@dataclass
class LocalStack:
    stack: Stack
    env: dict[str, str]
    root: Path

    @property
    def bucket(self) -> str:
        return self.env["UPLOAD_BUCKET"]

    def run_env(self) -> dict[str, str]:
        """The stack's private gcloud configuration, never the developer's, and no prompts."""
        return {**private_gcloud_env(Path(self.env["CLOUDSDK_CONFIG"])), **self.env}

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(
            cmd, env=self.run_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]

    def gcloud_cp(self, sources: list[Path], destination: str) -> None:
        """``gcloud storage cp`` as a user types it (several sources upload in parallel)."""
        self._run(["gcloud", "storage", "cp", *map(str, sources), destination])

    def gsutil_cp(self, source: Path, destination: str) -> None:
        self._run(["gsutil", "-q", "cp", str(source), destination])

    def outcomes(self, names: dict[str, str], timeout_s: float = 300) -> dict[str, UploadOutcome]:
        found = wait_for_outcomes(self.env, self.bucket, names, timeout_s)
        missing = sorted(set(names) - set(found))
        assert not missing, f"no outcome for {missing} within {timeout_s:.0f}s; logs: {self.root / 'logs'}"
        return found

    def webhooks_for(self, object_name: str) -> list[dict[str, Any]]:
        return [
            h for h in read_webhooks(self.env["WEBHOOK_LOG"]) if h["body"]["source"]["name"] == object_name
        ]

    def attempts(self) -> list[dict[str, Any]]:
        return read_webhooks(self.env["WEBHOOK_ATTEMPTS_LOG"])

    def control(self, **settings: Any) -> dict[str, Any]:
        return requests.post(self.env["WEBHOOK_CONTROL_URL"], json=settings, timeout=10).json()

    def objects(self, prefix: str) -> dict[str, Any]:
        client = storage_client(self.env)
        return {b.name: b for b in client.list_blobs(self.bucket, prefix=prefix)}

    def dead_letters(self) -> list[dict]:
        host, project = self.env["PUBSUB_EMULATOR_HOST"], self.env["GOOGLE_CLOUD_PROJECT"]
        base = f"http://{host}/v1/projects/{project}/subscriptions/{DEAD_LETTER_SUBSCRIPTION}"
        r = requests.post(f"{base}:pull", json={"maxMessages": 100, "returnImmediately": True}, timeout=30)
        r.raise_for_status()
        return r.json().get("receivedMessages", [])


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("local-stack")
    config = StackConfig(
        root=root,
        ports=Ports.free(),
        project="e2e-project",
        bucket="e2e-uploads",
        orthanc_refuse_study_prefix=REFUSED_STUDY_PREFIX,
        # OHIF when `make ohif` installed it (the OHIF test says how when it did not).
        ohif_dist=None if ohif.missing(ohif.dist_dir()) else ohif.dist_dir(),
        service_env={
            "LIME_NUM_SAMPLES": os.environ.get("E2E_LIME_NUM_SAMPLES", "100"),
            # The redelivery test fails the webhook once more than this: pin it to what it assumes.
            "WEBHOOK_MAX_ATTEMPTS": "5",
            "WEBHOOK_BACKOFF_BASE_S": "0.2",
        },
    )
    stack = Stack(config)
    started = time.monotonic()
    try:
        env = stack.up()
    except (StackError, EmulatorError) as exc:
        # Another process took one of the free ports between the check and the bind: once more.
        if not BIND_FAILURE.search(str(exc)):
            raise
        print(f"\nlocal stack: a port was taken while starting ({exc!s:.200}); retrying on other ports")
        stack = Stack(dataclasses.replace(config, ports=Ports.free()))
        env = stack.up()
    print(f"\nlocal stack up in {time.monotonic() - started:.0f}s under {root}")
    try:
        yield LocalStack(stack=stack, env=env, root=root)
    finally:
        stack.down()
