"""The real Flask app, real push envelopes, real objects in fake-gcs-server, the real demo model,
and a real local HTTP server as the Django webhook."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from google.api_core.exceptions import NotFound, ServiceUnavailable
from google.cloud import pubsub_v1, storage
from PIL import Image
from werkzeug.serving import make_server

from devkit import synthetic
from gpu_service.app import create_app
from gpu_service.inference import render
from gpu_service.inference.model import LoadedModel, load_model
from gpu_service.inference.pixels import decode, read_dicom, to_uint8
from gpu_service.pipeline import processing
from gpu_service.results.cloud_storage import GcsStore
from gpu_service.results.webhook_signature import idempotency_key
from gpu_service.settings import Settings
from infra.local import emulators
from pipeline_common import jsonlog, naming
from pipeline_common.contract import DEFAULT_MAX_PIXELS
from pipeline_common.naming import DELIVERED_KEY
from tests.conftest import unique
from tests.support.service import (
    PROJECT,
    SECRET,
    WebhookServer,
    WorkCounts,
    count_work,
    dicom_bytes,
    envelope,
    header_of,
    read_object,
    request_body,
    upload,
)

# The result's DICOM objects beside the upload (a heat-map SEG when the explanation has weights).
DICOM_SUFFIXES = (naming.SEG_SUFFIX, naming.SR_SUFFIX) + (
    (naming.HEATMAP_SEG_SUFFIX,) if "pixel_weights" in processing.Explanation.__dataclass_fields__ else ()
)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    m = load_model()
    m.warmup()
    return m


def _settings(webhook: WebhookServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "project": PROJECT,
        "webhook_url": webhook.url,
        "webhook_secret": SECRET,
        "webhook_max_attempts": 2,
        "webhook_backoff_base_s": 0.01,
        "webhook_backoff_max_s": 0.02,
        "lime_num_samples": 64,
        "lime_batch_size": 32,
        "batch_max_size": 128,
        "batch_max_wait_ms": 20,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_app(model: LoadedModel, webhook: WebhookServer) -> Iterator[Any]:
    apps = []

    def factory(**overrides: Any) -> Any:
        app = create_app(_settings(webhook, **overrides), model=model)
        app.extensions["work_counts"] = count_work(app.extensions["gpu_service"].processor)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["gpu_service"].close()


def _stats(app: Any) -> WorkCounts:
    return app.extensions["work_counts"]


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_health_and_readiness(make_app: Any) -> None:
    client = make_app().test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["model"]["sha256"]


def test_push_writes_artifacts_and_calls_signed_webhook(
    make_app: Any, webhook: WebhookServer, bucket_name: str, model: LoadedModel
) -> None:
    app = make_app()
    data = dicom_bytes(nodule=True, size=200, patient_id="PAT-0042", modality="DX")
    blob = upload(bucket_name, "study/1/image.DCM", data)
    header = header_of(data)
    response = app.test_client().post(
        "/", json=envelope(request_body(blob, header)), headers={"X-Cloud-Trace-Context": "abc123/1;o=1"}
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outcome"] == "completed"

    gen = str(blob.generation)
    source_marker = f"gs://{bucket_name}/study/1/image.DCM#{gen}"
    outputs = {}
    for suffix, role in [(".png", "preview"), (".lime.png", "mask"), (".overlay.png", "overlay"),
                         (".heatmap.png", "heatmap"), (".result.json", "result")]:  # fmt: skip
        found = read_object(bucket_name, "study/1/image" + suffix)
        assert found is not None, suffix
        content, metadata = found
        assert metadata[naming.MARKER_KEY] == role
        assert metadata["dicom-pipeline-source"] == source_marker
        assert metadata["dicom-pipeline-correlation-id"] == blob_correlation(blob)
        outputs[role] = content

    # STEM.png is the image as decoded and windowed, before resizing.
    expected = to_uint8(decode(read_dicom(data)))
    preview = np.asarray(_png(outputs["preview"]))
    assert preview.shape == (200, 200) and np.array_equal(preview, expected)
    assert _png(outputs["mask"]).mode == "1"  # 1-bit grayscale (docs/contracts.md)
    mask = np.asarray(_png(outputs["mask"]).convert("L"))
    assert mask.shape == (200, 200) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    overlay = _png(outputs["overlay"])
    assert overlay.size == (200, 200) and overlay.mode == "RGB"
    heatmap = _png(outputs["heatmap"])
    assert heatmap.size == (200, 200) and heatmap.mode == "RGB"

    # The stored record is the webhook body, byte for byte, and it is signed.
    assert len(webhook.accepted()) == 1
    call = webhook.accepted()[0]
    assert call.body == outputs["result"]
    assert call.signature_ok  # the standardwebhooks library's check (service_support)
    assert call.headers["webhook-id"] == idempotency_key(bucket_name, blob.name, gen, model.info.sha256)
    assert call.headers["X-Correlation-Id"] == blob_correlation(blob)

    record = json.loads(call.body)
    assert record["status"] == "completed" and record["schema"] == "dicom-inference-result/1"
    assert record["patient_id"] == "PAT-0042" and record["study_modality"] == "DX"
    for key in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        assert record[key] == header[key]
    assert record["prediction"]["label"] in model.info.labels
    assert set(record["prediction"]["scores"]) == set(model.info.labels)
    assert abs(sum(record["prediction"]["scores"].values()) - 1) < 1e-3
    assert record["image_uri"] == f"gs://{bucket_name}/study/1/image.png"
    explanation = record["explanation"]
    assert explanation["method"] == "lime"
    assert explanation["mask_uri"] == f"gs://{bucket_name}/study/1/image.lime.png"
    assert explanation["overlay_uri"] == f"gs://{bucket_name}/study/1/image.overlay.png"
    assert explanation["parameters"]["num_samples"] == 64 and explanation["top_segments"]
    assert explanation["heatmap_uri"] == f"gs://{bucket_name}/study/1/image.heatmap.png"
    assert 0.0 <= explanation["stability"] <= 1.0 and 1 <= explanation["samples_used"] <= 64
    assert explanation["reason"] is None
    assert record["source"] == {"bucket": bucket_name, "name": "study/1/image.DCM",
                                "uri": f"gs://{bucket_name}/study/1/image.DCM",
                                "generation": gen}  # fmt: skip
    assert record["model"] == model.info.as_record()
    assert {"download", "decode", "predict", "explain", "render", "write"} <= set(record["timings_ms"])
    assert "error" not in record
    assert _stats(app).inferences == 1


def test_renderings_have_the_display_size_the_mask_and_seg_the_sources(
    make_app: Any, bucket_name: str
) -> None:
    """RENDER_MAX_SIDE shrinks STEM.png, the overlay and the heat map (aspect ratio kept); the
    mask PNG keeps the source's rows x columns and the SEG holds exactly its pixels."""
    sample = synthetic.make_radiograph(np.random.default_rng(31), size=200, nodule=True)
    ds = synthetic.to_dicom_dataset(sample.image[:, 25:175], modality="DX")  # 200 rows x 150 columns
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    blob = upload(bucket_name, "display/x.dcm", data)
    response = make_app(render_max_side=64).test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200 and response.get_json()["outcome"] == "completed"

    decoded = to_uint8(decode(read_dicom(data)))
    preview = _png(read_object(bucket_name, "display/x.png")[0])
    assert preview.size == (48, 64) and preview.mode == "L"  # (width, height): 150 x 64 / 200 = 48
    shrunk = Image.fromarray(decoded).resize((48, 64), Image.Resampling.BOX)
    assert np.array_equal(np.asarray(preview), np.asarray(shrunk))
    for suffix in (".overlay.png", ".heatmap.png"):
        rendering = _png(read_object(bucket_name, "display/x" + suffix)[0])
        assert rendering.size == (48, 64) and rendering.mode == "RGB", suffix
    mask = np.asarray(_png(read_object(bucket_name, "display/x.lime.png")[0]).convert("L"))
    assert mask.shape == (200, 150) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    record = json.loads(read_object(bucket_name, "display/x.result.json")[0])
    assert (record["image"]["rows"], record["image"]["columns"]) == (200, 150)

    seg = hd.seg.segread(io.BytesIO(read_object(bucket_name, "display/x" + naming.SEG_SUFFIX)[0]))
    pixels = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
    assert np.array_equal(pixels.astype(bool), mask == 255)


