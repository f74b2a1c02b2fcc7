"""The deployed entry point ``ingest_dicom`` end to end: real CloudEvents through
functions-framework, real fake-gcs-server, the real Pub/Sub emulator, and every DICOM
file pydicom ships, plus files made here (50 MB image, PNG renamed, empty object,
header longer than the first range).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from pathlib import Path

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from google.cloud import storage

from dicom_ingest import handler, message, publisher, records
from dicom_ingest.header import Rejection
from dicom_ingest.settings import Settings
from infra.local.emulators import create_subscription, create_topic, free_port, pull
from pipeline_common import jsonlog, naming, tracing
from tests.dicom_ingest.test_header import (
    TESTDATA,
    _testdata_id,
    deflate,
    expected_reason,
    long_sequence,
    make_dicom,
    noisy_image,
    oracle,
    png_bytes,
)
from tests.support import REPO

PROJECT = "test-project"
FINALIZED = "google.cloud.storage.object.v1.finalized"
MAIN = str(REPO / "functions" / "main.py")
SCHEMA_FILE = Path(MAIN).parent / "dicom_ingest" / "schemas" / "dicom-inference-request-1.json"


class Stack:
    """What the tests of this module share: bucket, topic, subscription, app, messages seen."""

    def __init__(self, gcs, emulator, bucket: str) -> None:
        self.gcs = gcs
        self.emulator = emulator
        self.bucket = bucket
        self.topic = f"ingest-{uuid.uuid4().hex[:8]}"
        self.subscription = f"{self.topic}-pull"
        create_topic(emulator.host, PROJECT, self.topic)
        create_subscription(emulator.host, PROJECT, self.subscription, self.topic)
        self.storage = storage.Client(project=PROJECT)
        self.messages: dict[str, list[dict]] = {}  # dedup_key -> messages received
        self.rejected_keys: set[str] = set()

    def upload(self, name: str, data: bytes, metadata: dict | None = None) -> dict:
        blob = self.storage.bucket(self.bucket).blob(name)
        if metadata:
            blob.metadata = metadata
        blob.upload_from_string(data, content_type="application/dicom")
        return self.resource(name)

    def resource(self, name: str) -> dict:
        """The object resource as the JSON API (and so Eventarc) gives it: size and generation are strings."""
        r = requests.get(
            f"{self.gcs.endpoint}/storage/v1/b/{self.bucket}/o/{requests.utils.quote(name, safe='')}",
            timeout=10,
        )
        r.raise_for_status()
        return r.json()

    def drain(self) -> None:
        for m in pull(self.emulator.host, PROJECT, self.subscription):
            self.messages.setdefault(m["attributes"]["dedup_key"], []).append(m)

    def wait_message(self, key: str, count: int = 1, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.messages.get(key, [])) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no message for {key}")
            self.drain()
            time.sleep(0.05)
        return self.messages[key]

    def record(self, name: str) -> tuple[dict, dict]:
        blob = self.storage.bucket(self.bucket).get_blob(naming.output_name(name, naming.REJECTION_SUFFIX))
        assert blob is not None, f"no rejection record for {name}"
        return json.loads(blob.download_as_bytes()), blob.metadata or {}


def cloud_event(resource: dict, event_id: str | None = None) -> CloudEvent:
    return CloudEvent(
        {
            "type": FINALIZED,
            "source": f"//storage.googleapis.com/projects/_/buckets/{resource['bucket']}",
            "subject": f"objects/{resource['name']}",
            "id": event_id or str(uuid.uuid4().int)[:16],
            "time": resource.get("updated") or "2024-01-31T12:00:00Z",
            "specversion": "1.0",
        },
        resource,
    )


@pytest.fixture(scope="module")
def stack(gcs_server, pubsub_emulator, tmp_path_factory):
    bucket = f"ingest-{uuid.uuid4().hex[:10]}"
    gcs_server.create_bucket(bucket)
    s = Stack(gcs_server, pubsub_emulator, bucket)
    old = {
        k: os.environ.get(k) for k in ("INFERENCE_TOPIC", "GOOGLE_CLOUD_PROJECT", "STORAGE_RETRY_DEADLINE_S")
    }
    os.environ["INFERENCE_TOPIC"] = s.topic
    os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
    yield s
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def client(stack):
    import functions_framework

    app = functions_framework.create_app(target="ingest_dicom", source=MAIN, signature_type="cloudevent")
    return app.test_client()


def send(client, event: CloudEvent, binary: bool = False) -> int:
    headers, body = (to_binary if binary else to_structured)(event)
    return client.post("/", headers=headers, data=body).status_code


def fields_of(caplog, message_prefix: str) -> list[dict]:
    return [
        getattr(r, "fields", {})
        for r in caplog.records
        if r.name == "dicom_ingest" and r.getMessage().startswith(message_prefix)
    ]


# --------------------------------------------------------------------------- every pydicom file


@pytest.mark.parametrize("path", TESTDATA, ids=_testdata_id)
def test_every_pydicom_file_through_the_function(stack, client, caplog, path) -> None:
    name = f"pydicom/{_testdata_id(path)}"
    if not name.lower().endswith(".dcm"):
        name += ".dcm"  # so every file is looked at (README.txt would otherwise be any object)
    resource = stack.upload(name, Path(path).read_bytes())
    key = naming.object_key(stack.bucket, name, resource["generation"])
    assert send(client, cloud_event(resource), binary=len(name) % 2 == 0) == 200

    reason = expected_reason(path)
    if reason is not None:
        stack.rejected_keys.add(key)
        record, metadata = stack.record(name)
        assert record["schema"] == "dicom-rejection/1"
        assert record["status"] == "rejected" and record["reason"] == reason
        assert record["message"]
        assert record["source"]["generation"] == resource["generation"]
        assert record["correlation_id"] == naming.correlation_id(stack.bucket, name, resource["generation"])
        assert metadata[naming.MARKER_KEY] == "rejection"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "dicom_ingest"]
        assert [w.fields["reason"] for w in warnings] == [reason]
        return

    (msg,) = stack.wait_message(key)
    body = json.loads(base64.b64decode(msg["data"]))
    ref = oracle(path)
    assert body["schema"] == "dicom-inference-request/1"
    assert body["source"] == {
        "bucket": stack.bucket,
        "name": name,
        "generation": resource["generation"],
        "size": int(resource["size"]),
        "content_type": "application/dicom",
        "uri": f"gs://{stack.bucket}/{name}",
    }
    dicom = body["dicom"]
    assert dicom["modality"] == ref.Modality
    assert (dicom["rows"], dicom["columns"]) == (ref.Rows, ref.Columns)
    assert dicom["sop_instance_uid"] == ref.get("SOPInstanceUID")
    assert dicom["transfer_syntax_uid"] == ref.file_meta.TransferSyntaxUID
    attrs = msg["attributes"]
    assert attrs["modality"] == ref.Modality
    assert attrs.get("sop_instance_uid") == ref.get("SOPInstanceUID")
    assert (attrs["bucket"], attrs["object"], attrs["generation"]) == (
        stack.bucket,
        name,
        resource["generation"],
    )
    assert attrs["dedup_key"] == key and attrs["correlation_id"] == body["correlation_id"]
    (accepted,) = fields_of(caplog, "inference request published")
    assert 0 < accepted["bytes_read"] <= min(int(resource["size"]), 65536)


def test_nothing_was_published_for_rejected_files(stack) -> None:
    stack.drain()
    assert stack.rejected_keys, "the pydicom files ran first"
    assert not (stack.rejected_keys & set(stack.messages))


# --------------------------------------------------------------------------- files made here


def test_fifty_megabyte_image_costs_under_one_percent(stack, client, caplog) -> None:
    data = make_dicom(5000, 5000, fill=100)
    resource = stack.upload("big/chest-50mb.DCM", data)
    assert int(resource["size"]) > 50_000_000
    assert send(client, cloud_event(resource)) == 200
    (accepted,) = fields_of(caplog, "inference request published")
    assert accepted["object_size"] == len(data)
    assert accepted["bytes_read"] / len(data) < 0.01
    assert accepted["range_requests"] == 1
    (msg,) = stack.wait_message(naming.object_key(stack.bucket, "big/chest-50mb.DCM", resource["generation"]))
    assert json.loads(base64.b64decode(msg["data"]))["dicom"]["rows"] == 5000


def test_header_longer_than_the_first_range(stack, client, caplog) -> None:
    data = make_dicom(1024, 1024, extra=long_sequence(3000))
    resource = stack.upload("long/header.dcm", data)
    assert send(client, cloud_event(resource)) == 200
    (accepted,) = fields_of(caplog, "inference request published")
    assert 65536 < accepted["bytes_read"] < len(data) / 2
    assert accepted["range_requests"] >= 2
    stack.wait_message(naming.object_key(stack.bucket, "long/header.dcm", resource["generation"]))


def test_large_deflated_image_is_accepted_from_its_header(stack, client, caplog) -> None:
    data = deflate(noisy_image(2048, 2048))
    resource = stack.upload("deflated/big.dcm", data)
    assert int(resource["size"]) > 5_000_000  # far above HEADER_MAX_BYTES
    assert send(client, cloud_event(resource)) == 200
    (accepted,) = fields_of(caplog, "inference request published")
    assert accepted["bytes_read"] <= 65536 and accepted["range_requests"] == 1
    (msg,) = stack.wait_message(naming.object_key(stack.bucket, "deflated/big.dcm", resource["generation"]))
    dicom = json.loads(base64.b64decode(msg["data"]))["dicom"]
    assert dicom["transfer_syntax_uid"] == "1.2.840.10008.1.2.1.99" and dicom["rows"] == 2048


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("made/photo.dcm", png_bytes(), "not_dicom"),
        ("made/empty.dcm", b"", "empty_object"),
        ("made/cut.dcm", make_dicom(256, 256)[:600], "truncated"),
    ],
)
def test_files_made_here_are_rejected(stack, client, caplog, name, data, reason) -> None:
    resource = stack.upload(name, data)
    assert send(client, cloud_event(resource)) == 200
    record, metadata = stack.record(name)
    assert record["reason"] == reason and record["status"] == "rejected"
    assert metadata[naming.MARKER_KEY] == "rejection"
    (warning,) = fields_of(caplog, "DICOM upload rejected")
    assert warning["reason"] == reason
    if reason == "empty_object":
        assert warning["bytes_read"] == 0


def test_character_set_reaches_the_message(stack, client) -> None:
    data = make_dicom(charset="ISO_IR 192", patient_id="患者-Ωμέγα")
    resource = stack.upload("charset/utf8.dcm", data)
    assert send(client, cloud_event(resource)) == 200
    (msg,) = stack.wait_message(naming.object_key(stack.bucket, "charset/utf8.dcm", resource["generation"]))
    body = json.loads(base64.b64decode(msg["data"]).decode("utf-8"))
    assert body["dicom"]["patient_id"] == "患者-Ωμέγα"
    assert body["dicom"]["specific_character_set"] == "ISO_IR 192"


def test_published_message_matches_its_json_schema(stack, client) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    resource = stack.upload("schema/cr.dcm", make_dicom())
    assert send(client, cloud_event(resource)) == 200
    (msg,) = stack.wait_message(naming.object_key(stack.bucket, "schema/cr.dcm", resource["generation"]))
    jsonschema.validate(json.loads(base64.b64decode(msg["data"])), json.loads(SCHEMA_FILE.read_text()))


# --------------------------------------------------------------------------- loop guard, retries


def test_pipeline_outputs_are_ignored_without_a_read(stack, client, caplog) -> None:
    # These objects do not exist: any read would end as "gone", not "ignored".
    for name, metadata in (
        ("out/a.lime.png", None),
        ("out/a.overlay.png", None),
        ("out/a.result.json", None),
        ("out/a.rejected.json", None),
        ("out/marked.dcm", {naming.MARKER_KEY: "result"}),
    ):
        resource = {"bucket": stack.bucket, "name": name, "generation": "1", "size": "100"}
        if metadata:
            resource["metadata"] = metadata
        assert send(client, cloud_event(resource)) == 200
    ignored = fields_of(caplog, "object ignored: written by the pipeline")
    assert len(ignored) == 5
    assert not fields_of(caplog, "object generation gone")


def test_a_rejection_record_does_not_trigger_again(stack, client, caplog) -> None:
    resource = stack.upload("loop/bad.dcm", b"not dicom at all, just text" * 10)
    assert send(client, cloud_event(resource)) == 200
    record_resource = stack.resource("loop/bad.rejected.json")
    assert record_resource["metadata"][naming.MARKER_KEY] == "rejection"
    caplog.clear()
    assert send(client, cloud_event(record_resource)) == 200
    assert len(fields_of(caplog, "object ignored")) == 1
    assert not fields_of(caplog, "DICOM upload rejected")


def test_redelivered_event_publishes_an_identical_deduplicable_message(stack, client) -> None:
    resource = stack.upload("dup/cr.dcm", make_dicom())
    event = cloud_event(resource, event_id="redelivered-1")
    assert send(client, event) == 200
    assert send(client, event) == 200
    key = naming.object_key(stack.bucket, "dup/cr.dcm", resource["generation"])
    first, second = stack.wait_message(key, count=2)
    assert first["data"] == second["data"]
    # The traceparent names each attempt's publish span; the trace is the upload's, the same.
    first_tp, second_tp = (m["attributes"].pop(tracing.PUBSUB_ATTRIBUTE) for m in (first, second))
    assert first_tp.split("-")[1] == second_tp.split("-")[1] == first["attributes"]["correlation_id"]
    assert first_tp != second_tp
    assert first["attributes"] == second["attributes"]
    assert first["messageId"] != second["messageId"]  # Pub/Sub ids differ: dedupe on dedup_key


def test_overwritten_generation_is_skipped(stack, client, caplog) -> None:
    old = stack.upload("gen/x.dcm", make_dicom())
    stack.upload("gen/x.dcm", make_dicom())
    assert send(client, cloud_event(old)) == 200
    assert fields_of(caplog, "object generation gone")
    stack.drain()
    assert naming.object_key(stack.bucket, "gen/x.dcm", old["generation"]) not in stack.messages


# --------------------------------------------------------------------------- malformed events


def _without(resource: dict, *keys: str, **replace: str) -> dict:
    out = {k: v for k, v in resource.items() if k not in keys}
    out.update(replace)
    return out


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("no generation", lambda r: _without(r, "generation")),
        ("empty generation", lambda r: _without(r, generation="")),
        ("generation not a number", lambda r: _without(r, generation="latest")),
        ("size not a number", lambda r: _without(r, size="12 kB")),
        ("negative size", lambda r: _without(r, size="-5")),
    ],
)
def test_malformed_event_is_acknowledged_with_an_error_and_reads_nothing(
    stack, client, caplog, case, change
) -> None:
    """No retry can fix these; and without a generation only the live object could be read,
    which may be another upload than the one the event is about."""
    name = f"malformed/{uuid.uuid4().hex[:8]}.dcm"
    resource = stack.upload(name, make_dicom())
    assert send(client, cloud_event(change(resource))) == 200, case
    (error,) = fields_of(caplog, "invalid storage event")
    assert error["reason"] == "invalid_event" and error["object"] == name
    assert not fields_of(caplog, "inference request published")
    assert stack.storage.bucket(stack.bucket).get_blob(naming.output_name(name, ".rejected.json")) is None
    stack.drain()
    assert not [k for k in stack.messages if k.startswith(f"{stack.bucket}/{name}#")]


def test_event_without_size_reads_it_at_the_events_generation(stack, client, caplog) -> None:
    data = make_dicom()
    resource = stack.upload("nosize/cr.dcm", data)
    assert send(client, cloud_event(_without(resource, "size"))) == 200
    (msg,) = stack.wait_message(naming.object_key(stack.bucket, "nosize/cr.dcm", resource["generation"]))
    assert json.loads(base64.b64decode(msg["data"]))["source"]["size"] == len(data)

    caplog.clear()  # overwritten since: that generation's size cannot be read, and nothing is published
    stack.upload("nosize/cr.dcm", make_dicom())
    assert send(client, cloud_event(_without(resource, "size"))) == 200
    assert fields_of(caplog, "object generation gone")
    assert not fields_of(caplog, "inference request published")


# --------------------------------------------------------------------------- rejection records


def _upload_of(bucket: str, name: str, generation: int) -> message.Upload:
    return message.Upload(bucket, name, str(generation), 100, None, f"ev-{generation}", None)


def _write(stack, name: str, generation: int, reason: str = "not_dicom") -> records.RecordWrite:
    upload = _upload_of(stack.bucket, name, generation)
    record = records.rejection_record(upload, Rejection(reason, f"test {reason}"))
    return records.write_rejection(stack.storage, upload, record)


def test_rejection_record_of_a_newer_generation_is_never_overwritten(stack, caplog) -> None:
    """A late, redelivered event for generation 100 arrives after generation 200 was rejected."""
    name = f"records/{uuid.uuid4().hex[:8]}.dcm"
    _write(stack, name, 200, "truncated")
    caplog.clear()
    late = _write(stack, name, 100, "not_dicom")
    record, metadata = stack.record(name)
    assert (record["source"]["generation"], record["reason"]) == ("200", "truncated")
    assert metadata["dicom-pipeline-source"].endswith("#200")
    assert late.outcome == records.SUPERSEDED
    (kept,) = fields_of(caplog, "rejection record kept")
    assert kept["record_source_generation"] == "200"
    assert [r.levelno for r in caplog.records if r.name == "dicom_ingest"] == [logging.INFO]


def test_rejection_record_of_an_older_generation_is_replaced(stack) -> None:
    name = f"records/{uuid.uuid4().hex[:8]}.dcm"
    assert _write(stack, name, 100, "not_dicom").outcome == records.CREATED
    assert _write(stack, name, 200, "truncated").outcome == records.REPLACED
    record, metadata = stack.record(name)
    assert (record["source"]["generation"], record["reason"]) == ("200", "truncated")
    assert metadata["dicom-pipeline-source"].endswith("#200")


def test_rejection_record_of_the_same_generation_is_kept_as_is(stack) -> None:
    name = f"records/{uuid.uuid4().hex[:8]}.dcm"
    _write(stack, name, 300)
    first = stack.storage.bucket(stack.bucket).get_blob(naming.output_name(name, ".rejected.json"))
    again = _write(stack, name, 300)
    latest = stack.storage.bucket(stack.bucket).get_blob(naming.output_name(name, ".rejected.json"))
    assert latest.generation == first.generation  # not rewritten
    assert again.outcome == records.PRESENT


def test_rejection_record_never_replaces_an_object_the_pipeline_did_not_write(stack, caplog) -> None:
    name = f"records/{uuid.uuid4().hex[:8]}.dcm"
    user_file = naming.output_name(name, ".rejected.json")
    stack.storage.bucket(stack.bucket).blob(user_file).upload_from_string(b"mine")
    written = _write(stack, name, 100)
    assert stack.storage.bucket(stack.bucket).blob(user_file).download_as_bytes() == b"mine"
    assert written.outcome == records.TAKEN
    assert fields_of(caplog, "rejection record not written")


def test_accepting_a_new_generation_removes_the_stale_rejection_record(stack, client, caplog) -> None:
    name = "fixed/chest.dcm"
    bad = stack.upload(name, b"not dicom yet" * 20)
    assert send(client, cloud_event(bad)) == 200
    assert stack.record(name)[0]["source"]["generation"] == bad["generation"]
    good = stack.upload(name, make_dicom())
    assert send(client, cloud_event(good)) == 200
    stack.wait_message(naming.object_key(stack.bucket, name, good["generation"]))
    assert stack.storage.bucket(stack.bucket).get_blob("fixed/chest.rejected.json") is None
    assert fields_of(caplog, "stale rejection record of an older generation removed")


def test_accepting_keeps_rejection_records_that_are_not_stale(stack, client) -> None:
    """A newer generation's record, and another object's record with the same stem, stay."""
    bucket = stack.storage.bucket(stack.bucket)
    good = stack.upload("keep/a.dcm", make_dicom())
    _write(stack, "keep/a.dcm", int(good["generation"]) + 1)  # as if a newer upload was rejected
    other = stack.upload("keep/b.dcm", make_dicom())
    _write(stack, "keep/b.DCM", 1)  # x.DCM shares the stem of x.dcm
    for resource in (good, other):
        assert send(client, cloud_event(resource)) == 200
        stack.wait_message(naming.object_key(stack.bucket, resource["name"], resource["generation"]))
    assert bucket.get_blob("keep/a.rejected.json") is not None
    assert bucket.get_blob("keep/b.rejected.json") is not None


def test_stale_record_removal_is_best_effort(stack, monkeypatch, caplog) -> None:
    """A failure to delete is logged; the acceptance (already published) stands."""
    name = f"records/{uuid.uuid4().hex[:8]}.dcm"
    _write(stack, name, 100)
    monkeypatch.setattr(storage.Blob, "delete", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    assert records.remove_stale_rejection(stack.storage, _upload_of(stack.bucket, name, 200)) is False
    (warning,) = fields_of(caplog, "stale rejection record not removed")
    assert warning["error"] == "OSError"
    monkeypatch.undo()
    assert records.remove_stale_rejection(stack.storage, _upload_of(stack.bucket, name, 200)) is True
    assert stack.storage.bucket(stack.bucket).get_blob(naming.output_name(name, ".rejected.json")) is None


def test_publish_failure_fails_the_event_for_a_retry(stack, client, monkeypatch) -> None:
    monkeypatch.setenv("INFERENCE_TOPIC", "no-such-topic")
    monkeypatch.setenv("PUBLISH_TIMEOUT_S", "10")
    resource = stack.upload("retry/publish.dcm", make_dicom())
    assert send(client, cloud_event(resource)) == 500
    assert stack.storage.bucket(stack.bucket).get_blob("retry/publish.rejected.json") is None


def test_storage_outage_raises_and_writes_nothing(stack, monkeypatch) -> None:
    """Not the file's fault: a real client against a port where nothing listens."""
    monkeypatch.setenv("STORAGE_RETRY_DEADLINE_S", "2")
    monkeypatch.setenv("STORAGE_TIMEOUT_S", "2")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    dead = storage.Client(project=PROJECT)
    resource = stack.upload("outage/x.dcm", make_dicom())
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises must escape
        handler.handle(cloud_event(resource), Settings.from_env(), dead, publisher.make_client())
    assert time.monotonic() - started < 30
    stack.drain()
    assert naming.object_key(stack.bucket, "outage/x.dcm", resource["generation"]) not in stack.messages
    assert stack.storage.bucket(stack.bucket).get_blob("outage/x.rejected.json") is None


