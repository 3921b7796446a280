"""Issue 22 in a real headless Chromium: text a user typed (a run name, a path in an error, a failed run's
message) is shown as text, never as an element; nothing on the page fetches what such text names."""
from __future__ import annotations

import pytest

from tests.test_app_browser import CHROMIUM, browser_page, set_field

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium against a launched app

NAME = '<img src="http://127.0.0.1:9/name.png" id="evil-name"> **bold** [link](http://127.0.0.1:9/)'
MESSAGE = 'data_path: <img src="http://127.0.0.1:9/message.png" id="evil-message"> not found'
TYPED = '<img src="http://127.0.0.1:9/typed.png" id="evil-typed">'


def test_typed_text_is_text_in_the_page(tiny_demo, tmp_path, monkeypatch):
    from playwright.sync_api import expect

    from core.runs.store import FAILED, RUNNING
    from core.runs.kinds import TRAIN_ENTRY as ENTRY
    from tests.helpers import served_app

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install -y chromium)")
    with served_app(tmp_path, monkeypatch, [tmp_path]) as (app, url):
        store = app.ctx.store
        run = store.create_run(NAME, {"entry": ENTRY, "model": "demo-c2i"}, "cpu", 5)
        store.set_status(run.id, RUNNING)
        store.set_status(run.id, FAILED, message=MESSAGE)
        with browser_page(url) as page:
            fetched = []
            page.on("request", lambda request: fetched.append(request.url) if ":9/" in request.url else None)
            # a typed path quoted by an error: in the status line and under the field
            page.get_by_role("button", name="Checkpoints, metrics and previews").click()
            set_field(page, "preview_seeds", TYPED)
            expect(page.locator("#launch-status")).to_contain_text("preview_seeds", timeout=20_000)
            expect(page.locator("#launch-status")).to_contain_text(TYPED, timeout=20_000)
            # the run's name and message in the Runs header
            page.get_by_role("tab", name="Runs").click()
            box = page.locator("#runs-run input").first
            box.fill(run.id)
            box.press("Enter")
            expect(page.locator("#runs-header")).to_contain_text(NAME, timeout=30_000)
            expect(page.locator("#runs-header")).to_contain_text(MESSAGE, timeout=30_000)
            page.wait_for_timeout(1000)
            for element in ("evil-name", "evil-message", "evil-typed"):
                assert page.locator(f"#{element}").count() == 0, element
            assert page.locator("#runs-header strong", has_text="bold").count() == 0  # **bold** stays asterisks
            assert page.locator("#runs-header a").count() == 0
            assert fetched == []
