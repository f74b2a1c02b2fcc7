"""The audit trail: opening a result's page or image adds an event (who, what, which result,
when, from where); events cannot be changed or deleted through the ORM or the admin."""

from __future__ import annotations

import io
import os
import unittest
import uuid
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.test import TestCase
from django.urls import reverse
from django.utils import timezone

from dicom_results.models import AppendOnlyError, AuditEvent, InferenceResult
from dicom_results.schema import parse_result
from tests.support import record, webhook_id_for
from tests.test_viewer import PNG_1X1

Action = AuditEvent.Action


def _row(rec: dict) -> InferenceResult:
    return InferenceResult.objects.create(webhook_id=webhook_id_for(rec), body=rec, **parse_result(rec))


class AuditTrailTests(TestCase):
    def setUp(self) -> None:
        self.row = _row(record())
        self.staff = get_user_model().objects.create_user("doctor", is_staff=True)
        self.client.force_login(self.staff)

    def test_opening_a_result_page_is_recorded(self) -> None:
        before = timezone.now()
        url = reverse("dicom_results:detail", args=[self.row.pk])
        with self.assertLogs("dicom_results.audit", "INFO") as logs:
            self.assertEqual(self.client.get(url, REMOTE_ADDR="10.1.2.3").status_code, 200)
        event = AuditEvent.objects.get()
        self.assertEqual(
            (
                event.user_id,
                event.username,
                event.action,
                event.result_id,
                event.detail,
                event.client_address,
            ),
            (self.staff.pk, "doctor", Action.VIEWED_RESULT, self.row.pk, "", "10.1.2.3"),
        )
        self.assertLessEqual(before, event.at)
        logged = " ".join(str(vars(r)) for r in logs.records)
        for patient_data in ("PAT-1", "ward3", "scan", "nodule", "1.2.3.4"):
            self.assertNotIn(patient_data, logged)
        self.assertEqual(logs.records[0].fields["result_id"], self.row.pk)

    def test_the_list_and_refused_requests_add_nothing(self) -> None:
        self.client.get(reverse("dicom_results:list"))
        self.client.get(reverse("dicom_results:detail", args=[self.row.pk + 1000]))  # 404
        self.client.get(reverse("dicom_results:artifact", args=[self.row.pk, "source"]))  # 404
        self.client.logout()
        self.client.get(reverse("dicom_results:detail", args=[self.row.pk]))  # to login
        self.assertFalse(AuditEvent.objects.exists())

    def test_events_cannot_be_changed_or_deleted(self) -> None:
        self.client.get(reverse("dicom_results:detail", args=[self.row.pk]))
        event = AuditEvent.objects.get()
        event.username = "someone-else"
        with self.assertRaises(AppendOnlyError):
            event.save()
        with self.assertRaises(AppendOnlyError):
            event.delete()
        with self.assertRaises(AppendOnlyError):
            AuditEvent.objects.filter(pk=event.pk).update(username="someone-else")
        with self.assertRaises(AppendOnlyError):
            AuditEvent.objects.all().delete()
        with self.assertRaises(AppendOnlyError):
            AuditEvent.objects.bulk_update([event], ["username"])
        self.assertEqual(AuditEvent.objects.get().username, "doctor")

    def test_events_outlive_their_user_and_result(self) -> None:
        self.client.get(reverse("dicom_results:detail", args=[self.row.pk]))
        user_id, result_id = self.staff.pk, self.row.pk
        self.client.logout()
        self.staff.delete()
        self.row.delete()
        event = AuditEvent.objects.get()
        self.assertEqual((event.user_id, event.username, event.result_id), (user_id, "doctor", result_id))


