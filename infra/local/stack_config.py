"""The local stack's configuration: ports, project and bucket, and what its children may inherit."""

from __future__ import annotations

import os
import random
import re
import secrets
import shlex
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gpu_service.results.webhook_signature import new_secret
from infra.local import ohif
from infra.local.emulators import LOOPBACK, free_port, port_is_free
from infra.local.supervision import port_owner

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
    ohif: int = 8087
    relay: int = 8088  # the Pub/Sub push stand-in's /healthz and /stats
    review: int = 8089  # the review component (radiologist decisions as DICOM)

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
    webhook_secret: str = field(default_factory=new_secret, repr=False)
    viewer_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)
    # Extra environment for the service, the function and the receiver (e.g. LIME_NUM_SAMPLES for a
    # fast test stack); nothing else from the caller's environment reaches them (INHERITED_ENV).
    service_env: dict[str, str] = field(default_factory=dict)
    function_env: dict[str, str] = field(default_factory=dict)
    webhook_env: dict[str, str] = field(default_factory=dict)
    webhook_fail_first: int = 0
    ready_timeout_s: float = 600.0
    # The DICOMweb store refuses STOW-RS to studies whose UID starts with this (tests).
    orthanc_refuse_study_prefix: str | None = None
    # OHIF's dist/ (infra/local/ohif.py) served with the store's DICOMweb; None: no OHIF.
    ohif_dist: Path | None = None
    # fake-gcs-server's backend (infra.local.emulators.FakeGcsServer): None = its default,
    # LOCAL_GCS_BACKEND or "memory"; "filesystem" for runs whose objects would not fit in RAM.
    gcs_backend: str | None = None

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
            webhook_secret=os.environ.get("LOCAL_WEBHOOK_SECRET") or new_secret(),
            webhook_fail_first=int(os.environ.get("WEBHOOK_FAIL_FIRST", "0")),
            ready_timeout_s=float(os.environ.get("LOCAL_READY_TIMEOUT_S", "600")),
            service_env=service_env,
            function_env=function_env,
            webhook_env=webhook_env,
            ohif_dist=ohif.dist_dir(),
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

    @property
    def trace_file(self) -> Path:
        """Every process's spans, one JSON line each (docs/contracts.md, "Tracing")."""
        return self.root / "traces.jsonl"

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{getattr(self.ports, name)}"


def busy_ports(ports: Ports) -> list[str]:
    problems = []
    for name, port in ports.items():
        if not port_is_free(port):
            problems.append(
                f"port {port} ({name}) is in use by {port_owner(port)}: stop that process, "
                f"or pick another port with LOCAL_{name.upper()}_PORT=<port>"
            )
    return problems
