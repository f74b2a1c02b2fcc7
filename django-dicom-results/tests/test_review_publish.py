"""The decision's way to the pipeline and back: ``dicom-review/1`` published on ``review_decided``
to a real Pub/Sub emulator (``PUBSUB_EMULATOR_HOST``), ``published_at`` set, ``publish_reviews``
for what Pub/Sub did not take, and the review component's signed receipts stored once."""

from __future__ import annotations

import json
import os
import uuid
from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import TestCase, override_settings
from django.urls import reverse

from dicom_results import review_publish
from dicom_results.models import InferenceResult, ReviewDecision, ReviewReceipt
from dicom_results.schema import parse_result
from dicom_results.signals import review_decided
from tests.support import encode, record, sign, webhook_id_for

EMULATOR = os.environ.get("PUBSUB_EMULATOR_HOST")
PROJECT = "test-project"


def make_result() -> InferenceResult:
    rec = record()
    rec["dicom"]["sop_instance_uids"] = {"seg": "1.2.3.4.7.1", "sr": "1.2.3.4.8.1"}
    return InferenceResult.objects.create(webhook_id=webhook_id_for(rec) + uuid.uuid4().hex[:8], body=rec,
                                          **parse_result(rec))  # fmt: skip


def make_decision(result: InferenceResult, **fields) -> ReviewDecision:
    reviewer = get_user_model().objects.get_or_create(username="jdoe", defaults={"first_name": "Jane"})[0]
    values = {"decision": "accept", "reviewer_name": "Doe^Jane", "reviewer_organisation": "St Elsewhere"}
    decision = ReviewDecision(result=result, reviewer=reviewer, **{**values, **fields})
    decision.save()
    return decision


class EmulatorTopic:
    """A topic and a pull subscription of their own on the emulator."""

    def __init__(self) -> None:
        from google.cloud import pubsub_v1

        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        suffix = uuid.uuid4().hex[:10]
        self.topic = self.publisher.topic_path(PROJECT, f"review-{suffix}")
        self.subscription = self.subscriber.subscription_path(PROJECT, f"review-pull-{suffix}")
        self.publisher.create_topic(name=self.topic)
        self.subscriber.create_subscription(name=self.subscription, topic=self.topic)

    def pull(self) -> list:
        answer = self.subscriber.pull(subscription=self.subscription, max_messages=10, timeout=10)
        return [m.message for m in answer.received_messages]


class PublishTests(TestCase):
    def setUp(self) -> None:
        if not EMULATOR:
            self.skipTest("PUBSUB_EMULATOR_HOST unset (tests/django_app starts the emulator)")
        self.pubsub = EmulatorTopic()

    def test_a_decision_is_published_once_with_the_contracts_fields(self) -> None:
        result = make_result()
        with override_settings(DICOM_RESULTS_REVIEW_TOPIC=self.pubsub.topic):
            decision = make_decision(result, decision="correct", corrected_label="normal",
                                     reason_code="wrong_region",
                                     region={"type": "point", "x": 3, "y": 4, "radius": 2})  # fmt: skip
            review_decided.send(sender=ReviewDecision, decision=decision)
        (message,) = self.pubsub.pull()
        body = json.loads(message.data)
        assert message.attributes["schema"] == "dicom-review/1"
        assert message.attributes["review_id"] == str(decision.review_id)
        assert body["decision"] == "correct" and body["corrected_label"] == "normal"
        assert body["region"] == {"type": "point", "x": 3, "y": 4, "radius": 2}
        assert review_publish.message_region({"type": "polygon", "points": [[1, 2], [3, 4], [5, 0]]})[
            "points"
        ][1] == {"x": 3, "y": 4}
        assert body["reviewer"] == {"name": "Doe^Jane", "organisation": "St Elsewhere"}
        assert body["result"]["source"] == {"bucket": "uploads", "name": "ward3/scan.dcm", "generation": "17"}
        assert body["result"]["sr_sop_instance_uid"] == "1.2.3.4.8.1"
        assert body["result"]["seg_sop_instance_uid"] == "1.2.3.4.7.1"
        assert body["decided_at"].endswith("Z") and body["supersedes"] is None
        decision.refresh_from_db()
        assert decision.published_at is not None

    def test_pubsub_down_leaves_it_unpublished_and_publish_reviews_sends_it_later(self) -> None:
        result = make_result()
        missing = f"projects/{PROJECT}/topics/not-created-{uuid.uuid4().hex[:6]}"
        with override_settings(DICOM_RESULTS_REVIEW_TOPIC=missing, DICOM_RESULTS_PUBLISH_TIMEOUT_S=5):
            decision = make_decision(result, decision="reject", reason_code="false_positive")
            review_decided.send(sender=ReviewDecision, decision=decision)
        decision.refresh_from_db()
        assert decision.published_at is None  # the decision stands, the message is owed
        with override_settings(DICOM_RESULTS_REVIEW_TOPIC=self.pubsub.topic):
            out = StringIO()
            call_command("publish_reviews", stdout=out)
            assert "published 1, failed 0" in out.getvalue()
            call_command("publish_reviews", stdout=StringIO())  # nothing left: nothing sent again
        assert [json.loads(m.data)["review_id"] for m in self.pubsub.pull()] == [str(decision.review_id)]
        decision.refresh_from_db()
        assert decision.published_at is not None
        with override_settings(DICOM_RESULTS_REVIEW_TOPIC=self.pubsub.topic):
            call_command("publish_reviews", "--unreceipted", stdout=StringIO())  # no receipt yet: again
        assert [json.loads(m.data)["review_id"] for m in self.pubsub.pull()] == [str(decision.review_id)]


