"""The staff-only viewer: login, list, detail, and images streamed from Cloud Storage.

The image tests read real objects from a Cloud Storage emulator (``STORAGE_EMULATOR_HOST``,
fake-gcs-server in ``make test``) and are skipped without one. Users log in with ``force_login``:
django-axes needs the request for a password login, which test_access.py covers through the form.
"""

from __future__ import annotations

import io
import os
import unittest
import uuid

from django.contrib.auth import get_user_model
from django.test import TestCase, override_settings
from django.urls import reverse

from dicom_results.models import InferenceResult
from dicom_results.schema import parse_result
from tests.support import failed_record, record, webhook_id_for

PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5b5d1f70000000049454e44ae426082"
)


def _row(rec: dict) -> InferenceResult:
    return InferenceResult.objects.create(webhook_id=webhook_id_for(rec), body=rec, **parse_result(rec))


class ViewerAccessTests(TestCase):
    def setUp(self) -> None:
        self.row = _row(record())
        users = get_user_model()
        self.staff = users.objects.create_user("doctor", password="pw-doctor", is_staff=True)
        self.plain = users.objects.create_user("visitor", password="pw-visitor", is_staff=False)

    def test_anonymous_users_are_sent_to_login_everywhere(self) -> None:
        login = reverse("dicom_results:login")
        for url in (
            reverse("dicom_results:list"),
            reverse("dicom_results:detail", args=[self.row.pk]),
            reverse("dicom_results:artifact", args=[self.row.pk, "overlay"]),
            reverse("dicom_results:artifact", args=[self.row.pk, "image"]),
        ):
            with self.subTest(url=url):
                response = self.client.get(url)
                self.assertEqual(response.status_code, 302)
                self.assertTrue(response["Location"].startswith(login), response["Location"])

    def test_non_staff_users_are_refused(self) -> None:
        self.client.force_login(self.plain)
        response = self.client.get(reverse("dicom_results:artifact", args=[self.row.pk, "overlay"]))
        self.assertEqual(response.status_code, 302)

    def test_list_newest_first_and_filters(self) -> None:
        failed = _row(failed_record() | {"source": {**record()["source"], "generation": "18"}})
        normal = _row(record(prediction={"label": "normal", "score": 0.8, "scores": {"normal": 0.8}},
                             source={**record()["source"], "generation": "19"}))  # fmt: skip
        self.client.force_login(self.staff)
        url = reverse("dicom_results:list")
        page = self.client.get(url)
        self.assertEqual([r.pk for r in page.context["page"]], [normal.pk, failed.pk, self.row.pk])
        self.assertNotContains(page, "gs://")  # the browser never gets a bucket URL
        self.assertContains(page, reverse("dicom_results:artifact", args=[self.row.pk, "overlay"]))
        by_status = self.client.get(url, {"status": "failed"})
        self.assertEqual([r.pk for r in by_status.context["page"]], [failed.pk])
        by_label = self.client.get(url, {"label": "nodule"})
        self.assertEqual([r.pk for r in by_label.context["page"]], [self.row.pk])

    def test_detail_shows_prediction_model_timings_toggles_and_dicom_links(self) -> None:
        self.client.force_login(self.staff)
        page = self.client.get(reverse("dicom_results:detail", args=[self.row.pk]))
        self.assertContains(page, "nodule (0.930)")
        self.assertContains(page, "demo-cnn 1")
        self.assertContains(page, "explain 900.1")
        self.assertContains(page, '<dd id="stability">0.91')
        self.assertContains(page, "LIME's 300 samples")
        self.assertContains(page, 'id="toggle-mask"')
        self.assertContains(page, 'id="toggle-heatmap"')
        for role in ("image", "overlay", "mask", "heatmap", "seg", "sr"):
            self.assertContains(page, reverse("dicom_results:artifact", args=[self.row.pk, role]))
        self.assertNotContains(page, "gs://uploads/ward3/scan.png")

    def test_one_method_offers_no_method_choice(self) -> None:
        self.client.force_login(self.staff)
        page = self.client.get(reverse("dicom_results:detail", args=[self.row.pk]))
        self.assertNotContains(page, 'id="heatmap-method"')

    def test_lime_and_gradcam_offer_a_method_toggle_with_each_heat_map(self) -> None:
        rec = record()
        rec["explanations"] = [
            {"method": "lime", "heatmap_uri": "gs://uploads/ward3/scan.heatmap.png"},
            {"method": "gradcam", "heatmap_uri": "gs://uploads/ward3/scan.gradcam.heatmap.png"},
        ]
        rec["source"]["generation"] = "99"
        row = _row(rec)
        self.assertEqual(row.artifact_uri("heatmap-gradcam"), "gs://uploads/ward3/scan.gradcam.heatmap.png")
        self.assertEqual(row.artifact_uri("heatmap-lime"), "gs://uploads/ward3/scan.heatmap.png")
        self.assertEqual(row.artifact_uri("heatmap-other"), "")
        self.client.force_login(self.staff)
        page = self.client.get(reverse("dicom_results:detail", args=[row.pk]))
        self.assertContains(page, '<select id="heatmap-method"')
        for method, name in (("lime", "LIME"), ("gradcam", "Grad-CAM")):
            url = reverse("dicom_results:artifact", args=[row.pk, f"heatmap-{method}"])
            self.assertContains(
                page, f'<option value="{method}" data-src="{url}">{name}</option>', html=False
            )
        self.assertContains(page, '<span id="heatmap-method-name">LIME</span>')

    def test_admin_lists_results_with_filters(self) -> None:
        self.client.force_login(get_user_model().objects.create_superuser("admin", password="pw-admin"))
        url = reverse("admin:dicom_results_inferenceresult_changelist")
        page = self.client.get(url, {"status__exact": "completed", "label": "nodule", "modality": "DX"})
        self.assertEqual(page.status_code, 200)
        self.assertEqual(list(page.context["cl"].result_list), [self.row])
        for field in ("status", "label", "modality"):
            self.assertContains(page, f"By {field}", msg_prefix=field)
        self.assertEqual(self.client.get(reverse("admin:dicom_results_inferenceresult_add")).status_code, 403)

    def test_unknown_role_is_404(self) -> None:
        self.client.force_login(self.staff)
        response = self.client.get(reverse("dicom_results:artifact", args=[self.row.pk, "source"]))
        self.assertEqual(response.status_code, 404)


