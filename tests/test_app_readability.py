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
    notes = plots.constant_panels({"num_iterations": 1})
    fig = plots.figure(series, 0.0, notes=notes)
    assert all(ax.exponentformat == "e" for ax in (fig.layout.yaxis, fig.layout.yaxis3))
    band = [t for t in fig.data if t.fill == "toself"][0]
    assert band.fillcolor.endswith("0.08)")  # the mean line stands out over a light band
    assert any("0 by construction" in a.text for a in fig.layout.annotations)
    assert not any(t.name == "clip_frac" for t in fig.data)
    assert plots.constant_panels({"num_iterations": 2}) == {}
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
