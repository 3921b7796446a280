"""The Embeddings tab in a real headless Chromium (Playwright), issue 21 item 8: a class-conditional map colours
its points by class (one colour per class, the sets told apart by their symbol), the distance bars carry error
bars (± one std over the seeds), and the FD bars of different sample sizes (overall vs per class) carry a note
saying so, in the figure and in the caption. One real comparison (the tiny demo's base vs a checkpoint, 3 classes
x 6 samples x 2 seeds, demo features) is computed in this process as a run folder."""
from __future__ import annotations

import json

import pytest

from core.runs.store import RunStore
from tests.helpers import served_app
from tests.test_app_browser import browser_page
from tests.test_app_eval_tabs import (STEP, aligned_run, browser_store, evaluator_file,  # noqa: F401 - a fixture
                                     finished_job)

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium against a launched app

CLASSES = [0, 1, 2]
# the fill colours of the map's points, and the number of error bars the distance figure draws
POINT_FILLS_JS = """() => [...new Set([...document.querySelectorAll('#emb-scatter .scatterlayer .trace .point')]
  .map(p => p.style.fill).filter(f => f && f !== 'none'))]"""
ERROR_BARS_JS = "() => document.querySelectorAll('#emb-distance .errorbar path.yerror').length"


def compared(store: RunStore, aligned: str) -> str:
    """A finished embedding comparison run (what the worker of an "embeddings" job leaves), computed here."""
    from core.eval.configs import EmbeddingConfig
    from core.eval.shift_job import embedding_shift
    from core.runs.kinds import EMBEDDINGS_ENTRY

    cfg = EmbeddingConfig(model="demo-c2i", aligned_weights=f"{aligned}@{STEP}", classes=CLASSES, per_class=6,
                          batch_size=6, projections=["tsne"], device="cpu", num_seeds=2)
    return finished_job(store, "shift", cfg, EMBEDDINGS_ENTRY, embedding_shift)


@pytest.fixture
def served(tiny_demo, evaluator_file, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture
    store = browser_store(tiny_demo, evaluator_file, tmp_path)
    job = compared(store, aligned_run(store))
    with served_app(tmp_path, monkeypatch, [tmp_path]) as (app, url):
        yield app, url, job


def rgb(color: str) -> str:
    """A "#rrggbb" colour as the browser's computed style writes it."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_the_map_colours_classes_and_the_bars_carry_spread_and_sample_size(served):
    from playwright.sync_api import expect

    from core.eval.embeddings import label_colors

    app, url, job = served
    results = json.loads((app.ctx.store.get(job).run_dir / "results.json").read_text())
    assert set(results["per_class_verdicts"]) == {str(c) for c in CLASSES}  # every class has its spread over seeds
    with browser_page(url) as page:
        page.get_by_role("tab", name="Embeddings").click()
        choose = page.locator("#emb-result input")
        choose.fill(job)
        choose.press("Enter")
        expect(page.locator("#emb-scatter .js-plotly-plot .scatterlayer .trace").first).to_be_attached(timeout=60_000)
        expect(page.locator("#emb-distance .js-plotly-plot")).to_be_attached(timeout=30_000)
        page.wait_for_timeout(1500)  # plotly draws asynchronously
        fills = page.evaluate(POINT_FILLS_JS)
        # one colour per class, the same in the legend: not one colour per set
        assert sorted(fills) == sorted(rgb(c) for c in label_colors(map(str, CLASSES)).values()), fills
        for name in results["class_names"].values():
            expect(page.locator("#emb-scatter .legend")).to_contain_text(name)
        # bars: overall and each class, base and aligned, each with its error bar
        assert page.evaluate(ERROR_BARS_JS) == 2 * (1 + len(CLASSES))
        note = f"overall is measured on {6 * len(CLASSES)} samples per set and seed, each class on 6"
        expect(page.locator("#emb-distance")).to_contain_text("FD grows as the sample shrinks")
        expect(page.locator("#emb-caption")).to_contain_text(note)