class AuditAdminTests(TestCase):
    def setUp(self) -> None:
        users = get_user_model()
        self.first, self.second = (
            _row(record()),
            _row(record(source={**record()["source"], "generation": "18"})),
        )
        self.alice = users.objects.create_user("alice", is_staff=True)
        self.bob = users.objects.create_user("bob", is_staff=True)
        old = timezone.now() - timedelta(days=40)
        AuditEvent.objects.create(
            user=self.alice, username="alice", action=Action.VIEWED_RESULT, result=self.first
        )
        AuditEvent.objects.create(
            user=self.bob, username="bob", action=Action.VIEWED_RESULT, result=self.second
        )
        AuditEvent.objects.create(
            user=self.bob,
            username="bob",
            action=Action.VIEWED_ARTIFACT,
            result=self.first,
            detail="overlay",
            at=old,
        )
        self.client.force_login(users.objects.create_superuser("admin", password="pw-admin"))
        self.url = reverse("admin:dicom_results_auditevent_changelist")

    def listed(self, **filters) -> list[str]:
        page = self.client.get(self.url, filters)
        self.assertEqual(page.status_code, 200)
        return sorted(f"{e.username}:{e.result_id}:{e.action}" for e in page.context["cl"].result_list)

    def test_filterable_by_user_result_and_date(self) -> None:
        first, second = self.first.pk, self.second.pk
        self.assertEqual(
            self.listed(user__id__exact=self.bob.pk),
            [f"bob:{first}:viewed_artifact", f"bob:{second}:viewed_result"],
        )
        self.assertEqual(
            self.listed(result__id__exact=first),
            [f"alice:{first}:viewed_result", f"bob:{first}:viewed_artifact"],
        )
        today = timezone.now()
        self.assertEqual(
            self.listed(at__gte=(today - timedelta(days=7)).date().isoformat()),
            [f"alice:{first}:viewed_result", f"bob:{second}:viewed_result"],
        )
        page = self.client.get(self.url)
        for name in ("action", "user", "result", "at"):
            self.assertContains(page, f"By {AuditEvent._meta.get_field(name).verbose_name}", msg_prefix=name)

    def test_read_only_even_for_a_superuser(self) -> None:
        event = AuditEvent.objects.filter(username="alice").get()
        self.assertEqual(self.client.get(reverse("admin:dicom_results_auditevent_add")).status_code, 403)
        self.assertEqual(
            self.client.get(reverse("admin:dicom_results_auditevent_delete", args=[event.pk])).status_code,
            403,
        )
        change = self.client.post(
            reverse("admin:dicom_results_auditevent_change", args=[event.pk]), {"username": "x"}
        )
        self.assertEqual(change.status_code, 403)
        bulk = self.client.post(self.url, {"action": "delete_selected", "_selected_action": [event.pk]})
        self.assertIn(bulk.status_code, (200, 302))
        self.assertEqual(AuditEvent.objects.count(), 3)
        self.assertEqual(AuditEvent.objects.get(pk=event.pk).username, "alice")
        page = self.client.get(self.url)
        self.assertNotContains(page, "delete_selected")

    def test_one_event_is_shown_whole_even_when_its_result_is_gone(self) -> None:
        event = AuditEvent.objects.create(
            user=self.alice,
            username="alice",
            action=Action.VIEWED_RESULT,
            result=self.second,
            client_address="10.9.8.7",
        )
        self.second.delete()
        page = self.client.get(reverse("admin:dicom_results_auditevent_change", args=[event.pk]))
        self.assertEqual(page.status_code, 200)
        for shown in ("alice", "10.9.8.7", "viewed result page"):
            self.assertContains(page, shown)
        self.assertNotContains(page, 'type="submit" value="Save"')


@unittest.skipUnless(os.environ.get("STORAGE_EMULATOR_HOST"), "needs a Cloud Storage emulator")
class AuditImageTests(TestCase):
    """Each image or DICOM object served adds an event naming it; one that is missing adds none."""

    def setUp(self) -> None:
        from google.cloud import storage

        bucket_name = f"audit-{uuid.uuid4().hex[:12]}"
        bucket = storage.Client(project="test-project").create_bucket(bucket_name)
        bucket.blob("ward3/scan.overlay.png").upload_from_file(io.BytesIO(PNG_1X1), content_type="image/png")
        rec = record()
        rec["explanation"]["overlay_uri"] = f"gs://{bucket_name}/ward3/scan.overlay.png"
        rec["explanation"]["mask_uri"] = f"gs://{bucket_name}/ward3/scan.missing.png"
        self.row = _row(rec)
        self.staff = get_user_model().objects.create_user("doctor", is_staff=True)
        self.client.force_login(self.staff)

    def test_served_images_are_recorded(self) -> None:
        url = reverse("dicom_results:artifact", args=[self.row.pk, "overlay"])
        self.assertEqual(self.client.get(url, REMOTE_ADDR="2001:db8::7").status_code, 200)
        missing = reverse("dicom_results:artifact", args=[self.row.pk, "mask"])
        self.assertEqual(self.client.get(missing).status_code, 404)
        event = AuditEvent.objects.get()
        self.assertEqual(
            (event.username, event.action, event.result_id, event.detail, event.client_address),
            ("doctor", Action.VIEWED_ARTIFACT, self.row.pk, "overlay", "2001:db8::7"),
        )
