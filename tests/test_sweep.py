"""Sweeps: variants validated before anything runs, the table and its verdicts, the CLI on the tiny demo."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.sweep import table as T
from core.sweep.config import PRESET_VARIANT, SweepConfig, expand, parse_vary

TINY = ["--preset", "demo-c2i", "--set", "global_batch_size=2", "--set", "per_device_train_batch_size=2",
        "--set", "data_subset=20", "--set", "num_generations=2", "--set", "kl_probe_size=0", "--set", "device=cpu",
        "--set", "max_steps=2", "--set", "save_steps=2", "--set", "preview_steps=1000000"]


# ----------------------------------------------------------------------------- variants
def test_parse_vary_numbers_text_and_objects():
    got = parse_vary(["learning_rate=1e-5,3e-5", "prior=ce,kl", 'reward_weights={"mse": 1},{"mse": 1, "encoder": 10}',
                      "cache_tokens=true,false"])
    assert got == {"learning_rate": [1e-5, 3e-5], "prior": ["ce", "kl"],
                   "reward_weights": [{"mse": 1}, {"mse": 1, "encoder": 10}], "cache_tokens": [True, False]}
    with pytest.raises(ConfigError, match="--vary"):
        parse_vary(["learning_rate"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_vary(["beta=0", "beta=1"])


def test_grid_and_one_at_a_time():
    vary = {"learning_rate": [1e-5, 3e-5], "beta": [0.1, 1.0]}  # the preset has lr 1e-5, beta 0.1
    grid = expand(SweepConfig(preset="demo-c2i", vary=vary))
    assert [v.name for v in grid] == [PRESET_VARIANT, "learning_rate=1e-05, beta=1.0", "learning_rate=3e-05, beta=0.1",
                                      "learning_rate=3e-05, beta=1.0"]  # lr 1e-5, beta 0.1 is the preset itself
    assert grid[3].config["learning_rate"] == 3e-5 and grid[3].config["beta"] == 1.0
    one = expand(SweepConfig(preset="demo-c2i", vary=vary, mode="one-at-a-time"))
    assert [v.changes for v in one] == [{}, {"learning_rate": 3e-5}, {"beta": 1.0}]
    assert one[2].config["learning_rate"] == 1e-5  # one change at a time from the preset


def test_overrides_apply_to_every_variant_and_cannot_also_vary():
    variants = expand(SweepConfig(preset="demo-c2i", overrides={"max_steps": 7}, vary={"xi": [0.5]}))
    assert [v.config["max_steps"] for v in variants] == [7, 7]
    with pytest.raises(ConfigError, match="vary xi: is also set with --set"):
        SweepConfig(preset="demo-c2i", overrides={"xi": 0.1}, vary={"xi": [0.5]})


@pytest.mark.parametrize("vary, field, variant", [
    ({"learning_rate": [3e-5, "fast"]}, "learning_rate", "learning_rate=fast"),
    ({"xi": [0.5, 2.0]}, "xi", "xi=2.0"),
    ({"no_such_field": [1]}, "no_such_field", "no_such_field=1"),
])
def test_a_bad_value_names_the_field_and_the_variant(vary, field, variant):
    with pytest.raises(ConfigError) as e:
        expand(SweepConfig(preset="demo-c2i", vary=vary))
    assert e.value.field == field and f"variant {variant!r}" in str(e.value)


def test_sweep_config_checks_its_fields():
    with pytest.raises(ConfigError, match="^vary: give at least one field"):
        SweepConfig(preset="demo-c2i")
    with pytest.raises(ConfigError, match="^eval: "):
        SweepConfig(vary={"beta": [1.0]}, eval="bleu")
    with pytest.raises(ConfigError, match="^num_seeds: "):
        SweepConfig(vary={"beta": [1.0]}, num_seeds=0)
    with pytest.raises(ConfigError, match="^seeds: "):
        SweepConfig(vary={"beta": [1.0]}, seeds=[1, 1])
    with pytest.raises(ConfigError, match="^preset: unknown preset"):
        expand(SweepConfig(preset="nope", vary={"beta": [1.0]}))
    with pytest.raises(ConfigError, match="every value equals the preset's"):
        expand(SweepConfig(preset="demo-c2i", vary={"beta": [0.1]}))
    cfg = SweepConfig(vary={"beta": [1.0]}, seeds=[4, 7])
    assert SweepConfig.from_dict({**cfg.to_dict(), "entry": "x:y"}) == cfg and cfg.sampling_seeds() == [4, 7]


# ----------------------------------------------------------------------------- the table
def _rec(name, changes, values, status=T.DONE, **kw):
    return {"name": name, "changes": changes, "status": status, "reason": kw.get("reason"), "run_id": kw.get("run_id"),
            "per_seed": values, "kl_base": kw.get("kl_base"), "train_s": kw.get("train_s", 10.0), "eval_s": 5.0}


SWEEP = SweepConfig(preset="demo-c2i", vary={"learning_rate": [3e-5, 1e-4], "beta": [1.0]}, mode="one-at-a-time",
                    num_seeds=3).to_dict()


def _table():
    base = _rec(T.BASE_ROW, None, {"demo_fid": [1.00, 1.10, 0.90], "class_accuracy": [0.60, 0.62, 0.61]}, train_s=0.0)
    rows = [
        _rec("preset", {}, {"demo_fid": [0.98, 1.08, 0.88], "class_accuracy": [0.60, 0.62, 0.61]}, kl_base=0.007),
        # lower demo-FID on every seed by 0.2 +- 0.01 against the preset: better beyond noise
        _rec("learning_rate=3e-05", {"learning_rate": 3e-5}, {"demo_fid": [0.79, 0.87, 0.68],
                                                              "class_accuracy": [0.5, 0.7, 0.6]}, kl_base=0.02),
        # lower still on average, but not the same way on every seed: within noise
        _rec("beta=1.0", {"beta": 1.0}, {"demo_fid": [0.30, 1.30, 0.60], "class_accuracy": [0.6, 0.6, 0.6]}),
        _rec("learning_rate=0.0001", {"learning_rate": 1e-4}, {}, status=T.FAILED,
             reason="training failed: ConfigError: init_weights: file not found: /nope.pt\n--- log ---"),
    ]
    return T.build(SWEEP, base, rows)


def test_table_verdicts_are_paired_over_seeds_and_the_best_is_beyond_noise():
    table = _table()
    assert table["metrics"] == ["demo_fid", "class_accuracy"]
    rows = {r["name"]: r for r in table["rows"]}
    assert [r["name"] for r in table["rows"]][0] == T.BASE_ROW
    lr = rows["learning_rate=3e-05"]["metrics"]["demo_fid"]
    assert lr["mean"] == pytest.approx(0.78) and lr["vs_preset"]["verdict"] == "better"  # lower FD is better
    assert lr["vs_preset"]["high"] < 0 and lr["vs_base"]["verdict"] == "better"
    beta = rows["beta=1.0"]["metrics"]["demo_fid"]
    assert beta["mean"] < lr["mean"] and beta["vs_preset"]["verdict"] == "within noise"
    assert beta["vs_preset"]["low"] < 0 < beta["vs_preset"]["high"]
    assert rows["preset"]["metrics"]["demo_fid"]["vs_preset"] is None  # the preset is the reference
    assert rows[T.BASE_ROW]["metrics"]["demo_fid"]["vs_base"] is None
    assert table["best"] == "learning_rate=3e-05" and rows["learning_rate=3e-05"]["best"]  # not beta=1.0 (noise)
    assert not rows["beta=1.0"]["best"]
    failed = rows["learning_rate=0.0001"]
    assert failed["status"] == T.FAILED and failed["metrics"] == {} and "init_weights" in failed["reason"]
    assert rows["learning_rate=3e-05"]["kl_base"] == 0.02 and rows["learning_rate=3e-05"]["time_s"] == 15.0


def test_no_best_when_nothing_beats_the_preset_beyond_noise():
    base = _rec(T.BASE_ROW, None, {"demo_fid": [1.0, 1.1, 0.9]})
    rows = [_rec("preset", {}, {"demo_fid": [1.0, 1.1, 0.9]}), _rec("beta=1.0", {"beta": 1.0}, {"demo_fid": [0.3, 1.3, 0.6]})]
    table = T.build(SWEEP, base, rows)
    assert table["best"] is None and not any(r["best"] for r in table["rows"])
    assert "no variant is better than the preset on demo_fid beyond noise" in T.text(table)


def test_table_text_csv_and_json(tmp_path):
    table = _table()
    text = T.text(table)
    assert "* learning_rate=3e-05" in text and "* best beyond noise on demo_fid vs the preset: learning_rate=3e-05" in text
    assert "failed: learning_rate=0.0001: training failed: ConfigError: init_weights: file not found" in text
    assert "within noise" in text and "[" in text
    T.write(tmp_path, table)
    assert json.loads((tmp_path / T.TABLE_JSON).read_text()) == json.loads(json.dumps(table))
    assert T.read(tmp_path)["best"] == "learning_rate=3e-05"
    assert (tmp_path / T.TABLE_TXT).read_text().strip() == text
    lines = list(csv.DictReader(io.StringIO((tmp_path / T.TABLE_CSV).read_text())))
    assert [r["variant"] for r in lines] == [T.BASE_ROW, "preset", "learning_rate=3e-05", "beta=1.0", "learning_rate=0.0001"]
    lr = lines[2]
    assert lr["demo_fid_vs_preset_verdict"] == "better" and float(lr["demo_fid_mean"]) == pytest.approx(0.78)
    assert lr["best"] == "True" and json.loads(lr["changes"]) == {"learning_rate": 3e-5}
    assert lines[4]["status"] == "failed" and lines[4]["reason"].startswith("training failed") and lines[4]["demo_fid_mean"] == ""
    assert not list(tmp_path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- the CLI
def run_core(capsys, *argv: str) -> tuple[int, str, str]:
    from core.cli import main

    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_refuses_a_bad_variant_before_anything_is_created(capsys, tmp_path):
    runs = tmp_path / "runs"
    rc, _, err = run_core(capsys, "sweep", *TINY, "--vary", "learning_rate=3e-5,fast", "--runs-dir", str(runs))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: learning_rate: variant 'learning_rate=fast': ")
    assert not runs.exists() or not any(runs.iterdir())
    rc, _, err = run_core(capsys, "sweep", *TINY, "--vary", "beta=1", "--eval", "adherence", "--runs-dir", str(runs))
    assert rc == 2 and "error: eval: variant 'preset': prompt adherence" in err and not any(runs.glob("*/config.json"))
    rc, _, err = run_core(capsys, "sweep", *TINY, "--vary", "beta=1", "--num-samples", "10", "--runs-dir", str(runs))
    assert rc == 2 and "error: num_samples: 10; the demo evaluation needs at least 20" in err


@pytest.mark.slow
def test_cli_sweep_two_values_one_at_a_time(capsys, tmp_path, monkeypatch):
    """Two values of one field, --one-at-a-time, on the tiny demo: every variant trained and evaluated on the
    same seeds, a variant that fails at start keeps its row with the reason, the table printed and written;
    `runs show` prints it again."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = tmp_path / "runs"
    rc, out, err = run_core(capsys, "sweep", *TINY, "--vary", "learning_rate=3e-5,1e-4",
                            "--vary", "init_weights=/nonexistent/model.pt", "--one-at-a-time",
                            "--eval", "demo", "--num-samples", "20", "--num-seeds", "2", "--runs-dir", str(runs))
    assert rc == 0, err
    (sweep_dir,) = [p for p in runs.iterdir() if (p / "config.json").is_file()]
    table = json.loads((sweep_dir / T.TABLE_JSON).read_text())
    names = [r["name"] for r in table["rows"]]
    assert names == [T.BASE_ROW, "preset", "learning_rate=3e-05", "learning_rate=0.0001",
                     "init_weights=/nonexistent/model.pt"]
    rows = {r["name"]: r for r in table["rows"]}
    for name in names[:4]:
        assert rows[name]["status"] == T.DONE, rows[name]
        fd = rows[name]["metrics"]["demo_fid"]
        assert len(fd["values"]) == 2 and fd["mean"] > 0
    assert rows["learning_rate=3e-05"]["metrics"]["demo_fid"]["vs_preset"]["verdict"] in ("better", "worse", "within noise")
    assert rows["preset"]["metrics"]["class_accuracy"]["vs_base"] is not None
    assert rows["learning_rate=0.0001"]["kl_base"] is None  # kl_probe_size=0: no probe, no KL
    failed = rows["init_weights=/nonexistent/model.pt"]
    assert failed["status"] == T.FAILED and "/nonexistent/model.pt" in failed["reason"], failed
    # the table is printed at the end and written; the variants are run folders of their own
    assert "variant" in out and "learning_rate=3e-05" in out and "changes (mean over seeds" in out
    assert f"failed: init_weights=/nonexistent/model.pt: training failed: " in out
    header = (sweep_dir / T.TABLE_CSV).read_text().splitlines()[0]
    assert header.startswith("variant,status,reason,changes,run_id,demo_fid_mean,demo_fid_std,demo_fid_vs_base_delta")
    variants = sorted(p.name for p in (sweep_dir / "variants").iterdir() if (p / "config.json").is_file())
    assert variants == ["v00-preset", "v01-learning_rate-3e-05", "v02-learning_rate-0.0001",
                        "v03-init_weights-nonexistent-model.pt"]
    assert (sweep_dir / "variants" / "v01-learning_rate-3e-05" / "checkpoints" / "step-000002" / "model.pt").is_file()
    assert "[step 2/2]" in (sweep_dir / "variants" / "v01-learning_rate-3e-05" / "log.txt").read_text()
    status = json.loads((sweep_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["kind"] == "sweep"
    rc, out, _ = run_core(capsys, "runs", "show", sweep_dir.name, "--runs-dir", str(runs))
    assert rc == 0 and "sweep table" in out and "init_weights=/nonexistent/model.pt  failed" in out


def _wait_for(cond, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.mark.slow
def test_sweep_job_stops_resumes_and_deletes_with_its_variants(tmp_path, monkeypatch):
    """A sweep queued in the background (kind sweep): a stop of the sweep reaches the variant being trained,
    which checkpoints; the sweep ends stopped. Resume continues that variant from its checkpoint and keeps
    the rows already measured; delete removes the sweep with its variants."""
    from core.runs.launcher import Launcher
    from core.runs.store import RunStore
    from core.sweep import job
    from core.vapi.config import parse_overrides

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = parse_overrides([a for a in TINY[3::2]] + ["max_steps=30", "save_steps=1"])
    cfg = SweepConfig(preset="demo-c2i", overrides=overrides, vary={"learning_rate": [3e-5]}, mode="one-at-a-time",
                      num_samples=20, num_seeds=1)
    store = RunStore(tmp_path / "runs")
    launcher = Launcher(store, grace_s=120)
    run = job.submit_sweep(launcher, cfg, "cpu")
    assert run.kind == "sweep" and run.total_steps == 3
    sweep_dir = store.run_dir(run.id)
    child_metrics = sweep_dir / "variants" / "v00-preset" / "metrics.jsonl"
    _wait_for(lambda: child_metrics.is_file() and child_metrics.read_text().count("\n") >= 2, 600,
              "the preset variant's second step")
    base_record = (sweep_dir / "results" / "base.json").read_text()
    launcher.stop(run.id)
    run = launcher.wait(run.id, timeout=300)
    assert run.status == "stopped", run.message
    children = RunStore(sweep_dir / "variants")
    child = children.get("v00-preset")
    assert child.status == "stopped" and 2 <= child.step < 30 and children.last_checkpoint("v00-preset") is not None
    assert not (sweep_dir / "results" / "v00-preset.json").exists()
    stopped_at = child.step

    launcher.resume(run.id)
    run = launcher.wait(run.id, timeout=900)
    assert run.status == "finished", run.message
    rows = {r["name"]: r for r in T.read(sweep_dir)["rows"]}
    assert [rows[n]["status"] for n in (T.BASE_ROW, "preset", "learning_rate=3e-05")] == [T.DONE] * 3
    assert (sweep_dir / "results" / "base.json").read_text() == base_record  # kept, not measured again
    steps = [json.loads(line)["step"] for line in child_metrics.read_text().splitlines()]
    assert steps == list(range(1, 31)) and stopped_at < 30  # continued from its checkpoint, no gap, no repeat
    assert "resume=True" in (sweep_dir / "variants" / "v00-preset" / "log.txt").read_text()

    store.delete_run(run.id)
    assert not sweep_dir.exists()


def test_a_sweeps_progress_counts_the_base_model_and_each_run():
    from core.sweep import job

    cfg = SweepConfig(preset="demo-c2i", vary={"learning_rate": [1e-5, 3e-5], "beta": [0.1, 1.0]}, mode="one-at-a-time")
    assert cfg.total_steps == job.total_steps(expand(cfg)) == 4  # base model, preset, lr 3e-5, beta 1
    assert job.check_job(cfg) == "sweep demo-c2i"


def _foreground_sweep(runs: Path, signals: int) -> tuple[int, str]:
    """`python -m core sweep` in a subprocess; once the preset variant trains, SIGINT (a second one as soon as
    the first is acknowledged). Returns (exit code, output)."""
    import os
    import signal
    import subprocess
    import sys

    tiny = [a if a != "max_steps=2" else "max_steps=400" for a in TINY]
    proc = subprocess.Popen([sys.executable, "-m", "core", "sweep", *tiny, "--vary", "learning_rate=3e-5",
                             "--one-at-a-time", "--num-samples", "20", "--num-seeds", "1", "--runs-dir", str(runs)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, text=True,
                            # a terminal's Ctrl-C: SIGINT handled by default even where the suite itself runs as a
                            # background job (SIGINT ignored, which the CLI rightly keeps: the stop never came)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[step 1/400]"):
                proc.send_signal(signal.SIGINT)
            elif "SIGINT: stopping at the next step boundary" in line and signals == 2:
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(lines)


def _status(folder: Path) -> str:
    return json.loads((folder / "status.json").read_text())["status"]


@pytest.mark.slow
def test_ctrl_c_stops_a_foreground_sweep_and_twice_aborts_it(tmp_path):
    """Ctrl-C stops a foreground sweep as it stops a train: the variant in training checkpoints, the sweep ends
    stopped (exit 0) and starts no other variant. A second Ctrl-C aborts the variant and the sweep with it (the
    code before recorded the aborted variant as a failed row and went on to the next)."""
    rc, out = _foreground_sweep(tmp_path / "once", 1)
    (sweep_dir,) = [p for p in (tmp_path / "once").iterdir() if (p / "config.json").is_file()]
    assert rc == 0 and _status(sweep_dir) == "stopped", out
    assert _status(sweep_dir / "variants" / "v00-preset") == "stopped"
    assert (sweep_dir / "variants" / "v00-preset" / "checkpoints").iterdir()
    assert not (sweep_dir / "variants" / "v01-learning_rate-3e-05").exists(), out

    rc, out = _foreground_sweep(tmp_path / "twice", 2)
    (sweep_dir,) = [p for p in (tmp_path / "twice").iterdir() if (p / "config.json").is_file()]
    assert rc != 0 and _status(sweep_dir) == "failed", out
    assert _status(sweep_dir / "variants" / "v00-preset") == "failed"
    assert not (sweep_dir / "variants" / "v01-learning_rate-3e-05").exists(), out