def blob_correlation(blob: storage.Blob) -> str:
    return naming.correlation_id(blob.bucket.name, blob.name, blob.generation)


def _delivered_marker(bucket: str, name: str) -> str | None:
    found = read_object(bucket, name)
    assert found is not None
    return found[1].get(DELIVERED_KEY)


def test_duplicate_after_an_accepted_webhook_sends_nothing(
    make_app: Any, webhook: WebhookServer, bucket_name: str, caplog: Any
) -> None:
    """Eventarc and Pub/Sub deliver at least once: a redelivery of a result Django already
    accepted is acknowledged with no inference and no second webhook."""
    app = make_app()
    blob = upload(bucket_name, "a.dcm", dicom_bytes(seed=3))
    env = envelope(request_body(blob))
    assert app.test_client().post("/", json=env).get_json()["outcome"] == "completed"
    record_blob = storage.Client(project=PROJECT).bucket(bucket_name).get_blob("a.result.json")
    marker = (record_blob.metadata or {}).get(DELIVERED_KEY)
    assert marker and datetime.fromisoformat(marker).tzinfo is not None  # RFC 3339, UTC
    assert (record_blob.metadata or {})[naming.MARKER_KEY] == "result"  # the patch merged

    with caplog.at_level(logging.INFO, logger="gpu_service.results.delivery"):
        for attempt in (2, None):
            again = app.test_client().post("/", json=envelope(request_body(blob), attempt=attempt))
            assert again.status_code == 200 and again.get_json()["outcome"] == "duplicate"
    assert "duplicate: webhook already delivered" in caplog.messages
    assert _stats(app).inferences == 1
    assert len(webhook.calls) == 1
    after = storage.Client(project=PROJECT).bucket(bucket_name).get_blob("a.result.json")
    assert after.generation == record_blob.generation  # not rewritten
    assert after.metadata[DELIVERED_KEY] == marker