@unittest.skipUnless(os.environ.get("STORAGE_EMULATOR_HOST"), "needs a Cloud Storage emulator")
class ViewerImageTests(TestCase):
    """Images come from the bucket through Django, with the server's credentials."""

    def setUp(self) -> None:
        from google.cloud import storage

        self.bucket_name = f"viewer-{uuid.uuid4().hex[:12]}"
        client = storage.Client(project="test-project")
        bucket = client.create_bucket(self.bucket_name)
        for name in ("scan.png", "scan.overlay.png", "scan.gradcam.heatmap.png"):
            bucket.blob(f"ward3/{name}").upload_from_file(io.BytesIO(PNG_1X1), content_type="image/png")
        bucket.blob("ward3/scan.seg.dcm").upload_from_string(b"DICM", content_type="application/dicom")
        rec = record()
        gs = f"gs://{self.bucket_name}/ward3/"
        rec["image_uri"] = gs + "scan.png"
        rec["explanation"]["overlay_uri"] = gs + "scan.overlay.png"
        rec["explanation"]["mask_uri"] = gs + "scan.missing.png"
        rec["dicom"]["seg_uri"] = gs + "scan.seg.dcm"
        rec["explanations"] = [
            {"method": "lime", "heatmap_uri": gs + "scan.missing.png"},
            {"method": "gradcam", "heatmap_uri": gs + "scan.gradcam.heatmap.png"},
        ]
        self.row = _row(rec)
        self.client.force_login(get_user_model().objects.create_user("doctor", is_staff=True))

    def get(self, role: str):
        return self.client.get(reverse("dicom_results:artifact", args=[self.row.pk, role]))

    def test_images_are_streamed_privately(self) -> None:
        for role in ("image", "overlay", "heatmap-gradcam"):
            with self.subTest(role=role):
                response = self.get(role)
                self.assertEqual(response.status_code, 200)
                self.assertEqual(response.content, PNG_1X1)
                self.assertEqual(response["Content-Type"], "image/png")
                self.assertIn("private", response["Cache-Control"])

    def test_dicom_objects_download_as_attachments(self) -> None:
        response = self.get("seg")
        self.assertEqual((response.status_code, response["Content-Type"]), (200, "application/dicom"))
        self.assertIn("attachment", response["Content-Disposition"])

    def test_missing_object_is_404(self) -> None:
        self.assertEqual(self.get("mask").status_code, 404)
        self.assertEqual(self.get("heatmap-lime").status_code, 404)
        self.assertEqual(self.get("heatmap-unknown").status_code, 404)

    def test_buckets_outside_the_allow_list_are_not_read(self) -> None:
        with override_settings(DICOM_RESULTS_ALLOWED_BUCKETS=["some-other-bucket"]):
            self.assertEqual(self.get("overlay").status_code, 404)
        with override_settings(DICOM_RESULTS_ALLOWED_BUCKETS=[self.bucket_name]):
            self.assertEqual(self.get("overlay").status_code, 200)
