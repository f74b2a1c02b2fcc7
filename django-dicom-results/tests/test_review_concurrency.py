"""Two reviewers at once, and a double submit fired in parallel, against a live server (real
threads, real database: PostgreSQL when the suite runs there, test_django_results.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from django.conf import settings
from django.test import Client, LiveServerTestCase
from django.urls import reverse

from dicom_results.models import AuditEvent, ReviewDecision
from dicom_results.signals import review_decided
from tests.review_support import hidden_fields, result_row, reviewer

PARALLEL = 8


class ConcurrentReviewTests(LiveServerTestCase):
    def setUp(self) -> None:
        self.row = result_row()
        self.detail = self.live_server_url + reverse("dicom_results:detail", args=[self.row.pk])
        self.review = self.live_server_url + reverse("dicom_results:review", args=[self.row.pk])
        self.signalled: list[str] = []
        lock = threading.Lock()

        def on_decided(sender, decision, **kwargs) -> None:
            with lock:
                self.signalled.append(str(decision.review_id))

        review_decided.connect(on_decided)
        self.addCleanup(review_decided.disconnect, on_decided)

    def browser(self, username: str) -> tuple[requests.Session, dict[str, str]]:
        """A logged-in HTTP session (its session cookie made by force_login) and the form's
        fields as the page gave them, CSRF token included."""
        client = Client()
        client.force_login(reviewer(username))
        session = requests.Session()
        session.cookies.set(settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value)
        page = session.get(self.detail, timeout=30)
        page.raise_for_status()
        return session, hidden_fields(page.text)

    def post_together(self, posts: list[tuple[requests.Session, dict[str, str]]]) -> list[int]:
        barrier = threading.Barrier(len(posts))

        def post(item: tuple[requests.Session, dict[str, str]]) -> int:
            session, fields = item
            barrier.wait(timeout=30)
            answer = session.post(self.review, data=fields, allow_redirects=False, timeout=60,
                                  headers={"Referer": self.detail})  # fmt: skip
            return answer.status_code

        with ThreadPoolExecutor(max_workers=len(posts)) as pool:
            return list(pool.map(post, posts))

    def test_of_reviewers_deciding_at_once_one_wins_the_others_are_told(self) -> None:
        posts = []
        for i in range(PARALLEL):
            session, fields = self.browser(f"dr-{i}")
            posts.append((session, {**fields, "decision": "reject", "reason_code": "other"}))
        statuses = self.post_together(posts)
        self.assertEqual(sorted(statuses), [303] + [409] * (PARALLEL - 1), statuses)
        decision = ReviewDecision.objects.get()
        self.assertIsNone(decision.supersedes)
        self.assertEqual(AuditEvent.objects.filter(action=AuditEvent.Action.DECIDED).count(), 1)
        self.assertEqual(self.signalled, [str(decision.review_id)])

    def test_a_double_submit_in_parallel_stores_one_decision(self) -> None:
        session, fields = self.browser("dr-quick")
        statuses = self.post_together([(session, {**fields, "decision": "accept"})] * PARALLEL)
        self.assertEqual(statuses, [303] * PARALLEL)
        decision = ReviewDecision.objects.get()
        self.assertEqual(str(decision.review_id), fields["review_id"])
        self.assertEqual(self.signalled, [fields["review_id"]])
