"""Two real processes on CPU (gloo): README's multi-process CLI route, the UI's multi-device worker route,
and the trainer under DDP and FSDP (2 ranks) against one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.runs.launcher import Launcher, free_port, worker_command
from core.runs.store import RunStore
from core.vapi.config import resolve
from core.vapi.trainer import ENTRY

ROOT = Path(__file__).resolve().parents[1]
TINY = {"device": "cpu", "max_steps": 2, "global_batch_size": 4, "per_device_train_batch_size": 2, "data_subset": 20,
        "reward_weights": {"mse": 1}, "num_generations": 2, "save_steps": 2, "preview_steps": 2, "kl_probe_size": 2}


def env_for(tmp_path) -> dict:
    # HF_HOME: a user's default accelerate config lives there; the launcher must not read it (see below)
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}


def sets(over: dict) -> list[str]:
    return [a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, dict) else v}")]


def one_finished_run(runs: Path, steps: int):
    store = RunStore(runs)
    found = store.list_runs()
    assert len(found) == 1 and len([p for p in runs.iterdir() if p.is_dir()]) == 1, [r.id for r in found]
    run = found[0]
    assert run.status == "finished" and run.step == steps, (run.status, run.message)
    assert [m["step"] for m in store.read_metrics(run.id)] == list(range(1, steps + 1))  # every step once
    return run


@pytest.mark.slow
def test_readme_cli_route_with_two_processes_makes_one_finished_run(tiny_demo, tmp_path):
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "core", "train", "--preset", "demo-c2i", "--runs-dir", str(runs), *sets(TINY)],
                       cwd=ROOT, env=env_for(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    run = one_finished_run(runs, 2)
    log = (run.run_dir / "log.txt").read_text()
    assert "on 2 process(es)" in log and log.count("[step 2/2]") == 1
    assert (run.run_dir / "checkpoints" / "step-000002" / "model.pt").is_file()


@pytest.mark.slow
def test_ui_multi_device_route_runs_accelerate_launch_with_its_own_config(tiny_demo, tmp_path, monkeypatch):
    # a user's default accelerate config that must not apply: it asks for 3 processes and dynamo
    default = tmp_path / "hf" / "accelerate" / "default_config.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 3\n"
                       "dynamo_config:\n  dynamo_backend: INDUCTOR\nmixed_precision: fp16\n")
    argv, _ = worker_command(tmp_path / "r", "cuda:0,1")
    assert argv[argv.index("--config_file") + 1].endswith("accelerate_multi_gpu.json")
    # the launcher's real route: a queued run on a 2-GPU device set becomes `accelerate launch --multi_gpu
    # --num_processes 2 -m core.runs.worker`; on this CPU machine accelerate starts 2 gloo ranks
    cfg = resolve("demo-c2i", TINY)
    runs = tmp_path / "runs"
    store = RunStore(runs)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = Launcher(store).submit("ui", {**cfg.to_dict(), "entry": ENTRY}, "cuda:0,1", cfg.max_steps)
    run = Launcher(store).wait(run.id, timeout=300)
    log = (run.run_dir / "log.txt").read_text()
    assert run.status == "finished", log[-3000:]
    one_finished_run(runs, 2)
    assert "on 2 process(es)" in log and "dynamo" not in log.lower()
