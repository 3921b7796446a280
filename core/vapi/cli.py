"""`python -m core train ...` and `python -m core bench step ...`."""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from core import paths


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run VA-π (or a baseline) in the foreground, as a run folder the UI can show",
                       description="Post-train a generator. The run is a folder in the runs dir (config, log, metrics, "
                                   "checkpoints, sample grids) that the workbench UI lists; Ctrl-C stops it with a checkpoint.")
    p.add_argument("--preset", default=None, help="a preset: demo-c2i, llamagen-c2i-xxl, llamagen-c2i-xl, llamagen-t2i-xl, janus-pro-1b")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set learning_rate=1e-6 --set reward_weights.lpips=0")
    p.add_argument("--run-dir", type=Path, default=None, help="the run folder to create (default: a new one in --runs-dir)")
    p.add_argument("--runs-dir", type=Path, default=None, help=f"where runs live (default {paths.RUNS_DIR})")
    p.add_argument("--name", default=None, help="run name (default: the preset)")
    p.add_argument("--devices", default=None, help="device set for the queue: cpu, cuda:0, ... (default from the config's device)")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR", help="continue a stopped or failed run folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="benchmarks of the engine", description="Benchmarks that print figures.")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH")
    bsub.required = True
    s = bsub.add_parser("step", help="VA-π step time, grouped vs per-sample schedule",
                        description="Time one VA-π optimizer step (forward, rollout, rewards, backward) with the grouped "
                                    "schedule (one forward of B sequences) and the reference per-sample schedule (B*G).")
    s.add_argument("--preset", default="demo-c2i")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--batch", type=int, default=None, help="images per step (default: the preset's per-device batch)")
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--random-init", action="store_true", help="random weights of the preset's architecture (speed only)")
    s.set_defaults(func=cmd_bench_step)


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()

    def isatty(self):
        return self.streams[0].isatty()


def _devices_of(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "cuda:0" if device == "cuda" else device


FIXED_ON_RESUME = ("method", "model", "init_weights", "data", "data_path", "data_subset", "seed")  # what the checkpoint and data order depend on


def _apply_resume_overrides(store, run_id: str, items: list[str]) -> int:
    """`train --resume DIR --set k=v`: validate the changed config, refuse fields a checkpoint depends on,
    write config.json (atomically) and return the new max_steps. Nothing is written on a bad value."""
    from core.errors import ConfigError
    from core.vapi import config as C

    stored = store.read_config(run_id)
    overrides = C.parse_overrides(items)
    for key in overrides:
        if key.split(".", 1)[0] in FIXED_ON_RESUME:
            raise ConfigError(key, f"cannot change on resume (the run's checkpoints and data order depend on it); "
                                   "start a new run from one of its checkpoints instead: --set init_weights=RUN/checkpoints/step-N/model.pt")
    base = {k: v for k, v in stored.items() if k != "entry"}
    cfg = C.resolve(None, overrides, base=base)
    step = store.get(run_id).step
    if cfg.max_steps <= step and store.get(run_id).status == "finished":
        raise ConfigError("max_steps", f"the run is finished at step {step}; continue it with max_steps > {step}")
    store.write_config(run_id, {**cfg.to_dict(), "entry": stored.get("entry")})
    return cfg.max_steps


def cmd_train(args) -> int:
    from core.errors import ConfigError
    from core.runs import worker
    from core.runs.launcher import Launcher
    from core.runs.store import LOG_FILE, RunStore
    from core.vapi import config as C
    from core.vapi.trainer import ENTRY, Trainer

    if args.resume is not None:
        run_dir = args.resume.resolve()
        if not (run_dir / "config.json").is_file():
            raise ConfigError("--resume", f"{run_dir} is not a run folder (no config.json)")
        store = RunStore(run_dir.parent)
        total = _apply_resume_overrides(store, run_dir.name, args.overrides) if args.overrides else None
        Launcher(store).resume_in_place(run_dir.name, total_steps=total)
        resume = True
    else:
        if args.preset is None and not args.overrides:
            raise ConfigError("--preset", "give a preset (e.g. --preset demo-c2i) or --set fields")
        cfg = C.resolve(args.preset, C.parse_overrides(args.overrides))
        if args.print_config:
            print(cfg.to_json())
            return 0
        Trainer(cfg, ".").preflight()  # bad input: an error now, and no run folder is created
        if args.run_dir is not None:
            root, run_id = args.run_dir.resolve().parent, args.run_dir.name
        else:
            root, run_id = (args.runs_dir or paths.RUNS_DIR), None
        store = RunStore(root)
        run = store.create_run(args.name or args.preset or "run", {**cfg.to_dict(), "entry": ENTRY},
                               args.devices or _devices_of(cfg.device), cfg.max_steps, run_id=run_id)
        run_dir = store.run_dir(run.id)
        resume = False
    print(f"run folder: {run_dir}", flush=True)
    argv = ["--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    with open(run_dir / LOG_FILE, "a", buffering=1) as log, \
            contextlib.redirect_stdout(_Tee(sys.stdout, log)), contextlib.redirect_stderr(_Tee(sys.stderr, log)):
        try:
            rc = worker.main(argv)
        except KeyboardInterrupt:
            rc = 130
    run = store.get(run_dir.name)
    print(f"run {run.id}: {run.status} at step {run.step}/{run.total_steps}" + (f" — {run.message.splitlines()[0]}" if run.message else ""))
    if rc == 3:
        print("the run's devices are busy: it stays queued and starts when the active run ends", file=sys.stderr)
    return 0 if run.status in ("finished", "stopped", "queued") else 1


def cmd_bench_step(args) -> int:
    from core.vapi.bench import bench_step

    bench_step(args.preset, args.overrides, args.batch, args.repeats, args.random_init)
    return 0
