"""The embedded demo: the committed models load and sample; the build recipe runs end to end (tiny budget);
a few demo alignment steps move the weights; the demo report computes its numbers."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.demo.build import sha256

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "checkpoints" / "demo"


@pytest.mark.slow
def test_committed_demo_models_load_sample_and_match_the_manifest():
    manifest = json.loads((COMMITTED / "manifest.json").read_text())
    for key in ("tokenizer", "generator", "evaluator", "generator_t2i"):
        f = COMMITTED / manifest[key]["file"]
        assert sha256(f) == manifest[key]["sha256"], f"{f} differs from the manifest (rebuild or restore it)"
    total = sum((COMMITTED / manifest[k]["file"]).stat().st_size
                for k in ("tokenizer", "generator", "evaluator", "generator_t2i"))
    assert total <= 20 * 2**20
    from core.models.generate import generate_images
    from core.models.load import load_pair

    gen, tok = load_pair("demo-c2i")
    imgs = generate_images(gen, tok, torch.tensor([0, 5]), seeds=[0, 1])
    assert imgs.shape == (2, 3, 32, 32) and torch.isfinite(imgs).all()
    again = generate_images(gen, tok, torch.tensor([0, 5]), seeds=[0, 1])
    assert torch.equal(imgs, again)
    for key in ("demo_fid", "class_accuracy", "diversity"):
        assert key in manifest["generator"]["base_metrics"]


@pytest.mark.slow  # the whole build pipeline in a subprocess
def test_demo_build_runs_end_to_end_at_a_tiny_budget(tmp_path):
    out = tmp_path / "demo"
    env = {"VAPI_DEMO_DIR": str(out), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "core", "demo", "build", "--budget", "tiny", "--out", str(out), "--threads", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["gpt_steps"] == 30 and manifest["build"]["total_seconds"] > 0
    for key in ("tokenizer", "generator", "evaluator", "generator_t2i"):
        assert sha256(out / manifest[key]["file"]) == manifest[key]["sha256"]
    base = manifest["generator"]["base_metrics"]
    assert 0.0 <= base["class_accuracy"] <= 1.0 and base["demo_fid"] > 0
    t2i = manifest["generator_t2i"]
    assert t2i["text_encoder"]["name"] == "minilm-l6" and manifest["recipe"]["t2i_steps"] == 20
    assert 0.0 <= t2i["base_metrics"]["adherence_color"] <= 1.0 and t2i["metrics"]["heldout_prompt_ce"] > 0
    assert "val_position_map_accuracy" in manifest["evaluator"]["metrics"]
    assert "[vq]" in r.stdout and "[gpt]" in r.stdout and "evaluator" in r.stdout and "[t2i]" in r.stdout


@pytest.mark.slow
def test_demo_alignment_steps_change_the_weights(tmp_path):
    from core.runs.recorder import RunRecorder
    from core.runs.store import RunStore
    from core.vapi.config import resolve
    from core.runs.kinds import TRAIN_ENTRY as ENTRY
    from core.vapi.trainer import Trainer

    cfg = resolve("demo-c2i", {"max_steps": 2, "global_batch_size": 4, "per_device_train_batch_size": 4,
                               "num_generations": 4, "save_steps": 2, "preview_steps": 2, "kl_probe_size": 1})
    store = RunStore(tmp_path / "runs")
    run = store.create_run("demo", {**cfg.to_dict(), "entry": ENTRY}, "cpu", cfg.max_steps)
    run_dir = store.run_dir(run.id)
    Trainer(cfg, run_dir, RunRecorder(run_dir, is_main=True)).train()
    from core.models.checkpoint import read_file

    after, _ = read_file(run_dir / "checkpoints" / "step-000002" / "model.pt")
    before, _ = read_file(COMMITTED / "gpt_c2i.safetensors")
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert store.read_metrics(run.id)[-1]["step"] == 2


@pytest.mark.slow  # 2 x 100 samples through the demo report
def test_demo_report_on_the_committed_models():
    from core.demo import report as demo_report

    r = demo_report.evaluate_checkpoint(num_samples=100, sample_seeds=(0,), log=lambda m: None)
    assert r["demo_fid"] > 0 and 0 <= r["class_accuracy"] <= 1 and r["diversity"] > 0
    again = demo_report.evaluate_checkpoint(num_samples=100, sample_seeds=(0,), log=lambda m: None)
    assert again["demo_fid"] == r["demo_fid"]  # same seeds, same samples, same number
