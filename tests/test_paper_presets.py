"""The paper presets through the real CLI / worker / trainer path, on tiny random stand-ins (tests/standins.py):
preset values from Table 7, the offline LPIPS error before any work, then one VA-π step per preset."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PAPER))
def test_paper_preset_trains_through_the_cli_on_a_stand_in(preset, world, tiny_demo, tmp_path):
    root, env, data = world
    env = {**os.environ, **env, "VAPI_DEMO_DIR": str(tiny_demo), "TORCH_HOME": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    kind = PAPER[preset][0]
    base = [sys.executable, "-m", "core", "train", "--preset", preset, "--set", f"data_path={data[kind]}"]
    r = subprocess.run(base + ["--run-dir", str(tmp_path / "runs" / "a")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "vgg16-397923af.pth" in r.stderr, r.stderr[-1500:]  # offline: LPIPS named first
    assert not (tmp_path / "runs" / "a").exists()
    small = ["--set", "reward_weights={\"mse\": 1}", "--set", "max_steps=1", "--set", "global_batch_size=4",
             "--set", "per_device_train_batch_size=2", "--set", "num_generations=2", "--set", "data_subset=null",
             "--set", "preview_seeds=[0]", "--set", "device=cpu"]
    r = subprocess.run(base + small + ["--run-dir", str(tmp_path / "runs" / "b")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "finished at step 1/1" in r.stdout, (r.stdout[-1500:], r.stderr[-3000:])
    cfg = json.loads((tmp_path / "runs" / "b" / "config.json").read_text())
    assert cfg["model"] == C.preset_values(preset)["model"] and cfg["xi"] == PAPER[preset][2]
    assert (tmp_path / "runs" / "b" / "checkpoints" / "step-000001").is_dir()
