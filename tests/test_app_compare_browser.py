"""Compare and Runs in a real headless Chromium (Playwright) on the tiny demo, for a run aligned from the
base: the teacher-forced view (ground truth | base | aligned, with reward terms), a shared-prefix
continuation, the difference maps and per-class numbers; then two runs overlaid in the Runs tab with
their CSV. Help text is checked for WCAG AA contrast. Screenshots go to $VAPI_SCREENSHOTS_DIR if set."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import served_app, train_demo_run
from tests.test_app_browser import CHROMIUM, WAIT_MS, browser_page, screenshot
from tests.test_app_eval_tabs import evaluator_file  # noqa: F401 - a fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium against a launched app

CONTRAST_JS = """el => {
  const rgb = s => s.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number);
  const lum = c => { const v = c.map(x => { x /= 255; return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; });
                     return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  let bg = el, color = getComputedStyle(el).color;
  while (bg && ['rgba(0, 0, 0, 0)', 'transparent'].includes(getComputedStyle(bg).backgroundColor)) bg = bg.parentElement;
  const b = bg ? rgb(getComputedStyle(bg).backgroundColor) : [255, 255, 255];
  const [l1, l2] = [lum(rgb(color)), lum(b)].sort((x, y) => y - x);
  return (l1 + 0.05) / (l2 + 0.05);
}"""


@pytest.fixture
def served(tiny_demo, evaluator_file, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install -y chromium)")
    shutil.copy(evaluator_file, tiny_demo / "evaluator.safetensors")  # the judge and the per-class numbers
    with served_app(tmp_path, monkeypatch, [tmp_path]) as served:
        yield served


def test_compare_views_and_runs_overlay_in_chromium(served, tmp_path):
    from playwright.sync_api import expect

    app, url = served
    store = app.ctx.store
    first, _ = train_demo_run(store, 2, name="lr 3e-2")
    aligned, step = train_demo_run(store, 2, name="aligned from the base", learning_rate=1e-2)
    shots = Path(os.environ.get("VAPI_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with browser_page(url) as page:
        field = page.locator("#field-data_subset")
        expect(field).to_contain_text("images used (data_subset)")  # words, with the config key beside
        info = field.locator("[data-testid='block-info']").first
        expect(info).to_be_visible()
        assert info.evaluate(CONTRAST_JS) >= 4.5, info.evaluate("el => getComputedStyle(el).color")

        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-aligned input")).to_have_value(re.compile(f"{aligned}.*step {step}"),
                                                                    timeout=20_000)
        expect(page.locator("#compare-base input")).to_have_value(re.compile("demo-c2i"))
        seeds = page.locator("#compare-seeds textarea, #compare-seeds input").first
        seeds.fill("0, 1")
        seeds.press("Tab")
        samples = page.locator("#compare-class-samples input")
        samples.fill("8")
        samples.press("Tab")
        page.locator("#compare-generate").click()  # the teacher-forced view is the default
        status = page.locator("#compare-status")
        expect(status).to_contain_text("teacher-forced on held-out images", timeout=WAIT_MS)
        expect(status).to_contain_text("Reward term mse")
        gallery = page.locator("#compare-gallery")
        expect(gallery.locator("img")).to_have_count(4 * 2 * 4, timeout=30_000)  # classes x seeds x panels
        for text in ("ground truth", "base · circle · seed 0 · mse", "aligned · circle · seed 0 · mse",
                     "|base − aligned|", "judge"):
            expect(gallery).to_contain_text(text)
        table = page.locator("#compare-classes-table")
        expect(table).to_be_visible()
        expect(table).to_contain_text("circle")
        expect(table).to_contain_text(re.compile("within noise|better|worse"))
        page.wait_for_timeout(500)
        screenshot(page, shots, "compare-teacher-forced")

        page.get_by_label("shared prefix").check()
        prefix = page.locator("#compare-prefix input[type='number']")
        prefix.fill("3")
        prefix.press("Tab")
        samples.fill("0")
        samples.press("Tab")
        page.locator("#compare-generate").click()
        expect(status).to_contain_text("k = 3 rows = 24 tokens", timeout=WAIT_MS)
        expect(gallery.locator("img")).to_have_count(4 * 2 * 3, timeout=30_000)  # base | aligned | difference
        expect(gallery).to_contain_text("|base − aligned|")
        expect(table).to_be_hidden()
        page.wait_for_timeout(500)
        screenshot(page, shots, "compare-prefix")

        page.get_by_role("tab", name="Runs").click()
        page.get_by_role("button", name=re.compile("Overlay runs")).click()  # a closed section: the page stays short
        pick = page.locator("#runs-overlay-runs input")
        for run_id in (first, aligned):
            pick.click()
            page.get_by_role("option", name=re.compile(re.escape(run_id))).click()
        overlay = page.locator("#runs-overlay")
        expect(overlay.locator(".js-plotly-plot")).to_be_attached(timeout=30_000)
        expect(overlay.locator(".legend")).to_contain_text(first, timeout=30_000)
        expect(overlay.locator(".legend")).to_contain_text(aligned)
        page.locator("#runs-overlay-csv").click()
        expect(page.locator("#runs-overlay-file")).to_contain_text(re.compile(r"metrics\s*\.csv"), timeout=30_000)
        page.wait_for_timeout(1500)  # plotly draws asynchronously
        screenshot(page, shots, "runs-overlay")
