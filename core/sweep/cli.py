"""`python -m core sweep --preset P --vary FIELD=V1,V2 [--vary ...] [--one-at-a-time] [--set k=v ...]
--eval demo|fid|adherence [--num-samples N] [--num-seeds S] [--runs-dir DIR]`.

The sweep is a run folder (kind `sweep`) in the runs dir, run in the foreground like `train`: every
variant is checked first (a bad value: one line naming the field and the variant, exit 2, no folder),
then trained and evaluated in turn; the table is printed at the end and written to SWEEP/table.csv,
table.json and table.txt (`python -m core runs show SWEEP` prints it later). Ctrl-C stops it with the
current variant checkpointed; `python -m core runs resume SWEEP` continues it in the background.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from core import paths
from core.vapi.config import DEFAULT_PRESET


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train variants of a preset, evaluate each the same way, one table with verdicts",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"the run preset every variant starts from (default {DEFAULT_PRESET})")
    p.add_argument("--vary", action="append", default=[], metavar="FIELD=V1,V2",
                   help="a field and the values to try (repeatable), e.g. --vary learning_rate=1e-5,3e-5 --vary beta=0.1,1")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="change one field at a time from the preset (default: every combination)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a field set in every variant (repeatable), as in train --set")
    p.add_argument("--eval", default="demo", choices=("demo", "fid", "adherence"),
                   help="demo: demo-FID, class accuracy, diversity; fid: FID/precision/recall vs --reference; "
                        "adherence: prompt adherence per category (demo-t2i)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per sampling seed (default 1000)")
    p.add_argument("--num-seeds", type=int, default=3, help="sampling seeds 0..S-1 (default 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="the sampling seeds themselves")
    p.add_argument("--reference", default=None, help="eval fid: the real images (.npz, image folder, shapes[:split])")
    p.add_argument("--extractor", default=None, help="eval fid: inception, dinov2, clip or demo")
    p.add_argument("--name", default=None, help="the sweep's name (default: sweep PRESET)")
    p.add_argument("--devices", default=None, help="cpu or one GPU (cuda:N); default from the preset's device")
    p.add_argument("--runs-dir", type=Path, default=None, help=f"where runs live (default {paths.RUNS_DIR})")
    p.add_argument("--wait", action="store_true", help="when another run uses the devices, wait (default: exit 3)")
    p.set_defaults(func=cmd_sweep)


def sweep_config(args):
    from core.sweep.config import SweepConfig, parse_vary
    from core.vapi.config import parse_overrides

    return SweepConfig(preset=args.preset, overrides=parse_overrides(args.overrides), vary=parse_vary(args.vary),
                       mode="one-at-a-time" if args.one_at_a_time else "grid", eval=args.eval,
                       num_samples=args.num_samples, num_seeds=args.num_seeds, seeds=args.seeds,
                       reference=args.reference, extractor=args.extractor)


def cmd_sweep(args) -> int:
    import os

    from core.device import check_visible, devices_of, gpu_ids
    from core.errors import ConfigError
    from core.runs import kinds, worker
    from core.runs.launcher import Launcher
    from core.runs.store import LOG_FILE, RunStore, process_start_time
    from core.sweep import job
    from core.sweep import table as T
    from core.vapi.cli import _Busy, _start_when_free, _Tee

    cfg = sweep_config(args)
    variants = job.prepare(cfg)  # every variant validated before anything is created
    devices = check_visible(args.devices or devices_of(variants[0].config["device"]))
    if len(gpu_ids(devices)) > 1:
        raise ConfigError("devices", f"{devices}: a sweep trains on one device (cpu or one GPU) at a time")
    store = RunStore(args.runs_dir or paths.RUNS_DIR)
    launcher = Launcher(store)
    me = {"worker_pid": os.getpid(), "worker_start": process_start_time(os.getpid())}
    name = args.name or f"sweep {cfg.preset}"
    try:
        run = _start_when_free(lambda: store.create_run(name, kinds.record(kinds.SWEEP, cfg), devices,
                                                        job.total_steps(variants), claim=me), launcher, args.wait)
    except _Busy:
        return 3
    run_dir = store.run_dir(run.id)
    print(f"sweep folder: {run_dir} ({len(variants)} runs: the preset and {len(variants) - 1} variants)", flush=True)
    with open(run_dir / LOG_FILE, "a", buffering=1) as log, \
            contextlib.redirect_stdout(_Tee(sys.stdout, log)), contextlib.redirect_stderr(_Tee(sys.stderr, log)):
        try:
            rc = worker.main(["--run-dir", str(run_dir)])
        except KeyboardInterrupt:
            rc = 130
    run = store.get(run.id)
    table = T.read(run_dir)
    print(f"sweep {run.id}: {run.status}" + (f" — {run.message.splitlines()[0]}" if run.message else ""))
    if table is not None:
        print(f"table: {run_dir / T.TABLE_CSV}, {run_dir / T.TABLE_JSON}")
    if rc == 3:
        return 3
    return 0 if run.status in ("finished", "stopped") else 1
