"""Child processes in their own sessions, recorded so that another process can stop exactly them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from infra.local.emulators import EmulatorError, process_group_exists, stop_process_group


def inherited_env(environ: Mapping[str, str], allowed: Iterable[str]) -> dict[str, str]:
    """The variables of ``environ`` named in ``allowed`` (names, or prefixes ending in "*")."""
    allowed = tuple(allowed)
    exact = {n for n in allowed if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in allowed if n.endswith("*"))
    return {k: v for k, v in environ.items() if k in exact or k.startswith(prefixes)}


def write_private(path: Path, text: str) -> None:
    """Owner-only: these files hold the webhook secret."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``: a recycled PID has a different one, so we never kill a stranger."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def is_alive(record: dict[str, Any]) -> bool:
    start = proc_start_time(record["pid"])
    return start is not None and start == record.get("start_time")


def is_owned(record: dict[str, Any]) -> bool:
    """Whether the recorded process group is still ours to stop: its leader is the process we
    started, or the leader is gone but members of its group remain. The kernel never reuses a
    PID that still names a process group, so such a group can only be the one we started; a
    different live process under the leader's PID is a stranger's."""
    if is_alive(record):
        return True
    return proc_start_time(record["pid"]) is None and process_group_exists(record["pid"])


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


def wait_ready(url: str, deadline: float, proc: subprocess.Popen, log: Path) -> None:
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


def process_record(name: str, pid: int, url: str, health: str | None, log: Path) -> dict[str, Any]:
    """What the state file keeps of one child: enough to check it is still ours, and to probe it."""
    return {
        "name": name,
        "pid": pid,
        "start_time": proc_start_time(pid),
        "url": url,
        "health": health,
        "log": str(log),
    }


def spawn_recorded(
    cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, record: Callable[[int], None]
) -> subprocess.Popen:
    """Start one child in its own session and record it at once (signals held in between)."""
    with log.open("ab") as out, signals_deferred():
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        record(proc.pid)
    return proc


def stop_recorded(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stop every recorded process group still ours, newest first; returns those stopped."""
    # All at once: gunicorn and the emulators each take seconds to drain. A group whose
    # leader died is stopped too: its java emulator or gunicorn workers still hold ports.
    stopped = [r for r in reversed(records) if is_owned(r)]
    with ThreadPoolExecutor(max_workers=max(1, len(stopped))) as pool:
        list(pool.map(lambda r: stop_process_group(r["pid"]), stopped))
    return stopped


def probe(record: dict[str, Any]) -> dict[str, Any]:
    """The record plus ``alive``, ``leader_exited`` and ``healthy`` (None when not probed)."""
    alive = is_owned(record)
    healthy = None
    if alive and record.get("health"):
        try:
            healthy = requests.get(record["url"] + record["health"], timeout=3).status_code < 500
        except requests.RequestException:
            healthy = False
    return {**record, "alive": alive, "leader_exited": alive and not is_alive(record), "healthy": healthy}
