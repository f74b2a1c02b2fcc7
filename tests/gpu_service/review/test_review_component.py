# ruff: noqa: F811 - pytest fixtures imported from other suites are parameters here
"""The review component (gpu_service/review_app.py) on real parts: a result made by the real
service and model in fake-gcs-server, Orthanc as the DICOMweb store, a signed webhook server as
Django. The decision's SR lands in the study and the bucket, STEM.review.json is written, the
receipt is signed; replays are idempotent, a forged message is refused and never stored, and a
store that is down is redelivered until it is back, with one SR in the end."""

from __future__ import annotations

import io
import json
from typing import Any

import pydicom
import pytest

from gpu_service.dicom.dicomweb_store import DicomWebStore
from gpu_service.pipeline.review import receipt_webhook_id
from gpu_service.review_app import create_app
from gpu_service.settings import Settings
from infra.local import orthanc
from infra.local.emulators import free_port
from pipeline_common import naming
from tests.gpu_service.dicom.test_dicomweb_store import orthanc_url, qido_instances  # noqa: F401 - fixture
from tests.gpu_service.pipeline.test_processing import PROJECT, SECRET, make_app, model  # noqa: F401 - fixtures
from tests.gpu_service.review.support import review_body, review_envelope
from tests.support.service import WebhookServer, dicom_bytes, envelope, read_object, request_body, upload

pytestmark = pytest.mark.slow


@pytest.fixture
def completed(make_app: Any, webhook: WebhookServer, bucket_name: str, orthanc_url: str) -> dict[str, Any]:  # noqa: F811
    """A completed result with its AI SR and SEG stored in Orthanc, as Django received it."""
    app = make_app(dicomweb_url=orthanc_url + orthanc.DICOMWEB_ROOT)
    blob = upload(bucket_name, "ward/chest.dcm", dicom_bytes(seed=31, size=96))
    assert app.test_client().post("/", json=envelope(request_body(blob))).status_code == 200
    record = json.loads(webhook.accepted()[-1].body)
    webhook.calls.clear()
    return record


def review_app(webhook: WebhookServer, store_url: str, **overrides: Any) -> Any:
    settings = Settings(project=PROJECT, webhook_url=webhook.url, webhook_secret=SECRET,
                        webhook_max_attempts=1, **overrides)  # fmt: skip
    return create_app(settings, store=DicomWebStore(store_url, timeout_s=2)).test_client()


def sr_uids(base: str, study: str) -> list[str]:
    return sorted(
        i["00080018"]["Value"][0]
        for i in qido_instances(base, study)
        if i["00080016"]["Value"][0] == pydicom.uid.Comprehensive3DSRStorage
    )


def test_a_correction_is_stored_in_the_study_beside_the_upload_and_acknowledged(
    completed: dict[str, Any],
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,  # noqa: F811
) -> None:
    client = review_app(webhook, orthanc_url + orthanc.DICOMWEB_ROOT)
    other = next(
        label for label in completed["prediction"]["scores"] if label != completed["prediction"]["label"]
    )
    body = review_body(completed, decision="correct", corrected_label=other, reason_code="wrong_region",
                       region={"type": "point", "x": 40, "y": 30, "radius": 8})  # fmt: skip
    response = client.post("/review", json=review_envelope(body))
    assert response.status_code == 200, response.get_json()
    (call,) = webhook.accepted()
    receipt = json.loads(call.body)
    assert call.headers["webhook-id"] == receipt_webhook_id(body["review_id"], "stored")
    assert receipt["status"] == "stored" and receipt["seg"] and receipt["error"] is None
    sr_name = f"ward/chest.{body['review_id']}{naming.REVIEW_SR_SUFFIX}"
    assert receipt["sr"]["uri"] == f"gs://{bucket_name}/{sr_name}"
    data, metadata = read_object(bucket_name, sr_name)
    assert metadata[naming.MARKER_KEY] == "review_sr" and metadata[naming.REVIEW_ID_KEY] == body["review_id"]
    sr = pydicom.dcmread(io.BytesIO(data))
    assert (
        sr.VerificationFlag == "VERIFIED"
        and str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Doe^Jane"
    )
    assert sr.StudyInstanceUID == completed["study_instance_uid"]
    evidence = {
        r.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for ser in s.ReferencedSeriesSequence
        for r in ser.ReferencedSOPSequence
    }
    assert completed["dicom"]["sop_instance_uids"]["sr"] in evidence
    assert receipt["sr"]["sop_instance_uid"] in sr_uids(orthanc_url, completed["study_instance_uid"])
    latest = json.loads(read_object(bucket_name, "ward/chest" + naming.REVIEW_SUFFIX)[0])
    assert latest["schema"] == "dicom-review-record/1" and latest["review_id"] == body["review_id"]
    assert latest["dicom"]["sr"] == receipt["sr"] and receipt["review_json_uri"].endswith(
        "ward/chest.review.json"
    )
    # A replay (a redelivery, or a captured message sent again): the same objects, one SR.
    again = client.post("/review", json=review_envelope(body, "r2"))
    assert again.status_code == 200
    replayed = json.loads(webhook.accepted()[-1].body)
    assert replayed["sr"] == receipt["sr"]  # (Orthanc answers a re-sent instance 200, not 409)
    assert webhook.accepted()[-1].headers["webhook-id"] == call.headers["webhook-id"]
    assert sr_uids(orthanc_url, completed["study_instance_uid"]).count(receipt["sr"]["sop_instance_uid"]) == 1


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"correlation_id": "0" * 32}, "result_mismatch"),
        ({"sop_instance_uid": "1.2.3.4"}, "result_mismatch"),
        ({"model_sha256": "f" * 64}, "result_mismatch"),
        ({"source": "elsewhere.dcm"}, "result_not_found"),
    ],
)
def test_a_forged_message_is_refused_acknowledged_and_never_stored(
    completed: dict[str, Any],
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,
    change: dict,
    code: str,  # noqa: F811
) -> None:
    body = review_body(completed)
    if "source" in change:
        body["result"]["source"]["name"] = change["source"]
    else:
        body["result"].update(change)
    before = sr_uids(orthanc_url, completed["study_instance_uid"])
    response = review_app(webhook, orthanc_url + orthanc.DICOMWEB_ROOT).post(
        "/review", json=review_envelope(body)
    )
    assert response.status_code == 200 and response.get_json()["error_code"] == code
    receipt = json.loads(webhook.accepted()[-1].body)
    assert receipt["status"] == "failed" and receipt["error"]["code"] == code and receipt["sr"] is None
    assert sr_uids(orthanc_url, completed["study_instance_uid"]) == before
    assert read_object(bucket_name, "ward/chest" + naming.REVIEW_SUFFIX) is None
    assert read_object(bucket_name, f"ward/chest.{body['review_id']}{naming.REVIEW_SR_SUFFIX}") is None


