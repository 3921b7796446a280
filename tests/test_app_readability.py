"""Readable curves and forms: scientific y ticks, constant panels explained, labels in words with the
config key, "expected a number" for a non-number, Evaluate's source following the newest finished run."""
from __future__ import annotations

import json

import pytest
import torch

from app import form, plots
from core.errors import ConfigError


def test_curves_use_scientific_ticks_a_light_band_and_explain_constant_panels():
    series = plots.new_series()
    plots.add_points(series, [{"step": s, "reward_mean": -0.1 / s, "reward_std": 0.02, "loss_pg": 5e-8 * s,
                               "clip_frac": 0.0} for s in (1, 2, 3)])
    notes = plots.constant_panels({"num_iterations": 1, "rollout_mode": "eval"})
    fig = plots.figure(series, 0.0, notes=notes)
    assert all(ax.exponentformat == "e" for ax in (fig.layout.yaxis, fig.layout.yaxis3))
    band = [t for t in fig.data if t.fill == "toself"][0]
    assert band.fillcolor.endswith("0.08)")  # the mean line stands out over a light band
    assert any("0 by construction" in a.text for a in fig.layout.annotations)
    assert not any(t.name == "clip_frac" for t in fig.data)
    assert plots.constant_panels({"num_iterations": 2, "rollout_mode": "eval"}) == {}
    # rollout_mode train (the default): dropout and condition dropout move the ratio, and the clip acts
    assert plots.constant_panels({"num_iterations": 1, "rollout_mode": "train"}) == {}
    assert plots.constant_panels({"num_iterations": 1}) == {}
    assert "twice" in plots.constant_panels({"num_iterations": 1, "rollout_mode": "twice"})["clip fraction"]
    drawn = plots.figure(series, 0.0, notes={})
    assert any(t.name == "clip_frac" for t in drawn.data)


def test_labels_are_words_with_the_key_and_a_non_number_is_not_called_missing():
    assert form.label_of("learning_rate") == "learning rate (learning_rate)"
    assert form.label_of("num_generations") == "samples per image G (num_generations)"
    assert form.label_of("reward_weights.mse") == "weight of mse (reward_weights.mse)"
    assert all(f"({k})" in form.label_of(k) or form.label_of(k) == k for k in form.FIELD_NAMES)
    for raw in (None, "", "abc"):
        with pytest.raises(ConfigError, match="^learning_rate: expected a number") as e:
            form.from_form("learning_rate", raw)
        assert "required" not in str(e.value)


def test_evaluate_source_follows_the_newest_finished_training_run(tiny_demo, tmp_path):
    from app.tabs.evaluate import default_source
    from core.runs.store import FINISHED, RUNNING, RunStore
    from core.runs.kinds import TRAIN_ENTRY as ENTRY
    from tests.helpers import tiny_gpt

    store = RunStore(tmp_path / "runs")
    assert default_source(store) == "preset:demo-c2i"
    made = []
    for name, status in (("old", FINISHED), ("new", FINISHED), ("running", RUNNING)):
        run = store.create_run(name, {"entry": ENTRY, "model": "demo-c2i"}, "cpu", 2)
        folder = run.run_dir / "checkpoints" / "step-000002"
        folder.mkdir(parents=True)
        torch.save({"model": tiny_gpt().state_dict()}, folder / "model.pt")
        (folder / "trainer_state.json").write_text(json.dumps({"step": 2}))
        store.set_status(run.id, RUNNING)
        if status == FINISHED:
            store.set_status(run.id, FINISHED)
        made.append(run.id)
    assert default_source(store) == f"{made[1]}@2"  # the newest finished one, not the running one


def test_latest_metrics_show_the_step_first_and_a_readable_time():
    from app.tabs.runs import latest_metrics

    series = {"steps": [1, 2], "time": [1.7e9, 1.7e9 + 5.0], "reward_mean": [-0.2, -0.1], "clip_frac": [None, 0.02]}
    latest = latest_metrics(series)
    assert list(latest)[0] == "step" and latest["step"] == 2 and latest["reward_mean"] == -0.1
    assert latest["time"].startswith("2023-11-1") and ":" in latest["time"]  # not 1700000005.0


