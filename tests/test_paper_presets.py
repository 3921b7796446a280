"""The paper presets through the real CLI / worker / trainer path, on tiny random stand-ins (tests/standins.py):
preset values from Table 7, the offline LPIPS error before any work, then one VA-π step per preset."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.vapi import config as C
from tests.standins import make_caption_folder, make_image_folder, make_standins

ROOT = Path(__file__).resolve().parents[1]
PAPER = {  # preset -> (data kind, Table 7: lr, xi, steps)
    "llamagen-c2i-xxl": ("imagefolder", 1e-6, 0.0, 100),
    "llamagen-c2i-xl": ("imagefolder", 1e-6, 0.0, 100),
    "llamagen-t2i-xl": ("captions", 1e-6, 0.5, 200),
    "janus-pro-1b": ("captions", 1e-7, 0.95, 100),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    env = make_standins(root)
    return root, env, {"imagefolder": make_image_folder(root / "imagenet"), "captions": make_caption_folder(root / "coco")}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_preset_values_are_table_7(preset):
    kind, lr, xi, steps = PAPER[preset]
    v = C.preset_values(preset)
    assert (v["data"], v["learning_rate"], v["xi"], v["max_steps"]) == (kind, lr, xi, steps)
    assert (v["num_generations"], v["beta"], v["global_batch_size"], v["advantage_clip"], v["epsilon"]) == (8, 0.1, 128, 5.0, 0.2)
    assert v["rollout_mode"] == "train"  # what the authors' launch scripts pass
    assert v["reward_weights"] == {"mse": 1.0, "lpips": 1.0} and v["data_path"] is None


def initial_weights(env: dict, preset: str) -> dict:
    """The stand-in's weights as the preset loads them: an upstream LlamaGen file, or Janus's model folder."""
    from safetensors.torch import load_file

    from core.models import registry
    from core.models.checkpoint import read_file

    path = Path(env["VAPI_CHECKPOINTS"]) / registry.GENERATORS[C.preset_values(preset)["model"]].filename
    if path.is_dir():
        return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}
    return read_file(path)[0]


def step_rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PAPER))
def test_paper_preset_trains_through_the_cli_on_a_stand_in(preset, world, tiny_demo, tmp_path):
    root, env, data = world
    env = {**os.environ, **env, "VAPI_DEMO_DIR": str(tiny_demo), "TORCH_HOME": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    kind = PAPER[preset][0]
    base = [sys.executable, "-m", "core", "train", "--preset", preset]
    r = subprocess.run(base + ["--set", f"data_path={data[kind]}", "--run-dir", str(tmp_path / "runs" / "a")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "vgg16-397923af.pth" in r.stderr, r.stderr[-1500:]  # offline: LPIPS named first
    assert not (tmp_path / "runs" / "a").exists()
    small = ["--set", "reward_weights={\"mse\": 1}", "--set", "max_steps=1", "--set", "global_batch_size=4",
             "--set", "per_device_train_batch_size=2", "--set", "num_generations=2", "--set", "data_subset=null",
             "--set", "preview_seeds=[0]", "--set", "device=cpu"]

    def train(name: str, data_path: Path) -> Path:
        run_dir = tmp_path / "runs" / name
        r = subprocess.run(base + ["--set", f"data_path={data_path}"] + small + ["--run-dir", str(run_dir)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and "finished at step 1/1" in r.stdout, (r.stdout[-1500:], r.stderr[-3000:])
        return run_dir

    run = train("b", data[kind])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == C.preset_values(preset)["model"] and cfg["xi"] == PAPER[preset][2]
    rows = step_rows(run)
    assert sorted(rows) == [1]
    for key in ("loss", "loss_pg", "loss_prior", "reward_mean", "grad_norm"):
        assert math.isfinite(rows[1][key]), (key, rows[1])
    assert rows[1]["grad_norm"] > 0 and rows[1]["loss_prior"] > 0
    # the step moved the trained weights (and only through the optimizer: same keys, same shapes)
    from core.models.checkpoint import read_file

    after, _ = read_file(run / "checkpoints" / "step-000001" / "model.pt")
    before = initial_weights(env, preset)
    named = {k: before.get(k, before.get(k.removeprefix("model."))) for k in after}  # Janus: JanusPolicy.model
    unmatched = [k for k, v in named.items() if v is None]
    assert unmatched in ([], ["model.lm_head.weight"]), unmatched[:5]  # Janus ties lm_head: transformers omits it
    named = {k: v for k, v in named.items() if v is not None}
    assert all(v.shape == after[k].shape for k, v in named.items())
    moved = [k for k, v in named.items() if not torch.equal(after[k], v.to(after[k].dtype))]
    assert moved, "one optimizer step at the preset's learning rate changed no weight"
    if kind == "captions":  # the same images with each caption moved to the next image: the prior sees the text
        other = tmp_path / "coco-rotated"
        shutil.copytree(data[kind], other)
        lines = [json.loads(line) for line in (other / "captions.jsonl").read_text().splitlines()]
        captions = [d["caption"] for d in lines]
        rotated = [{**d, "caption": c} for d, c in zip(lines, captions[1:] + captions[:1])]
        (other / "captions.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rotated))
        again = step_rows(train("c", other))[1]
        assert again["loss_prior"] != pytest.approx(rows[1]["loss_prior"], rel=1e-6), (again, rows[1])
        assert again["reward_mean"] == pytest.approx(rows[1]["reward_mean"], rel=0.5)  # same images, same scale


@pytest.mark.slow  # three CLI processes on the T2I stand-in
def test_t2i_stand_in_samples_compares_and_evaluates_through_the_cli(world, tiny_demo, tmp_path):
    """The LlamaGen T2I preset's path after training: T5 caption features -> KV-cache sampling (`sample`), base vs a
    checkpoint per prompt (`compare`, the Compare tab's job) and an evaluation (`eval fid`, the Evaluate tab's job)."""
    from tests.helpers import train_tiny_evaluator

    root, env, _ = world
    env = {**os.environ, **env, "VAPI_DEMO_DIR": str(tiny_demo), "TORCH_HOME": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    model = "llamagen-t2i-xl-256"
    weights = Path(env["VAPI_CHECKPOINTS"]) / "t2i_XL_stage1_256.pt"

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, (args[0], r.stdout[-1500:], r.stderr[-3000:])
        return r

    prompts = ["a photo of a cat", "two dogs playing in the park"]
    cli("sample", "--model", model, "--prompts", *prompts, "--seeds", "0", "1", "--out", str(tmp_path / "samples"))
    names = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert names == ["00_a_photo_of_a_cat_seed0.png", "00_a_photo_of_a_cat_seed1.png",
                     "01_two_dogs_playing_in_the_park_seed0.png", "01_two_dogs_playing_in_the_park_seed1.png", "grid.png"]
    a, b = (np.asarray(Image.open(tmp_path / "samples" / n)) for n in names[:2])
    assert a.shape[:2] == (128, 128) and not np.array_equal(a, b)  # two seeds, two samples (16 px, shown 8x)
    other = np.asarray(Image.open(tmp_path / "samples" / names[2]))
    assert not np.array_equal(a, other)  # the same seed, the other prompt: the caption features reach the sampler

    # the aligned side: the stand-in's weights with its output head moved, so a Compare that sampled the base
    # model on both sides (ignoring --aligned) shows identical pairs and fails below
    state = torch.load(weights, map_location="cpu", weights_only=True)
    sd = state.get("model", state)
    head = next(k for k in sd if k.endswith("output.weight"))
    sd[head] = sd[head] + 0.5 * torch.randn(sd[head].shape, generator=torch.Generator().manual_seed(0))
    aligned = tmp_path / "aligned.pt"
    torch.save(state, aligned)
    cli("compare", "--base", model, "--aligned", str(aligned), "--model", model, "--view", "free", "--prompts", *prompts,
        "--seeds", "0", "--out", str(tmp_path / "compare"))
    scores = json.loads((tmp_path / "compare" / "scores.json").read_text())
    assert [row["condition"] for row in scores["rows"]] == prompts
    pairs = [(np.asarray(Image.open(tmp_path / "compare" / f"{i:03d}_base.png")),
              np.asarray(Image.open(tmp_path / "compare" / f"{i:03d}_aligned.png"))) for i in range(len(prompts))]
    assert any(not np.array_equal(b, a) for b, a in pairs)  # the aligned side samples the aligned weights

    evaluator = train_tiny_evaluator(tmp_path, steps=2)
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    cli("eval", "fid", "--model", model, "--weights", str(weights), "--prompts", str(tmp_path / "prompts.txt"),
        "--metrics", "fid", "--extractor", "demo", "--extractor-path", str(evaluator), "--reference", "shapes",
        "--num-samples", "8", "--num-seeds", "2", "--device", "cpu", "--out", str(tmp_path / "eval"))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert math.isfinite(results["metrics"]["fid"]) and results["metrics"]["fid"] > 0
