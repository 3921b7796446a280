"""The workbench in a real headless Chromium (Playwright): every tab opens, a short demo run is
launched from the form, its curves and sample grids appear in the Runs tab, the Compare tab draws
pairs; a screenshot of each tab is saved (to $VAPI_SCREENSHOTS_DIR if set, else a tmp dir) and
checked to be a non-empty PNG with content."""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import served_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium against a launched app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
WAIT_MS = 120_000  # worker start + a few dozen steps on a loaded 2-core machine


def require_chromium() -> None:
    """Skip a browser test where Chromium is absent, except under CI ($CI set, as .ci/run sets it): there a
    missing browser fails the test, so CI never passes with its browser tests unrun."""
    if CHROMIUM.exists():
        return
    why = f"{CHROMIUM} is absent (Debian: apt-get install -y chromium)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI: {why}; the browser tests must run in CI", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def served(tiny_demo, tmp_path, monkeypatch):
    require_chromium()
    with served_app(tmp_path, monkeypatch, [tmp_path]) as served:
        yield served


@contextmanager
def browser_page(url: str, width: int = 1440, height: int = 1000):
    """A headless Chromium page (`width` x `height`) on the workbench at `url`, once its Launch form is there."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            expect(page.locator("#launch-button")).to_be_visible(timeout=60_000)
            yield page
        finally:
            browser.close()


def screenshots_dir(tmp_path: Path) -> Path:
    """Where the browser tests save screenshots: $VAPI_SCREENSHOTS_DIR when set (to keep them), else tmp_path."""
    shots = Path(os.environ.get("VAPI_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def screenshot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 400
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 5, f"{path} looks blank"
    return path


def field(page, key: str):
    return page.locator(f"#field-{key} input, #field-{key} textarea").first


def reveal(page, section: str, key: str) -> None:
    """Open the form section holding `key` unless it is open already (a click on an open one closes it)."""
    if not field(page, key).is_visible():
        page.get_by_role("button", name=section).click()
        field(page, key).wait_for(state="visible", timeout=20_000)


def set_field(page, key: str, value: str) -> None:
    """Type into a form input as a user does (Gradio's textbox fires its input event on key strokes)."""
    box = field(page, key)
    box.fill("")
    box.press_sequentially(value)
    box.press("Tab")


def test_tabs_a_run_and_a_comparison_in_chromium(served, tmp_path):
    from playwright.sync_api import expect

    app, url = served
    shots = screenshots_dir(tmp_path)
    with browser_page(url) as page:
        expect(page.locator("#demo-note")).to_contain_text("pixel-only")

        # an invalid value is flagged under its field, live
        page.get_by_role("button", name="Objective (Eq. 11)").click()
        set_field(page, "beta", "-1")
        expect(page.locator("#launch-status")).to_contain_text("beta: must be >= 0", timeout=20_000)
        expect(page.locator("#field-beta")).to_have_class(re.compile("field-error"), timeout=20_000)
        expect(page.locator("#field-beta")).to_contain_text("must be >= 0", timeout=20_000)
        set_field(page, "beta", "0.1")
        expect(page.locator("#launch-status")).not_to_contain_text("beta", timeout=20_000)

        # a tiny demo run from the form
        set_field(page, "data_subset", "20")
        page.get_by_role("button", name="Rollout (teacher-forced sampling)").click()
        set_field(page, "num_generations", "2")
        page.get_by_role("button", name="Optimisation").click()
        set_field(page, "global_batch_size", "2")
        set_field(page, "per_device_train_batch_size", "2")
        set_field(page, "max_steps", "40")
        page.get_by_role("button", name="Checkpoints, metrics and previews").click()
        set_field(page, "preview_steps", "20")
        set_field(page, "save_steps", "20")
        set_field(page, "preview_seeds", "0, 1")
        expect(page.locator("#launch-cli")).to_contain_text("max_steps=40", timeout=20_000)
        expect(page.locator("#launch-cli")).to_contain_text("preview_seeds=[0, 1]", timeout=20_000)
        screenshot(page, shots, "launch")

        page.locator("#launch-button").click()
        expect(page.locator("#launch-status")).to_contain_text("Launched", timeout=30_000)
        expect(page.locator("#runs-plot")).to_be_visible(timeout=30_000)  # the launch switched to Runs
        expect(page.locator("#runs-header")).to_contain_text("step", timeout=WAIT_MS)
        expect(page.locator("#runs-plot .js-plotly-plot .scatterlayer .trace").first).to_be_attached(timeout=WAIT_MS)
        expect(page.locator("#runs-gallery img").first).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#runs-header")).to_contain_text("finished", timeout=WAIT_MS)
        expect(page.locator("#runs-board img").first).to_be_visible(timeout=WAIT_MS)
        page.wait_for_timeout(1500)  # plotly draws asynchronously
        screenshot(page, shots, "runs")

        # a browser refresh loses nothing: the page reads the run back from the store
        run_id = app.ctx.store.list_runs()[0].id
        page.reload()
        page.get_by_role("tab", name="Runs").click()
        expect(page.locator("#runs-header")).to_contain_text(run_id, timeout=30_000)
        expect(page.locator("#runs-header")).to_contain_text("finished")
        expect(page.locator("#runs-plot .js-plotly-plot .scatterlayer .trace").first).to_be_attached(timeout=30_000)

        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#compare-generate")).to_be_visible()
        expect(page.locator("#compare-aligned input")).to_have_value(re.compile("step 40"), timeout=20_000)
        page.locator("#compare-generate").click()
        expect(page.locator("#compare-status")).to_contain_text("teacher-forced", timeout=WAIT_MS)
        # 4 classes x 4 seeds, each row ground truth | base | aligned | difference
        expect(page.locator("#compare-gallery img")).to_have_count(64, timeout=30_000)
        expect(page.locator(".pair-slider")).to_have_count(16, timeout=30_000)
        page.wait_for_timeout(500)
        screenshot(page, shots, "compare")
    assert {p.name for p in shots.glob("*.png")} >= {"launch.png", "runs.png", "compare.png"}


WATCH_FLAG = """id => { const el = document.getElementById(id); window.__seen = [];
    const state = () => el.className.includes('field-error') + '|' + (el.innerText.match(/⚠[^\\n]*/) || [''])[0];
    new MutationObserver(() => { if (el.contains(document.activeElement)) window.__seen.push(state()); })
        .observe(el, {attributes: true, childList: true, subtree: true, characterData: true});
    return state(); }"""


def test_a_field_being_typed_into_gets_no_check_until_it_is_left(served, monkeypatch):
    """A check's answer that lands in a box while its user types can put back what the box held a moment before
    (stop 29's CI launched with data_path '/' after '/tmp/...' was typed). Typed fields are checked when left (Tab, a
    click elsewhere, Enter): typed slowly against a slowed check, the box is neither flagged nor cleared while it
    has the focus, keeps every character, and is flagged (or cleared) once it is left."""
    import time

    from playwright.sync_api import expect

    from app.tabs import launch

    check = launch.check

    def slow_check(*args, **kwargs):  # each answer lands mid-typing (keys 150 ms apart)
        time.sleep(0.2)
        return check(*args, **kwargs)

    monkeypatch.setattr(launch, "check", slow_check)
    app, url = served
    with browser_page(url) as page:
        reveal(page, "Objective (Eq. 11)", "beta")
        box = field(page, "beta")
        for typed, flagged in (("-1.5", True), ("0.25", False)):
            first = page.evaluate(WATCH_FLAG, "field-beta")
            box.click()
            box.press("Control+a")
            box.press_sequentially(typed, delay=150)
            page.wait_for_timeout(600)  # the answers to every key stroke would have landed by now
            assert box.input_value() == typed
            seen = page.evaluate("() => window.__seen")  # the flag's states while the box had the focus
            assert set(seen) <= {first}, (first, seen)
            box.press("Tab")
            if flagged:
                expect(page.locator("#field-beta")).to_have_class(re.compile("field-error"), timeout=20_000)
                expect(page.locator("#field-beta")).to_contain_text("must be >= 0", timeout=20_000)
            else:
                expect(page.locator("#field-beta")).not_to_have_class(re.compile("field-error"), timeout=20_000)
            expect(field(page, "beta")).to_have_value(typed)
        expect(page.locator("#launch-cli")).to_contain_text("beta=0.25", timeout=20_000)


PAPER_FORM = {  # preset -> (data folder kind, fields Table 7 fills)
    "llamagen-c2i-xxl": ("imagefolder", {"learning_rate": "0.000001", "xi": "0", "max_steps": "100"}),
    "llamagen-c2i-xl": ("imagefolder", {"learning_rate": "0.000001", "xi": "0", "max_steps": "100"}),
    "llamagen-t2i-xl": ("captions", {"learning_rate": "0.000001", "xi": "0.5", "max_steps": "200"}),
    "janus-pro-1b": ("captions", {"learning_rate": "1e-7", "xi": "0.95", "max_steps": "100"}),
}


@pytest.fixture
def served_with_standins(tiny_demo, tmp_path, monkeypatch):
    """The workbench with tiny random stand-ins under the paper presets' names (tests/standins.py)."""
    from core.models import registry
    from tests.standins import make_caption_folder, make_image_folder, make_standins

    require_chromium()
    env = make_standins(tmp_path)  # tmp_path/checkpoints: where served_app points the checkpoints dir
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the workers the UI launches load the same stand-ins
    saved = dict(registry.GENERATORS), dict(registry.TOKENIZERS)
    registry.load_plugins([env["VAPI_PLUGINS"]])
    data = {"imagefolder": make_image_folder(tmp_path / "data" / "imagenet"),
            "captions": make_caption_folder(tmp_path / "data" / "coco")}
    try:
        with served_app(tmp_path, monkeypatch, [tmp_path / "data"]) as served:
            yield served, data
    finally:
        registry.GENERATORS.clear(), registry.GENERATORS.update(saved[0])
        registry.TOKENIZERS.clear(), registry.TOKENIZERS.update(saved[1])
        registry._loaded_plugins.discard(str(Path(env["VAPI_PLUGINS"]).resolve()))


def test_each_paper_preset_fills_the_form_and_launches_in_chromium(served_with_standins, tmp_path):
    from playwright.sync_api import expect

    (app, url), data = served_with_standins
    with browser_page(url) as page:
        for preset, (kind, table7) in PAPER_FORM.items():
            page.get_by_role("tab", name="Launch").click()
            page.locator("#field-preset input").click()
            page.get_by_role("option", name=preset, exact=True).click()
            expect(field(page, "name")).to_have_value(preset, timeout=20_000)
            expect(page.locator(f"#field-data input[value={kind}]")).to_be_checked(timeout=20_000)
            reveal(page, "Optimisation", "learning_rate")
            reveal(page, "Rollout (teacher-forced sampling)", "xi")
            for key, value in table7.items():
                expect(field(page, key)).to_have_value(value, timeout=20_000)
            expect(field(page, "global_batch_size")).to_have_value("128")
            expect(field(page, "num_generations")).to_have_value("8")
            # a data folder, as a user types it; offline the LPIPS weights are missing and say so
            set_field(page, "data_path", str(data[kind]))
            page.locator("#launch-button").click()
            expect(page.locator("#launch-status")).to_contain_text("vgg16-397923af.pth", timeout=60_000)
            reveal(page, "Reward (Eq. 10)", "reward_weights__lpips")
            set_field(page, "reward_weights__lpips", "0")
            # a run this CPU finishes: 1 step of 4 images x 2 samples, one preview seed
            set_field(page, "max_steps", "1")
            set_field(page, "global_batch_size", "4")
            set_field(page, "per_device_train_batch_size", "2")
            set_field(page, "num_generations", "2")
            reveal(page, "Checkpoints, metrics and previews", "preview_seeds")
            set_field(page, "preview_seeds", "0")
            expect(page.locator("#launch-cli")).to_contain_text(f"--preset {preset}", timeout=20_000)
            page.locator("#launch-button").click()
            expect(page.locator("#launch-status")).to_contain_text("Launched", timeout=60_000)
            expect(page.locator("#runs-table")).to_contain_text(preset, timeout=60_000)
        # every launched run trains on its stand-in and finishes (they queue on the one CPU device)
        store = app.ctx.store
        deadline = 240
        for _ in range(deadline):
            runs = store.list_runs()
            if len(runs) == 4 and all(r.status == "finished" for r in runs):
                break
            assert not any(r.status == "failed" for r in runs), [(r.name, r.message) for r in runs]
            page.wait_for_timeout(1000)
        assert sorted(r.name for r in store.list_runs()) == sorted(PAPER_FORM)
        assert all(r.status == "finished" and r.step == 1 for r in store.list_runs())
        page.get_by_role("tab", name="Runs").click()
        for preset in PAPER_FORM:
            expect(page.locator("#runs-table")).to_contain_text(preset, timeout=30_000)


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception),
                                        ("false", pytest.skip.Exception)])
def test_a_missing_chromium_fails_under_ci_and_skips_elsewhere(ci, outcome, monkeypatch, tmp_path):
    import tests.test_app_browser as this

    monkeypatch.setattr(this, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", ci)
    try:  # a skip raised where a failure is due must fail this test, not skip it: catch both, compare the kind
        require_chromium()
    except (pytest.fail.Exception, pytest.skip.Exception) as e:
        got = e
    else:
        got = None
    assert type(got) is outcome and "no-chromium is absent" in str(got), repr(got)


def test_ci_runs_the_tests_with_ci_set():
    """.ci/run's test command sets CI, so a missing Chromium fails CI (require_chromium) rather than skipping."""
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    runs = [line for line in ci.splitlines() if "-m pytest" in line and not line.lstrip().startswith("#")]
    assert runs and all(re.match(r"\s*CI=(true|1)\s", line) for line in runs), runs
