"""A downstream that is down (the DICOMweb store, Django) after the result is computed: the
inference message is acknowledged once the result is durable and a ``dicom-delivery/1`` message
names it; ``POST /deliver`` then waits for the downstream as long as it takes, never recomputes
and never gives up. Real Orthanc, real Pub/Sub emulator, real fake-gcs-server, the real model."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gpu_service.transport.push import parse_delivery, parse_envelope
from infra.local import emulators, orthanc
from infra.local.emulators import free_port
from pipeline_common import contract, naming
from tests.conftest import PROJECT, unique
from tests.gpu_service.dicom.test_dicomweb_store import orthanc_url, refused_source  # noqa: F401 - fixture
from tests.gpu_service.pipeline.test_processing import _stats, make_app, model  # noqa: F401 - fixtures
from tests.support.service import WebhookServer, dicom_bytes, envelope, read_object, request_body, upload

pytestmark = pytest.mark.slow  # starts servers


@pytest.fixture
def delivery_topic(pubsub_emulator: Any) -> tuple[str, str]:
    topic, subscription = unique("delivery"), unique("delivery-pull")
    emulators.create_topic(pubsub_emulator.host, PROJECT, topic)
    emulators.create_subscription(pubsub_emulator.host, PROJECT, subscription, topic)
    return topic, subscription


def _delivery_messages(pubsub_emulator: Any, subscription: str) -> list[dict[str, Any]]:
    return emulators.pull(pubsub_emulator.host, PROJECT, subscription)


def _as_push(message: dict[str, Any], attempt: int | None = None) -> dict[str, Any]:
    """A pulled message as the delivery subscription would push it."""
    pushed = {"message": {k: message[k] for k in ("data", "attributes", "messageId") if k in message}}
    if attempt is not None:
        pushed["deliveryAttempt"] = attempt
    return pushed


def test_store_down_is_handed_off_then_delivered_once_without_recomputing(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,  # noqa: F811
    pubsub_emulator: Any,
    delivery_topic: tuple[str, str],
) -> None:
    topic, subscription = delivery_topic
    down_url = f"http://127.0.0.1:{free_port()}/dicom-web"
    down = make_app(dicomweb_url=down_url, dicomweb_timeout_s=2, delivery_topic=topic)
    blob = upload(bucket_name, "outage/a.dcm", dicom_bytes(seed=61))
    # Even at the last useful attempt: handed off, never retries_exhausted for a durable result.
    sent = request_body(blob)
    response = down.test_client().post("/", json=envelope(sent, attempt=4))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outcome"] == "handed_off"
    assert response.get_json()["error_code"] == "dicomweb_unavailable"
    assert read_object(bucket_name, "outage/a.result.json") is None and webhook.calls == []
    assert read_object(bucket_name, "outage/a" + naming.PENDING_SUFFIX) is not None
    (message,) = _delivery_messages(pubsub_emulator, subscription)
    body = json.loads(base64.b64decode(message["data"]))
    assert body == {
        "schema": contract.DELIVERY,
        "correlation_id": naming.correlation_id(bucket_name, "outage/a.dcm", blob.generation),
        "reason": "dicomweb_unavailable",
        "source": {"bucket": bucket_name, "name": "outage/a.dcm", "generation": str(blob.generation)},
        "event_time": sent["event_time"],  # the upload's: the delivery's latency counts from it
    }
    assert message["attributes"]["schema"] == contract.DELIVERY
    assert parse_delivery(parse_envelope(_as_push(message, attempt=1))).event_time == sent["event_time"]

    # The store is still down: the delivery push waits (503), however many attempts it takes.
    still_down = down.test_client().post("/deliver", json=_as_push(message, attempt=99))
    assert still_down.status_code == 503 and still_down.get_json()["outcome"] == "retry"
    assert _delivery_messages(pubsub_emulator, subscription) == []  # no second hand-off
    assert read_object(bucket_name, "outage/a.result.json") is None

    up = make_app(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT, delivery_topic=topic)
    for _ in range(3):  # duplicate delivery messages while the store recovers
        answer = up.test_client().post("/deliver", json=_as_push(message))
        assert answer.status_code == 200, answer.get_json()
    assert _stats(down).inferences == 1 and _stats(up).inferences == 0 and _stats(up).staged_resumed == 1
    (hook,) = webhook.accepted()
    record = json.loads(hook.body)
    assert record["status"] == "completed" and record["dicom"]["dicomweb"]["stored"]
    assert json.loads(read_object(bucket_name, "outage/a.result.json")[0]) == record


def test_django_down_is_handed_off_then_the_stored_record_is_sent_once(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    pubsub_emulator: Any,
    delivery_topic: tuple[str, str],
) -> None:
    topic, subscription = delivery_topic
    app = make_app(delivery_topic=topic)
    blob = upload(bucket_name, "outage/b.dcm", dicom_bytes(seed=62))
    webhook.fail_next = 10**6  # Django answers 503 to everything
    response = app.test_client().post("/", json=envelope(request_body(blob)))
    assert response.status_code == 200 and response.get_json()["outcome"] == "handed_off"
    assert response.get_json()["error_code"] == "webhook_failed"
    stored, metadata = read_object(bucket_name, "outage/b.result.json")
    assert naming.DELIVERED_KEY not in metadata  # committed, not delivered
    (message,) = _delivery_messages(pubsub_emulator, subscription)
    assert app.test_client().post("/deliver", json=_as_push(message)).status_code == 503

    webhook.fail_next = 0  # Django is back; a flapping redelivery is answered once
    for _ in range(2):
        assert app.test_client().post("/deliver", json=_as_push(message)).status_code == 200
    assert [c.body for c in webhook.accepted()] == [stored]
    assert _stats(app).inferences == 1
    assert naming.DELIVERED_KEY in read_object(bucket_name, "outage/b.result.json")[1]


def test_a_store_that_comes_back_refusing_gives_one_failed_record(
    make_app: Any,  # noqa: F811
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,  # noqa: F811
    pubsub_emulator: Any,
    delivery_topic: tuple[str, str],
) -> None:
    topic, subscription = delivery_topic
    down = make_app(
        dicomweb_url=f"http://127.0.0.1:{free_port()}/dicom-web", dicomweb_timeout_s=2, delivery_topic=topic
    )
    blob = upload(bucket_name, "outage/refused.dcm", refused_source(63))
    assert (
        down.test_client().post("/", json=envelope(request_body(blob))).get_json()["outcome"] == "handed_off"
    )
    (message,) = _delivery_messages(pubsub_emulator, subscription)
    up = make_app(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT, delivery_topic=topic)
    for _ in range(2):
        assert up.test_client().post("/deliver", json=_as_push(message)).status_code == 200
    (hook,) = webhook.accepted()
    record = json.loads(hook.body)
    assert record["status"] == "failed" and record["error"]["code"] == "dicomweb_rejected"
    assert _stats(up).inferences == 0


def test_a_malformed_delivery_message_is_refused(make_app: Any) -> None:  # noqa: F811
    app = make_app()
    bad = {"message": {"data": base64.b64encode(b'{"schema": "dicom-delivery/1"}').decode()}}
    answer = app.test_client().post("/deliver", json=bad)
    assert answer.status_code == 400 and answer.get_json()["outcome"] == "invalid"
    inference_body = {
        "message": {
            "data": base64.b64encode(json.dumps({"schema": contract.INFERENCE_REQUEST}).encode()).decode()
        }
    }
    assert app.test_client().post("/deliver", json=inference_body).status_code == 400
