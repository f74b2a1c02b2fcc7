"""Quality in use and the retraining export, on a known set of decisions: only the decision in
force counts, figures per model, and the JSONL lines a Vertex AI import takes."""

from __future__ import annotations

import json
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import TestCase
from django.urls import reverse
from django.utils import timezone

from dicom_results import quality
from dicom_results.models import ReviewDecision, ReviewReceipt
from tests.review_support import result_row, reviewer

MODEL_B = {"name": "other-cnn", "version": "2", "sha256": "cd" * 32}
MONDAY = date(2026, 11, 2)  # weeks start on Mondays


def at(day: date, hour: int = 10) -> datetime:
    return timezone.make_aware(datetime(day.year, day.month, day.day, hour))


class KnownSet(TestCase):
    """Model A (demo-cnn 1): five results. Model B: one. One of A's was decided twice."""

    def setUp(self) -> None:
        self.user = reviewer()

        def decide(row, decision, when, ms, supersedes=None, **fields) -> ReviewDecision:
            return ReviewDecision.objects.create(result=row, reviewer=self.user, reviewer_name="dr-house",
                                                 decision=decision, decided_at=when, decision_ms=ms,
                                                 supersedes=supersedes, **fields)  # fmt: skip

        week1, week2 = MONDAY, MONDAY + timedelta(days=7)
        self.accepted = result_row()  # AI label: nodule
        decide(self.accepted, "accept", at(week1), 1000)
        self.false_positive = result_row()
        decide(
            self.false_positive, "reject", at(week1 + timedelta(days=2)), 2000, reason_code="false_positive"
        )
        self.corrected = result_row()
        self.correction = decide(self.corrected, "correct", at(week2), 5000, corrected_label="normal",
                                 region={"type": "point", "x": 5, "y": 5, "radius": 3})  # fmt: skip
        ReviewReceipt.objects.create(review=self.correction, webhook_id="w-1", status="stored", body={},
                                     seg_uri="gs://uploads/ward3/scan.review.seg.dcm")  # fmt: skip
        self.twice = result_row()  # first rejected, then accepted: counts as accepted
        first = decide(self.twice, "reject", at(week1), 9000, reason_code="other")
        decide(self.twice, "accept", at(week2 + timedelta(days=1)), 3000, supersedes=first)
        self.unsuitable = result_row(model=MODEL_B)
        decide(self.unsuitable, "reject", at(week2), None, reason_code="image_not_suitable")
        result_row()  # never reviewed: counted nowhere


