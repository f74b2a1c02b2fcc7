"""The review service (reviews.record_decision): every bad input is refused with its code and
status and leaves nothing stored; a good one stores the decision, its audit event and one
signal after the commit; decisions supersede and are never edited."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.test import TestCase
from django.utils import timezone

from dicom_results import reviews
from dicom_results.models import AppendOnlyError, AuditEvent, ReviewDecision
from dicom_results.signals import review_decided
from tests.review_support import result_row as _row
from tests.review_support import reviewer
from tests.support import failed_record


class ReviewServiceTests(TestCase):
    def setUp(self) -> None:
        self.row = _row()
        self.user = reviewer(first_name="Gregory", last_name="House")
        self.sent: list[ReviewDecision] = []

        def on_decided(sender, decision, **kwargs) -> None:
            self.sent.append(decision)

        review_decided.connect(on_decided)
        self.addCleanup(review_decided.disconnect, on_decided)

    def decide(self, row=None, user=None, **fields):
        fields.setdefault("decision", "accept")
        with self.captureOnCommitCallbacks(execute=True):
            return reviews.record_decision(row or self.row, user or self.user, **fields)

    def refused(self, code: str, status: int = 400, row=None, user=None, **fields) -> reviews.ReviewError:
        with self.assertRaises(reviews.ReviewError) as caught:
            self.decide(row, user, **fields)
        self.assertEqual((caught.exception.code, caught.exception.http_status), (code, status))
        self.assertTrue(caught.exception.message)
        return caught.exception

    def assertNothingStored(self) -> None:
        self.assertFalse(ReviewDecision.objects.exists())
        self.assertFalse(AuditEvent.objects.filter(action=AuditEvent.Action.DECIDED).exists())
        self.assertEqual(self.sent, [])

    def test_an_acceptance_is_stored_with_reviewer_time_audit_and_one_signal(self) -> None:
        opened = timezone.now() - timedelta(seconds=12)
        decision = self.decide(opened_at=opened, client_address="10.0.0.7")
        self.assertEqual(decision.decision, "accept")
        self.assertEqual(decision.reviewer_name, "Gregory House")
        self.assertEqual(decision.reviewer_organisation, "Test Hospital Radiology")
        self.assertIsNone(decision.supersedes)
        self.assertAlmostEqual(decision.decision_ms, 12000, delta=2000)
        self.assertEqual(decision.decision_ms, int((decision.decided_at - opened).total_seconds() * 1000))
        event = AuditEvent.objects.get(action=AuditEvent.Action.DECIDED)
        self.assertEqual((event.user_id, event.result_id, event.detail, event.client_address),
                         (self.user.pk, self.row.pk, "accept", "10.0.0.7"))  # fmt: skip
        self.assertEqual(self.sent, [decision])

    def test_the_log_line_names_ids_only(self) -> None:
        with self.assertLogs("dicom_results.reviews", "INFO") as logs:
            decision = self.decide(decision="correct", corrected_label="normal", reason_text="PAT-1 ward3")
        logged = " ".join(str(vars(r)) for r in logs.records)
        for patient_data in ("PAT-1", "ward3", "scan", "nodule", "normal", "1.2.3.4", "House"):
            self.assertNotIn(patient_data, logged)
        self.assertEqual(logs.records[0].fields["review_id"], str(decision.review_id))

    def test_the_name_falls_back_to_the_username(self) -> None:
        plain = reviewer("dr-plain")
        self.assertEqual(self.decide(user=plain).reviewer_name, "dr-plain")

    def test_a_failed_result_takes_no_decision(self) -> None:
        failed = _row(**{k: v for k, v in failed_record().items() if k != "source"})
        self.refused("failed_result", 409, row=failed)
        self.assertNothingStored()

    def test_unknown_decision_and_reason_codes(self) -> None:
        self.refused("bad_decision", decision="maybe")
        self.refused("bad_reason", decision="reject", reason_code="looks_odd")
        self.refused("reason_required", decision="reject")
        self.refused("bad_decision", decision="accept", reason_code="other")
        self.refused("bad_reason", decision="reject", reason_code="other", reason_text="x" * 2001)
        self.assertNothingStored()

    def test_a_corrected_label_must_be_one_of_the_models(self) -> None:
        self.refused("bad_label", decision="correct", corrected_label="fracture")
        self.refused("bad_label", decision="correct")
        self.refused("bad_decision", decision="reject", reason_code="other", corrected_label="normal")
        self.assertNothingStored()
        self.assertEqual(self.decide(decision="correct", corrected_label="normal").corrected_label, "normal")

    def test_regions_outside_the_image_or_malformed_are_refused(self) -> None:
        square = [[10, 10], [100, 10], [100, 100]]
        for region, code in [
            ({"type": "polygon", "points": [[10, 10], [1025, 10], [100, 100]]}, "region_outside"),
            ({"type": "polygon", "points": [[10, 10], [100, -1], [100, 100]]}, "region_outside"),
            ({"type": "polygon", "points": [[10, 10], [100, 769], [100, 100]]}, "region_outside"),
            ({"type": "point", "x": 2000, "y": 5, "radius": 3}, "region_outside"),
            ({"type": "polygon", "points": square[:2]}, "bad_region"),
            ({"type": "polygon", "points": [[10, "a"], [1, 1], [2, 2]]}, "bad_region"),
            ({"type": "polygon", "points": [[10, True], [1, 1], [2, 2]]}, "bad_region"),
            ({"type": "polygon", "points": [[1, 1, 1], [1, 1], [2, 2]]}, "bad_region"),
            ({"type": "polygon", "points": square, "extra": 1}, "bad_region"),
            ({"type": "point", "x": 5, "y": 5, "radius": 0}, "bad_region"),
            ({"type": "circle", "x": 5, "y": 5}, "bad_region"),
            ([[1, 2]], "bad_region"),
        ]:
            with self.subTest(region=region):
                self.refused(code, decision="correct", corrected_label="normal", region=region)
        self.refused("bad_decision", decision="accept", region={"type": "polygon", "points": square})
        self.assertNothingStored()

    def test_regions_inside_are_kept_in_source_pixels(self) -> None:
        edge = [[0, 0], [1024, 0], [1024, 768.0]]
        polygon = self.decide(decision="correct", corrected_label="nodule",
                              region={"type": "polygon", "points": edge})  # fmt: skip
        self.assertEqual(polygon.region, {"type": "polygon", "points": [[0, 0], [1024, 0], [1024, 768]]})
        point = self.decide(decision="correct", corrected_label="nodule", expected_latest=polygon.review_id,
                            region={"type": "point", "x": 512.257, "y": 300, "radius": 20})  # fmt: skip
        self.assertEqual(point.region, {"type": "point", "x": 512.26, "y": 300.0, "radius": 20.0})

    def test_a_record_without_the_image_size_takes_no_region(self) -> None:
        old = _row(image=None)
        region = {"type": "point", "x": 5, "y": 5, "radius": 3}
        self.refused("region_unchecked", row=old, decision="correct", corrected_label="normal", region=region)
        self.assertEqual(self.decide(row=old, decision="correct", corrected_label="normal").region, None)

    def test_the_double_submit_returns_the_first_decision(self) -> None:
        review_id = uuid.uuid4()
        first = self.decide(review_id=review_id)
        again = self.decide(review_id=review_id, decision="reject", reason_code="other")
        self.assertEqual((again.pk, again.decision), (first.pk, "accept"))
        self.assertEqual(ReviewDecision.objects.count(), 1)
        self.assertEqual(AuditEvent.objects.filter(action=AuditEvent.Action.DECIDED).count(), 1)
        self.assertEqual(self.sent, [first])

    def test_a_review_id_of_another_result_is_refused(self) -> None:
        first = self.decide()
        self.refused("review_id_reused", 409, row=_row(), review_id=first.review_id)

    def test_a_stale_page_is_refused_and_a_fresh_one_supersedes(self) -> None:
        first = self.decide()
        other = reviewer("dr-cuddy")
        self.refused("conflict", 409, user=other, decision="reject", reason_code="false_positive")
        self.refused("conflict", 409, user=other, decision="reject", reason_code="false_positive",
                     expected_latest=uuid.uuid4())  # fmt: skip
        second = self.decide(user=other, decision="reject", reason_code="false_positive",
                             expected_latest=first.review_id)  # fmt: skip
        self.assertEqual(second.supersedes, first)
        self.assertEqual(reviews.latest_decision(self.row), second)
        self.assertEqual(ReviewDecision.objects.filter(result=self.row).count(), 2)  # history kept
        self.assertEqual(self.sent, [first, second])
        # A page that saw no decision cannot overwrite one either.
        self.refused("conflict", 409, expected_latest=first.review_id)

    def test_decisions_cannot_be_edited_or_deleted(self) -> None:
        decision = self.decide()
        decision.decision = "reject"
        with self.assertRaises(AppendOnlyError):
            decision.save()
        with self.assertRaises(AppendOnlyError):
            decision.delete()
        with self.assertRaises(AppendOnlyError):
            ReviewDecision.objects.filter(pk=decision.pk).update(decision="reject")
        self.assertEqual(ReviewDecision.objects.get().decision, "accept")

    def test_opening_time_in_the_future_or_without_zone_is_refused(self) -> None:
        self.refused("bad_opened_at", opened_at=timezone.now() + timedelta(minutes=5))
        self.refused("bad_opened_at", opened_at=timezone.now().replace(tzinfo=None))
        self.assertNothingStored()

    def test_users_without_the_permission_are_refused(self) -> None:
        staff = get_user_model().objects.create_user("nurse", is_staff=True)
        self.refused("forbidden", 403, user=staff)
        self.assertNothingStored()
