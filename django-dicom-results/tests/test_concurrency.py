"""Concurrent duplicate deliveries against a live server (real threads, real database)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from django.test import LiveServerTestCase
from django.urls import reverse

from dicom_results.models import InferenceResult
from dicom_results.signals import result_received
from tests.support import encode, record, sign, webhook_id_for

DELIVERIES = 20


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={**headers, "Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


class ConcurrentDuplicateTests(LiveServerTestCase):
    def test_twenty_concurrent_duplicates_give_one_row_and_one_signal(self) -> None:
        signalled: list[int] = []
        lock = threading.Lock()

        def on_result(sender, result, **kwargs) -> None:
            with lock:
                signalled.append(result.pk)

        result_received.connect(on_result)
        self.addCleanup(result_received.disconnect, on_result)
        rec = record()
        body = encode(rec)
        key = webhook_id_for(rec)
        url = self.live_server_url + reverse("dicom_results:webhook")
        barrier = threading.Barrier(DELIVERIES)

        def deliver(_: int) -> int:
            headers = sign(body, webhook_id=key)  # each retry is signed anew, same webhook-id
            barrier.wait(timeout=30)
            return _post(url, body, headers)

        with ThreadPoolExecutor(max_workers=DELIVERIES) as pool:
            statuses = list(pool.map(deliver, range(DELIVERIES)))
        self.assertTrue(all(200 <= s < 300 for s in statuses), statuses)
        self.assertEqual(statuses.count(201), 1, statuses)
        self.assertEqual(InferenceResult.objects.filter(webhook_id=key).count(), 1)
        self.assertEqual(InferenceResult.objects.count(), 1)
        self.assertEqual(signalled, [InferenceResult.objects.get().pk])
