"""A reload keeps the Launch form (issue 21 item 5): the preset, numbers, text, opened sections and the sweep's text
are kept in the browser (localStorage) and restored as the page opens; a value that no longer fits falls back to
the default; "Reset form" brings the defaults back, and the default form still launches."""
from __future__ import annotations

import gradio as gr
import pytest

from app.tabs.launch import SAVED_KEY, restorable, restored
from tests.test_app_browser import browser_page, field, served, set_field  # noqa: F401 - served: the fixture


def wait_saved(page, before):
    """The form's saved entry in localStorage once it differs from `before` (the save is a request of its own)."""
    page.wait_for_function("([key, before]) => { const v = localStorage.getItem(key); return v !== null && v !== before; }",
                           arg=[SAVED_KEY, before], timeout=20_000)
    return page.evaluate("key => localStorage.getItem(key)", SAVED_KEY)


def test_a_saved_value_that_no_longer_fits_leaves_the_default():
    preset = gr.Dropdown(choices=["demo-c2i", "demo-t2i"], value="demo-c2i")
    classes = gr.Dropdown(choices=[("circle", "0"), ("square", "1")], value=[], multiselect=True)
    beta, name, ok = gr.Number(value=0.1), gr.Textbox(value="x"), gr.Checkbox(value=True)
    comps = {"preset": preset, "classes": classes, "beta": beta, "name": name, "ok": ok}
    out = restored(comps, {"preset": "a-removed-preset", "classes": ["1", "7"], "beta": "abc", "name": 3, "ok": 1})
    assert all(o == gr.skip() for o in out)  # each input left at its default, no error raised
    out = restored(comps, {"preset": "demo-t2i", "classes": ["1"], "beta": 0.2, "name": "mine", "ok": False})
    assert out == ["demo-t2i", ["1"], 0.2, "mine", False]
    assert restored(comps, None) == [gr.skip()] * 5 and restored(comps, {"unknown": 1}) == [gr.skip()] * 5
    assert restorable(beta, None)  # an optional number left empty


@pytest.mark.browser
@pytest.mark.slow
def test_a_reload_keeps_the_launch_form_and_reset_brings_the_defaults_back(served):
    from playwright.sync_api import expect

    app, url = served
    with browser_page(url) as page:
        page.locator("#field-preset input").click()
        page.get_by_role("option", name="llamagen-c2i-xl", exact=True).click()
        expect(field(page, "name")).to_have_value("llamagen-c2i-xl", timeout=20_000)
        set_field(page, "name", "my-run")
        page.get_by_role("button", name="Objective (Eq. 11)").click()
        set_field(page, "beta", "0.37")
        page.locator("#sweep-section").get_by_text("Sweep: several values").click()
        page.locator("#sweep-vary textarea").fill("beta=0.05,0.2")
        page.locator("#sweep-vary textarea").press("Tab")
        # a paper preset's data folder is empty: the status names it
        expect(page.locator("#launch-status")).to_contain_text("data_path", timeout=20_000)
        saved = wait_saved(page, None)  # the save is one request after the last change

        page.reload()
        expect(page.locator("#launch-button")).to_be_visible(timeout=60_000)
        expect(page.locator("#field-preset input")).to_have_value("llamagen-c2i-xl", timeout=20_000)
        expect(field(page, "name")).to_have_value("my-run")
        expect(field(page, "beta")).to_be_visible()  # the Objective section is open again
        expect(field(page, "beta")).to_have_value("0.37")
        expect(page.locator("#sweep-vary textarea")).to_have_value("beta=0.05,0.2")
        expect(page.locator("#launch-status")).to_contain_text("data_path", timeout=20_000)  # re-checked on restore

        page.locator("#launch-reset").click()
        expect(page.locator("#field-preset input")).to_have_value("demo-c2i", timeout=20_000)
        expect(field(page, "name")).to_have_value("demo-c2i")
        expect(page.locator("#sweep-vary textarea")).to_have_value("")
        wait_saved(page, saved)  # Reset's values are saved over the old ones
        page.reload()  # the defaults are what is kept now
        expect(page.locator("#launch-button")).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1500)  # the restore lands a moment after the page: it must put back nothing else
        expect(page.locator("#field-preset input")).to_have_value("demo-c2i")
        expect(field(page, "name")).to_have_value("demo-c2i")
        store = app.ctx.store
        before = len(store.list_runs())
        page.locator("#launch-button").click()
        expect(page.locator("#launch-status")).to_contain_text("Launched", timeout=60_000)
        assert len(store.list_runs()) == before + 1 and store.list_runs()[0].name == "demo-c2i"
