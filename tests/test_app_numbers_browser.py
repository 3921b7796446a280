"""Numbers in the Evaluate tab's tables, in a real headless Chromium (Playwright) at 1000 px: no number breaks
across lines, none is clipped or scrolled out of sight (issue 21, item 7: "+0.00166 7" in the Δ column). Two real
evaluations (the base and a checkpoint of the tiny demo, 12 samples x 2 seeds, demo features) are computed in this
process as run folders, so the page shows full results rows without a worker."""
from __future__ import annotations


import pytest

from core.runs.store import RunStore
from tests.helpers import served_app
from tests.test_app_browser import browser_page
from tests.test_app_eval_tabs import (STEP, aligned_run, browser_store, evaluator_file,  # noqa: F401 - a fixture
                                     finished_job)

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a real Chromium against a launched app

NUMBER_COLUMNS = ("base", "checkpoint value", "Δ (checkpoint − base)", "95% interval of Δ")


def evaluated(store: RunStore, weights, label: str) -> str:
    """A finished evaluation run (what the worker of an "eval" job leaves), computed here."""
    from core.eval.configs import EvalConfig
    from core.eval.eval_job import evaluate
    from core.runs.kinds import EVAL_ENTRY

    cfg = EvalConfig(model="demo-c2i", weights=weights, label=label, num_samples=12, batch_size=4, extractor="demo",
                     reference="shapes", metrics=["fid", "isc", "prc"], device="cpu", num_seeds=2)
    return finished_job(store, f"eval {label}", cfg, EVAL_ENTRY, evaluate)


@pytest.fixture
def served(tiny_demo, evaluator_file, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture
    store = browser_store(tiny_demo, evaluator_file, tmp_path)
    aligned = aligned_run(store)
    evaluated(store, None, "base")
    evaluated(store, f"{aligned}@{STEP}", "aligned")
    with served_app(tmp_path, monkeypatch, [tmp_path]) as (app, url):
        yield url


# per cell of the given columns: its text, how many numbers it holds, those broken across two lines (a Range over the
# number with client rects on two lines), whether its text runs past the cell's right edge (clipped) and whether the
# cell lies outside the table's visible width (scrolled away)
NUMBER_CELLS_JS = """([table, columns]) => {
  const cells = [...document.querySelectorAll(`#${table} [role="gridcell"]`)]
    .filter(c => columns.includes(Number(c.dataset.col)));
  return cells.map(cell => {
    const span = cell.querySelector('span');
    const node = [...span.childNodes].find(n => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
    const broken = [];
    let found = 0;
    for (const m of (node ? node.textContent : '').matchAll(/[+\\-−]?\\d+(\\.\\d+)?(e[+\\-]?\\d+)?/g)) {
      found += 1;
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
      if (lines.size > 1) broken.push(m[0]);
    }
    const view = cell.closest('.virtual-table-viewport').getBoundingClientRect(), box = cell.getBoundingClientRect();
    const all = document.createRange();
    if (node) all.selectNodeContents(node);
    const right = Math.max(...[...all.getClientRects()].map(r => r.right), box.left);
    return {text: span.textContent, broken, numbers: found, clipped: right > box.right + 1,
            hidden: box.left < view.left - 1 || box.right > view.right + 1};
  });
}"""


def number_cells(page, table: str, headers: list[str], names) -> list[dict]:
    return page.evaluate(NUMBER_CELLS_JS, [table, [headers.index(n) for n in names]])


def test_no_number_of_the_evaluate_table_breaks_at_1000_px(served):
    from playwright.sync_api import expect

    from app.tabs.evaluate import JOB_HEADERS, SUMMARY_HEADERS

    with browser_page(served, width=1000, height=900) as page:
        page.get_by_role("tab", name="Evaluate").click()
        expect(page.locator("#eval-summary")).to_contain_text("recall (demo evaluator)", timeout=60_000)
        page.wait_for_timeout(500)  # the columns are sized after the rows render
        cells = number_cells(page, "eval-summary", SUMMARY_HEADERS, NUMBER_COLUMNS)
        jobs = number_cells(page, "eval-jobs", JOB_HEADERS, ["samples"])
    assert len(cells) == 4 * len(NUMBER_COLUMNS), cells  # FD, IS, precision, recall
    assert all("±" in c["text"] for c in cells[:2]) and "[" in cells[3]["text"], cells
    assert len(jobs) == 2 and all(c["numbers"] for c in cells + jobs), (cells, jobs)
    assert not [c for c in cells + jobs if c["broken"] or c["clipped"] or c["hidden"]], (cells, jobs)