def test_bad_input_is_400_or_a_clear_refusal(
    completed: dict[str, Any], webhook: WebhookServer, orthanc_url: str
) -> None:  # noqa: F811
    client = review_app(webhook, orthanc_url + orthanc.DICOMWEB_ROOT)
    for bad in (
        review_body(completed, decision="reject"),  # no reason
        review_body(completed, decision="reject", reason_code="boring"),
        review_body(completed, schema="dicom-review/2"),
        review_body(completed, review_id="not-a-uuid"),
    ):
        assert client.post("/review", json=review_envelope(bad)).status_code == 400, bad
    outside = review_body(completed, decision="correct", corrected_label=completed["prediction"]["label"],
                          region={"type": "point", "x": 500, "y": 5, "radius": 3})  # fmt: skip
    response = client.post("/review", json=review_envelope(outside))
    assert response.status_code == 200 and response.get_json()["error_code"] == "region_outside_image"
    unknown = review_body(completed, decision="correct", corrected_label="kitten")
    assert client.post("/review", json=review_envelope(unknown)).get_json()["error_code"] == "label_unknown"
    assert webhook.accepted() and all(json.loads(c.body)["status"] == "failed" for c in webhook.accepted())


def test_store_down_is_redelivered_then_stored_once(
    completed: dict[str, Any],
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,  # noqa: F811
) -> None:
    body = review_body(completed, decision="reject", reason_code="false_positive", reason_text="scar")
    down = review_app(webhook, f"http://127.0.0.1:{free_port()}/dicom-web")
    for attempt in range(2):
        response = down.post("/review", json=review_envelope(body, f"d{attempt}"))
        assert response.status_code == 503 and response.get_json()["outcome"] == "retry"
    assert webhook.accepted() == []
    assert read_object(bucket_name, "ward/chest" + naming.REVIEW_SUFFIX) is None  # nothing claims it stored
    back = review_app(webhook, orthanc_url + orthanc.DICOMWEB_ROOT)
    assert back.post("/review", json=review_envelope(body, "d3")).status_code == 200
    receipt = json.loads(webhook.accepted()[-1].body)
    assert receipt["status"] == "stored"
    assert sr_uids(orthanc_url, completed["study_instance_uid"]).count(receipt["sr"]["sop_instance_uid"]) == 1


def test_webhook_down_is_redelivered_and_latest_decision_wins(
    completed: dict[str, Any],
    webhook: WebhookServer,
    bucket_name: str,
    orthanc_url: str,  # noqa: F811
) -> None:
    client = review_app(webhook, orthanc_url + orthanc.DICOMWEB_ROOT)
    later = review_body(completed, decided_at="2026-11-30T11:00:00.000000Z")
    earlier = review_body(
        completed, decision="reject", reason_code="other", decided_at="2026-11-30T10:00:00.000000Z"
    )
    webhook.fail_next = 1
    assert client.post("/review", json=review_envelope(later)).status_code == 503
    assert client.post("/review", json=review_envelope(later)).status_code == 200
    assert client.post("/review", json=review_envelope(earlier)).status_code == 200  # arrives late
    latest = json.loads(read_object(bucket_name, "ward/chest" + naming.REVIEW_SUFFIX)[0])
    assert latest["review_id"] == later["review_id"]  # the later decision stays the current one
    for body in (later, earlier):  # each decision has its own SR
        assert read_object(bucket_name, f"ward/chest.{body['review_id']}{naming.REVIEW_SR_SUFFIX}")


def test_a_foreign_object_under_the_review_record_name_is_a_clear_refusal(
    completed: dict[str, Any], webhook: WebhookServer, bucket_name: str, orthanc_url: str
) -> None:
    upload(
        bucket_name, "ward/chest" + naming.REVIEW_SUFFIX, b'{"not": "ours"}', content_type="application/json"
    )
    response = review_app(webhook, orthanc_url + orthanc.DICOMWEB_ROOT).post(
        "/review", json=review_envelope(review_body(completed))
    )
    assert response.status_code == 200 and response.get_json()["error_code"] == "output_conflict"
    assert read_object(bucket_name, "ward/chest" + naming.REVIEW_SUFFIX)[0] == b'{"not": "ours"}'
