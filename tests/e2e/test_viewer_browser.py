"""The results viewer in a real browser (Playwright driving Debian's Chromium, no download):
log in, see the uploads with their overlay thumbnails, open one, toggle the mask; and,
logged out, the image URLs lead to the login page, never to the image.

A screenshot of the detail page is saved to ``.local/out/viewer.png``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests

from infra.local.stack import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
SAMPLES = ["chest-pa-nodule.dcm", "chest-pa-clear.dcm"]
SCREENSHOT = REPO / ".local" / "out" / "viewer.png"

pytestmark = pytest.mark.e2e


def _image_state(page, selector: str) -> list[list]:
    return page.eval_on_selector_all(selector, "els => els.map(e => [e.complete, e.naturalWidth, e.src])")


def test_viewer_in_chromium(local_stack):
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install chromium (infra/local/check_prereqs.sh)")
    from playwright.sync_api import sync_playwright

    prefix = f"e2e/viewer-{uuid.uuid4().hex[:8]}/"
    local_stack.gcloud_cp(
        [REPO / "samples" / name for name in SAMPLES], f"gs://{local_stack.bucket}/{prefix}"
    )
    outcomes = local_stack.outcomes({n: prefix + n for n in SAMPLES})
    assert {o.status for o in outcomes.values()} == {"completed"}
    env = local_stack.env
    viewer = env["VIEWER_URL"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(viewer)
            assert "/login/" in page.url, "the viewer must ask for a login first"
            page.fill("#id_username", env["VIEWER_USER"])
            page.fill("#id_password", env["VIEWER_PASSWORD"])
            with page.expect_navigation():
                page.click("#login button[type=submit]")
            assert page.url.rstrip("/") == viewer.rstrip("/"), page.url

            # Newest first: our two uploads are on the list, each with a thumbnail that loaded.
            page.wait_for_function(
                "() => [...document.querySelectorAll('img.thumb')].every(i => i.complete)", timeout=30_000
            )
            rows = page.locator("tr.result")
            names = [rows.nth(i).locator("a.detail").inner_text() for i in range(rows.count())]
            for name in SAMPLES:
                assert prefix + name in names, names
            thumbs = _image_state(page, "img.thumb")
            assert thumbs and all(done and width > 0 for done, width, _ in thumbs), thumbs
            assert all("gs://" not in src and "storage" not in src for *_, src in thumbs)
            image_urls = [src for *_, src in thumbs]

            page.locator("a.detail", has_text=prefix + SAMPLES[0]).click()
            page.wait_for_load_state("load")
            page.wait_for_function("() => document.getElementById('overlay').complete")
            (overlay,) = _image_state(page, "#overlay")
            assert overlay[1] > 0, "the overlay image did not load"
            assert page.locator("#prediction").inner_text().startswith("nodule")
            assert page.is_hidden("#mask")
            page.check("#toggle-mask")
            assert page.is_visible("#mask")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # Logged out (a fresh browser context): the image URLs lead to the login page.
            anonymous = browser.new_context().new_page()
            anonymous.goto(image_urls[0])
            assert "/login/" in anonymous.url and anonymous.locator("#login").count() == 1
        finally:
            browser.close()
    for url in image_urls:
        answer = requests.get(url, allow_redirects=False, timeout=10)
        assert answer.status_code == 302 and "/login/" in answer.headers["Location"], url
        assert not answer.content.startswith(b"\x89PNG")
    assert SCREENSHOT.stat().st_size > 0
