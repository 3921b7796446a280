"""The Evaluate and Embeddings tabs in a real headless Chromium (Playwright) on the tiny demo: each tab opens,
a small job is launched from its form, its results render (the results table; the diagnostics of a demo
checkpoint; the map, densities and distances), and a screenshot of each tab is saved (to $VAPI_SCREENSHOTS_DIR if set, else a tmp dir)
and checked to be a non-empty PNG with content."""
from __future__ import annotations

import json
import re
import shutil

import pytest

from core.runs.store import RunStore
from tests.helpers import served_app
from tests.test_app_browser import WAIT_MS, browser_page, require_chromium, screenshot, screenshots_dir
from tests.test_app_eval_tabs import aligned_run, evaluator_file  # noqa: F401 - evaluator_file is a fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium against a launched app


@pytest.fixture
def served(tiny_demo, evaluator_file, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture
    require_chromium()
    shutil.copy(evaluator_file, tiny_demo / "evaluator.safetensors")
    manifest = json.loads((tiny_demo / "manifest.json").read_text())  # the diagnostics read it from the manifest
    (tiny_demo / "manifest.json").write_text(json.dumps({**manifest, "evaluator": {"file": "evaluator.safetensors"}}))
    aligned = aligned_run(RunStore(tmp_path / "runs"))
    with served_app(tmp_path, monkeypatch, [tmp_path]) as (app, url):
        yield app, url, aligned


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(value)
    box.press("Tab")


def test_evaluate_and_embeddings_tabs_in_chromium(served, tmp_path):
    from playwright.sync_api import expect

    app, url, aligned = served
    shots = screenshots_dir(tmp_path)
    with browser_page(url) as page:

        page.get_by_role("tab", name="Evaluate").click()
        expect(page.locator("#eval-launch")).to_be_visible()
        expect(page.locator("#eval-source input")).to_have_value(f"run · {aligned} · step 5", timeout=20_000)
        fill(page, "eval-num_samples", "-1")  # an error shows under its input, and nothing is queued
        page.locator("#eval-launch").click()
        expect(page.locator("#eval-status")).to_contain_text("num_samples", timeout=20_000)
        expect(page.locator("#eval-num_samples")).to_contain_text("must be >= 1", timeout=20_000)
        assert len(app.ctx.store.list_runs()) == 1
        fill(page, "eval-num_samples", "12")
        page.locator("#eval-launch").click()
        expect(page.locator("#eval-status")).to_contain_text("Queued", timeout=30_000)
        summary = page.locator("#eval-summary")
        expect(summary).to_contain_text("FD (demo evaluator)", timeout=WAIT_MS)
        expect(summary).to_contain_text(f"{aligned}@5", timeout=WAIT_MS)
        expect(page.locator("#eval-jobs")).to_contain_text("36/36", timeout=WAIT_MS)  # 12 samples x 3 seeds
        expect(summary).to_contain_text("±", timeout=WAIT_MS)
        expect(summary).to_contain_text("bootstrap", timeout=WAIT_MS)
        expect(page.locator("#eval-progress")).not_to_contain_text("running", timeout=WAIT_MS)
        screenshot(page, shots, "evaluate")

        # diagnostics of the aligned checkpoint (core.eval.diagnostics as a background run), small settings
        page.locator("#diag-section").get_by_text("Diagnostics: where a demo run moved the generator").click()
        checkpoint = page.locator("#diag-checkpoint input")
        checkpoint.fill(f"{aligned}@5")
        checkpoint.press("Enter")
        for key, value in (("num_images", "16"), ("num_generations", "2"), ("num_samples", "20")):
            fill(page, f"diag-{key}", value)
        fill(page, "diag-cfg_scales", "1 x")  # an error names the input, and nothing is queued
        runs_before = len(app.ctx.store.list_runs())
        page.locator("#diag-launch").click()
        expect(page.locator("#diag-status")).to_contain_text("cfg_scales", timeout=20_000)
        assert len(app.ctx.store.list_runs()) == runs_before
        fill(page, "diag-cfg_scales", "1")
        fill(page, "diag-seeds", "0 1")
        page.locator("#diag-launch").click()
        expect(page.locator("#diag-status")).to_contain_text("Queued", timeout=30_000)
        # no Refresh: the page follows the queued run, its label and status line, and shows the results at the end
        results = page.locator("#diag-results")
        expect(results).to_contain_text("held-out teacher-forced reward", timeout=WAIT_MS)
        expect(page.locator("#diag-status")).to_contain_text("finished", timeout=20_000)
        expect(page.locator("#diag-status")).not_to_contain_text("Queued")
        expect(page.locator("#diag-run input")).to_have_value(re.compile(r"finished · █+ \d+/\d+ phases"))
        expect(results).to_contain_text("demo-FID ↓, CFG 1")
        expect(results).to_contain_text("95% interval")
        expect(page.locator("#diag-kl .js-plotly-plot")).to_be_attached(timeout=30_000)
        page.wait_for_timeout(1500)  # plotly draws asynchronously
        screenshot(page, shots, "diagnostics")

        page.get_by_role("tab", name="Embeddings").click()
        expect(page.locator("#emb-launch")).to_be_visible()
        expect(page.locator("#emb-base")).to_contain_text("demo-c2i")
        fill(page, "emb-per_class", "6")
        page.locator("#emb-launch").click()
        expect(page.locator("#emb-status")).to_contain_text("finished", timeout=WAIT_MS)
        traces = page.locator("#emb-scatter .js-plotly-plot .scatterlayer .trace")
        expect(traces.first).to_be_attached(timeout=30_000)
        expect(page.locator("#emb-scatter")).to_contain_text("aligned")
        expect(page.locator("#emb-distance .js-plotly-plot")).to_be_attached(timeout=30_000)
        expect(page.locator("#emb-table")).to_contain_text("overall")
        expect(page.locator("#emb-caption")).to_contain_text("not Inception FID")
        page.wait_for_timeout(1500)  # plotly draws asynchronously
        screenshot(page, shots, "embeddings")
    assert {p.name for p in shots.glob("*.png")} >= {"evaluate.png", "diagnostics.png", "embeddings.png"}
