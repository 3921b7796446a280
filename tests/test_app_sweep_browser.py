"""A sweep from the browser, in a real headless Chromium: the Launch form set to a tiny run, a 2×2 grid typed in
its Sweep section (learning rate × starting weights, one of them a file that does not exist: accepted by the
form, failing at start), planned and queued; in Runs the sweep is one row whose panel is its table with verdicts
(the failed variants with their reason, the others done), and the overlay draws its variants' curves (tiny random
demo, a tiny evaluator, eval fid on 10 samples × 2 seeds)."""
from __future__ import annotations

import re
import shutil

import pytest

from tests.helpers import served_app, train_tiny_evaluator
from tests.test_app_browser import browser_page, require_chromium, reveal, set_field

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# the form's run (tests/test_app_sweep.py's TINY, typed): section -> fields
TINY_FORM = {"Data": {"data_subset": "20"},
             "Rollout (teacher-forced sampling)": {"num_generations": "2"},
             "Optimisation": {"global_batch_size": "2", "per_device_train_batch_size": "2",
                              "max_steps": "2"},
             "Checkpoints, metrics and previews": {"save_steps": "2", "preview_steps": "1000", "kl_probe_size": "2"}}
GRID = "learning_rate=1e-5,1e-4\ninit_weights=none,/nope.pt"  # (1e-5, none) is the preset's run: not run twice
DONE = ("preset", "learning_rate=0.0001, init_weights=null")
FAILED = ("learning_rate=1e-05, init_weights=/nope.pt", "learning_rate=0.0001, init_weights=/nope.pt")
VERDICT = re.compile(r"\[[-+][\d.e+-]+, [-+][\d.e+-]+\] (within noise|better|worse)")


@pytest.fixture
def served(tiny_demo, tmp_path, monkeypatch):
    require_chromium()
    (tmp_path / "evaluator").mkdir()
    shutil.copy(train_tiny_evaluator(tmp_path / "evaluator", steps=3), tiny_demo / "evaluator.safetensors")
    (tmp_path / "data").mkdir()
    with served_app(tmp_path, monkeypatch, [tmp_path / "data"], page_timer_s=0.5) as served:
        yield served


def test_a_sweep_from_launch_to_its_table_and_overlay_in_chromium(served):
    from playwright.sync_api import expect

    app, url = served
    store = app.ctx.store
    with browser_page(url) as page:
        for section, values in TINY_FORM.items():
            for key, value in values.items():
                reveal(page, section, key)
                set_field(page, key, value)
        expect(page.locator("#launch-cli")).to_contain_text("max_steps=2", timeout=20_000)

        page.locator("#sweep-section").get_by_text("Sweep: several values, one table with verdicts").click()
        vary = page.locator("#sweep-vary textarea")
        vary.fill(GRID)
        page.locator("#sweep-one-at-a-time input[type=checkbox]").uncheck()  # a grid: every combination
        page.locator("#sweep-eval input").click()
        page.get_by_role("option", name="fid", exact=True).click()
        for box, value in (("#sweep-num-samples", "10"), ("#sweep-num-seeds", "2")):
            page.locator(f"{box} input").fill(value)
            page.locator(f"{box} input").press("Tab")

        page.get_by_role("button", name="Plan sweep").click()
        status = page.locator("#sweep-status")
        expect(status).to_contain_text("4 runs", timeout=60_000)  # the form's run and 3 variants, the duplicate gone
        for name in (*DONE[1:], *FAILED):
            expect(status).to_contain_text(name)
        expect(status).to_contain_text("the preset's own value of each field varied: learning_rate=1e-05, "
                                       "init_weights=null")  # the form's run, as it will train
        assert not store.list_runs()  # a plan queues nothing

        page.locator("#sweep-queue").click()
        expect(status).to_contain_text("Queued", timeout=60_000)
        (run,) = store.list_runs()  # one job: the variants live in the sweep's own runs dir
        assert run.kind == "sweep"

        # Runs: the sweep is one row, selected; its table fills in and ends with verdicts and the failures' reason
        expect(page.locator("#runs-header")).to_contain_text(run.id, timeout=30_000)
        table = page.locator("#runs-table")
        expect(table).to_contain_text(run.id, timeout=30_000)
        expect(table.locator("tbody tr")).to_have_count(1)
        expect(table.locator("tbody tr").first).to_contain_text("sweep")
        expect(page.locator("#runs-header")).to_contain_text("finished", timeout=300_000)
        results = page.locator("#runs-job table")  # the markdown table, rendered
        expect(results).to_contain_text("fid vs preset", timeout=30_000)
        for name in ("base model", *DONE):
            expect(results.locator("tr", has=page.get_by_text(name, exact=True))).to_contain_text("done")
        for name in FAILED:
            expect(results.locator("tr", has=page.get_by_text(name, exact=True))).to_contain_text(
                "failed: training failed: ConfigError: init_weights: checkpoint file not found: /nope.pt")
        row = results.locator("tr", has=page.get_by_text(DONE[1], exact=True))
        assert VERDICT.search(row.inner_text()), row.inner_text()  # its change vs base and vs preset, with a verdict

        # the overlay: the sweep picked as a whole draws each variant's curves, one legend entry per trained one
        page.get_by_text("Overlay runs: curves of several runs on shared panels, CSV export").click()
        page.locator("#runs-overlay-runs input").click()
        page.get_by_role("option", name=f"{run.id} · {run.name} · all 4 variants").click()
        legend = page.locator("#runs-overlay .legend .legendtext")
        for name in DONE:
            expect(legend.filter(has_text=re.compile(f"{re.escape(run.id)}/v\\d\\d-\\S+ · {re.escape(name)}$"))
                   ).to_have_count(1, timeout=30_000)
