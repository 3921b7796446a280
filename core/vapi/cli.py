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


FIXED_ON_RESUME = ("method", "model", "init_weights", "data", "data_path", "data_subset", "seed")  # what the checkpoint and data order depend on


def _resume_config(run_dir: Path, overrides: list[str]):
    """The run's config.json validated (errors name the file), with --set applied (errors name the field)."""
    import json

    from core.errors import ConfigError
    from core.runs.launcher import check_resumable
    from core.vapi import config as C
    from core.runs.kinds import TRAIN_ENTRY as ENTRY

    check_resumable(run_dir)  # config.json is a JSON object, trainer_state.json files hold integer steps
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    if config.get("entry", ENTRY) != ENTRY:
        raise ConfigError("--resume", f"{run_dir} is not a training run (entry {config.get('entry')!r}); "
                                      "resume it with `python -m core runs resume`")
    base = {k: v for k, v in config.items() if k != "entry"}
    for key in C.parse_overrides(overrides):
        if key.split(".", 1)[0] in FIXED_ON_RESUME:
            raise ConfigError(key, "cannot change on resume (the run's checkpoints and data order depend on it); start a new "
                                   "run from one of its checkpoints instead: --set init_weights=RUN/checkpoints/step-N/model.pt")
    try:
        C.VapiConfig.from_dict(base)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.field}", f"{str(e).split(': ', 1)[1]}; fix the file "
                                                f"(or pass --set {e.field}=VALUE)") from None
    cfg = C.resolve(None, C.parse_overrides(overrides), base=base)
    return cfg, config


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
    import os

    from core.errors import ConfigError
    from core.runs import worker
    from core.runs.launcher import Launcher
    from core.runs.store import LOG_FILE, RunNotFoundError, RunStore, process_start_time, write_json_atomic
    from core.vapi import config as C
    from core.vapi.preflight import preflight
    from core.runs import kinds
    from core.runs.kinds import TRAIN_ENTRY as ENTRY

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
        cfg, config = _resume_config(run_dir, args.overrides)
        if args.print_config:
            print(cfg.to_json())
            return 0
        preflight(cfg)
        launcher = Launcher(store)
        try:
            _start_when_free(lambda: launcher.resume_in_place(run_dir.name, claim=me, total_steps=cfg.max_steps),
                             launcher, args.wait)
        except _Busy:
            return 3
        if args.overrides:  # the run continues with the new values: config.json says what it runs with
            write_json_atomic(run_dir / "config.json", {**cfg.to_dict(), "entry": config.get("entry", ENTRY)})
        resume = True
    else:
        if args.preset is None and not args.overrides:
            raise ConfigError("--preset", "give a preset (e.g. --preset demo-c2i) or --set fields")
        cfg = C.resolve(args.preset, C.parse_overrides(args.overrides))
        if args.print_config:
            print(cfg.to_json())
            return 0
        preflight(cfg)  # bad input: an error now, and no run folder is created
        from core.device import check_visible, devices_of

        devices = check_visible(args.devices or devices_of(cfg.device))
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
    print(f"run folder: {run_dir}", flush=True)
    argv = ["--run-dir", str(run_dir)] + (["--resume"] if resume else [])
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
