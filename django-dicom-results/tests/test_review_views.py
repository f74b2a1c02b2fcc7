"""The review form over HTTP: who may decide (403 and no form for other staff), CSRF, the
answers to bad input, the history on the detail page, the worklist and the admin."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.test import Client, TestCase
from django.urls import reverse
from django.utils import timezone

from dicom_results.models import AuditEvent, ReviewDecision, ReviewReceipt
from tests.review_support import hidden_fields, result_row, reviewer
from tests.support import failed_record


class ReviewViewTests(TestCase):
    def setUp(self) -> None:
        self.row = result_row()
        self.user = reviewer()
        self.staff = get_user_model().objects.create_user("nurse", is_staff=True)
        self.detail = reverse("dicom_results:detail", args=[self.row.pk])
        self.url = reverse("dicom_results:review", args=[self.row.pk])

    def form(self, client=None, **fields) -> dict[str, str]:
        page = (client or self.client).get(self.detail)
        return {**hidden_fields(page.content.decode()), "decision": "accept", **fields}

    def test_a_reviewer_decides_and_sees_it_in_the_history(self) -> None:
        self.client.force_login(self.user)
        page = self.client.get(self.detail)
        self.assertContains(page, 'id="review-form"')
        self.assertContains(page, 'id="patient-id">PAT-1<')
        self.assertContains(page, 'id="study-uid">1.2.3.4<')
        self.assertContains(page, "red supports <strong>nodule</strong>")
        self.assertContains(page, 'data-rows="768" data-columns="1024"')
        self.assertContains(page, "No decision yet.")
        region = {"type": "polygon", "points": [[10, 20], [300, 20], [300, 400]]}
        fields = {**hidden_fields(page.content.decode()), "decision": "correct", "corrected_label": "normal",
                  "reason_code": "wrong_region", "reason_text": "the opacity is a nipple shadow",
                  "region": json.dumps(region)}  # fmt: skip
        self.assertEqual(fields["expected_latest"], "")
        answer = self.client.post(self.url, fields, REMOTE_ADDR="10.9.8.7")
        self.assertEqual(answer.status_code, 303)
        self.assertEqual(answer["Location"], self.detail + "#history")
        decision = ReviewDecision.objects.get()
        self.assertEqual(str(decision.review_id), fields["review_id"])
        self.assertEqual((decision.corrected_label, decision.reason_code, decision.client_address),
                         ("normal", "wrong_region", "10.9.8.7"))  # fmt: skip
        self.assertIsNotNone(decision.decision_ms)
        page = self.client.get(self.detail)
        self.assertContains(page, "correct: wrong region → normal")
        self.assertContains(page, "the opacity is a nipple shadow")
        self.assertContains(page, "pending")
        self.assertEqual(hidden_fields(page.content.decode())["expected_latest"], str(decision.review_id))
        # A second decision supersedes; both stay in the history.
        self.assertEqual(self.client.post(self.url, self.form()).status_code, 303)
        page = self.client.get(self.detail)
        self.assertContains(page, "(superseded)", count=1)
        self.assertEqual(ReviewDecision.objects.count(), 2)

    def test_staff_without_the_permission_see_decisions_but_no_form_and_get_403(self) -> None:
        self.client.force_login(self.user)
        self.client.post(self.url, self.form())
        self.client.force_login(self.staff)
        page = self.client.get(self.detail)
        self.assertNotContains(page, 'id="review-form"')
        self.assertNotContains(page, reverse("dicom_results:review", args=[self.row.pk]))
        self.assertContains(page, 'id="no-review-permission"')
        self.assertContains(page, "dr-house")
        answer = self.client.post(self.url, {"decision": "accept"})
        self.assertEqual(answer.status_code, 403)
        self.assertEqual(ReviewDecision.objects.count(), 1)

    def test_anonymous_posts_go_to_the_login_page(self) -> None:
        answer = self.client.post(self.url, {"decision": "accept"})
        self.assertEqual(answer.status_code, 302)
        self.assertIn(reverse("dicom_results:login"), answer["Location"])
        self.assertFalse(ReviewDecision.objects.exists())

    def test_csrf_is_enforced(self) -> None:
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(self.user)
        fields = self.form(browser)
        without = {k: v for k, v in fields.items() if k != "csrfmiddlewaretoken"}
        self.assertEqual(browser.post(self.url, without).status_code, 403)
        self.assertFalse(ReviewDecision.objects.exists())
        self.assertEqual(browser.post(self.url, fields).status_code, 303)
        self.assertEqual(ReviewDecision.objects.count(), 1)

    def test_bad_input_is_answered_on_the_page_with_nothing_stored(self) -> None:
        self.client.force_login(self.user)
        failed = result_row(**{k: v for k, v in failed_record().items() if k != "source"})
        far = '{"type": "point", "x": 5000, "y": 1, "radius": 2}'
        correct = {"decision": "correct", "corrected_label": "normal"}
        cases = [
            (self.url, {"reason_code": "bogus", "decision": "reject"}, 400, "the reason must be one of"),
            (self.url, {"decision": "reject"}, 400, "a rejection needs a reason"),
            (self.url, {**correct, "corrected_label": "fracture"}, 400, "must be one of the model"),
            (self.url, {**correct, "region": "{not json"}, 400, "not JSON"),
            (self.url, {**correct, "region": far}, 400, "outside the image"),
            (self.url, {"review_id": "not-a-uuid"}, 400, "is not a UUID"),
            (self.url, {"opened_at": "2026-11-30T08:00:00+00:00"}, 400, "opening time was altered"),
            (reverse("dicom_results:review", args=[failed.pk]), {}, 409, "a failed result has no finding"),
            (reverse("dicom_results:review", args=[self.row.pk + 999]), {}, 404, "no such result"),
        ]  # fmt: skip
        for url, fields, status, message in cases:
            with self.subTest(fields=fields, url=url):
                answer = self.client.post(url, self.form(**fields))
                self.assertContains(answer, message, status_code=status)
                self.assertContains(answer, 'id="review-error"', status_code=status)
        self.assertFalse(ReviewDecision.objects.exists())
        self.assertFalse(AuditEvent.objects.filter(action=AuditEvent.Action.DECIDED).exists())

    def test_the_opening_time_is_signed_and_gives_the_decision_time(self) -> None:
        self.client.force_login(self.user)
        fields = self.form()
        when, signature = fields["opened_at"].rsplit(":", 1)
        earlier = (datetime.fromisoformat(when) - timedelta(hours=1)).isoformat()
        answer = self.client.post(self.url, {**fields, "opened_at": f"{earlier}:{signature}"})
        self.assertContains(answer, "opening time was altered", status_code=400)
        self.assertEqual(self.client.post(self.url, fields).status_code, 303)
        decision = ReviewDecision.objects.get()
        self.assertEqual(decision.opened_at, datetime.fromisoformat(when))
        self.assertLess(decision.decision_ms, 60_000)

    def test_double_submit_and_a_stale_page(self) -> None:
        self.client.force_login(self.user)
        fields = self.form()
        stale = self.form()
        self.assertEqual(self.client.post(self.url, fields).status_code, 303)
        self.assertEqual(self.client.post(self.url, fields).status_code, 303)  # the same review_id
        self.assertEqual(ReviewDecision.objects.count(), 1)
        answer = self.client.post(self.url, stale)  # loaded before the first decision
        self.assertContains(answer, "another reviewer decided meanwhile", status_code=409)
        self.assertEqual(ReviewDecision.objects.count(), 1)

    def test_the_receipt_says_stored_in_pacs(self) -> None:
        self.client.force_login(self.user)
        self.client.post(self.url, self.form())
        ReviewReceipt.objects.create(review=ReviewDecision.objects.get(), webhook_id="w1", status="stored",
                                     body={}, sr_uri="https://pacs/sr")  # fmt: skip
        self.assertContains(self.client.get(self.detail), "stored in PACS")


class WorklistTests(TestCase):
    def test_unreviewed_completed_results_oldest_first_with_counts(self) -> None:
        now = timezone.now()
        newer = result_row(patient_id="PAT-NEW")
        older = result_row(patient_id="PAT-OLD", study_instance_uid="9.9.9")
        reviewed = result_row()
        result_row(**{k: v for k, v in failed_record().items() if k != "source"})
        type(older).objects.filter(pk=older.pk).update(received_at=now - timedelta(days=2))
        type(newer).objects.filter(pk=newer.pk).update(received_at=now - timedelta(days=1))
        user = reviewer()
        self.client.force_login(user)
        fields = hidden_fields(
            self.client.get(reverse("dicom_results:detail", args=[reviewed.pk])).content.decode()
        )
        self.client.post(
            reverse("dicom_results:review", args=[reviewed.pk]), {**fields, "decision": "accept"}
        )
        page = self.client.get(reverse("dicom_results:worklist"))
        self.assertEqual([r.pk for r in page.context["page"]], [older.pk, newer.pk])
        self.assertEqual(page.context["counts"], {"unreviewed": 2, "reviewed_today": 1, "total": 3})
        self.assertContains(page, "PAT-OLD")
        self.assertContains(page, "9.9.9")
        self.assertContains(page, 'id="count-unreviewed">2<')

    def test_anonymous_users_are_sent_to_login(self) -> None:
        for name in ("dicom_results:worklist", "dicom_results:quality"):
            answer = self.client.get(reverse(name))
            self.assertEqual(answer.status_code, 302)


class ReviewAdminTests(TestCase):
    def test_read_only_admin_with_filters(self) -> None:
        row, other_row = result_row(), result_row()
        user, other = reviewer(), reviewer("dr-cuddy")
        for who, where in ((user, row), (other, other_row)):
            self.client.force_login(who)
            page = self.client.get(reverse("dicom_results:detail", args=[where.pk])).content.decode()
            self.client.post(reverse("dicom_results:review", args=[where.pk]),
                             {**hidden_fields(page), "decision": "accept"})  # fmt: skip
        decision = ReviewDecision.objects.get(result=row)
        self.client.force_login(get_user_model().objects.create_superuser("admin", password="pw-admin"))
        url = reverse("admin:dicom_results_reviewdecision_changelist")
        page = self.client.get(url, {"reviewer__id__exact": user.pk, "result__id__exact": row.pk})
        self.assertEqual(page.status_code, 200)
        self.assertEqual(list(page.context["cl"].result_list), [decision])
        for title in ("By decision", "By reviewer", "By result", "By decided at"):
            self.assertContains(page, title)
        self.assertEqual(self.client.get(reverse("admin:dicom_results_reviewdecision_add")).status_code, 403)
        change = reverse("admin:dicom_results_reviewdecision_change", args=[decision.pk])
        self.assertEqual(self.client.get(change).status_code, 200)
        self.client.post(change, {"decision": "reject"})
        delete = reverse("admin:dicom_results_reviewdecision_delete", args=[decision.pk])
        self.assertEqual(self.client.post(delete, {"post": "yes"}).status_code, 403)
        self.assertEqual(ReviewDecision.objects.get(pk=decision.pk).decision, "accept")
