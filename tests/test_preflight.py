"""Preflight on a fresh machine: every blocker in one report, each under its field with its fix, before any
run folder exists; the T2I text encoder is a required file like the generator and tokenizer."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError, MissingWeightsError
from core.vapi import config as C
from core.vapi.preflight import PreflightError, preflight
from tests.standins import make_caption_folder, make_image_folder, make_standins

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    env = make_standins(root)
    return root, env


def _cli(args: list[str], env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **env, "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_t2i_preset_without_its_text_encoder_is_refused_before_any_run_folder(standins, tiny_demo, tmp_path):
    root, env = standins
    ckpts = tmp_path / "checkpoints"  # the stand-ins' files without flan-t5-xl
    shutil.copytree(env["VAPI_CHECKPOINTS"], ckpts, ignore=shutil.ignore_patterns("flan-t5-xl"))
    data = make_caption_folder(tmp_path / "coco")
    run = tmp_path / "runs" / "a"
    r = _cli(["train", "--preset", "llamagen-t2i-xl", "--set", f"data_path={data}", "--set", 'reward_weights={"mse": 1}',
              "--run-dir", str(run)], {**env, "VAPI_CHECKPOINTS": str(ckpts), "VAPI_DEMO_DIR": str(tiny_demo)}, tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "flan-t5-xl" in r.stderr and "python -m core download flan-t5-xl" in r.stderr, r.stderr
    assert str(ckpts / "flan-t5-xl") in r.stderr
    assert not run.exists() and not (tmp_path / "runs").exists()
    # `info` lists it as a missing file of the preset, with the same command
    r = _cli(["info"], {**env, "VAPI_CHECKPOINTS": str(ckpts), "VAPI_DEMO_DIR": str(tiny_demo)}, tmp_path)
    assert r.returncode == 0, r.stderr
    row = r.stdout.split("llamagen-t2i-xl-256", 1)[1].split("\n")[1]
    assert "missing" in row and "flan-t5-xl" in row, r.stdout
    assert "python -m core download flan-t5-xl" in r.stdout


def test_one_preflight_lists_every_problem_at_once(tiny_demo, tmp_path):
    """A fresh box for llamagen-c2i-xxl: no weights, no LPIPS backbone, a data subset that rounds to 0 items and a
    CUDA device that is not there: four kinds of problem in one report (exit 2), none of them a run folder."""
    data = make_image_folder(tmp_path / "imagenet", classes=2, per_class=1)
    run = tmp_path / "runs" / "a"
    r = _cli(["train", "--preset", "llamagen-c2i-xxl", "--set", f"data_path={data}", "--set", "data_subset=0.1",
              "--set", "device=cuda:7", "--devices", "cuda:5", "--run-dir", str(run)],
             {"VAPI_CHECKPOINTS": str(tmp_path / "empty"), "VAPI_DEMO_DIR": str(tiny_demo), "CUDA_VISIBLE_DEVICES": ""},
             tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr
    assert "problems stop this run" in err, err
    for field, text in [("device", "cuda"), ("data_subset", "rounds to 0"), ("model", "c2i_XXL_384.pt"),
                        ("model", "vq_ds16_c2i.pt"), ("reward_weights.lpips", "vgg16-397923af.pth"),
                        ("--devices", "cuda:5")]:
        assert any(line.startswith(f"  - {field}:") and text in line for line in err.splitlines()), (field, text, err)
    assert err.count("python -m core download") >= 2  # each missing file with its own command
    assert "python -m core download --preset llamagen-c2i-xxl-384" in err  # and all of them at once
    assert not run.exists()


def test_problems_carry_their_fields_in_process(tiny_demo, tmp_path, monkeypatch):
    from core import paths

    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "empty")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = C.resolve("llamagen-c2i-xxl", {"data_path": str(tmp_path / "nowhere")})
    with pytest.raises(PreflightError) as e:
        preflight(cfg)
    fields = [p.field for p in e.value.problems]
    assert fields == ["data_path", "model", "model", "reward_weights.lpips"], fields
    assert "nowhere" in e.value.problems[0].message
    # one problem alone is raised as itself (the type callers already catch)
    with pytest.raises(MissingWeightsError, match="vgg16"):
        preflight(C.resolve("demo-c2i", {"reward_weights": {"mse": 1.0, "lpips": 1.0}}))
    with pytest.raises(ConfigError, match="init_weights"):
        preflight(C.resolve("demo-c2i", {"init_weights": str(tmp_path / "nope.pt")}))