def test_webhook_down_then_redelivery_runs_inference_once(
    make_app: Any, webhook: WebhookServer, bucket_name: str
) -> None:
    app = make_app()
    blob = upload(bucket_name, "down/x.dcm", dicom_bytes(seed=4))
    env = envelope(request_body(blob))
    webhook.fail_next = 100
    first = app.test_client().post("/", json=env)
    assert first.status_code == 503 and first.get_json()["error_code"] == "webhook_failed"
    assert len(webhook.calls) == 2  # WEBHOOK_MAX_ATTEMPTS, all refused
    stored = read_object(bucket_name, "down/x.result.json")
    assert stored is not None  # the result is safe before the webhook is tried

    assert DELIVERED_KEY not in stored[1]

    webhook.fail_next = 0
    second = app.test_client().post("/", json=env)
    assert second.status_code == 200 and second.get_json()["outcome"] == "duplicate"
    assert _stats(app).inferences == 1
    accepted = webhook.accepted()
    assert [c.body for c in accepted] == [stored[0]]  # re-sent once, byte for byte
    assert accepted[0].headers["webhook-id"] == webhook.calls[0].headers["webhook-id"]
    assert _delivered_marker(bucket_name, "down/x.result.json")
    # Any later redelivery finds the marker: nothing more reaches Django.
    third = app.test_client().post("/", json=env)
    assert third.status_code == 200 and third.get_json()["outcome"] == "duplicate"
    assert len(webhook.calls) == 3


def test_delivered_marker_failure_is_not_fatal(
    make_app: Any, webhook: WebhookServer, bucket_name: str, monkeypatch: Any
) -> None:
    """Without the marker the worst case is one more, idempotent, webhook."""
    app = make_app()
    store = app.extensions["gpu_service"].processor.cloud_storage
    blob = upload(bucket_name, "nomark/x.dcm", dicom_bytes(seed=6))
    env = envelope(request_body(blob))

    def outage(*args: Any, **kwargs: Any) -> None:
        raise ServiceUnavailable("storage is down")

    monkeypatch.setattr(store, "mark_delivered", outage)
    first = app.test_client().post("/", json=env)
    assert first.status_code == 200 and first.get_json()["outcome"] == "completed"
    assert _delivered_marker(bucket_name, "nomark/x.result.json") is None

    monkeypatch.undo()
    second = app.test_client().post("/", json=env)
    assert second.status_code == 200 and second.get_json()["outcome"] == "duplicate"
    assert _delivered_marker(bucket_name, "nomark/x.result.json")
    assert len(webhook.accepted()) == 2 and _stats(app).inferences == 1


def test_delivered_marker_is_merged_into_the_record_it_names(bucket_name: str) -> None:
    """The patch adds one key to the record's own markers; a record gone since it was
    delivered is an error (for the caller to log), never a new object. (fake-gcs-server does
    not enforce ``ifGenerationMatch`` on a metadata patch; Cloud Storage does.)"""
    store = GcsStore(project=PROJECT)
    loc = store.location(bucket_name, "gen/x.dcm", naming.RESULT_SUFFIX)
    written = store.write_output(
        loc, b"{}", content_type="application/json", role="result", source_bucket=bucket_name,
        source_name="gen/x.dcm", source_generation="2", correlation_id="c", model_sha256="m",
    )  # fmt: skip
    assert written.generation
    store.mark_delivered(loc, written.generation, "2024-01-01T00:00:00Z")
    stored = store.read_output(loc)
    assert stored is not None and stored.generation == written.generation
    assert stored.metadata[DELIVERED_KEY] == "2024-01-01T00:00:00Z"
    assert stored.metadata[naming.MARKER_KEY] == "result"
    assert stored.metadata["dicom-pipeline-source"].endswith("/gen/x.dcm#2")

    storage.Client(project=PROJECT).bucket(bucket_name).blob(loc.name).delete()
    with pytest.raises(NotFound):
        store.mark_delivered(loc, written.generation, "2024-01-01T00:00:01Z")
    assert read_object(bucket_name, loc.name) is None


def test_concurrent_identical_deliveries_store_one_result(
    make_app: Any, webhook: WebhookServer, bucket_name: str
) -> None:
    """Two instances (here: two threads) handed the same message both finish without clobbering."""
    app = make_app()
    blob = upload(bucket_name, "twin.dcm", dicom_bytes(seed=5))
    env = envelope(request_body(blob))
    statuses: list[int] = []

    def push() -> None:
        statuses.append(app.test_client().post("/", json=env).status_code)

    threads = [threading.Thread(target=push) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200, 200]
    stored = read_object(bucket_name, "twin.result.json")
    assert stored is not None
    bodies = {c.body for c in webhook.accepted()}
    assert bodies == {stored[0]}  # whoever lost the race sent the stored record, not its own