def finished_run(store, name: str) -> str:
    """A finished training run of 3 planned steps in `store`, with no worker (a refresh's ticker starts nothing)."""
    from core.runs.kinds import TRAIN_ENTRY
    from core.runs.store import FINISHED, RUNNING

    run = store.create_run(name, {"entry": TRAIN_ENTRY, "model": "demo-c2i"}, "cpu", 3)
    store.set_status(run.id, RUNNING)
    store.set_status(run.id, FINISHED)
    return run.id


def test_a_refresh_that_read_the_previous_selection_does_not_take_back_a_launched_run(tmp_path):
    """A launch selects its new run; a timer refresh that read the previous selection before the launch answered
    must not put that selection back (it updates the choices only). A deleted selection is cleared."""
    from app import create_app
    from app.tabs.runs import new_view, refresh_view

    app = create_app(tmp_path / "runs", data_roots=[tmp_path])
    ctx, store = app.ctx, app.ctx.store
    first = finished_run(store, "first")
    out = refresh_view(ctx, first, 0.0, None, new_view())
    view = out[-1]
    second = finished_run(store, "second")  # what a launch adds and selects
    stale = refresh_view(ctx, first, 0.0, None, view)  # the stale refresh: its input is still `first`
    selector = stale[1]
    assert second in [v for _, v in selector["choices"]] and "value" not in selector
    store.delete_run(first)
    cleared = refresh_view(ctx, first, 0.0, None, stale[-1])[1]
    assert cleared["value"] is None and first not in [v for _, v in cleared["choices"]]


def test_a_pages_refreshes_at_once_send_the_continue_box_once(tmp_path):
    """A page's load, its run selection and a timer tick run at once, each from the view state as it was before any
    answered: only the first of them sends the buttons and the continue box's offer (a later one landing after the
    user typed in the box put the offer back: a local run of the checkpoints browser test continued a run to step 4
    from an emptied box). Another page is
    sent its own; a page that selects another run and comes back is sent them again."""
    from app import create_app
    import gradio as gr

    from app.tabs.runs import new_view, refresh_view

    app = create_app(tmp_path / "runs", data_roots=[tmp_path])
    ctx, store = app.ctx, app.ctx.store
    first, second = finished_run(store, "first"), finished_run(store, "second")

    def box(out):  # the continue box's update (outputs: table, run, header, ... stop, resume, delete, continue steps)
        return None if out[13] == gr.skip() else out[13]

    at_once = [refresh_view(ctx, first, 0.0, None, new_view(), session="page-1") for _ in range(3)]
    assert box(at_once[0]) == gr.update(interactive=True, value=6)  # twice its 3 planned steps
    assert [box(o) for o in at_once[1:]] == [None, None]
    assert box(refresh_view(ctx, first, 0.0, None, new_view(), session="page-2")) == gr.update(interactive=True, value=6)
    view = refresh_view(ctx, second, 0.0, None, at_once[0][-1], session="page-1")
    assert box(view) == gr.update(interactive=True, value=6)
    assert box(refresh_view(ctx, first, 0.0, None, view[-1], session="page-1")) == gr.update(interactive=True, value=6)


def test_the_demo_t2i_preset_says_what_its_xi_did_on_the_demo():
    from app.tabs.launch import demo_note

    assert "ξ 0.5" in demo_note("demo-t2i", "demo-t2i") and "`xi` to 0" in demo_note("demo-t2i", "demo-t2i")
    assert "ξ" not in demo_note("demo-c2i", "demo-c2i")


def test_a_mean_and_its_spread_are_written_to_the_same_decimal_place():
    from core.eval.verdict import mean_std

    assert mean_std(0.7134, 0.1) == "0.71 ± 0.10"  # not "0.713 ± 0.1" beside "0.687 ± 0.012"
    assert mean_std(0.6871, 0.0123) == "0.687 ± 0.012"
    assert mean_std(785.4, 12.3) == "785 ± 12"
    assert mean_std(0.5, 0.0) == "0.5" and mean_std(0.5, None) == "0.5"


