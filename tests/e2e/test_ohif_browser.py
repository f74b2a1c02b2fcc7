"""The results where radiologists look: OHIF (infra/local/ohif.py) in the local stack, in a real
browser (Playwright driving Debian's Chromium with WebGL in software).

After one upload (the nodule radiograph, the CT, the JPEG-LS MR), OHIF lists the study with its
source (stored in Orthanc by the stack's PACS stand-in), the SEG, the heat-map SEG and the SR;
opening the SEG draws the mask over the image (checked on the screenshot's pixels) with no page
error; opening the heat-map SEG draws its bands of positive weight (yellow to orange). What
OHIF 3.13 does with the SR is documented in docs/local-stack.md ("OHIF").

A screenshot of the SEG over the radiograph is saved to ``.local/out/ohif-seg.png``
(docs/images/ohif-seg.png is a copy).
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infra.local import ohif
from infra.local.stack import REPO

CHROMIUM = Path("/usr/bin/chromium")
# WebGL without a GPU: SwiftShader, which Chromium only uses when told it may.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT_SAMPLE = "chest-pa-nodule.dcm"
SCREENSHOT = REPO / ".local" / "out" / "ohif-seg.png"
HEATMAP_SCREENSHOT = REPO / ".local" / "out" / "ohif-heatmap-seg.png"
SERIES = {
    "SEG": "AI LIME explanation mask",
    "HEATMAP": "AI LIME weight map",
    "SR": "AI finding report",
}
VIEWPORT = "[data-cy='viewport-pane']"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _heat_pixels(png: bytes) -> int:
    """Pixels of the heat-map bands' colours (pale yellow to deep orange) in a screenshot: the
    grey radiograph and the mask's red (its green equals its blue) have none."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r - b > 60) & (g - b > 25)).sum())


def _red_pixels(png: bytes) -> int:
    """Pixels of OHIF's first segment colour (a red) in a screenshot: the grey radiograph has none."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r - g > 50) & (r - b > 50)).sum())


@pytest.mark.parametrize("sample", [SCREENSHOT_SAMPLE, "ct-small.dcm", "mr-small-jpegls.dcm"])
def test_ohif_lists_the_study_and_draws_the_seg_over_the_source(local_stack, sample: str):
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install chromium (infra/local/check_prereqs.sh)")
    if "OHIF_URL" not in local_stack.env:
        pytest.fail(ohif.missing(ohif.dist_dir()) or "the local stack serves no OHIF")
    from playwright.sync_api import sync_playwright

    name = f"e2e/ohif-{uuid.uuid4().hex[:8]}/{sample}"
    local_stack.gcloud_cp([REPO / "samples" / sample], f"gs://{local_stack.bucket}/{name}")
    (outcome,) = local_stack.outcomes({sample: name}).values()
    assert outcome.status == "completed"
    study = outcome.record["dicom"]["study_instance_uid"]

    page_errors: list[str] = []
    console_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(ohif.study_url(local_stack.env["OHIF_URL"], study))

            # The study's series: the source radiograph (from the PACS stand-in) and our three.
            for description in SERIES.values():
                page.get_by_text(description).first.wait_for(timeout=120_000)
            modality = outcome.record["study_modality"]
            page.get_by_text(modality, exact=True).first.wait_for(timeout=30_000)
            page.wait_for_timeout(3_000)  # the first image drawn
            skip_tour = page.get_by_text("Skip all")
            if skip_tour.count():
                skip_tour.first.click()
            viewport = page.locator(VIEWPORT).first
            before = _red_pixels(viewport.screenshot())

            # The SEG over the radiograph: OHIF previews it, then asks whether to open it.
            page.get_by_text(SERIES["SEG"]).first.dblclick()
            page.get_by_text("Do you want to open this Segmentation?").wait_for(timeout=60_000)
            page.wait_for_timeout(2_000)
            drawn = _red_pixels(viewport.screenshot())
            assert drawn > 200 and drawn > 20 * (before + 1), (before, drawn)
            page.get_by_role("button", name="Yes").click()  # open it: a labelmap in the viewport
            page.wait_for_timeout(3_000)
            opened = _red_pixels(viewport.screenshot())
            assert opened > 200 and opened > 20 * (before + 1), (before, drawn, opened)
            if sample == SCREENSHOT_SAMPLE:
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT))
            assert page_errors == [], page_errors
            assert not [e for e in console_errors if "PixelMeasures" in e or "Orientation" in e], (
                console_errors
            )

            # The heat-map SEG: its four bands of positive weight, drawn as a colour map.
            console_errors.clear()
            heat_before = _heat_pixels(viewport.screenshot())
            page.get_by_text(SERIES["HEATMAP"]).first.dblclick()
            page.get_by_text("Do you want to open this Segmentation?").wait_for(timeout=60_000)
            page.wait_for_timeout(2_000)
            heat = _heat_pixels(viewport.screenshot())
            if sample == SCREENSHOT_SAMPLE:
                page.screenshot(path=str(HEATMAP_SCREENSHOT))
            assert heat > 200 and heat > 5 * (heat_before + 1), (heat_before, heat)
            assert not [e for e in console_errors if "egmentation" in e], console_errors
            assert page_errors == [], page_errors
        finally:
            browser.close()