class QualityTests(KnownSet):
    def test_figures_per_model_count_the_latest_decision_only(self) -> None:
        a, b = quality.summarise([quality.as_reviewed(d) for d in quality.latest_reviews()])
        self.assertEqual(a.model, ("demo-cnn", "1", "ab" * 32))
        self.assertEqual((a.reviewed, a.accepted, a.rejected, a.corrected), (4, 2, 1, 1))
        self.assertEqual(a.acceptance_rate, 0.5)
        self.assertEqual(a.median_decision_ms, 2500)  # of 1000, 2000, 3000, 5000
        self.assertEqual(a.acceptance, [(MONDAY, 1, 2), (MONDAY + timedelta(days=7), 1, 2)])
        self.assertEqual(a.reasons, [("false_positive", 1)])
        self.assertEqual(a.agreement, [("nodule", 3, 2, [("nodule", 2), ("normal", 1)])])
        self.assertEqual((b.reviewed, b.rejected, b.median_decision_ms, b.agreement), (1, 1, None, []))
        self.assertEqual(b.reasons, [("image_not_suitable", 1)])

    def test_daily_buckets(self) -> None:
        (a, _) = quality.summarise([quality.as_reviewed(d) for d in quality.latest_reviews()], "day")
        self.assertEqual([(d.day, n) for d, _, n in a.acceptance], [(2, 1), (4, 1), (9, 1), (10, 1)])

    def test_the_page_shows_each_model_with_its_chart(self) -> None:
        self.client.force_login(get_user_model().objects.create_user("nurse", is_staff=True))
        page = self.client.get(reverse("dicom_results:quality"))
        self.assertEqual(page.status_code, 200)
        html = page.content.decode()
        self.assertEqual(html.count('<section class="model"'), 2)
        self.assertIn("ab" * 32, html)
        self.assertIn("other-cnn 2", html)
        self.assertIn('<dd class="reviewed">4</dd>', html)
        self.assertIn('<dd class="median">2500 ms</dd>', html)
        self.assertIn("<li>false positive: 1</li>", html)
        self.assertIn("<li>image not suitable: 1</li>", html)
        self.assertEqual(html.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"'), 2)
        self.assertIn("2026-11-02: 1 of 2 accepted (50%)", html)

    def test_the_chart_draws_one_point_per_period(self) -> None:
        svg = quality.acceptance_svg([(MONDAY, 3, 4), (MONDAY + timedelta(days=7), 0, 2)])
        self.assertEqual(svg.count("<circle"), 2)
        self.assertIn("75% (n=4)", svg)
        self.assertIn("0% (n=2)", svg)
        self.assertIn("<polyline", svg)
        self.assertIn("no decisions yet", quality.acceptance_svg([]))


class ExportTests(KnownSet):
    def export(self, *args: str) -> list[dict]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "reviews.jsonl"
            call_command("export_reviews", *args, "--output", str(out), stderr=open("/dev/null", "w"))  # noqa: SIM115
            return [json.loads(line) for line in out.read_text().splitlines()]

    def test_one_line_per_reviewed_result_shaped_for_vertex(self) -> None:
        lines = self.export("--since", "2026-11-01")
        by_id = {line["review"]["source_generation"]: line for line in lines}
        self.assertEqual(len(lines), 5)  # the twice-decided result once, the unreviewed one not
        accepted = by_id[self.accepted.source_generation]
        self.assertEqual(accepted["imageGcsUri"], "gs://uploads/ward3/scan.png")
        self.assertEqual(accepted["classificationAnnotation"], {"displayName": "nodule"})
        labels = accepted["dataItemResourceLabels"]
        self.assertEqual(labels["decision"], "accept")
        self.assertEqual(labels["model_sha256"], "ab" * 8)
        self.assertEqual(labels["source_generation"], self.accepted.source_generation)
        for line in lines:
            for key, value in line["dataItemResourceLabels"].items():
                self.assertRegex(key, r"^[a-z][a-z0-9_-]{0,62}$")
                self.assertRegex(value, r"^[a-z0-9_-]{0,63}$")
        corrected = by_id[self.corrected.source_generation]
        self.assertEqual(corrected["classificationAnnotation"], {"displayName": "normal"})
        self.assertEqual(corrected["review"]["corrected_seg_uri"], "gs://uploads/ward3/scan.review.seg.dcm")
        self.assertEqual(corrected["review"]["ai_label"], "nodule")
        self.assertEqual(corrected["review"]["model"]["sha256"], "ab" * 32)
        # A false positive of a two-label model: the other label is what the image shows.
        self.assertEqual(by_id[self.false_positive.source_generation]["classificationAnnotation"],
                         {"displayName": "normal"})  # fmt: skip
        self.assertEqual(by_id[self.twice.source_generation]["review"]["decision"], "accept")
        unsuitable = by_id[self.unsuitable.source_generation]
        self.assertNotIn("classificationAnnotation", unsuitable)
        self.assertEqual(unsuitable["review"]["reviewed_label"], None)
        self.assertEqual(unsuitable["dataItemResourceLabels"]["model_name"], "other-cnn")

    def test_since_and_the_strict_vertex_form(self) -> None:
        lines = self.export("--since", "2026-11-09", "--vertex")
        self.assertEqual(len(lines), 3)  # the correction, the second decision, model B's
        for line in lines:
            self.assertLessEqual(
                set(line), {"imageGcsUri", "classificationAnnotation", "dataItemResourceLabels"}
            )
        self.assertEqual(self.export("--since", "2027-01-01"), [])

    def test_a_bad_date_is_refused(self) -> None:
        with self.assertRaises(CommandError):
            call_command("export_reviews", "--since", "last week")