@pytest.mark.parametrize(
    ("payload", "codes"),
    [
        (b"this is not a DICOM file at all" * 10, {"not_dicom"}),
        (b"", {"not_dicom", "empty_object"}),
        ("truncated", {"truncated", "decode_failed", "not_dicom"}),
        ("no_pixels", {"no_pixel_data"}),
    ],
    ids=["garbage", "empty", "truncated", "no-pixel-data"],
)
def test_undecodable_file_is_a_recorded_failure(
    make_app: Any, webhook: WebhookServer, bucket_name: str, payload: Any, codes: set[str]
) -> None:
    if payload == "truncated":
        payload = dicom_bytes(seed=6)[:2000]
    elif payload == "no_pixels":
        ds = pydicom.dcmread(pydicom.data.get_testdata_file("rtplan.dcm"))
        buffer = io.BytesIO()
        ds.save_as(buffer)
        payload = buffer.getvalue()
    app = make_app()
    blob = upload(bucket_name, "bad/file.dcm", payload)
    response = app.test_client().post("/", json=envelope(request_body(blob, {"patient_id": "P-9"})))
    assert response.status_code == 200 and response.get_json()["outcome"] == "failed"
    stored = read_object(bucket_name, "bad/file.result.json")
    assert stored is not None
    record = json.loads(stored[0])
    assert record["status"] == "failed" and record["error"]["code"] in codes and record["error"]["message"]
    assert record["patient_id"] == "P-9" and record["prediction"] is None
    assert {"download", "decode"} <= set(record["timings_ms"])
    assert [c.body for c in webhook.accepted()] == [stored[0]]
    assert read_object(bucket_name, "bad/file.png") is None
    assert _stats(app).inferences == 0


def test_missing_object_is_acked_with_failed_record(
    make_app: Any, webhook: WebhookServer, bucket_name: str
) -> None:
    body = {
        "schema": "dicom-inference-request/1",
        "source": {"bucket": bucket_name, "name": "gone.dcm", "generation": "12345"},
        "dicom": {"patient_id": "P-1"},
    }
    response = make_app().test_client().post("/", json=envelope(body))
    assert response.status_code == 200 and response.get_json()["error_code"] == "object_missing"
    record = json.loads(read_object(bucket_name, "gone.result.json")[0])
    assert record["status"] == "failed" and record["source"]["generation"] == "12345"
    assert json.loads(webhook.accepted()[0].body)["error"]["code"] == "object_missing"


def test_replaced_generation_then_newer_result_is_never_clobbered(
    make_app: Any, webhook: WebhookServer, bucket_name: str
) -> None:
    app = make_app()
    old = upload(bucket_name, "v.dcm", dicom_bytes(seed=7))
    new = upload(bucket_name, "v.dcm", dicom_bytes(seed=8))
    client = app.test_client()

    r = client.post("/", json=envelope(request_body(old)))
    assert r.status_code == 200 and r.get_json()["error_code"] == "generation_changed"
    # The newer upload replaces the older generation's failed record (precondition on its generation).
    assert client.post("/", json=envelope(request_body(new))).get_json()["outcome"] == "completed"
    record = json.loads(read_object(bucket_name, "v.result.json")[0])
    assert record["status"] == "completed" and record["source"]["generation"] == str(new.generation)
    # A late redelivery of the old message must not overwrite it.
    late = client.post("/", json=envelope(request_body(old)))
    assert late.status_code == 200 and late.get_json()["outcome"] == "superseded"
    again = json.loads(read_object(bucket_name, "v.result.json")[0])
    assert again == record


def test_oversized_object_is_a_recorded_failure(make_app: Any, bucket_name: str) -> None:
    blob = upload(bucket_name, "huge.dcm", dicom_bytes(seed=9))
    response = make_app(max_object_bytes=1000).test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200 and response.get_json()["error_code"] == "object_too_large"


def test_malformed_message_is_not_acked(make_app: Any, webhook: WebhookServer) -> None:
    client = make_app().test_client()
    assert client.post("/", data=b"not json", content_type="application/json").status_code == 400
    bad_schema = envelope({"schema": "something-else/1", "source": {}})
    assert client.post("/", json=bad_schema).status_code == 400
    assert webhook.calls == []


def test_storage_outage_asks_for_redelivery(make_app: Any, webhook: WebhookServer) -> None:
    """When even the failed record cannot be stored (here: the bucket is gone), nothing is acked:
    the message comes back, and after the maximum attempts it is dead-lettered, never dropped."""
    body = {
        "schema": "dicom-inference-request/1",
        "source": {"bucket": "no-such-bucket-xyz", "name": "a.dcm", "generation": "1"},
    }
    response = make_app().test_client().post("/", json=envelope(body))
    assert response.status_code == 503
    assert webhook.calls == []


