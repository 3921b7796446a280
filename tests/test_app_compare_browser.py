"""Compare and Runs in a real headless Chromium (Playwright) on the tiny demo, for a run aligned from the
base: the teacher-forced view (ground truth | base | aligned, with reward terms), a shared-prefix
continuation, the difference maps and per-class numbers; then two runs overlaid in the Runs tab with
their CSV. Help text is checked for WCAG AA contrast. Screenshots go to $VAPI_SCREENSHOTS_DIR if set."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import served_app, train_demo_run
from tests.test_app_browser import WAIT_MS, browser_page, require_chromium, screenshot, screenshots_dir
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
    require_chromium()
    shutil.copy(evaluator_file, tiny_demo / "evaluator.safetensors")  # the judge and the per-class numbers
    with served_app(tmp_path, monkeypatch, [tmp_path]) as served:
        yield served


def test_compare_views_and_runs_overlay_in_chromium(served, tmp_path):
    from playwright.sync_api import expect

    app, url = served
    store = app.ctx.store
    first, _ = train_demo_run(store, 2, name="lr 3e-2")
    aligned, step = train_demo_run(store, 2, name="aligned from the base", learning_rate=1e-2)
    shots = screenshots_dir(tmp_path)
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


@pytest.fixture
def served_committed(tmp_path, monkeypatch):
    """The app on the committed demo models (demo-t2i is not in the tiny demo)."""
    require_chromium()
    with served_app(tmp_path, monkeypatch, [tmp_path]) as served:
        yield served


def test_compare_base_vs_aligned_demo_t2i_on_typed_prompts_in_chromium(served_committed, tmp_path):
    """A demo-t2i run aligned from the committed base; Compare on a typed prompt and a picked held-out one:
    pairs labelled by prompt, each image judged by prompt adherence; a prompt the evaluator cannot check is said."""
    from playwright.sync_api import expect

    from core.demo.prompts import heldout_prompts

    app, url = served_committed
    aligned, step = train_demo_run(app.ctx.store, 2, name="t2i aligned", preset="demo-t2i",
                                   preview_prompts=["a red circle"])
    shots = screenshots_dir(tmp_path)
    with browser_page(url) as page:
        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-aligned input")).to_have_value(re.compile(f"{aligned}.*step {step}"),
                                                                    timeout=20_000)
        expect(page.locator("#compare-base input")).to_have_value(re.compile("demo-t2i"))
        prompts = page.locator("#compare-prompts textarea")
        expect(prompts).to_be_visible(timeout=20_000)
        expect(page.locator("#compare-classes")).to_be_hidden()
        # issue 21 item 3: for prompts the page offers no teacher-forced view and no per-class numbers
        options = page.locator("#compare-view label")
        expect(options).to_have_text(["shared prefix", "free-running (two distributions)"], timeout=20_000)
        expect(page.locator("#compare-class-samples")).to_be_hidden()
        prompts.fill("one red circle on a white background")
        picker = page.locator("#compare-heldout input")
        picker.click()
        held = heldout_prompts()[3]
        picker.fill(held[:20])
        page.get_by_role("option", name=held, exact=True).click()
        expect(prompts).to_have_value(f"one red circle on a white background\n{held}", timeout=10_000)
        seeds = page.locator("#compare-seeds textarea, #compare-seeds input").first
        seeds.fill("0, 1")
        seeds.press("Tab")
        page.get_by_label("free-running (two distributions)").check()
        page.locator("#compare-generate").click()
        status = page.locator("#compare-status")
        expect(status).to_contain_text("free-running", timeout=WAIT_MS)
        expect(status).to_contain_text("prompt adherence")
        gallery = page.locator("#compare-gallery")
        expect(gallery.locator("img")).to_have_count(2 * 2 * 3, timeout=30_000)  # prompts x seeds x panels
        for text in ("base · one red circle on a white background · seed 0", f"aligned · {held} · seed 1", "judge"):
            expect(gallery).to_contain_text(text)
        expect(page.locator("#compare-rows")).to_contain_text("one red circle on a white background")
        page.wait_for_timeout(500)
        screenshot(page, shots, "compare-t2i-prompts")

        prompts.fill("a photo of a cat")  # nothing the evaluator can check: no score, the row still shows
        page.locator("#compare-generate").click()
        expect(gallery.locator("img")).to_have_count(2 * 3, timeout=WAIT_MS)
        expect(gallery).to_contain_text("a photo of a cat")


def test_demo_t2i_launches_from_the_form_with_preview_prompts_and_shows_a_step_by_prompt_board(served_committed):
    """Launch: the demo-t2i preset fills Table 7's T2I settings and held-out preview prompts; typed preview prompts
    train a real run; Runs shows its step x prompt board."""
    from playwright.sync_api import expect

    from tests.test_app_browser import field, reveal, set_field

    app, url = served_committed
    with browser_page(url) as page:
        page.locator("#field-preset input").click()
        page.get_by_role("option", name="demo-t2i", exact=True).click()
        expect(field(page, "name")).to_have_value("demo-t2i", timeout=20_000)
        # issue 21 item 10: the form says what the preset's ξ 0.5 did on the demo T2I
        expect(page.locator("#demo-note")).to_contain_text("Context noise ξ 0.5", timeout=20_000)
        expect(page.locator("#demo-note")).to_contain_text("made every measure worse")
        reveal(page, "Rollout (teacher-forced sampling)", "xi")
        expect(field(page, "xi")).to_have_value("0.5")
        reveal(page, "Optimisation", "learning_rate")
        expect(field(page, "max_steps")).to_have_value("200")
        reveal(page, "Checkpoints, metrics and previews", "preview_prompts")
        expect(field(page, "preview_prompts")).to_have_value(re.compile("a red circle at the top left on a gray background"))
        for key, value in (("max_steps", "1"), ("global_batch_size", "4"), ("per_device_train_batch_size", "2"),
                           ("num_generations", "2"), ("preview_seeds", "0"), ("kl_probe_size", "2")):
            set_field(page, key, value)
        box = field(page, "preview_prompts")
        box.fill("one red circle on a white background\ntwo blue bars on the left")
        box.press("Tab")
        expect(page.locator("#launch-cli")).to_contain_text("--preset demo-t2i", timeout=20_000)
        page.locator("#launch-button").click()
        expect(page.locator("#launch-status")).to_contain_text("Launched", timeout=60_000)
        store = app.ctx.store
        for _ in range(300):
            runs = store.list_runs()
            if runs and runs[0].status in ("finished", "failed"):
                break
            page.wait_for_timeout(1000)
        run = store.list_runs()[0]
        assert run.status == "finished", run.message
        page.get_by_role("tab", name="Runs").click()
        expect(page.locator("#runs-board img")).to_be_visible(timeout=30_000)
        previews = sorted((Path(store.run_dir(run.id)) / "samples").glob("*.json"))
        import json as _json

        rows = _json.loads(previews[-1].read_text())["rows"]
        assert rows == ["one red circle on a white background", "two blue bars on the left"]


GALLERY_LAYOUT_JS = """panels => {
  const box = document.querySelector('#compare-gallery').getBoundingClientRect();
  const items = [...document.querySelectorAll('#compare-gallery .thumbnail-item')];
  const problems = [];
  items.forEach((item, i) => {
    const img = item.querySelector('img').getBoundingClientRect();
    const first = items[i - i % panels].querySelector('img').getBoundingClientRect();
    if (Math.abs(img.top - first.top) > 2) problems.push(`panel ${i}: not on its row's line`);
    if (img.left < box.left - 1 || img.right > box.right + 1 || img.right > window.innerWidth)
      problems.push(`panel ${i}: cut (${img.left}..${img.right} of ${box.left}..${box.right})`);
    const label = item.querySelector('.caption-label');
    if (!label || label.scrollWidth > label.clientWidth + 1 || label.scrollHeight > label.clientHeight + 1)
      problems.push(`panel ${i}: label truncated: ${label ? label.textContent : 'none'}`);
  });
  if (items.length % panels) problems.push(`${items.length} panels is not whole rows of ${panels}`);
  return problems;
}"""


def test_compare_gallery_rows_fit_a_1000px_window_with_labels_and_a_colour_scale(served, tmp_path):
    """Issue 21 item 7: at 1000 px the prefix and free-running views show each row's 3 panels on one line, none
    cut, every label whole, a colour scale for the difference maps and a table caption naming only what it has."""
    from playwright.sync_api import expect

    app, url = served
    aligned, step = train_demo_run(app.ctx.store, 2, name="aligned", learning_rate=1e-2)
    shots = screenshots_dir(tmp_path)
    with browser_page(url) as page:
        page.set_viewport_size({"width": 1000, "height": 900})
        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-aligned input")).to_have_value(re.compile(f"{aligned}.*step {step}"),
                                                                    timeout=20_000)
        seeds = page.locator("#compare-seeds textarea, #compare-seeds input").first
        seeds.fill("0")
        seeds.press("Tab")
        samples = page.locator("#compare-class-samples input")
        samples.fill("0")
        samples.press("Tab")
        status, gallery = page.locator("#compare-status"), page.locator("#compare-gallery")
        for label, title in (("shared prefix", "shared prefix"), ("free-running (two distributions)", "free-running")):
            page.get_by_label(label).check()
            page.locator("#compare-generate").click()
            expect(status).to_contain_text(title, timeout=WAIT_MS)
            expect(page.locator("#compare-generate")).to_be_enabled(timeout=WAIT_MS)
            expect(gallery.locator("img").first).to_be_visible(timeout=30_000)
            page.wait_for_timeout(800)  # the grid settles once its images have loaded
            assert gallery.locator("img").count() % 3 == 0
            gallery.scroll_into_view_if_needed()
            assert page.evaluate(GALLERY_LAYOUT_JS, 3) == [], title
            scale = page.locator("#compare-diff-scale")
            expect(scale).to_be_visible()
            expect(scale).to_contain_text("|base − aligned|")
            rows = page.locator("#compare-rows")
            expect(rows).to_contain_text("per row: tokens that differ")
            expect(rows).not_to_contain_text("reward terms")
            screenshot(page, shots, f"compare-1000px-{title.replace(' ', '-')}")
