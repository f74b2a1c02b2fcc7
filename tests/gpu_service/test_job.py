"""The Cloud Run job against the emulators: reprocess a prefix (sharded, skipping done work and
the pipeline's own outputs) and drain a pull subscription with the push endpoint's ack rules."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import pubsub_v1, storage

from gpu_service import job
from gpu_service.inference.batcher import Batcher
from gpu_service.inference.model import LoadedModel, load_model
from gpu_service.pipeline.processing import Processor
from gpu_service.results.cloud_storage import GcsStore, ObjectInfo
from gpu_service.settings import Settings
from gpu_service.wiring import make_cloud_storage, make_webhook
from infra.local import emulators
from pipeline_common import jsonlog, naming
from tests.conftest import unique
from tests.support.service import (
    PROJECT,
    SECRET,
    WebhookServer,
    count_work,
    dicom_bytes,
    read_object,
    request_body,
    upload,
)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    m = load_model(max_batch_size=128)
    m.warmup()
    return m


def _settings(webhook: WebhookServer) -> Settings:
    return Settings(
        project=PROJECT,
        webhook_url=webhook.url,
        webhook_secret=SECRET,
        webhook_max_attempts=2,
        webhook_backoff_base_s=0.01,
        lime_num_samples=48,
        lime_batch_size=24,
        batch_max_size=128,
        batch_max_wait_ms=20,
        concurrency=2,
    )


@pytest.fixture
def processor(model: LoadedModel, webhook: WebhookServer) -> Iterator[Processor]:
    settings = _settings(webhook)
    batcher = Batcher(model.predict, settings.batch_max_size, settings.batch_max_wait_ms)
    processor = Processor(
        settings, model, make_cloud_storage(settings), make_webhook(settings), None, batcher
    )
    processor.work = count_work(processor)  # type: ignore[attr-defined] - the test's spy
    yield processor
    batcher.close()


def _folder(bucket: str) -> dict[str, storage.Blob]:
    blobs = {
        "a": upload(bucket, "study/a.dcm", dicom_bytes(seed=41)),
        "b": upload(bucket, "study/sub/b.DCM", dicom_bytes(seed=42)),
        # DICOM without the extension: recognised by its DICM prefix.
        "c": upload(bucket, "study/c", dicom_bytes(seed=43), content_type="application/octet-stream"),
        "notes": upload(bucket, "study/notes.txt", b"radiology notes, not an image" * 10, "text/plain"),
        "outside": upload(bucket, "other/d.dcm", dicom_bytes(seed=44)),
    }
    # A pipeline output already there (a result of someone else): never an input.
    out = storage.Client(project=PROJECT).bucket(bucket).blob("study/old.png")
    out.metadata = {naming.MARKER_KEY: "preview"}
    out.upload_from_string(b"\x89PNG fake", content_type="image/png")
    return blobs


def test_prefix_job_processes_dicoms_once(
    processor: Processor, webhook: WebhookServer, bucket_name: str
) -> None:
    _folder(bucket_name)
    summary = job.run_prefix(processor, processor.cloud_storage, f"gs://{bucket_name}/study", concurrency=2)
    counts = summary.as_dict()
    assert counts["completed"] == 3 and counts["skipped_not_dicom"] == 1 and counts["skipped_output"] == 1
    assert processor.work.inferences == 3 and len(webhook.accepted()) == 3
    for stem in ("study/a", "study/sub/b", "study/c"):
        record = json.loads(read_object(bucket_name, stem + ".result.json")[0])
        assert record["status"] == "completed" and record["patient_id"] == "DEMO-0001"
    assert read_object(bucket_name, "study/notes.txt.result.json") is None
    assert read_object(bucket_name, "other/d.result.json") is None

    # A second run finds everything done: no inference, no webhook.
    again = job.run_prefix(processor, processor.cloud_storage, f"gs://{bucket_name}/study", concurrency=2)
    assert again.as_dict()["skipped_done"] == 3 and "completed" not in again.as_dict()
    assert processor.work.inferences == 3 and len(webhook.accepted()) == 3


def test_prefix_job_repairs_an_undelivered_result(
    processor: Processor, webhook: WebhookServer, bucket_name: str
) -> None:
    """A result stored while Django was down is not done: the next run re-sends it, once."""
    upload(bucket_name, "undelivered/a.dcm", dicom_bytes(seed=45, size=96))
    webhook.fail_next = 100
    first = job.run_prefix(processor, processor.cloud_storage, f"gs://{bucket_name}/undelivered/")
    assert first.as_dict().get("retry") == 1 and webhook.accepted() == []
    stored = read_object(bucket_name, "undelivered/a.result.json")
    assert stored is not None and "dicom-pipeline-webhook-delivered" not in stored[1]

    webhook.fail_next = 0
    second = job.run_prefix(processor, processor.cloud_storage, f"gs://{bucket_name}/undelivered/")
    assert second.as_dict().get("duplicate") == 1 and processor.work.inferences == 1
    assert [c.body for c in webhook.accepted()] == [stored[0]]
    third = job.run_prefix(processor, processor.cloud_storage, f"gs://{bucket_name}/undelivered/")
    assert third.as_dict().get("skipped_done") == 1 and len(webhook.accepted()) == 1


def test_prefix_job_shards_partition_the_work(processor: Processor, bucket_name: str) -> None:
    for i in range(6):
        upload(bucket_name, f"s/{i}.dcm", dicom_bytes(seed=50 + i, size=96))
    done = [
        job.run_prefix(
            processor, processor.cloud_storage, f"gs://{bucket_name}/s/", task_index=k, task_count=3
        )
        .as_dict()
        .get("completed", 0)
        for k in range(3)
    ]
    assert sum(done) == 6 and processor.work.inferences == 6
    assert sorted(done) == sorted(
        sum(1 for i in range(6) if job.shard_of(f"s/{i}.dcm", 3) == k) for k in range(3)
    )


def _rejection(bucket: str, stem: str, source: storage.Blob, generation: str | int) -> None:
    """A rejection record as the ingest function writes it beside the upload."""
    blob = storage.Client(project=PROJECT).bucket(bucket).blob(stem + naming.REJECTION_SUFFIX)
    blob.metadata = {
        naming.MARKER_KEY: "rejection",
        "dicom-pipeline-source": f"gs://{bucket}/{source.name}#{generation}",
        "dicom-pipeline-correlation-id": naming.correlation_id(bucket, source.name, generation),
    }
    blob.upload_from_string(json.dumps({"status": "rejected", "reason": "image_too_large"}).encode())


def test_prefix_job_skips_uploads_rejected_at_ingest(
    processor: Processor, webhook: WebhookServer, bucket_name: str
) -> None:
    rejected = upload(bucket_name, "rej/a.dcm", dicom_bytes(seed=45))
    _rejection(bucket_name, "rej/a", rejected, rejected.generation)
    replaced = upload(bucket_name, "rej/b.dcm", dicom_bytes(seed=46))
    _rejection(bucket_name, "rej/b", replaced, int(replaced.generation) - 1)  # an older upload's
    with _captured() as capture:
        summary = job.run_prefix(processor, processor.cloud_storage, f"gs://{bucket_name}/rej/")
    counts = summary.as_dict()
    assert counts["skipped_rejected"] == 1 and counts["completed"] == 1
    assert read_object(bucket_name, "rej/a.result.json") is None
    assert json.loads(read_object(bucket_name, "rej/b.result.json")[0])["status"] == "completed"
    skipped = [json.loads(line) for line in capture.lines if "rejected by the ingest" in line]
    assert [(e["object"], e["generation"]) for e in skipped] == [("rej/a.dcm", str(rejected.generation))]


class _DeletingStore(GcsStore):
    """The real store; each listed object is deleted before the job inspects it (a listing race)."""

    def list_objects(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        for obj in super().list_objects(bucket, prefix):
            self.client().bucket(bucket).blob(obj.name).delete()
            yield obj


def test_uninspectable_object_is_logged_with_its_identity(processor: Processor, bucket_name: str) -> None:
    blob = upload(bucket_name, "race/img", dicom_bytes(seed=47), content_type="application/octet-stream")
    store = _DeletingStore(PROJECT)
    with _captured() as capture:
        summary = job.run_prefix(processor, store, f"gs://{bucket_name}/race/")
    assert summary.as_dict()["retry"] == 1 and summary.to_retry == 1
    lines = [json.loads(line) for line in capture.lines if "cannot inspect object" in line]
    assert len(lines) == 1
    gen = str(blob.generation)
    assert (lines[0]["bucket"], lines[0]["object"], lines[0]["generation"]) == (bucket_name, "race/img", gen)
    assert lines[0]["correlation_id"] == naming.correlation_id(bucket_name, "race/img", gen)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(jsonlog.CloudLoggingFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def _captured() -> Iterator[_Capture]:
    """JSON lines of every logger at INFO and above while the block runs."""
    root, capture = logging.getLogger(), _Capture()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


def test_job_cli_entrypoint(model: LoadedModel, webhook: WebhookServer, bucket_name: str) -> None:
    upload(bucket_name, "cli/x.dcm", dicom_bytes(seed=60))
    settings = _settings(webhook)
    assert job.main(["--prefix", f"gs://{bucket_name}/cli", "--concurrency", "2"], settings=settings) == 0
    assert json.loads(read_object(bucket_name, "cli/x.result.json")[0])["status"] == "completed"


def test_subscription_drain_acks_only_safe_outcomes(
    processor: Processor, webhook: WebhookServer, bucket_name: str, pubsub_emulator: Any
) -> None:
    topic, sub = unique("backlog"), unique("backlog-sub")
    emulators.create_topic(pubsub_emulator.host, PROJECT, topic)
    sub_path = emulators.create_subscription(pubsub_emulator.host, PROJECT, sub, topic, ack_deadline_s=60)
    publisher = pubsub_v1.PublisherClient()
    topic_path = publisher.topic_path(PROJECT, topic)
    good = [upload(bucket_name, f"q/{i}.dcm", dicom_bytes(seed=70 + i)) for i in range(2)]
    for blob in good:
        publisher.publish(topic_path, json.dumps(request_body(blob)).encode()).result()
    publisher.publish(topic_path, b"{not json").result()

    summary = job.run_subscription(processor, sub_path, concurrency=2, pull_timeout_s=5)
    counts = summary.as_dict()
    assert counts["completed"] == 2 and counts["invalid"] == 1 and summary.to_retry == 1
    assert len(webhook.accepted()) == 2
    for i in range(2):
        assert read_object(bucket_name, f"q/{i}.result.json") is not None
    # Only the hopeless message is left, handed back for redelivery / dead-lettering.
    left = emulators.pull(pubsub_emulator.host, PROJECT, sub)
    assert [base64.b64decode(m["data"]) for m in left] == [b"{not json"]
