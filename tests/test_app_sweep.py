"""The Launch tab's Sweep section through the app's own API (gradio_client against a launched app): the form's
run becomes the preset of a sweep, a bad value is refused naming the field and the variant (nothing queued),
the plan shows the number of runs, and the queued sweep is one row of kind sweep in Runs whose panel is its
table, filled as its variants finish (tiny random demo, a tiny evaluator, eval fid)."""
from __future__ import annotations

import csv
import json
import shutil
from types import SimpleNamespace

import pytest
from gradio_client import Client

from app.tabs.launch import api_name_of
from core.sweep import table as T
from tests import helpers
from tests.helpers import served_app, train_tiny_evaluator
from tests.test_sweep import SWEEP, _table

TINY = dict(max_steps=2, per_device_train_batch_size=2, global_batch_size=2, num_generations=2, data_subset=20,
            save_steps=2, preview_steps=1000, kl_probe_size=2, preview_classes=[0, 1])


@pytest.fixture
def served(tiny_demo, tmp_path, monkeypatch):
    (tmp_path / "evaluator").mkdir()
    shutil.copy(train_tiny_evaluator(tmp_path / "evaluator", steps=3), tiny_demo / "evaluator.safetensors")
    data_root = tmp_path / "data"
    data_root.mkdir()
    with served_app(tmp_path, monkeypatch, [data_root], page_timer_s=0.5) as (app, url):
        yield SimpleNamespace(app=app, client=Client(url, verbose=False), store=app.ctx.store)


def _call(client, endpoint: str, vary: str, one_at_a_time: bool = True):
    """The Sweep section's endpoint with the form's defaults plus TINY, and the sweep inputs."""
    form = {api_name_of(k): v for k, v in TINY.items()}
    return client.predict(**form, vary=vary, one_at_a_time=one_at_a_time, eval="fid", num_samples=10, num_seeds=2,
                          api_name=endpoint)


@pytest.mark.slow
def test_sweep_from_launch_to_its_table_in_runs(served):
    client, store = served.client, served.store
    text = _call(client, "/plan_sweep", "learning_rate=3e-5,1e-4\nxi=0,2")
    assert "Not a valid sweep" in text and "xi" in text and "variant 'xi=2'" in text
    text = _call(client, "/queue_sweep", "learning_rate=3e-5,1e-4\nxi=0,2")[0]
    assert "Not queued" in text and not store.list_runs()  # nothing queued on an error

    text = _call(client, "/plan_sweep", "learning_rate=3e-5,1e-4")
    assert "**3 runs**" in text and "learning_rate=0.0001" in text and "6 steps in all" in text
    status, selected = _call(client, "/queue_sweep", "learning_rate=3e-5,1e-4")
    assert "Queued" in status, status
    (run,) = store.list_runs()
    assert run.kind == "sweep" and selected["value"] == run.id
    final = helpers.wait_for(lambda: (r := store.get(run.id)).status in ("finished", "failed", "stopped") and r,
                             "the sweep to end", 600, poll=1.0)
    assert final.status == "finished", final.message
    result = client.predict(run.id, 0.0, None, api_name="/runs_refresh")
    labels = [r["label"] for r in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
              ["/runs_refresh"]["returns"]]
    shown = result[labels.index("job results")]
    shown = shown.get("value") if isinstance(shown, dict) else shown
    assert "**sweep results**" in shown and "| fid vs base | fid vs preset |" in shown, shown
    for name in ("base model", "preset", "learning_rate=3e-05", "learning_rate=0.0001"):
        assert f"| {name} | done |" in shown or f"| **{name}** (best beyond noise) | done |" in shown, shown

    # the overlay: the sweep stands for its variants' curves (one colour each), and exports their metrics
    variants = [f"{run.id}/v00-preset", f"{run.id}/v01-learning_rate-3e-05", f"{run.id}/v02-learning_rate-0.0001"]
    plot = json.loads(client.predict([run.id], "step", False, 0.0, api_name="/overlay_runs")["plot"])
    reward = [t for t in plot["data"] if t["legendgroup"] and t["yaxis"] == "y"]
    assert [t["legendgroup"].split(" · ")[0] for t in reward] == variants, plot["data"]
    assert all(t["x"] == [1, 2] for t in reward) and len({t["line"]["color"] for t in reward}) == 3
    one = json.loads(client.predict([variants[2]], "step", False, 0.0, api_name="/overlay_runs")["plot"])
    assert {t["legendgroup"] for t in one["data"] if t["legendgroup"]} == {f"{variants[2]} · learning_rate=0.0001"}
    with open(client.predict([run.id], api_name="/export_runs_csv"), newline="") as f:
        assert [(r["run"], r["step"]) for r in csv.DictReader(f)] == [(v, str(s)) for v in variants for s in (1, 2)]


def test_the_runs_tab_shows_a_sweep_as_one_row_with_its_table(tmp_path):
    from app import views
    from core.runs.kinds import SWEEP_ENTRY
    from core.runs.store import RunStore

    store = RunStore(tmp_path / "runs")
    run = store.create_run("sweep demo-c2i", {**SWEEP, "entry": SWEEP_ENTRY}, "cpu", 5)
    assert run.kind == "sweep" and views.table_row(store, run, run.kind)[2] == "sweep"
    assert "its results appear here when it finishes" in views.job_results(store, run)  # before its first row
    T.write(run.run_dir, _table())
    shown = views.job_results(store, run)
    assert "**sweep results**" in shown and "| variant | status | demo_fid | class_accuracy | demo_fid vs base |" in shown
    assert "**learning_rate=3e-05** (best beyond noise)" in shown and "better" in shown
    assert "failed: training failed: ConfigError: init_weights: file not found: /nope.pt |" in shown

