"""django-dicom-results' own test suite (Django's runner, ``django-dicom-results/runtests.py``),
on SQLite and on a real PostgreSQL server, with fake-gcs-server for the viewer's images and the
Pub/Sub emulator for the dicom-review/1 publisher."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from devkit.postgres_server import PostgresServer
from infra.local.stack import REPO

pytestmark = pytest.mark.slow  # starts servers

APP = REPO / "django-dicom-results"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


def _run_suite(gcs_server, pubsub_emulator, **env: str) -> str:
    run_env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_server.endpoint,
               "PUBSUB_EMULATOR_HOST": pubsub_emulator.host, **env}  # fmt: skip
    done = subprocess.run([sys.executable, "runtests.py"], cwd=APP, env=run_env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "skipped=" not in output, "every test must run here (the image tests need the emulator)"
    return output


def test_app_suite_on_sqlite(gcs_server, pubsub_emulator):
    output = _run_suite(gcs_server, pubsub_emulator)
    assert "test-db.sqlite3" in output and "\nOK\n" in output


def test_app_suite_on_postgresql(gcs_server, pubsub_emulator, postgres):
    output = _run_suite(gcs_server, pubsub_emulator, DATABASE_URL=postgres.url)
    assert "test_postgres" in output and "\nOK\n" in output  # Django's test database on that server
