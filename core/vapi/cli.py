"""`python -m core train ...`."""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from core import paths


def register(sub: argparse._SubParsersAction) -> None:
    from core import configmeta
    from core.vapi.config import VapiConfig

    p = sub.add_parser("train", help="run VA-π (or a baseline) in the foreground, as a run folder the UI can show",
                       description="Post-train a generator. The run is a folder in the runs dir (config, log, metrics,\n"
                                   "checkpoints, sample grids) that the workbench UI lists; Ctrl-C stops it with a checkpoint.",
                       epilog="config fields for --set KEY=VALUE (default: meaning and source):\n"
                              + configmeta.describe(VapiConfig),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="a preset: demo-c2i, demo-t2i, llamagen-c2i-xxl, llamagen-c2i-xl, llamagen-t2i-xl, janus-pro-1b")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set learning_rate=1e-6 --set reward_weights.lpips=0")
    p.add_argument("--run-dir", type=Path, default=None, help="the run folder to create (default: a new one in --runs-dir)")
    p.add_argument("--runs-dir", type=Path, default=None, help=f"where runs live (default {paths.RUNS_DIR})")
    p.add_argument("--name", default=None, help="run name (default: the preset)")
    p.add_argument("--devices", default=None, help="device set for the queue: cpu, cuda:0, ... (default from the config's device)")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue a stopped or failed run folder (--set then changes its config, e.g. max_steps)")
    p.add_argument("--wait", action="store_true",
                   help="when another run uses the devices, wait for them to be free (default: exit with code 3)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("estimate", help="will a run fit, and how long: parameters, peak memory per device, step time",
                       description="Estimate a run before launching it (core.vapi.estimate): parameters, peak memory per "
                                   "device (weights, gradients, AdamW states, activations with/without gradient "
                                   "checkpointing, decode + LPIPS of the G samples) against the device's memory, what to "
                                   "change when it does not fit, and the step time / 100-step time. No weights are read.")
    e.add_argument("--preset", required=True, help="a run preset (llamagen-c2i-xxl, llamagen-t2i-xl, janus-pro-1b, demo-c2i, ...)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, as for train (e.g. --set per_device_train_batch_size=8)")
    e.add_argument("--devices", default=None, help="the device set: cpu, cuda:0, cuda:0,cuda:1 (default: the config's device)")
    e.add_argument("--gpu", default=None, help="estimate for a GPU this machine does not have: a name (H100, H200, A100, "
                                               "A100-40GB, L40S, RTX 4090, ...) or its memory in GiB (e.g. 80)")
    e.set_defaults(func=cmd_estimate)


def cmd_estimate(args) -> int:
    from core.device import normalize_devices
    from core.vapi import config as C
    from core.vapi.estimate import estimate

    overrides = C.parse_overrides(args.overrides)
    if C.preset_values(args.preset).get("data") in ("imagefolder", "captions"):
        overrides.setdefault("data_path", "(no data is read for an estimate)")
    cfg = C.resolve(args.preset, overrides)
    devices = normalize_devices(args.devices).split(",") if args.devices else None
    est = estimate(cfg, devices=devices, gpu=args.gpu)
    print("\n".join(est.lines()))
    return 0


class _Tee:
    """The terminal and the run's log.txt. A stream whose write fails is dropped: a terminal that is gone
    (closed after SIGHUP: EIO, EPIPE), or the log on a full disk (said once on the terminal)."""

    def __init__(self, terminal, log):
        self.log = log
        self.streams = [terminal, log]

    def _each(self, call):
        for st in list(self.streams):
            try:
                call(st)
            except OSError as e:
                self.streams.remove(st)
                if st is self.log and self.streams:
                    from core.runs.folder import describe_write_error

                    with contextlib.suppress(OSError):
                        self.streams[0].write(f"[runs] {describe_write_error(e, Path(st.name))}; "
                                              "the log misses lines from here\n")

    def write(self, s):
        self._each(lambda st: st.write(s))
        return len(s)

    def flush(self):
        self._each(lambda st: st.flush())

    def isatty(self):
        return bool(self.streams) and self.streams[0].isatty()


class _Busy(Exception):
    pass


def _start_when_free(start, launcher, wait: bool):
    """Call start() (which claims the devices atomically); on DevicesBusyError wait (--wait) or stop."""
    import time

    from core.runs.store import DevicesBusyError

    said = False
    while True:
        launcher.mark_orphans()  # a dead worker (kill -9) does not hold its devices
        try:
            return start()
        except DevicesBusyError as e:
            if not wait:
                print(f"error: {e}. Nothing was started: add --wait to wait for it, or stop it with "
                      f"`{e.stop_command}`", file=sys.stderr)
                raise _Busy() from None
            if not said:
                print(f"waiting: {e}", file=sys.stderr, flush=True)
                said = True
            time.sleep(2.0)


