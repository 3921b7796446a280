"""A fast stand-in for the trainer, used as the worker entry "tests.fake_worker:run" in tests/test_runs.py.

config["fake"] steers it:
    steps            optimizer steps to run (default 10)
    step_s           seconds per step (default 0.05)
    checkpoint_every write checkpoints/step-N every this many steps (default 5; 0: only at the end)
    forever          ignore `steps` and run until stopped or killed
    ignore_stop      never look at stop requests (to test the forced kill)
    crash_at         raise RuntimeError when this step is reached
    spawn_child      start a sleeping child process and write its pid to child.pid (process-group kill)
    report_threads   import torch and write its thread count to threads.txt at every step (thread budget)
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from core.runs.recorder import RunRecorder


def _checkpoint(recorder: RunRecorder, step: int) -> None:
    with recorder.save_checkpoint(step) as d:
        (d / "weights.txt").write_text(f"weights after step {step}\n")


def run(config: dict, run_dir: Path, recorder: RunRecorder, resume: bool) -> None:
    fake = config.get("fake", {})
    steps = fake.get("steps", 10)
    step_s = fake.get("step_s", 0.05)
    every = fake.get("checkpoint_every", 5)
    forever = fake.get("forever", False)
    start = 0
    if resume:
        ckpt = recorder.last_checkpoint()
        start = ckpt.step if ckpt is not None else 0
        print(f"fake: resuming from step {start}", flush=True)
    recorder.set_progress(start, steps)
    if fake.get("spawn_child"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (run_dir / "child.pid").write_text(str(child.pid))
    step = start
    while forever or step < steps:
        if not fake.get("ignore_stop") and recorder.should_stop():
            print(f"fake: stop requested after step {step}", flush=True)
            _checkpoint(recorder, step)
            return
        if fake.get("report_threads"):
            import torch

            (run_dir / "threads.txt").write_text(str(torch.get_num_threads()))
        time.sleep(step_s)
        step += 1
        if step == fake.get("crash_at"):
            raise RuntimeError(f"fake crash at step {step}")
        recorder.log_metrics(step, {"loss": 1.0 / step, "reward": -1.0 / step})
        print(f"fake: step {step}", flush=True)
        if every and step % every == 0:
            _checkpoint(recorder, step)
    _checkpoint(recorder, step)
    print("fake: done", flush=True)
