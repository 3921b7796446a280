"""Screenshots of Compare, Runs (two runs overlaid) and Evaluate on the embedded demo, for README.

    python -m core train --preset demo-c2i --runs-dir RUNS --set max_steps=20 --set save_steps=10 --set preview_steps=10
    python -m core train --preset demo-c2i --runs-dir RUNS --set max_steps=20 --set save_steps=10 --set preview_steps=10 --set learning_rate=3e-5
    python docs/take_screenshots.py --runs-dir RUNS --out docs

Starts the workbench on RUNS (the committed demo weights), drives it in headless Chromium through
Playwright (Debian: apt-get install -y chromium) and writes docs/compare.png (teacher-forced view of
the newest run against the base, with per-class numbers), docs/compare_prefix.png (shared prefix),
docs/runs.png (the two newest runs overlaid) and docs/evaluate.png (an evaluation of the newest
checkpoint and its base: 1000 samples x 3 seeds each, a few minutes on 2 CPU cores).

A demo step takes 2.5 s on 2 idle CPU cores, and up to a minute while other jobs load them (the two runs took
about 40 min beside other work); for docs/evaluate.png alone, one short run is enough:

    python -m core train --preset demo-c2i --runs-dir RUNS --set max_steps=2 --set save_steps=2 --set preview_steps=2
    python docs/take_screenshots.py --runs-dir RUNS --out docs --skip-compare --skip-runs
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
WAIT_MS = 900_000


def compare(page, args, newest: str, expect) -> None:
    """The Compare tab: teacher-forced view (with per-class numbers), then a shared prefix of 3 rows."""
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-aligned input")).to_have_value(re.compile(newest), timeout=30_000)
    seeds = page.locator("#compare-seeds textarea, #compare-seeds input").first
    seeds.fill("0, 1")
    seeds.press("Tab")
    page.locator("#compare-generate").click()
    expect(page.locator("#compare-status")).to_contain_text("teacher-forced on held-out", timeout=WAIT_MS)
    expect(page.locator("#compare-classes-table")).to_contain_text("circle", timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(args.out / "compare.png"), full_page=True)

    page.get_by_label("shared prefix").check()
    prefix = page.locator("#compare-prefix input[type='number']")
    prefix.fill("3")
    prefix.press("Tab")
    samples = page.locator("#compare-class-samples input")
    samples.fill("0")
    samples.press("Tab")
    page.locator("#compare-generate").click()
    expect(page.locator("#compare-status")).to_contain_text("k = 3 rows", timeout=WAIT_MS)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(args.out / "compare_prefix.png"), full_page=True)


def runs_overlay(page, args, newest: str, other: str, expect) -> None:
    """The Runs tab: the two newest runs overlaid, their CSV exported."""
    page.get_by_role("tab", name="Runs").click()
    page.get_by_role("button", name=re.compile("Overlay runs")).click()  # a closed section: the page stays short
    pick = page.locator("#runs-overlay-runs input")
    for run_id in (other, newest):
        pick.click()
        page.get_by_role("option", name=re.compile(re.escape(run_id))).click()
    page.keyboard.press("Escape")  # close the list of runs
    page.locator("#runs-overlay-csv").click()
    expect(page.locator("#runs-overlay-file")).to_contain_text(re.compile(r"metrics\s*\.csv"), timeout=60_000)
    expect(page.locator("#runs-overlay .legend")).to_contain_text(other, timeout=60_000)
    page.wait_for_timeout(2500)
    page.screenshot(path=str(args.out / "runs.png"), full_page=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--skip-compare", action="store_true")
    ap.add_argument("--skip-runs", action="store_true", help="no runs.png (it needs two runs)")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    from app import create_app
    from core.runs.launcher import free_port

    app = create_app(args.runs_dir, data_roots=[])
    _, url, _ = app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    from app import views

    store = app.ctx.store
    runs = [r for r in store.list_runs() if r.kind == views.TRAIN_KIND]  # not eval jobs
    newest = runs[0].id
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            expect(page.locator("#launch-button")).to_be_visible(timeout=60_000)

            if not args.skip_compare:
                compare(page, args, newest, expect)

            if not args.skip_runs:
                runs_overlay(page, args, newest, runs[1].id, expect)

            if not args.skip_evaluate:
                page.get_by_role("tab", name="Evaluate").click()
                expect(page.locator("#eval-source input")).to_have_value(re.compile(newest), timeout=30_000)
                page.locator("#eval-launch").click()
                expect(page.locator("#eval-status")).to_contain_text("Queued", timeout=60_000)
                expect(page.locator("#eval-summary")).to_contain_text("bootstrap", timeout=WAIT_MS)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(args.out / "evaluate.png"), full_page=True)
            browser.close()
    finally:
        app.close(verbose=False)
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