def test_output_bucket_and_prefix_relocate_outputs(
    make_app: Any, webhook: WebhookServer, bucket_name: str, gcs_server: Any
) -> None:
    """One output bucket serves many upload buckets: the source bucket is part of every name,
    so the same object name in two buckets never collides."""
    out_bucket = bucket_name + "-out"
    other_bucket = bucket_name + "-other"
    gcs_server.create_bucket(out_bucket)
    gcs_server.create_bucket(other_bucket)
    app = make_app(output_bucket=out_bucket, output_prefix="results")
    for bucket, seed in ((bucket_name, 10), (other_bucket, 11)):
        blob = upload(bucket, "ro/img.dcm", dicom_bytes(seed=seed))
        response = app.test_client().post("/", json=envelope(request_body(blob)))
        assert response.status_code == 200 and response.get_json()["outcome"] == "completed"
    names = sorted(b.name for b in storage.Client(project=PROJECT).list_blobs(out_bucket))
    assert names == sorted(
        f"results/{b}/ro/img{s}"
        for b in (bucket_name, other_bucket)
        for s in (".lime.png", ".overlay.png", ".heatmap.png", ".png", ".result.json", *DICOM_SUFFIXES)
    )
    assert [b.name for b in storage.Client(project=PROJECT).list_blobs(bucket_name)] == ["ro/img.dcm"]
    records = [json.loads(c.body) for c in webhook.accepted()]
    assert [r["image_uri"] for r in records] == [
        f"gs://{out_bucket}/results/{bucket_name}/ro/img.png",
        f"gs://{out_bucket}/results/{other_bucket}/ro/img.png",
    ]
    assert [r["source"]["bucket"] for r in records] == [bucket_name, other_bucket]


def test_same_stem_of_another_object_is_not_this_objects_result(
    make_app: Any, webhook: WebhookServer, bucket_name: str
) -> None:
    """``a.DCM`` (older) and ``a.dcm`` (newer) share ``a.result.json``: the record of ``a.dcm``
    is neither a newer result of ``a.DCM`` (acked with nothing stored) nor its duplicate."""
    client = make_app().test_client()
    upper = upload(bucket_name, "stem/a.DCM", dicom_bytes(seed=12))
    lower = upload(bucket_name, "stem/a.dcm", dicom_bytes(seed=13))
    assert client.post("/", json=envelope(request_body(lower))).get_json()["outcome"] == "completed"
    stored = read_object(bucket_name, "stem/a.result.json")
    response = client.post("/", json=envelope(request_body(upper)))
    assert response.status_code == 503 and response.get_json()["error_code"] == "output_conflict"
    assert read_object(bucket_name, "stem/a.result.json") == stored  # never clobbered
    assert [json.loads(c.body)["source"]["name"] for c in webhook.accepted()] == ["stem/a.dcm"]


def test_foreign_object_holding_the_record_name_is_never_acked(
    make_app: Any, webhook: WebhookServer, bucket_name: str
) -> None:
    """Someone's own ``x.result.json`` (no pipeline marker): it is not a result, it is not
    overwritten, and without a stored record the message is not acknowledged (-> dead letter)."""
    client = make_app().test_client()
    foreign = json.dumps({"source": {"uri": "whatever"}, "status": "completed"}).encode()
    upload(bucket_name, "foreign/x.result.json", foreign, content_type="application/json")
    blob = upload(bucket_name, "foreign/x.dcm", dicom_bytes(seed=14))
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    try:
        response = client.post("/", json=envelope(request_body(blob)))
    finally:
        logging.getLogger().removeHandler(capture)
    assert response.status_code == 503 and response.get_json()["error_code"] == "output_conflict"
    assert read_object(bucket_name, "foreign/x.result.json")[0] == foreign
    assert webhook.calls == []
    errors = [json.loads(line) for line in capture.lines if '"ERROR"' in line]
    assert any(e["message"].startswith("cannot store the result record") and "not written" in e["reason"]
               for e in errors)  # fmt: skip


@pytest.mark.parametrize("error", [MemoryError, OSError], ids=["memory", "io"])
def test_memory_and_io_errors_are_retried_not_recorded(
    make_app: Any, webhook: WebhookServer, bucket_name: str, monkeypatch: Any, error: type
) -> None:
    def exploding_decode(ds: Any) -> Any:
        raise error("out of memory" if error is MemoryError else "I/O error")

    monkeypatch.setattr(processing, "decode", exploding_decode)
    blob = upload(bucket_name, "mem/x.dcm", dicom_bytes(seed=15))
    response = make_app().test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 503 and response.get_json()["outcome"] == "retry"
    assert read_object(bucket_name, "mem/x.result.json") is None and webhook.calls == []


def test_failure_of_a_pure_stage_is_a_recorded_failure(
    make_app: Any, webhook: WebhookServer, bucket_name: str, monkeypatch: Any
) -> None:
    """Rendering fails the same way on every delivery: record it and tell Django at once."""

    def broken_overlay(small: Any, mask: Any) -> Any:
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(render, "_overlay_on", broken_overlay)  # on the renderings' worker thread
    blob = upload(bucket_name, "pure/x.dcm", dicom_bytes(seed=16))
    response = make_app().test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200 and response.get_json()["error_code"] == "render_failed"
    record = json.loads(read_object(bucket_name, "pure/x.result.json")[0])
    assert record["status"] == "failed" and "broadcast" in record["error"]["message"]
    assert [c.body for c in webhook.accepted()] == [read_object(bucket_name, "pure/x.result.json")[0]]


