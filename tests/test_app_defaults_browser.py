"""Every tab works on its defaults, in a real headless Chromium: each form is submitted as the page opens, with
every section of it opened first (an opened section is where Gradio 6.31 used to turn an empty number box into
0), and the job is queued or the result shown."""
from __future__ import annotations

import re

import pytest

from tests.test_app_browser import CHROMIUM, WAIT_MS, browser_page, field  # noqa: F401 - CHROMIUM: served skips without
from tests.test_app_compare_browser import CONTRAST_JS
from tests.test_app_eval_browser import served  # noqa: F401 - the fixture: tiny demo, evaluator, an aligned run
from tests.test_app_eval_tabs import evaluator_file  # noqa: F401 - a fixture served needs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JOB_ACCEPTED = re.compile("queued|running|finished", re.I)  # the status line follows the job once it is queued
LAUNCH_SECTIONS = ("Rollout (teacher-forced sampling)", "Reward (Eq. 10)", "Objective (Eq. 11)", "Optimisation",
                   "Checkpoints, metrics and previews")


def open_sections(page, scope, titles) -> None:
    """Open each closed accordion `titles` names inside `scope` (a click on an open one would close it)."""
    for title in titles:
        button = scope.locator("button.label-wrap", has=page.get_by_text(title, exact=True)).first
        button.scroll_into_view_if_needed()
        if "open" not in (button.get_attribute("class") or "").split():
            button.click()
        page.wait_for_timeout(300)


def test_every_tab_submits_its_default_form_in_chromium(served):
    from playwright.sync_api import expect

    app, url, aligned = served
    store = app.ctx.store
    with browser_page(url) as page:
        # Launch: the default preset's form, every section open (the paper presets' filled forms launch in
        # test_app_browser; the tiny demo has no demo-t2i weights)
        for preset in ("demo-c2i",):
            page.get_by_role("tab", name="Launch").click()
            if preset != "demo-c2i":
                page.locator("#field-preset input").click()
                page.get_by_role("option", name=preset, exact=True).click()
                expect(field(page, "name")).to_have_value(preset, timeout=20_000)
            open_sections(page, page, LAUNCH_SECTIONS)
            before = len(store.list_runs())
            page.locator("#launch-button").click()
            expect(page.locator("#launch-status")).to_contain_text("Launched", timeout=60_000)
            assert len(store.list_runs()) == before + 1
            assert store.list_runs()[0].name == preset

        # Evaluate: the default source (the aligned run's last checkpoint), details opened
        page.get_by_role("tab", name="Evaluate").click()
        expect(page.locator("#eval-source input")).to_have_value(f"run · {aligned} · step 5", timeout=20_000)
        open_sections(page, page, ["Sampling and metric details"])
        expect(page.locator("#eval-image_size textarea, #eval-image_size input").first).to_have_value("")
        before = len(store.list_runs())
        page.locator("#eval-launch").click()
        expect(page.locator("#eval-status")).to_contain_text("Queued", timeout=60_000)
        assert len(store.list_runs()) > before

        # Diagnostics (inside Evaluate): the newest demo checkpoint is picked; its default form queues a run
        page.locator("#diag-section").get_by_text("Diagnostics: where a demo run moved the generator").click()
        expect(page.locator("#diag-checkpoint input")).to_have_value(re.compile(re.escape(aligned)), timeout=20_000)
        before = len(store.list_runs())
        page.locator("#diag-launch").click()
        expect(page.locator("#diag-status")).to_contain_text(JOB_ACCEPTED, timeout=60_000)
        assert len(store.list_runs()) == before + 1

        # Embeddings: the newest run's last checkpoint, sampling opened
        page.get_by_role("tab", name="Embeddings").click()
        open_sections(page, page, ["Sampling"])
        before = len(store.list_runs())
        page.locator("#emb-launch").click()
        expect(page.locator("#emb-status")).to_contain_text(JOB_ACCEPTED, timeout=60_000)
        assert len(store.list_runs()) == before + 1

        # Compare: the default view of the default pair draws its images (no job: it runs in the page); its boxes
        # have accessible names and the active tab's label is readable (WCAG AA)
        page.get_by_role("tab", name="Compare").click()
        expect(page.get_by_role("textbox", name="seeds")).to_be_visible(timeout=20_000)
        active = page.get_by_role("tab", name="Compare")
        assert active.evaluate(CONTRAST_JS) >= 4.5, active.evaluate("el => getComputedStyle(el).color")
        page.locator("#compare-generate").click()
        expect(page.locator("#compare-gallery img").first).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#compare-status")).not_to_contain_text("✗")
