"""`python -m core info | download | sample` and `--help` everywhere."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import cli
from core.errors import MissingWeightsError
from core.models import registry
from tests.helpers import closed_port_endpoint, make_tiny_demo

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, timeout=120):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def test_help_everywhere(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        assert "usage: python -m core " + name in capsys.readouterr().out


def test_info_lists_presets_and_missing_files(tmp_path):
    r = run_cli("info", env={"VAPI_CHECKPOINTS": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "llamagen-c2i-xxl-384" in r.stdout and "c2i_XXL_384.pt" in r.stdout
    assert f"{tmp_path}/c2i_XXL_384.pt" in r.stdout  # where to put it
    assert "python -m core download c2i_XXL_384" in r.stdout  # how to get it
    assert "cpu" in r.stdout


def test_download_offline_fails_fast_naming_file_and_place(monkeypatch, tmp_path):
    hub = closed_port_endpoint()  # the hub endpoint ($HF_ENDPOINT, read as huggingface_hub reads it) refuses connections
    monkeypatch.setenv("HF_ENDPOINT", hub)
    monkeypatch.setattr(registry.paths, "CHECKPOINTS_DIR", tmp_path)
    t0 = time.monotonic()
    with pytest.raises(MissingWeightsError, match=r"cannot reach 127\.0\.0\.1.*c2i_XXL_384\.pt.*" + str(tmp_path)):
        registry.download("llamagen-c2i-xxl-384")
    took = time.monotonic() - t0
    assert took < 5, f"{took:.1f} s to give up on a refused hub"  # without the check: the hub client's retries, 24 s
    assert list(tmp_path.iterdir()) == []
    r = run_cli("download", "c2i_XXL_384", env={"VAPI_CHECKPOINTS": str(tmp_path), "HF_ENDPOINT": hub})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"{hub}/FoundationVision/LlamaGen/resolve/main/c2i_XXL_384.pt" in r.stderr and str(tmp_path) in r.stderr


def test_missing_weights_are_reported_before_work(monkeypatch, tmp_path):
    monkeypatch.setattr(registry.paths, "CHECKPOINTS_DIR", tmp_path)
    with pytest.raises(MissingWeightsError) as e:
        registry.require_files("llamagen-c2i-xxl-384")
    msg = str(e.value)
    assert "c2i_XXL_384.pt" in msg and "vq_ds16_c2i.pt" in msg and "python -m core download" in msg


@pytest.mark.slow
def test_sample_writes_grid_and_pngs_reproducibly(tmp_path):
    demo = make_tiny_demo(tmp_path / "demo")
    env = {"VAPI_DEMO_DIR": str(demo)}
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        r = run_cli("sample", "--classes", "0", "3", "--seeds", "7", "8", "--out", str(out), env=env)
        assert r.returncode == 0, r.stderr
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert "grid.png" in files and len(files) == 5
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


@pytest.mark.slow
def test_sample_rejects_bad_input_with_one_line(tmp_path):
    demo = make_tiny_demo(tmp_path / "demo")
    r = run_cli("sample", "--classes", "999", env={"VAPI_DEMO_DIR": str(demo)})
    assert r.returncode == 2 and "classes: class id 999 is out of range" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("sample", "--model", "nope", env={"VAPI_DEMO_DIR": str(demo)})
    assert r.returncode == 2 and "unknown model preset 'nope'" in r.stderr