def test_model_errors_retry_until_the_last_useful_delivery_then_are_recorded(
    make_app: Any, webhook: WebhookServer, bucket_name: str, monkeypatch: Any
) -> None:
    """A model/GPU error is retried, but Django hears of it before the message is dead-lettered:
    at delivery MAX_DELIVERY_ATTEMPTS - 1 a ``retries_exhausted`` record is stored and sent."""

    def broken_infer(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: device lost")

    monkeypatch.setattr(processing, "infer", broken_infer)
    client = make_app(max_delivery_attempts=5).test_client()
    blob = upload(bucket_name, "gpu/x.dcm", dicom_bytes(seed=17))
    for attempt in (None, 1, 3):  # None: the emulator sends no deliveryAttempt
        response = client.post("/", json=envelope(request_body(blob), attempt=attempt))
        assert response.status_code == 503 and response.get_json()["outcome"] == "retry"
    assert read_object(bucket_name, "gpu/x.result.json") is None and webhook.calls == []

    response = client.post("/", json=envelope(request_body(blob), attempt=4))
    assert response.status_code == 200 and response.get_json()["error_code"] == "retries_exhausted"
    stored = read_object(bucket_name, "gpu/x.result.json")[0]
    record = json.loads(stored)
    assert record["status"] == "failed" and "device lost" in record["error"]["message"]
    assert [c.body for c in webhook.accepted()] == [stored]
    # The last delivery (if the webhook had failed) only re-sends the stored record.
    again = client.post("/", json=envelope(request_body(blob), attempt=5))
    assert again.status_code == 200 and again.get_json()["outcome"] == "duplicate"


def test_too_many_pixels_is_a_recorded_failure_before_decoding(
    make_app: Any, webhook: WebhookServer, bucket_name: str, monkeypatch: Any
) -> None:
    def must_not_decode(ds: Any) -> Any:
        raise AssertionError("pixels decoded despite the budget")

    monkeypatch.setattr(processing, "decode", must_not_decode)
    blob = upload(bucket_name, "big/x.dcm", dicom_bytes(seed=18, size=160))
    app = make_app(max_pixels=160 * 160 - 1)
    response = app.test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200 and response.get_json()["error_code"] == "image_too_large"
    record = json.loads(read_object(bucket_name, "big/x.result.json")[0])
    assert record["status"] == "failed" and str(160 * 160) in record["error"]["message"]
    assert len(webhook.accepted()) == 1 and _stats(app).inferences == 0


@pytest.mark.parametrize(
    ("rows", "columns", "frames"),
    [(10_000, 10_000, None), (512, 512, 500)],
    ids=["10000x10000", "500-frames-of-512x512"],
)
def test_header_above_the_default_budget_is_image_too_large_without_decoding(
    make_app: Any,
    webhook: WebhookServer,
    bucket_name: str,
    monkeypatch: Any,
    rows: int,
    columns: int,
    frames: Any,
) -> None:
    """Issue 17's bad input at the production budget (DEFAULT_MAX_PIXELS, 64 Mi pixels): a
    10,000 x 10,000 image (100 M pixels) or 500 frames of 512 x 512 (131 M) is refused from
    its header alone. The file is small: the header claims the size, the pixel data is a few
    bytes, so only a check made before decoding can give ``image_too_large`` (decoding would
    fail with another code, or allocate 200-260 MB)."""

    def must_not_decode(ds: Any) -> Any:
        raise AssertionError("pixels decoded despite the budget")

    monkeypatch.setattr(processing, "decode", must_not_decode)
    ds = synthetic.to_dicom_dataset(np.zeros((8, 8)), modality="DX")
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.NumberOfFrames = frames
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    pixels = rows * columns * (frames or 1)
    assert len(data) < 4096  # a header that lies, not 200 MB of pixels
    blob = upload(bucket_name, "huge/claims.dcm", data)
    app = make_app(max_pixels=DEFAULT_MAX_PIXELS)
    assert DEFAULT_MAX_PIXELS == 64 * 1024 * 1024 < pixels
    response = app.test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200 and response.get_json()["error_code"] == "image_too_large"
    record = json.loads(read_object(bucket_name, "huge/claims.result.json")[0])
    assert record["status"] == "failed" and record["error"]["code"] == "image_too_large"
    assert str(pixels) in record["error"]["message"] and str(64 * 1024 * 1024) in record["error"]["message"]
    assert len(webhook.accepted()) == 1 and _stats(app).inferences == 0
    assert read_object(bucket_name, "huge/claims.png") is None


def test_real_pydicom_file(make_app: Any, webhook: WebhookServer, bucket_name: str) -> None:
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    with open(path, "rb") as fh:
        data = fh.read()
    blob = upload(bucket_name, "ct/CT_small.dcm", data)
    response = make_app().test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200 and response.get_json()["outcome"] == "completed"
    record = json.loads(webhook.accepted()[0].body)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    # Header fields the message lacked come from the dataset itself.
    assert record["sop_instance_uid"] == ds.SOPInstanceUID and record["study_modality"] == "CT"
    mask = _png(read_object(bucket_name, "ct/CT_small.lime.png")[0])
    assert mask.size == (ds.Columns, ds.Rows)


def test_concurrent_requests_share_the_batcher(
    make_app: Any, webhook: WebhookServer, bucket_name: str
) -> None:
    app = make_app(batch_max_wait_ms=200)
    blobs = [upload(bucket_name, f"c/{i}.dcm", dicom_bytes(seed=20 + i)) for i in range(3)]
    statuses: list[int] = []

    def push(blob: storage.Blob) -> None:
        statuses.append(app.test_client().post("/", json=envelope(request_body(blob))).status_code)

    threads = [threading.Thread(target=push, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200, 200, 200] and len(webhook.accepted()) == 3
    batcher = app.extensions["gpu_service"].batcher
    assert batcher.stats.max_submissions_in_batch > 1


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(jsonlog.CloudLoggingFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _dicom_with(seed: int, **attributes: Any) -> bytes:
    """A synthetic radiograph with some attributes set (invalid values included, unvalidated)."""
    sample = synthetic.make_radiograph(np.random.default_rng(seed), size=128, nodule=True)
    ds = synthetic.to_dicom_dataset(sample.image, patient_id=attributes.pop("PatientID", "DEMO-0001"))
    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dicom_dates(data: bytes) -> set[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {str(e.value) for e in ds.iterall() if e.VR in ("DA", "DT") and e.value}


def test_logs_are_structured_traced_and_free_of_patient_data(
    make_app: Any, webhook: WebhookServer, bucket_name: str
) -> None:
    app = make_app()
    data = _dicom_with(30, PatientID="SECRET-PATIENT-77", PatientBirthDate="19610317",
                       StudyDate="20240131", AcquisitionDate="20240201")  # fmt: skip
    dates = _dicom_dates(data)
    assert {"19610317", "20240131", "20240201"} <= dates
    blob = upload(bucket_name, "logs/a.dcm", data)
    header = header_of(data)
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    try:
        response = app.test_client().post(
            "/", json=envelope(request_body(blob, {**header, "study_date": "20240131"}), attributes={
                "googclient_traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
        )  # fmt: skip
    finally:
        logging.getLogger().removeHandler(capture)
    assert response.status_code == 200
    entries = [json.loads(line) for line in capture.lines]
    assert entries, "no log lines"
    text = "\n".join(capture.lines)
    for secret in ("SECRET-PATIENT-77", header["sop_instance_uid"], *dates):
        assert secret not in text
    # Every line written while handling the request, whoever wrote it, can be followed.
    for e in entries:
        assert e[jsonlog.TRACE_KEY] == f"projects/{PROJECT}/traces/0af7651916cd43dd8448eb211c80319c", e
        assert e["bucket"] == bucket_name and e["object"] == "logs/a.dcm", e
        assert e["generation"] == str(blob.generation), e
        assert e["correlation_id"] == blob_correlation(blob), e
        assert "severity" in e
    final = [e for e in entries if e.get("outcome") == "completed"]
    assert final and {"download", "decode", "predict", "explain", "write", "webhook"} <= set(
        final[0]["timings_ms"]
    )


def test_invalid_dicom_values_never_reach_logs_or_stderr(
    make_app: Any, webhook: WebhookServer, bucket_name: str, capfd: Any
) -> None:
    """pydicom logs (and warns) invalid values verbatim, e.g. ``Invalid value for VR UI:
    '1.2.3.20240131.x'``: a UID with a date, a malformed date. None of it may leave the process."""
    bad_uid, bad_date = "1.2.3.20240131.x", "2024-01-31x"
    data = _dicom_with(31, StudyInstanceUID=bad_uid, StudyDate=bad_date)
    blob = upload(bucket_name, "invalid/a.dcm", data)
    # As in a fresh process: pydicom's logger on, no warning filter for it.
    logging.getLogger("pydicom").disabled = False
    capfd.readouterr()
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            app = make_app()  # jsonlog.setup() silences pydicom for every component
            response = app.test_client().post("/", json=envelope(request_body(blob)))
    finally:
        logging.getLogger().removeHandler(capture)
    assert response.status_code == 200, response.get_json()
    out, err = capfd.readouterr()
    emitted = [*capture.lines, out, err, *(str(w.message) for w in caught)]
    for value in (bad_uid, bad_date):
        assert not any(value in line for line in emitted), value
    record = json.loads(read_object(bucket_name, "invalid/a.result.json")[0])
    assert record["study_instance_uid"] == bad_uid  # the record, for Django, keeps the value


def test_emulator_push_redelivers_until_the_webhook_accepts(
    make_app: Any, webhook: WebhookServer, bucket_name: str, pubsub_emulator: Any
) -> None:
    """Real Pub/Sub push (the emulator's own envelopes and retry policy) to the app on a real socket:
    the webhook is down for the first delivery, the redelivery only re-sends the stored record."""
    app = make_app()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        topic, sub = unique("req"), unique("push")
        emulators.create_topic(pubsub_emulator.host, PROJECT, topic)
        emulators.create_subscription(
            pubsub_emulator.host, PROJECT, sub, topic,
            push_endpoint=f"http://127.0.0.1:{server.server_port}/", min_backoff_s=1, max_backoff_s=2,
        )  # fmt: skip
        blob = upload(bucket_name, "push/e.dcm", dicom_bytes(seed=80))
        webhook.fail_next = 2  # = WEBHOOK_MAX_ATTEMPTS: the whole first delivery fails
        publisher = pubsub_v1.PublisherClient()
        body = json.dumps(request_body(blob)).encode()
        publisher.publish(publisher.topic_path(PROJECT, topic), body, bucket=bucket_name).result()
        deadline = time.monotonic() + 90
        while not webhook.accepted() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # anything extra would show up here
        assert len(webhook.accepted()) == 1
        assert [c.status for c in webhook.calls] == [503, 503, 200]
        assert _stats(app).inferences == 1
        assert webhook.accepted()[0].body == read_object(bucket_name, "push/e.result.json")[0]
    finally:
        server.shutdown()


@pytest.mark.parametrize("methods", [("lime", "gradcam"), ("gradcam",), ("gradcam", "lime")])
def test_each_explanation_method_writes_its_heat_map_seg_and_record_entry(
    make_app: Any, webhook: WebhookServer, bucket_name: str, methods: tuple[str, ...]
) -> None:
    """EXPLANATION_METHODS=lime,gradcam: two entries, two heat maps, two heat-map SEGs, the SR naming
    both; Grad-CAM first: the `explanation` object keeps its shape with Grad-CAM's values."""
    data = dicom_bytes(nodule=True, size=160, modality="DX")
    stem = "methods/" + "-".join(methods)
    blob = upload(bucket_name, stem + ".dcm", data)
    response = (
        make_app(explanation_methods=methods).test_client().post("/", json=envelope(request_body(blob)))
    )
    assert response.status_code == 200 and response.get_json()["outcome"] == "completed"
    record = json.loads(read_object(bucket_name, stem + naming.RESULT_SUFFIX)[0])

    entries = record["explanations"]
    assert [e["method"] for e in entries] == list(methods)
    heat_pngs = {"lime": naming.HEATMAP_SUFFIX, "gradcam": naming.GRADCAM_HEATMAP_SUFFIX}
    heat_segs = {"lime": naming.HEATMAP_SEG_SUFFIX, "gradcam": naming.GRADCAM_HEATMAP_SEG_SUFFIX}
    for entry in entries:
        method = entry["method"]
        assert entry["heatmap_uri"] == f"gs://{bucket_name}/{stem}{heat_pngs[method]}"
        assert entry["heatmap_seg_uri"] == f"gs://{bucket_name}/{stem}{heat_segs[method]}"
        png, metadata = read_object(bucket_name, stem + heat_pngs[method])
        assert _png(png).size == (160, 160) and metadata[naming.MARKER_KEY] == "heatmap"
        seg = hd.seg.segread(io.BytesIO(read_object(bucket_name, stem + heat_segs[method])[0]))
        assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == 4  # the bands
        assert entry["reason"] is None
        assert entry["ms"] > 0 and entry["label_index"] == 1
    by_method = {e["method"]: e for e in entries}
    cam = by_method["gradcam"]
    assert cam["model_passes"] == 2 and cam["stability"] is None and cam["stability_reason"]
    assert cam["parameters"] == {"layer": "evidence", "layer_source": "auto"}
    explanation = record["explanation"]
    assert explanation["method"] == methods[0]
    assert explanation["heatmap_uri"] == by_method[methods[0]]["heatmap_uri"]
    assert explanation["mask_uri"] == f"gs://{bucket_name}/{stem}{naming.MASK_SUFFIX}"
    assert ("explain" in record["timings_ms"]) == ("lime" in methods) and "gradcam" in record["timings_ms"]
    if "lime" in by_method:
        lime = by_method["lime"]
        assert lime["model_passes"] >= 1 and lime["stability_reason"] is None and 0 <= lime["stability"] <= 1
    else:
        assert read_object(bucket_name, stem + naming.HEATMAP_SUFFIX) is None  # no LIME heat map
    if methods[0] == "lime":
        assert (
            explanation["top_segments"] and explanation["samples_used"] == by_method["lime"]["model_passes"]
        )
        assert explanation["stability"] == by_method["lime"]["stability"]
    else:
        assert explanation["top_segments"] == [] and explanation["samples_used"] == 2
    seg = pydicom.dcmread(io.BytesIO(read_object(bucket_name, stem + naming.SEG_SUFFIX)[0]))
    first = {"lime": ("LIME", "LIME evidence"), "gradcam": ("GRADCAM", "Grad-CAM evidence")}[methods[0]]
    assert (seg.ContentLabel, seg.SegmentSequence[0].SegmentLabel.split(" for ")[0]) == first
    mask = np.asarray(_png(read_object(bucket_name, stem + naming.MASK_SUFFIX)[0]).convert("L"))
    assert mask.max() == 255  # the first method's mask
    sr = pydicom.dcmread(io.BytesIO(read_object(bucket_name, stem + naming.SR_SUFFIX)[0]))
    texts = {str(element.value) for element in sr.iterall() if element.VR in ("LO", "UT", "ST", "SH")}
    named = ",".join({"lime": "LIME", "gradcam": "Grad-CAM"}[m] for m in methods)
    assert f"explanation={named}" in texts and "gradcam_layer=evidence" in texts
    assert set(record["dicom"]["sop_instance_uids"]) >= {"seg", "sr", "gradcam_heatmap"}
