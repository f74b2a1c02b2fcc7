"""Pure parts of the inference service: settings, messages, signatures, records, rendering, ack rules,
webhook retries (against a real local HTTP server) and the batcher's packing."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pydicom
import pytest
from PIL import Image
from service_support import SECRET, WebhookServer, envelope
from standardwebhooks import Webhook, WebhookVerificationError

from gpu_service import render, result, webhook_signature
from gpu_service.acknowledgement import RequestOutcome, ack_status, gives_up, is_acked, is_transient
from gpu_service.batcher import Batcher
from gpu_service.job import parse_gs_prefix, shard_of
from gpu_service.processing import pixel_count
from gpu_service.push import MessageError, PubSubMessage, parse_envelope, parse_request
from gpu_service.settings import Settings
from gpu_service.webhook import WebhookClient
from infra.local.emulators import free_port
from pipeline_common import naming

# -- settings ------------------------------------------------------------------------------


def test_settings_from_env_reads_typed_values() -> None:
    s = Settings.from_env(
        {
            "WEBHOOK_URL": "http://x/hook",
            "WEBHOOK_SECRET": "whsec_aHVudGVyMi1zZWNyZXQ=",  # whsec_ + base64("hunter2-secret")
            "WEBHOOK_MAX_ATTEMPTS": "3",
            "PUSH_AUDIENCE": "https://svc",
            "OUTPUT_PREFIX": "/results/",
            "LIME_NUM_SAMPLES": "64",
            "BATCH_MAX_WAIT_MS": "2.5",
            "BATCHING": "false",
        }
    )
    assert (s.webhook_max_attempts, s.push_audience, s.output_prefix) == (3, "https://svc", "results")
    assert (s.lime_num_samples, s.batch_max_wait_ms, s.batching) == (64, 2.5, False)
    assert s.push_certs_url.startswith("https://www.googleapis.com/")
    assert (
        "aHVudGVy" not in repr(s) and s.webhook_secret == "whsec_aHVudGVyMi1zZWNyZXQ="
    )  # never in a repr/log


def test_settings_pixel_budget_and_delivery_attempts() -> None:
    from dicom_ingest.settings import DEFAULT_MAX_PIXELS

    s = Settings.from_env({})
    assert s.max_pixels == DEFAULT_MAX_PIXELS  # the same budget as the ingest function
    assert (s.max_delivery_attempts, s.give_up_attempt) == (5, 4)
    s = Settings.from_env({"MAX_PIXELS": "1000", "MAX_DELIVERY_ATTEMPTS": "10"})
    assert (s.max_pixels, s.give_up_attempt) == (1000, 9)
    assert Settings(max_delivery_attempts=1).give_up_attempt == 1
    with pytest.raises(ValueError):
        Settings.from_env({"MAX_PIXELS": "0"})
    with pytest.raises(ValueError):
        Settings.from_env({"MAX_DELIVERY_ATTEMPTS": "0"})


def test_lime_settings_reach_the_explanation_parameters() -> None:
    from gpu_service.explain import LimeParams
    from gpu_service.lime_settings import lime_params

    assert lime_params(Settings.from_env({})) == LimeParams()  # the core's defaults, untouched
    params = lime_params(
        Settings.from_env(
            {
                "LIME_NUM_SAMPLES": "300",
                "LIME_SEGMENTATION": "quickshift",
                "LIME_BATCH_SIZE": "64",
                "LIME_SEGMENTATION_MAX_SIDE": "224",
                "LIME_SEED": "7",
            }
        )
    )
    assert (params.num_samples, params.segmentation, params.batch_size) == (300, "quickshift", 64)
    assert (params.segmentation_max_side, params.seed) == (224, 7)


def test_settings_refuse_unsigned_webhook() -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        Settings.from_env({"WEBHOOK_URL": "http://x/hook"})


# -- push messages -------------------------------------------------------------------------

BODY = {
    "schema": "dicom-inference-request/1",
    "correlation_id": "ignored",
    "source": {"bucket": "b", "name": "a/img.DCM", "generation": "17", "size": "12"},
    "dicom": {"patient_id": "P1", "modality": "CR"},
}


def test_parse_push_envelope_and_request() -> None:
    msg = parse_envelope(envelope(BODY, message_id="42", attempt=3))
    assert (msg.message_id, msg.delivery_attempt) == ("42", 3)
    req = parse_request(msg)
    assert (req.bucket, req.name, req.generation, req.size) == ("b", "a/img.DCM", "17", 12)
    assert req.correlation_id == naming.correlation_id("b", "a/img.DCM", "17")
    assert req.dedup_key == "b/a/img.DCM#17"
    assert req.dicom["patient_id"] == "P1"
    # The emulator sends no deliveryAttempt.
    assert parse_envelope(envelope(BODY)).delivery_attempt is None


@pytest.mark.parametrize(
    "env",
    [
        None,
        [],
        {"message": "x"},
        {"message": {}},
        {"message": {"data": "***not base64***"}},
    ],
)
def test_malformed_envelopes_are_refused(env: object) -> None:
    with pytest.raises(MessageError):
        parse_envelope(env)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({**BODY, "schema": "other/1"}).encode(),
        json.dumps({**BODY, "source": {"bucket": "b", "name": "n"}}).encode(),
        json.dumps({**BODY, "source": {"bucket": "b", "name": "n", "generation": "abc"}}).encode(),
    ],
)
def test_malformed_requests_are_refused(data: bytes) -> None:
    with pytest.raises(MessageError):
        parse_request(PubSubMessage(data=data, attributes={}))


def test_envelope_base64_roundtrip() -> None:
    raw = {"message": {"data": base64.b64encode(b"{}").decode()}}
    assert parse_envelope(raw).data == b"{}"


# -- signatures ----------------------------------------------------------------------------


def test_signature_roundtrip_and_rejections() -> None:
    """Signed by the service, checked by the library the receivers use (Standard Webhooks)."""
    body = b'{"status":"completed"}'
    headers = webhook_signature.signed_headers(SECRET, body, webhook_id="k", correlation_id="c")
    sig = headers["webhook-signature"]
    assert sig.startswith("v1,") and len(base64.b64decode(sig[3:])) == 32
    assert headers["webhook-id"] == "k" and headers["X-Correlation-Id"] == "c"
    assert "Idempotency-Key" not in headers and not any(h.startswith("X-Pipeline") for h in headers)
    Webhook(SECRET).verify(body, headers)
    other = webhook_signature.new_secret()
    bad = [
        (body, {**headers, "webhook-signature": webhook_signature.signed_headers(other, body, webhook_id="k",
                                                                                 correlation_id="c")["webhook-signature"]}),
        (body + b" ", headers),
        (body, {**headers, "webhook-id": "another-key"}),  # the id is signed: no replay under a new key
        (body, {k: v for k, v in headers.items() if k != "webhook-signature"}),
    ]  # fmt: skip
    for stale in (time.time() - 301, time.time() + 301):  # replay window, both ways
        bad.append((body, webhook_signature.signed_headers(SECRET, body, webhook_id="k", correlation_id="c",
                                                           now=stale)))  # fmt: skip
    for b, h in bad:
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(b, h)
    # Rotation: any one matching v1 value (space separated) is enough.
    Webhook(SECRET).verify(body, {**headers, "webhook-signature": f"v1,{'A' * 44} {sig}"})


def test_secret_must_be_whsec_base64() -> None:
    webhook_signature.check_secret(SECRET)
    webhook_signature.check_secret(webhook_signature.new_secret())
    for wrong in ("hunter2", "whsec_", "whsec_not base64!"):
        with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
            webhook_signature.check_secret(wrong)


def test_idempotency_key_is_stable_per_generation_and_model() -> None:
    key = webhook_signature.idempotency_key("b", "n.dcm", "1", "sha")
    assert key == webhook_signature.idempotency_key("b", "n.dcm", 1, "sha")
    assert key != webhook_signature.idempotency_key("b", "n.dcm", "2", "sha")
    assert key != webhook_signature.idempotency_key("b", "n.dcm", "1", "sha2")


# -- result records ------------------------------------------------------------------------


def _record(**overrides: object) -> dict:
    kwargs: dict = {
        "status": result.COMPLETED,
        "correlation_id": "c",
        "bucket": "b",
        "name": "x.dcm",
        "generation": "5",
        "header": {"patient_id": "P", "modality": "DX", "sop_instance_uid": "1.2"},
        "model": {"name": "m", "version": "1", "sha256": "abc"},
        "prediction": result.prediction_fields(np.array([0.25, 0.75]), ["normal", "nodule"]),
        "timings_ms": {"download": 1.234},
    }
    kwargs.update(overrides)
    return result.build_record(**kwargs)


def test_result_record_fields() -> None:
    rec = _record()
    assert rec["schema"] == "dicom-inference-result/1"
    assert rec["study_modality"] == "DX" and rec["patient_id"] == "P"
    assert rec["prediction"]["label"] == "nodule" and rec["prediction"]["score"] == 0.75
    assert rec["prediction"]["scores"] == {"normal": 0.25, "nodule": 0.75}
    assert rec["source"] == {"bucket": "b", "name": "x.dcm", "uri": "gs://b/x.dcm", "generation": "5"}
    assert rec["timings_ms"] == {"download": 1.2}
    assert rec["completed_at"].endswith("Z") and "error" not in rec
    assert result.same_work(rec, "gs://b/x.dcm", "5", "abc")
    assert not result.same_work(rec, "gs://b/x.dcm", "6", "abc")
    assert not result.same_work(rec, "gs://b/x.dcm", "5", "other")
    # x.dcm and x.DCM share a stem (and so do equal names in two buckets under OUTPUT_BUCKET).
    assert not result.same_work(rec, "gs://b/x.DCM", "5", "abc")
    assert not result.same_work(rec, "gs://other/x.dcm", "5", "abc")
    assert result.record_generation(rec) == 5
    assert json.loads(result.encode(rec)) == rec


def test_a_stored_record_counts_only_with_the_marker_and_the_same_source() -> None:
    rec = _record()
    marked = {naming.MARKER_KEY: "result"}
    assert result.is_record_of(rec, marked, "gs://b/x.dcm")
    assert not result.is_record_of(rec, {}, "gs://b/x.dcm")  # someone's own x.result.json
    assert not result.is_record_of(rec, None, "gs://b/x.dcm")
    assert not result.is_record_of(rec, marked, "gs://b/x.DCM")
    assert not result.is_record_of(rec, marked, "gs://c/x.dcm")


def test_header_from_dataset_never_raises() -> None:
    class Broken:
        Modality = "CT"

        @property
        def PatientID(self) -> str:  # noqa: N802 - DICOM keyword
            raise ValueError("cannot convert")

    header = result.header_from_dataset(Broken())
    assert header["patient_id"] is None and header["modality"] == "CT"


def test_failed_record_needs_error() -> None:
    with pytest.raises(ValueError):
        _record(status=result.FAILED)
    rec = _record(status=result.FAILED, prediction=None, error={"code": "not_dicom", "message": "m"})
    assert rec["error"] == {"code": "not_dicom", "message": "m"} and rec["prediction"] is None


def test_header_merge_prefers_message() -> None:
    merged = result.merge_header({"patient_id": "A", "modality": None}, {"patient_id": "B", "modality": "CT"})
    assert merged == {"patient_id": "A", "modality": "CT"}


# -- rendering -----------------------------------------------------------------------------


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_mask_and_overlay_png() -> None:
    image = (np.arange(60 * 80) % 256).astype(np.uint8).reshape(60, 80)
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:50] = True
    mask_img = _png(render.mask_png(mask))
    assert mask_img.size == (80, 60) and mask_img.mode == "L"
    values = np.asarray(mask_img)
    assert set(np.unique(values)) == {0, 255} and np.array_equal(values == 255, mask)
    overlay = np.asarray(_png(render.overlay_png(image, mask)))
    assert overlay.shape == (60, 80, 3)
    assert np.array_equal(overlay[0, 0], [image[0, 0]] * 3)  # untouched outside
    assert not np.array_equal(overlay[20, 30], [image[20, 30]] * 3)  # tinted inside
    assert _png(render.preview_png(image)).size == (80, 60)
    with pytest.raises(ValueError):
        render.overlay_png(image, mask[:10])


# -- acknowledgement rules -----------------------------------------------------------------


def test_ack_rules() -> None:
    acked = {o for o in RequestOutcome if is_acked(o)}
    assert acked == {
        RequestOutcome.COMPLETED,
        RequestOutcome.FAILED,
        RequestOutcome.DUPLICATE,
        RequestOutcome.SUPERSEDED,
    }
    assert ack_status(RequestOutcome.RETRY) >= 500 and ack_status(RequestOutcome.NOT_READY) >= 500
    assert ack_status(RequestOutcome.INVALID) == 400  # dead-lettered after max attempts, never dropped


def test_transient_errors_and_giving_up() -> None:
    assert is_transient(MemoryError()) and is_transient(OSError("disk")) and is_transient(TimeoutError())
    assert not is_transient(ValueError("shape")) and not is_transient(RuntimeError("x"))
    assert not gives_up(None, 4)  # the emulator sends no deliveryAttempt: keep retrying
    assert not gives_up(3, 4) and gives_up(4, 4) and gives_up(7, 4)


def test_pixel_count_from_the_header() -> None:
    ds = pydicom.Dataset()
    assert pixel_count(ds) is None
    ds.Rows, ds.Columns = 512, 256
    assert pixel_count(ds) == 512 * 256
    ds.NumberOfFrames = 3
    assert pixel_count(ds) == 3 * 512 * 256


# -- webhook delivery ----------------------------------------------------------------------


def _client(url: str, attempts: int = 4) -> tuple[WebhookClient, list[float]]:
    sleeps: list[float] = []
    client = WebhookClient(
        url, SECRET, timeout_s=5, max_attempts=attempts, backoff_base_s=0.01, backoff_max_s=0.05,
        sleep=lambda s: (sleeps.append(s), time.sleep(s)),
    )  # fmt: skip
    return client, sleeps


def test_webhook_delivers_signed_body() -> None:
    server = WebhookServer()
    try:
        client, _ = _client(server.url)
        d = client.deliver(b'{"a":1}', idempotency_key="key", correlation_id="corr")
        assert (d.accepted, d.status, d.attempts) == (True, 200, 1)
        call = server.calls[0]
        assert call.signature_ok and call.body == b'{"a":1}'
        assert call.headers["webhook-id"] == "key" and call.headers["X-Correlation-Id"] == "corr"
        assert call.headers["Content-Type"] == "application/json"
    finally:
        server.stop()


@pytest.mark.parametrize("status", [503, 500, 429, 408])
def test_webhook_retries_transient_statuses(status: int) -> None:
    server = WebhookServer(fail_next=2, fail_status=status)
    try:
        client, sleeps = _client(server.url)
        d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
        assert (d.accepted, d.attempts) == (True, 3)
        assert len(sleeps) == 2 and all(0 <= s <= 0.05 for s in sleeps)
        keys = {c.headers["webhook-id"] for c in server.calls}
        assert keys == {"k"} and all(c.signature_ok for c in server.calls)
    finally:
        server.stop()


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_webhook_does_not_retry_client_errors(status: int) -> None:
    server = WebhookServer(fail_next=5, fail_status=status)
    try:
        client, sleeps = _client(server.url)
        d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
        assert (d.accepted, d.status, d.attempts, sleeps) == (False, status, 1, [])
    finally:
        server.stop()


def test_webhook_retries_connection_errors_then_gives_up() -> None:
    client, sleeps = _client(f"http://127.0.0.1:{free_port()}/hook", attempts=3)
    d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
    assert (d.accepted, d.status, d.attempts, len(sleeps)) == (False, None, 3, 2)
    assert d.error and "Connection" in d.error


def test_webhook_retries_dropped_connections() -> None:
    server = WebhookServer(fail_next=1, drop_connection=True)
    try:
        client, _ = _client(server.url)
        d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
        assert (d.accepted, d.attempts) == (True, 2)
    finally:
        server.stop()


def test_webhook_does_not_follow_redirects() -> None:
    """requests would turn the POST into a GET of the login page and call that delivered."""
    server = WebhookServer(redirect_to="/accounts/login/")
    try:
        client, sleeps = _client(server.url)
        d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
        assert (d.accepted, d.status, d.attempts, sleeps) == (False, 302, 1, [])
        assert "redirect" in (d.error or "") and server.gets == []
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["no-scheme.example/hook", "http://"])
def test_webhook_does_not_retry_malformed_urls(url: str) -> None:
    client, sleeps = _client(url)
    d = client.deliver(b"{}", idempotency_key="k", correlation_id="c")
    assert (d.accepted, d.status, d.attempts, sleeps) == (False, None, 1, [])
    assert d.error in ("MissingSchema", "InvalidURL")


def test_webhook_backoff_grows_and_is_capped() -> None:
    client = WebhookClient("http://x", SECRET, backoff_base_s=1.0, backoff_max_s=4.0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        assert all(0 <= client.backoff_s(attempt) <= cap for _ in range(50))


# -- batcher (packing logic, with a deterministic numpy "model") ---------------------------


def _fake_model(calls: list[int]):
    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(0.005)
        s = batch.reshape(len(batch), -1).sum(axis=1)
        return np.stack([s, -s], axis=1)

    return predict


def test_batcher_merges_concurrent_submissions_and_splits_results() -> None:
    calls: list[int] = []
    batcher = Batcher(_fake_model(calls), max_batch_size=64, max_wait_ms=50)
    try:
        rng = np.random.default_rng(0)
        inputs = [rng.random((n, 3, 2)) for n in (10, 20, 30, 5, 100)]
        results: dict[int, np.ndarray] = {}

        def run(i: int) -> None:
            results[i] = batcher.predict(inputs[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, x in enumerate(inputs):
            s = x.reshape(len(x), -1).sum(axis=1)
            np.testing.assert_allclose(results[i], np.stack([s, -s], axis=1))
        assert max(calls) <= 64 and sum(calls) == 165
        assert batcher.stats.max_submissions_in_batch > 1  # rows of different callers shared a batch
        assert len(calls) < len(inputs) + 2
    finally:
        batcher.close()


def test_batcher_propagates_errors_to_callers() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    batcher = Batcher(broken, max_batch_size=8, max_wait_ms=1)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            batcher.predict(np.zeros((3, 2)))
        with pytest.raises(ValueError):
            batcher.predict(np.zeros((0, 2)))
    finally:
        batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(np.zeros((1, 2)))


# -- job helpers ---------------------------------------------------------------------------


def test_shards_are_stable_and_cover_everything() -> None:
    names = [f"study/{i}.dcm" for i in range(300)]
    shards = [shard_of(n, 4) for n in names]
    assert shards == [shard_of(n, 4) for n in names]
    assert set(shards) == {0, 1, 2, 3} and min(shards.count(k) for k in range(4)) > 40
    assert all(shard_of(n, 1) == 0 for n in names)
    assert parse_gs_prefix("gs://b/some/prefix") == ("b", "some/prefix")
    assert parse_gs_prefix("gs://b") == ("b", "")
    with pytest.raises(ValueError):
        parse_gs_prefix("/local/path")


def test_batcher_stops_waiting_once_every_announced_caller_has_rows_queued() -> None:
    calls: list[int] = []
    batcher = Batcher(_fake_model(calls), max_batch_size=1000, max_wait_ms=2000)
    try:
        start = time.monotonic()
        with batcher.caller():
            batcher.predict(np.ones((4, 2)))
        assert time.monotonic() - start < 1.0  # the only caller: no point waiting 2 s for more rows

        barrier = threading.Barrier(2)

        def request(n: int) -> None:
            with batcher.caller():
                barrier.wait()
                batcher.predict(np.ones((n, 2)))

        calls.clear()
        start = time.monotonic()
        threads = [threading.Thread(target=request, args=(n,)) for n in (3, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - start < 1.5
        assert calls == [8]  # both callers' rows in one model call
    finally:
        batcher.close()
