"""A throw-away PostgreSQL server from the distribution's binaries (Debian: /usr/lib/postgresql/N/bin),
for the Django app's tests: its own data directory, a free loopback port, no password (trust)
and fsync off. Started like the stack starts its emulators, so ``make test`` alone is enough.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` user that the
Debian package creates, in a directory under /tmp that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from infra.local.emulators import free_port

INSTALL_HINT = "install PostgreSQL (Debian: apt-get install postgresql; see infra/local/check_prereqs.sh)"


def _newest_bin_dir() -> Path | None:
    dirs = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "initdb").exists()]
    if dirs:
        return max(dirs, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    def __init__(self) -> None:
        self.bin_dir = _newest_bin_dir()
        if self.bin_dir is None:
            raise RuntimeError(f"PostgreSQL's initdb was not found: {INSTALL_HINT}")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dicom-results-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._runas: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(f"running as root needs the 'postgres' user: {INSTALL_HINT}") from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._runas = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgres://test@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self._runas, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed:\n{done.stdout}\n{done.stderr}\n{tail}")

    def start(self) -> PostgresServer:
        b = self.bin_dir
        self._run(
            str(b / "initdb"), "-D", str(self.data), "-U", "test", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c full_page_writes=off"
        self._run(str(b / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60
                )
        shutil.rmtree(self.root, ignore_errors=True)