def test_a_change_is_written_to_the_decimal_place_of_its_interval():
    from core.eval.verdict import change_text, from_seed_values

    # Evaluate showed "+0.001667" beside "[-0.0134, +0.0177]": more digits than the interval supports
    assert change_text(0.0016667, -0.0134, 0.0177) == ("+0.002", "[-0.013, +0.018]")
    assert change_text(0.02207, -0.0732, 0.103) == ("+0.022", "[-0.073, +0.103]")
    assert change_text(-12.3, -40.2, 20.9) == ("-12", "[-40, +21]")
    assert change_text(0.6, 0.6, 0.6) == ("+0.6", "[+0.6, +0.6]")  # a point interval
    assert change_text(0.001667) == ("+0.001667", "") and change_text(0.5, float("nan"), float("nan"))[1] == ""
    v = from_seed_values("fid", [3.1, 2.9, 3.0], [2.0, 2.1, 1.9])  # half-width 4.303 * 0.1 = 0.43
    assert (v.delta_text(), v.interval_text()) == ("-1.00", "[-1.43, -0.57]")


def test_compare_shows_prompt_adherence_per_attribute_and_captions_only_what_the_view_has():
    from app.tabs.compare import judge_parts, row_label, row_table
    from core.eval.alignment import Row, ViewResult

    def row(base: dict, aligned: dict) -> Row:
        scores = {"changed_tokens": 3, "tokens": 64, "first_difference": 5, "identical": False, "pixel_mad": 0.1,
                  "base": {"judge": sum(base.values()) / len(base), "judge_parts": base},
                  "aligned": {"judge": sum(aligned.values()) / len(aligned), "judge_parts": aligned}}
        return Row("a red circle · seed 0", "a red circle", 0, {}, scores)

    rows = [row({"shape": True, "colour": False}, {"shape": True, "colour": True}),
            row({"shape": False, "colour": False}, {"shape": True, "colour": False})]
    assert judge_parts(rows) == {"shape": (0.5, 1.0, 2), "colour": (0.0, 0.5, 2)}
    view = ViewResult("free", rows, "free-running", "prompt adherence", [])
    assert row_label(view) == "per row: tokens that differ, the judge's score, the prompt's attributes seen"
    table = row_table(view)
    assert table["headers"][-2:] == ["attributes seen: base", "attributes seen: aligned"]
    assert table["data"][0][-1] == "shape ✓, colour ✓"


def test_the_judges_average_change_carries_an_interval_over_the_paired_rows():
    from app.tabs.compare import judge_change
    from core.eval.alignment import Row

    def row(b, a):
        return Row("c", "c", 0, {}, {"base": {"judge": b}, "aligned": {"judge": a}})

    text = judge_change([row(0.2, 0.8), row(0.3, 0.9), row(0.25, 0.85), row(0.1, 0.7)])
    assert text.startswith("; change +0.6, 95% interval [+0.6, +0.6]") and text.endswith("over 4 paired rows: better")
    assert "within noise" in judge_change([row(0.2, 0.8), row(0.9, 0.3)])
    assert judge_change([row(0.2, 0.8), row(None, 0.3)]) == ""


def test_the_off_manifold_change_carries_its_interval_over_the_seeds():
    from app.tabs.diagnose import off_manifold_row

    rates = {"real": 0.01, "base": 0.2, "base_std": 0.01, "aligned": 0.1, "aligned_std": 0.01,
             "base_per_seed": [0.19, 0.2, 0.21], "aligned_per_seed": [0.09, 0.1, 0.11]}
    row = off_manifold_row(rates)
    assert "-0.1, 95% interval [" in row and "0.200 ± 0.010" in row
    old = {k: v for k, v in rates.items() if not k.endswith("_per_seed")}  # a result written before
    assert "-0.100" in off_manifold_row(old) and "interval" not in off_manifold_row(old)
