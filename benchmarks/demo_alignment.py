"""Wall time and step breakdown of the demo alignment run (`python -m core train --preset demo-c2i`).

    python -m benchmarks.demo_alignment                # the full preset
    python -m benchmarks.demo_alignment --steps 10     # a shorter run, same per-step figures

Runs the preset in a temporary runs folder and times each phase of every optimizer step by
wrapping the engine's functions (nothing in the engine is changed): the teacher-forced forward,
drawing the G samples, decoding + scoring them, the backward pass, the optimizer step. CPU only:
on a GPU these calls are asynchronous and the per-phase split would be wrong.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from core.runs.recorder import RunRecorder
from core.runs.store import RunStore
from core.vapi import objective
from core.vapi.config import resolve
from core.runs.kinds import TRAIN_ENTRY as ENTRY
from core.vapi.trainer import Trainer

PHASES = defaultdict(float)


def timed(name, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            PHASES[name] += time.perf_counter() - t

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo-c2i")
    ap.add_argument("--steps", type=int, default=None, help="max_steps (default: the preset's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    over = {"preview_steps": 10**6, "save_steps": 10**6}
    if args.steps:
        over["max_steps"] = args.steps
    cfg = resolve(args.preset, over)
    objective.teacher_forced = timed("forward (teacher-forced, with grad)", objective.teacher_forced)
    objective.sample_groups = timed("draw G samples per position", objective.sample_groups)
    objective.score_samples = timed("decode + score the B*G samples", objective.score_samples)
    import accelerate

    accelerate.Accelerator.backward = timed("backward", accelerate.Accelerator.backward)
    torch.optim.AdamW.step = timed("optimizer step", torch.optim.AdamW.step)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp))
        run = store.create_run("bench", {**cfg.to_dict(), "entry": ENTRY}, "cpu", cfg.max_steps)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, store.run_dir(run.id), RunRecorder(store.run_dir(run.id), is_main=True), log=lambda m: None)
        trainer.train()
        wall = time.perf_counter() - t0
        steps = store.read_metrics(run.id)
    step_time = sum(r["step_time"] for r in steps)
    n = len(steps)
    print(f"preset {args.preset}: {n} steps, {cfg.global_batch_size} images x G={cfg.num_generations} per step, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  wall time {wall:.1f} s (setup + base preview + KL probe + steps + final checkpoint); "
          f"steps {step_time:.1f} s = {step_time / n:.2f} s/step, {cfg.global_batch_size * cfg.num_generations * n / step_time:.0f} samples/s")
    accounted = sum(PHASES.values())
    for name, sec in PHASES.items():
        print(f"  {name:40s} {sec / n:7.3f} s/step  {100 * sec / step_time:5.1f}%")
    print(f"  {'other (data, tokenizing, loss terms, metrics)':40s} {(step_time - accounted) / n:7.3f} s/step  "
          f"{100 * (step_time - accounted) / step_time:5.1f}%")


if __name__ == "__main__":
    main()