def test_logs_never_hold_patient_data(stack, client, caplog) -> None:
    patient_id = "SECRET-PATIENT-4242"
    data = make_dicom(patient_id=patient_id)
    sop_uid = oracle(data).SOPInstanceUID
    resource = stack.upload("privacy/p.dcm", data)
    assert send(client, cloud_event(resource)) == 200
    formatter = jsonlog.CloudLoggingFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    assert lines and all(patient_id not in line and sop_uid not in line for line in lines)
    (accepted,) = fields_of(caplog, "inference request published")
    assert accepted["sop_instance_uid_hash"] == naming.hash_uid(sop_uid)


def test_settings_defaults(monkeypatch) -> None:
    monkeypatch.setenv("INFERENCE_TOPIC", "projects/p1/topics/t1")
    for k in ("ALLOWED_MODALITIES", "HEADER_INITIAL_BYTES", "HEADER_MAX_BYTES", "MAX_PIXELS"):
        monkeypatch.delenv(k, raising=False)
    s = Settings.from_env()
    assert s.topic_path == "projects/p1/topics/t1"
    assert s.header_initial_bytes == 65536 and s.header_max_bytes == 1 << 20
    assert "CR" in s.allowed_modalities and "SEG" not in s.allowed_modalities
    monkeypatch.setenv("ALLOWED_MODALITIES", "*")
    assert Settings.from_env().allowed_modalities is None
    monkeypatch.setenv("ALLOWED_MODALITIES", "cr, dx")
    assert Settings.from_env().allowed_modalities == frozenset({"CR", "DX"})
