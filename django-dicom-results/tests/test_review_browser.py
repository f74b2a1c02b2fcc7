"""Reviewing in a real browser (Playwright driving Debian's Chromium, no download): a reviewer
logs in, opens a result, fades the heat map in, zooms, draws a region and records a correction;
the region arrives in SOURCE pixel coordinates although the rendered PNG is half the source's
size and the view is zoomed, and the decision shows in the history.

The images are real PNGs read from a Cloud Storage emulator through the app's artifact view
(``STORAGE_EMULATOR_HOST``: fake-gcs-server, started by tests/django_app/test_django_results.py).
The screenshot is written to the repository's .local/out/reviewing.png (docs/images/reviewing.png,
in the README, is a copy), so a test run leaves the tracked files as they were.
"""

from __future__ import annotations

import io
import os
import unittest
import uuid
from pathlib import Path

import numpy as np
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.urls import reverse

from dicom_results.models import ReviewDecision
from tests.review_support import IMAGE, result_row, reviewer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parents[2] / ".local" / "out" / "reviewing.png"
SOURCE = 768  # the source's rows and columns
DISPLAY = 512  # STEM.png shrunk to RENDER_MAX_SIDE = 512 (docs/contracts.md); the mask stays 768


def _png(pixels: np.ndarray, size: int | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels)
    if size is not None:
        image = image.resize((size, size), Image.Resampling.BOX)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _artifacts() -> tuple[dict[str, bytes], tuple[int, int], float]:
    """STEM.png, the LIME mask and a heat map of a synthetic radiograph with a nodule (the
    repository's own generator, devkit/synthetic.py), and where the nodule is (source pixels).
    The heat map's red, what the model leant on, sits beside the nodule: the region is wrong."""
    from devkit.synthetic import make_radiograph

    sample = make_radiograph(np.random.default_rng(7), size=SOURCE, nodule=True)
    gray = (sample.image * 255).astype(np.uint8)
    (row, col), radius = sample.nodule_center, sample.nodule_radius
    rr, cc = np.mgrid[0:SOURCE, 0:SOURCE]
    red = np.exp(-(((rr - row + 3 * radius) ** 2 + (cc - col - 3 * radius) ** 2) / (2 * (2 * radius) ** 2)))
    blue = 0.5 * np.exp(-(((rr - SOURCE / 2) ** 2 + (cc - SOURCE / 2) ** 2) / (2 * (SOURCE / 5) ** 2)))
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    rgb = rgb * (1 - red[..., None]) + np.array([230, 30, 30]) * red[..., None]
    rgb = rgb * (1 - blue[..., None]) + np.array([30, 60, 230]) * blue[..., None]
    mask = (red > 0.5).astype(np.uint8) * 255
    files = {
        "scan.png": _png(gray, DISPLAY),
        "scan.overlay.png": _png(rgb.astype(np.uint8), DISPLAY),
        "scan.heatmap.png": _png(rgb.astype(np.uint8), DISPLAY),
        "scan.lime.png": _png(mask),
    }
    return files, (row, col), radius


