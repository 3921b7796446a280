"""The Runs tab in a real headless Chromium (Playwright), issue 21 item 6 (and item 2): a launch opens Runs on the NEW run with
that run's row marked, whichever row was clicked before; a click selects a row without putting a cell into edit
mode; "latest metrics" shows the time as a date, not seconds since the epoch; an evaluation job's score in demo
features is named as the Evaluate tab names it, not "fid"; the clip-fraction panel is explained as 0 by construction
only for a run whose rollout_mode makes it so. The store holds two real tiny training runs and a real
evaluation, made in this process."""
from __future__ import annotations

import re

import pytest

from tests.helpers import served_app, train_demo_run
from tests.test_app_browser import WAIT_MS, browser_page
from tests.test_app_eval_tabs import browser_store, evaluator_file  # noqa: F401 - a fixture
from tests.test_app_numbers_browser import evaluated

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium against a launched app

# the run ids of the rows the page marks as the selected run
MARKED_ROWS_JS = """() => [...new Set([...document.querySelectorAll('#runs-table [role="gridcell"]')]
  .filter(c => (c.getAttribute('style') || '').includes('accent-soft'))
  .map(c => document.querySelector(`#runs-table [role="gridcell"][data-row="${c.dataset.row}"][data-col="0"]`)
  .textContent.trim()))]"""

CELL_EDITOR = "#runs-table [role='gridcell'] :is(input, textarea)"  # what Gradio puts in a cell being edited


@pytest.fixture
def served(tiny_demo, evaluator_file, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture
    store = browser_store(tiny_demo, evaluator_file, tmp_path)
    first, _ = train_demo_run(store, name="first", rollout_mode="eval")  # clip fraction 0 by construction
    second, _ = train_demo_run(store, name="second", rollout_mode="train")  # the clip acts
    job = evaluated(store, None, "base")
    with served_app(tmp_path, monkeypatch, [tmp_path]) as (app, url):
        yield app, url, first, second, job


def test_runs_follow_the_launch_and_clicks_select_without_editing(served):
    from playwright.sync_api import expect

    app, url, first, second, job = served
    with browser_page(url) as page:
        page.get_by_role("tab", name="Runs").click()
        header, table = page.locator("#runs-header"), page.locator("#runs-table")
        expect(header).to_contain_text(job, timeout=30_000)  # a fresh page: the newest run
        expect(table).to_contain_text(first, timeout=30_000)

        # the evaluation job: its demo-feature FD named as Evaluate names it
        results = page.locator("#runs-job")
        expect(results).to_contain_text("FD (demo evaluator)", timeout=30_000)
        assert not re.search(r"\bfid\b", results.inner_text())

        # item 2: the clip-fraction panel is explained away only where it is 0 by construction (rollout_mode eval),
        # and drawn under rollout_mode train
        plot = page.locator("#runs-plot")
        page.locator("#runs-table [role='gridcell']", has_text=second).first.click()
        expect(header).to_contain_text(second, timeout=30_000)
        expect(plot).to_contain_text("clip", timeout=30_000)
        expect(plot).not_to_contain_text("by construction")

        # a click on the oldest run's row selects it; no cell turns into an input, not even on a double click and
        # a key typed (what opens a cell's editor in an editable table)
        cell = page.locator("#runs-table [role='gridcell']", has_text=first).first
        cell.click()
        expect(header).to_contain_text(first, timeout=30_000)
        expect(plot).to_contain_text("0 by construction", timeout=30_000)
        cell.dblclick()
        page.keyboard.type("x")
        page.wait_for_timeout(500)
        assert page.locator(CELL_EDITOR).count() == 0
        expect(cell).to_have_text(first)
        page.wait_for_function(f"() => ({MARKED_ROWS_JS})().join() === '{first}'", timeout=20_000)

        # latest metrics of a training run: the time as a date and time
        page.get_by_role("button", name="log and latest metrics").click()
        latest = page.locator("#runs-latest")
        expect(latest).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), timeout=30_000)
        assert not re.search(r"\b1\d{9}(\.\d+)?\b", latest.inner_text())  # no seconds since the epoch

        # a launch from the Launch tab: Runs opens on the new run, and its row is the marked one
        before = {r.id for r in app.ctx.store.list_runs()}
        page.get_by_role("tab", name="Launch").click()
        page.locator("#launch-button").click()
        expect(page.locator("#launch-status")).to_contain_text("Launched", timeout=30_000)
        (new,) = {r.id for r in app.ctx.store.list_runs()} - before
        expect(header).to_contain_text(new, timeout=WAIT_MS)
        page.wait_for_function(f"() => ({MARKED_ROWS_JS})().join() === '{new}'", timeout=30_000)
        assert page.locator(CELL_EDITOR).count() == 0