class UnconfiguredTests(TestCase):
    def test_without_a_topic_nothing_is_published_and_the_command_says_so(self) -> None:
        decision = make_decision(make_result())
        assert review_publish.publish(decision) is False
        decision.refresh_from_db()
        assert decision.published_at is None
        with self.assertRaises(CommandError):
            call_command("publish_reviews", stdout=StringIO())


def receipt(decision: ReviewDecision, **overrides) -> dict:
    body = {
        "schema": "dicom-review-receipt/1",
        "review_id": str(decision.review_id),
        "correlation_id": "c" * 32,
        "status": "stored",
        "sr": {
            "uri": "gs://uploads/ward3/scan.x.review.sr.dcm",
            "sop_instance_uid": "2.25.1",
            "series_instance_uid": "2.25.2",
        },
        "seg": None,
        "seg_absent": None,
        "study_instance_uid": "1.2.3.4",
        "review_json_uri": "gs://uploads/ward3/scan.review.json",
        "dicomweb": {"url": "http://orthanc/dicom-web", "already_present": False},
        "error": None,
        "at": "2026-11-30T10:00:00Z",
    }
    body.update(overrides)
    return body


class ReceiptTests(TestCase):
    url = reverse("dicom_results:review_webhook")

    def post(self, body: dict, webhook_id: str = "r" * 64, **sign_kwargs):
        data = encode(body)
        return self.client.post(self.url, data=data, content_type="application/json",
                                headers=sign(data, webhook_id=webhook_id, **sign_kwargs))  # fmt: skip

    def test_a_stored_receipt_is_kept_once(self) -> None:
        decision = make_decision(make_result())
        first = self.post(receipt(decision))
        assert first.status_code == 201, first.content
        again = self.post(receipt(decision))
        assert again.status_code == 200 and again.json()["duplicate"] is True
        row = ReviewReceipt.objects.get()
        assert row.review == decision and row.status == "stored" and row.sr_sop_instance_uid == "2.25.1"
        assert row.review_json_uri.endswith("scan.review.json")

    def test_a_failed_receipt_says_why(self) -> None:
        decision = make_decision(make_result())
        body = receipt(decision, status="failed", sr=None, review_json_uri=None, dicomweb=None,
                       error={"code": "result_mismatch", "message": "does not match"})  # fmt: skip
        assert self.post(body).status_code == 201
        row = ReviewReceipt.objects.get()
        assert (row.status, row.error_code, row.sr_sop_instance_uid) == ("failed", "result_mismatch", "")

    def test_unknown_review_bad_signature_and_bad_schema_are_refused(self) -> None:
        decision = make_decision(make_result())
        assert self.post(receipt(decision, review_id=str(uuid.uuid4()))).status_code == 404
        other = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
        assert self.post(receipt(decision), secret=other).status_code == 401
        assert self.post(receipt(decision, schema="dicom-inference-result/1")).status_code == 400
        assert self.post(receipt(decision, status="stored", sr=None)).status_code == 400
        assert self.post(receipt(decision, status="failed", sr=None)).status_code == 400  # no error code
        assert not ReviewReceipt.objects.exists()


class ReceiptReplacementTests(TestCase):
    url = reverse("dicom_results:review_webhook")

    def post(self, body: dict, webhook_id: str):
        data = encode(body)
        return self.client.post(self.url, data=data, content_type="application/json",
                                headers=sign(data, webhook_id=webhook_id))  # fmt: skip

    def test_stored_replaces_failed_and_nothing_replaces_stored(self) -> None:
        decision = make_decision(make_result())
        failed = receipt(decision, status="failed", sr=None, review_json_uri=None, dicomweb=None,
                         error={"code": "dicomweb_rejected", "message": "403"})  # fmt: skip
        assert self.post(failed, "f" * 64).status_code == 201
        replaced = self.post(receipt(decision), "s" * 64)
        assert replaced.status_code == 200 and replaced.json()["replaced"] is True
        row = ReviewReceipt.objects.get()
        assert (row.status, row.webhook_id, row.error_code, row.sr_sop_instance_uid) == (
            "stored",
            "s" * 64,
            "",
            "2.25.1",
        )
        assert self.post(failed, "g" * 64).json()["duplicate"] is True  # a late failure changes nothing
        assert ReviewReceipt.objects.get().status == "stored"

    def test_publish_reviews_unreceipted_takes_failed_receipts_too(self) -> None:
        if not EMULATOR:
            self.skipTest("PUBSUB_EMULATOR_HOST unset (tests/django_app starts the emulator)")
        pubsub = EmulatorTopic()
        refused, stored, silent = (make_decision(make_result()) for _ in range(3))
        self.post(
            receipt(refused, status="failed", sr=None, error={"code": "dicomweb_rejected", "message": "x"}),
            "1" * 64,
        )
        self.post(receipt(stored), "2" * 64)
        with override_settings(DICOM_RESULTS_REVIEW_TOPIC=pubsub.topic):
            call_command("publish_reviews", "--unreceipted", stdout=StringIO())
        sent = sorted(json.loads(m.data)["review_id"] for m in pubsub.pull())
        assert sent == sorted([str(refused.review_id), str(silent.review_id)])