def cmd_train(args) -> int:
    """Under a multi-process launch (torch.distributed.run, accelerate launch) only rank 0 creates, claims and
    records the run; the other ranks join the run folder it made (`share_from_rank0`) as its worker ranks."""
    import os

    from core.device import share_from_rank0
    from core.runs import worker
    from core.runs.store import LOG_FILE

    opened = share_from_rank0(lambda: _open_run(args))
    if isinstance(opened, int):  # --print-config, or the devices are busy: nothing to run
        return opened
    run_dir, resume = opened
    argv = ["--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    if int(os.environ.get("RANK", "0")) != 0:
        return worker.main(argv)  # a worker rank: rank 0 writes the folder, status and log
    print(f"run folder: {run_dir}", flush=True)
    log = open(run_dir / LOG_FILE, "a", buffering=1)
    try:
        with contextlib.redirect_stdout(_Tee(sys.stdout, log)), contextlib.redirect_stderr(_Tee(sys.stderr, log)):
            try:
                rc = worker.main(argv)
            except KeyboardInterrupt:
                rc = 130
    finally:
        with contextlib.suppress(OSError):  # a full disk: the last buffered lines are lost, not the run
            log.close()
    from core.runs.folder import read_status

    run = read_status(run_dir) or {}  # the run folder is the truth (the index may be unwritable)
    message = str(run.get("message") or "")
    with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
        print(f"run {run_dir.name}: {run.get('status')} at step {run.get('step')}/{run.get('total_steps')}"
              + (f" — {message.splitlines()[0]}" if message else ""), flush=True)
    if rc == 3:
        return 3
    return 0 if run.get("status") in ("finished", "stopped") else 1


def _open_run(args) -> int | tuple[Path, bool]:
    """Create (or re-open with --resume) the run folder and claim its devices for this process.
    Returns (run folder, resume), or an exit code when there is nothing to run."""
    import os

    from core.errors import ConfigError
    from core.runs.launcher import Launcher, resume_config
    from core.runs.store import RunNotFoundError, RunStore, process_start_time
    from core.vapi import config as C
    from core.runs import kinds

    me = {"worker_pid": os.getpid(), "worker_start": process_start_time(os.getpid())}
    if args.resume is not None:
        run_dir = args.resume.resolve()
        if not (run_dir / "config.json").is_file():
            raise ConfigError("--resume", f"{run_dir} is not a run folder (no config.json)")
        store = RunStore(run_dir.parent)
        try:
            store.get(run_dir.name)
        except RunNotFoundError:  # a folder the index lacks (copied in, or an index rebuilt elsewhere)
            store.reindex()
            store.get(run_dir.name)
        overrides = C.parse_overrides(args.overrides)
        if args.print_config:
            print(resume_config(run_dir, overrides)[0].to_json())
            return 0
        launcher = Launcher(store)
        # its config.json checked with the changes (preflight too), and rewritten with them before it runs
        total_steps, config = launcher.check_resume(run_dir.name, overrides)
        try:
            _start_when_free(lambda: launcher.resume_in_place(run_dir.name, claim=me, total_steps=total_steps,
                                                              config=config),
                             launcher, args.wait)
        except _Busy:
            return 3
        resume = True
    else:
        if args.preset is None and not args.overrides:
            raise ConfigError("--preset", "give a preset (e.g. --preset demo-c2i) or --set fields")
        cfg = C.resolve(args.preset, C.parse_overrides(args.overrides))
        if args.print_config:
            print(cfg.to_json())
            return 0
        from core.device import check_visible, devices_of, launched_world
        from core.errors import UserError
        from core.vapi.preflight import PreflightError, preflight, problems_of

        devices, bad_devices = None, None
        if args.devices:  # a bad --devices joins preflight's report: every problem in one round
            try:
                devices = check_visible(args.devices)
            except ConfigError as e:
                bad_devices = e
        try:
            checked = preflight(cfg)  # bad input: an error now, and no run folder is created
        except UserError as e:
            if bad_devices is None:
                raise
            raise PreflightError(problems_of(e, "config") + problems_of(bad_devices, "--devices"),
                                 getattr(e, "footer", "")) from None
        if bad_devices is not None:
            raise bad_devices
        devices = devices or check_visible(devices_of(cfg.device, processes=launched_world()))  # (a bad config device: preflight said it)
        for warning in checked.warnings:  # e.g. a paper-size model on the CPU, with its ETA
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        if args.run_dir is not None:
            root, run_id = args.run_dir.resolve().parent, args.run_dir.name
        else:
            root, run_id = (args.runs_dir or paths.RUNS_DIR), None
        store = RunStore(root)
        launcher = Launcher(store)
        try:
            run = _start_when_free(lambda: store.create_run(args.name or args.preset or "run",
                                                            kinds.record(kinds.TRAIN, cfg), devices,
                                                            cfg.max_steps, run_id=run_id, claim=me),
                                   launcher, args.wait)
        except _Busy:
            return 3
        run_dir = store.run_dir(run.id)
        resume = False
    return run_dir, resume