@unittest.skipUnless(os.environ.get("STORAGE_EMULATOR_HOST"), "needs a Cloud Storage emulator")
@unittest.skipUnless(CHROMIUM.exists(), "needs /usr/bin/chromium (infra/local/check_prereqs.sh)")
class ReviewInChromiumTests(StaticLiveServerTestCase):
    def setUp(self) -> None:
        from google.cloud import storage

        bucket_name = f"review-{uuid.uuid4().hex[:12]}"
        bucket = storage.Client(project="test-project").create_bucket(bucket_name)
        files, self.nodule, self.radius = _artifacts()
        for name, data in files.items():
            bucket.blob(f"ward3/{name}").upload_from_string(data, content_type="image/png")
        gs = f"gs://{bucket_name}/ward3/scan"
        image = {**IMAGE, "rows": SOURCE, "columns": SOURCE}
        self.row = result_row(image_uri=gs + ".png", dicom=None, image=image, explanation={
            "method": "lime", "mask_uri": gs + ".lime.png", "overlay_uri": gs + ".overlay.png",
            "heatmap_uri": gs + ".heatmap.png", "stability": 0.9, "samples_used": 300, "reason": None,
        })  # fmt: skip
        self.user = reviewer("dr-grey", first_name="Meredith", last_name="Grey")

    def test_a_reviewer_corrects_a_result_with_a_drawn_region(self) -> None:
        from playwright.sync_api import sync_playwright

        # Playwright's sync API keeps an event loop in this thread; the ORM calls below run
        # outside it, but Django's guard cannot tell.
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        self.addCleanup(os.environ.pop, "DJANGO_ALLOW_ASYNC_UNSAFE", None)
        detail = reverse("dicom_results:detail", args=[self.row.pk])
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{self.live_server_url}{reverse('dicom_results:login')}?next={detail}")
                page.fill("#id_username", "dr-grey")
                page.fill("#id_password", "pw-dr-grey")
                with page.expect_navigation():
                    page.click("#login button[type=submit]")
                self.assertTrue(page.url.endswith(detail), page.url)
                page.wait_for_function("() => ['image', 'heatmap', 'mask'].every("
                                       "id => document.getElementById(id).complete && "
                                       "document.getElementById(id).naturalWidth > 0)")  # fmt: skip
                self.assertIn("red supports", page.inner_text("#legend"))
                self.assertEqual(page.inner_text("#patient-id"), "PAT-1")

                # The image fills the viewport's height: larger than the 256-pixel thumbnails of old.
                box = page.locator("#stage").bounding_box()
                self.assertGreater(box["height"], 500)
                # The heat map slider shows the layer and sets its opacity.
                self.assertTrue(page.is_hidden("#heatmap"))
                page.fill("#heatmap-opacity", "70")
                self.assertTrue(page.is_visible("#heatmap"))
                self.assertEqual(page.eval_on_selector("#heatmap", "e => getComputedStyle(e).opacity"), "0.7")
                page.check("#toggle-mask")
                page.fill("#mask-opacity", "40")

                page.click("#zoom-in")
                self.assertGreater(page.locator("#stage").bounding_box()["width"], box["width"] * 1.2)
                # The model leant on the wrong spot: the right label, but the region drawn anew.
                page.check("#decision-correct")
                page.select_option("#corrected-label", "nodule")
                page.select_option("#reason-code", "wrong_region")
                page.fill("#reason-text", "the nodule is lower and more medial")
                page.click("#draw-region")
                stage = page.locator("#stage").bounding_box()
                view = page.locator("#viewport").bounding_box()
                (row, col), reach = self.nodule, 1.8 * self.radius
                square = ((-reach, -reach), (reach, -reach), (reach, reach), (-reach, reach))
                corners = [((col + dx) / SOURCE, (row + dy) / SOURCE) for dx, dy in square]
                for fx, fy in corners:
                    x, y = stage["x"] + fx * stage["width"], stage["y"] + fy * stage["height"]
                    self.assertTrue(
                        view["x"] < x < view["x"] + view["width"]
                        and view["y"] < y < view["y"] + view["height"]
                    )
                    page.mouse.click(x, y)
                self.assertEqual(page.inner_text("#region-summary"), "4 points")
                page.evaluate("() => window.scrollTo(0, 0)")
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT))
                with page.expect_navigation():
                    page.click("#submit-review")
                self.assertIn("#history", page.url)
                row = page.locator("#history tr.in-force")
                self.assertIn("correct: wrong region → nodule", row.inner_text())
                self.assertIn("Meredith Grey", row.inner_text())
            finally:
                browser.close()
        decision = ReviewDecision.objects.get()
        self.assertEqual((decision.decision, decision.corrected_label), ("correct", "nodule"))
        self.assertEqual(decision.region["type"], "polygon")
        # In source pixels (768, not the 512 of the PNG on screen), within a screen pixel.
        for (x, y), (fx, fy) in zip(decision.region["points"], corners, strict=True):
            self.assertAlmostEqual(x, fx * SOURCE, delta=1.5)
            self.assertAlmostEqual(y, fy * SOURCE, delta=1.5)
        self.assertIsNotNone(decision.decision_ms)
        self.assertGreater(SCREENSHOT.stat().st_size, 10_000)
