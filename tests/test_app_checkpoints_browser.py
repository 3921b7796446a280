"""A finished run with several checkpoints in a real headless Chromium (Playwright), issue 21 items 4 and 5: Compare's
aligned side defaults to the run's NEWEST checkpoint (and follows it when the run gains one), its button cannot be
clicked while a comparison runs and can again after; the Runs tab continues the finished run to more steps (a step it
has already done is refused, naming max_steps, with nothing queued and the folder as it was). The run is a real tiny
demo run (a checkpoint every step), trained in this process; its continuation runs in a real worker process."""
from __future__ import annotations

import json
import re

import pytest

from core.runs.store import FINISHED
from tests.helpers import served_app, train_demo_run
from tests.test_app_browser import WAIT_MS, browser_page, screenshot, screenshots_dir
from tests.test_app_eval_tabs import browser_store, evaluator_file  # noqa: F401 - a fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium against a launched app


@pytest.fixture
def served(tiny_demo, evaluator_file, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture
    browser_store(tiny_demo, evaluator_file, tmp_path)  # Chromium, and Compare's judge for its per-class numbers
    with served_app(tmp_path, monkeypatch, [tmp_path]) as (app, url):
        run_id, _ = train_demo_run(app.ctx.store, 2, name="several checkpoints", save_steps=1)
        yield app, url, run_id


def test_compare_takes_the_newest_checkpoint_and_runs_continues_a_finished_run(served, tmp_path):
    from playwright.sync_api import expect

    app, url, run_id = served
    store = app.ctx.store
    assert [c.step for c in store.checkpoints(run_id)] == [1, 2]
    run_dir = store.run_dir(run_id)
    with browser_page(url) as page:
        # Compare: the aligned side is the run's last checkpoint (step 2), not its first
        page.get_by_role("tab", name="Compare").click()
        aligned = page.locator("#compare-aligned input")
        expect(aligned).to_have_value(re.compile(f"{re.escape(run_id)}.*step 2$"), timeout=20_000)

        # Runs: the finished run offers to continue to twice its steps
        page.get_by_role("tab", name="Runs").click()
        header = page.locator("#runs-header")
        expect(header).to_contain_text(run_id, timeout=30_000)
        expect(header).to_contain_text("finished · step 2/2")
        steps = page.locator("#runs-continue-steps input")
        expect(steps).to_be_enabled(timeout=30_000)
        expect(steps).to_have_value("4")
        button, action = page.locator("#runs-continue"), page.locator("#runs-action")

        # bad values (not a whole number, nothing, a step it has done): refused in one line naming the field; nothing
        # queued, the folder as it was
        config = (run_dir / "config.json").read_text()
        for typed, said in (("", "✗ max_steps: expected a whole number (the box is empty"),
                            ("2.5", "✗ max_steps: expected a whole number, got 2.5"),
                            ("2", "✗ max_steps: 2 is at or below step 2")):
            steps.fill(typed)
            steps.press("Tab")
            button.click()
            expect(action).to_contain_text(said, timeout=30_000)
            run = store.get(run_id)
            assert run.status == FINISHED and run.step == run.total_steps == 2
            assert (run_dir / "config.json").read_text() == config and len(store.list_runs()) == 1
        shots = screenshots_dir(tmp_path)
        screenshot(page, shots, "runs-continue-refused")
        page.wait_for_timeout(1500)  # the view refreshes after the action: the refused value stays, to be fixed
        expect(steps).to_have_value("2")

        # continue it to step 3: a worker trains step 3 and the run is finished there
        steps.fill("3")
        steps.press("Tab")
        button.click()
        expect(action).to_contain_text(f"{run_id} continues to step 3", timeout=30_000)
        expect(header).to_contain_text("finished · step 3/3", timeout=WAIT_MS)
        assert [m["step"] for m in store.read_metrics(run_id)] == [1, 2, 3]
        assert [c.step for c in store.checkpoints(run_id)] == [1, 2, 3]
        assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 3
        expect(steps).to_have_value("6", timeout=30_000)  # the offer follows the run's new length

        # Compare again: the aligned side follows the run's new last checkpoint
        page.get_by_role("tab", name="Compare").click()
        expect(aligned).to_have_value(re.compile(f"{re.escape(run_id)}.*step 3$"), timeout=20_000)

        # the Compare button cannot be clicked while its comparison runs, and can again after
        samples = page.locator("#compare-class-samples input")
        samples.fill("0")
        samples.press("Tab")
        compare = page.locator("#compare-generate")
        expect(compare).to_be_enabled()
        compare.click()
        expect(compare).to_be_disabled(timeout=10_000)
        status = page.locator("#compare-status")
        expect(status).to_contain_text("teacher-forced on held-out images", timeout=WAIT_MS)
        expect(compare).to_be_enabled(timeout=30_000)
        expect(compare).to_have_text("Compare")
