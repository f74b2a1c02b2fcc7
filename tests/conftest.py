"""Session-wide real emulators: Google's Pub/Sub emulator and fake-gcs-server on loopback.

Tests create their own uniquely named buckets, topics and subscriptions, so
they share one emulator of each kind without seeing each other's data. Every test that starts a
server (through these fixtures, or a suite marked ``slow`` itself) is ``slow``:
``make test-fast`` leaves those out, ``make test`` runs everything.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from infra.local.emulators import FakeGcsServer, PubSubEmulator

PROJECT = "test-project"
SERVER_FIXTURES = frozenset({"pubsub_emulator", "gcs_server", "bucket_name", "webhook"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory) -> Iterator[PubSubEmulator]:
    emulator = PubSubEmulator(project=PROJECT, workdir=tmp_path_factory.mktemp("pubsub")).start()
    old = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", PROJECT)
    yield emulator
    emulator.stop()
    if old is None:
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    else:
        os.environ["PUBSUB_EMULATOR_HOST"] = old


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[FakeGcsServer]:
    server = FakeGcsServer(workdir=tmp_path_factory.mktemp("gcs")).start()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.endpoint
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", PROJECT)
    yield server
    server.stop()
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old


@pytest.fixture
def bucket_name(gcs_server: FakeGcsServer) -> str:
    """A fresh, empty bucket in fake-gcs-server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(name)
    return name


@pytest.fixture
def webhook():
    """A real local HTTP server standing in for Django (see tests/service_support.py)."""
    from tests.support.service import WebhookServer

    server = WebhookServer()
    yield server
    server.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
