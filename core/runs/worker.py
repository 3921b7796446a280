"""The worker process of one run: `python -m core.runs.worker --run-dir DIR [--resume]`.

Started detached by the launcher (its own session; stdout and stderr appended to DIR/log.txt).
It marks the run running, imports the entry point named by config.json's "entry" ("module:function",
one of the kinds of `core.runs.kinds`) and calls

    entry(config: dict, run_dir: Path, recorder: RunRecorder, resume: bool)

The entry must be one of the project's worker entry points (`core.runs.kinds`; an entry's old name is
mapped to its new one there). SIGTERM, SIGHUP and SIGINT
(Ctrl-C) request a stop, like the UI's Stop: the trainer checkpoints at its next step boundary.
On return the run is finished, or stopped when a stop was requested; on an exception it is failed,
with the error and the last lines of log.txt as its message, and the exit code is not 0. Then the
worker runs the scheduler once, so the next queued run starts even when no UI is open.

Under `accelerate launch` every rank runs this module; only rank 0 touches the run's status.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.checkpoints import find_last, step_dir_name
from core.runs import claims, kinds
from core.errors import ConfigError, UserError
from core.runs.launcher import Launcher
from core.runs.procs import hold_worker_lock
from core.runs.recorder import RunRecorder
from core.runs.folder import LOCK_FILE, LOG_TAIL_LINES, METRICS_FILE, GuardedStream, end_status, read_metrics_file, read_status
from core.runs.store import (
    ACTIVE, CONFIG_FILE, FAILED, FINISHED, INDEX_ERRORS, LOG_FILE, QUEUED, RUNNING, STOP_FILE, STOPPED,
    STOPPING, RunStateError, RunStore, parent_pid, process_start_time, tail_lines,
)


class WorkerTerminated(Exception):
    """The worker received SIGTERM (from the user, or from accelerate when another rank died)."""


# the project's own entry points; config.json names one of them (a run folder is not a place to name
# arbitrary code to import). VAPI_WORKER_ENTRIES adds others, comma-separated (tests, local plugins).
ENTRY_POINTS = frozenset(kinds.ENTRY_KINDS)
EXTRA_ENTRIES_ENV = "VAPI_WORKER_ENTRIES"


def allowed_entries() -> frozenset[str]:
    extra = {e.strip() for e in os.environ.get(EXTRA_ENTRIES_ENV, "").split(",") if e.strip()}
    return ENTRY_POINTS | extra


def resolve_entry(config: dict) -> Callable:
    """Import the callable named by config["entry"] ("package.module:function"), one of `allowed_entries`
    (an old name of one: its current name)."""
    spec = kinds.current(config.get("entry"))
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError("entry", f"{spec!r}; expected 'package.module:function', "
                                   "e.g. 'core.vapi.trainer:run_worker'")
    if spec not in allowed_entries():
        raise ConfigError("entry", f"{spec!r} is not a worker entry point of this project; use one of "
                                   f"{', '.join(sorted(ENTRY_POINTS))} (or list it in ${EXTRA_ENTRIES_ENV})")
    module_name, func_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError("entry", f"cannot import module {module_name!r} ({e})") from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError("entry", f"module {module_name!r} has no function {func_name!r}")
    return func


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum, frame):
        raise WorkerTerminated(f"terminated by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_request_stop(run_dir: Path) -> Iterator[dict]:
    """SIGTERM, SIGHUP (the terminal or SSH session closed) and SIGINT (Ctrl-C) ask the entry point to
    stop: the stop flag is set, the trainer writes a checkpoint at its next step boundary and returns,
    and the run ends stopped. A second Ctrl-C aborts at once (KeyboardInterrupt: the run fails). Under
    several processes (accelerate) SIGTERM still raises: there it means that another rank died. SIGINT
    and SIGHUP stay ignored where the caller ignores them (a background job of a script; nohup).
    Yields {"signal": name of the first one}."""
    got: dict = {"signal": None}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        with _sigterm_raises():
            yield got
        return

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and got["signal"] == "SIGINT":
            raise KeyboardInterrupt
        first = got["signal"] is None
        got["signal"] = got["signal"] or name
        (run_dir / STOP_FILE).touch()
        if first:
            again = "; Ctrl-C again aborts without a checkpoint" if signum == signal.SIGINT else ""
            try:  # after SIGHUP the terminal may be gone
                print(f"[worker] {name}: stopping at the next step boundary, after writing a checkpoint{again}",
                      file=sys.stderr, flush=True)
            except OSError:
                pass

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    for signum in (signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield got
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _started_by(pid: int) -> bool:
    """Whether process `pid` leads this process's group or is one of its ancestors (accelerate launch
    starts each rank in a session of its own, so the launched process is an ancestor, not the leader)."""
    if pid in (os.getpid(), os.getpgid(0)):
        return True
    current = os.getppid()
    while current is not None and current > 1:
        if current == pid:
            return True
        current = parent_pid(current)
    return False


def _claim(store: RunStore, run_id: str) -> None:
    """Record this process as the run's worker. A launcher has already marked the run running and
    recorded the process it launched (the leader of a session of its own) as `pid`; a worker started
    by hand (or `python -m core train` in the foreground) claims a queued run itself, if its devices
    are free, or finds the run already claimed for it (`RunStore.create_run(claim=...)`).

    A foreground worker records only itself (`worker_pid`), never its process group: under a shell
    script, nohup or CI that group is the caller's, and a forced stop must not kill the caller."""
    me = os.getpid()
    mine = {"worker_pid": me, "worker_start": process_start_time(me)}
    run = store.get(run_id)
    if run.status == QUEUED:
        Launcher(store).mark_orphans()  # a worker that died (kill -9) does not hold the devices
        store.claim(run_id, **mine)
        return
    if run.status not in ACTIVE:
        raise RunStateError(f"run {run_id}: is {run.status}; resume it to run it again")
    if run.pid is not None and not _started_by(run.pid):
        raise RunStateError(f"run {run_id}: already has worker process {run.pid}")
    if run.pid is None and run.worker_pid not in (None, me):
        raise RunStateError(f"run {run_id}: already has worker process {run.worker_pid}")
    if store.update(run_id, expect=ACTIVE, **mine) is None:
        raise RunStateError(f"run {run_id}: stopped being active while its worker started")


def _finish(store: RunStore, run_id: str, run_dir: Path, stop_signal: str | None = None) -> None:
    """The entry returned: the run is finished, or stopped when a stop was requested. Recorded in the
    index (which mirrors it into status.json), or in status.json alone when the index cannot be written."""
    by = f" by {stop_signal}" if stop_signal else ""
    try:
        run = store.get(run_id)
        if run.status == RUNNING and (run_dir / STOP_FILE).exists() and run.step < run.total_steps:
            # a stop asked for by a signal to this process (the UI and `runs stop` go through stopping)
            store.try_set_status(run_id, STOPPING, expect={RUNNING}, stop_requested_at=time.time(),
                                 message=f"stop requested{by}")
        step = run.step
        if store.try_set_status(run_id, FINISHED, expect={RUNNING}, message=f"finished at step {step}"):
            return
        if store.try_set_status(run_id, STOPPED, expect={STOPPING},
                                message=f"stopped{by} at step {step} ({_where(run_dir)})"):
            return
        print(f"[worker] run {run_id} is {store.get(run_id).status}; its status was left as is", flush=True)
    except INDEX_ERRORS as e:
        store.index_failed("the end of the run", e)
        folder = read_status(run_dir) or {}
        points = read_metrics_file(run_dir / METRICS_FILE)
        step = points[-1]["step"] if points else int(folder.get("step") or 0)
        total = int(folder.get("total_steps") or step)
        if folder.get("status") == STOPPING or ((run_dir / STOP_FILE).exists() and step < total):
            end_status(run_dir, STOPPED, f"stopped{by} at step {step} ({_where(run_dir)})", step=step)
        else:
            end_status(run_dir, FINISHED, f"finished at step {step}", step=step)


def _where(run_dir: Path) -> str:
    ckpt = find_last(run_dir)
    return f"checkpoint {step_dir_name(ckpt.step)}" if ckpt else "no checkpoint"


def _fail(store: RunStore, run_id: str, run_dir: Path, error: BaseException) -> None:
    tail = "\n".join(tail_lines(run_dir / LOG_FILE, LOG_TAIL_LINES))
    message = f"{type(error).__name__}: {error}\n--- last lines of log.txt ---\n{tail}"
    try:
        if store.try_set_status(run_id, FAILED, expect=ACTIVE, message=message) is None:
            print(f"[worker] run {run_id} is {store.get(run_id).status}; not marked failed", flush=True)
    except INDEX_ERRORS as db_error:  # e.g. the disk is full: runs.db cannot grow
        store.index_failed("the failure", db_error)
        end_status(run_dir, FAILED, message)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(str(path), f"is not valid JSON ({e}); fix the file, then resume the run") from None
    if not isinstance(config, dict):
        raise ConfigError(str(path), "must hold a JSON object; fix the file, then resume the run")
    return config


def _release_memory() -> None:
    """Free what the entry point left behind (GPU memory above all) before the next run may start."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.runs.worker",
                                     description="Run one training run in this process (started by the launcher).")
    parser.add_argument("--run-dir", required=True, type=Path, help="the run folder (holds config.json)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        print(f"error: --run-dir {run_dir}: no {CONFIG_FILE} there; pass a folder made by the run store",
              file=sys.stderr)
        return 2

    if int(os.environ.get("RANK", "0")) != 0:
        config = _read_config(config_path)
        resolve_entry(config)(config, run_dir, RunRecorder(run_dir, is_main=False), args.resume)
        return 0

    run_id = run_dir.name
    try:  # the token that proves this process is the run's worker (core.runs.procs.is_our_worker)
        lock_fd = hold_worker_lock(run_dir / LOCK_FILE)
    except BlockingIOError:
        print(f"error: run {run_id}: already has a live worker (another process holds {run_dir / LOCK_FILE})",
              file=sys.stderr)
        return 3
    except OSError as e:
        print(f"error: {run_dir / LOCK_FILE}: cannot be locked ({e.strerror}); nothing was started", file=sys.stderr)
        return 3
    out, err = sys.stdout, sys.stderr
    sys.stdout = GuardedStream(out, run_dir / LOG_FILE)  # a full disk never kills the run through a print
    sys.stderr = GuardedStream(err, run_dir / LOG_FILE)
    try:
        return _run(run_dir, run_id, args.resume)
    finally:
        sys.stdout, sys.stderr = out, err
        os.close(lock_fd)  # the kernel would release it at exit too; a foreground train returns to its caller


def _run(run_dir: Path, run_id: str, resume: bool) -> int:
    """The body of `main` on rank 0, while this process holds the run's worker lock."""
    store = RunStore(run_dir.parent)
    try:
        _claim(store, run_id)
    except UserError as e:  # not queued nor launched, devices busy, or the run was deleted
        print(f"error: {e}", file=sys.stderr)
        return 3
    try:
        return _run_holding_devices(store, run_dir, run_id, resume)
    finally:
        claims.release()


def _run_holding_devices(store: RunStore, run_dir: Path, run_id: str, resume: bool) -> int:
    """Hold the run's devices machine-wide (`core.runs.claims`; a foreground run holds them already),
    waiting while a process of another runs dir has them, then run the entry."""
    config_path = run_dir / CONFIG_FILE
    devices = str((read_status(run_dir) or {}).get("devices") or "cpu")

    def waiting(e: claims.DeviceHeldError) -> None:
        print(f"[worker] waiting: {e}", flush=True)

    if not claims.hold(devices, run_dir, wait=True, should_stop=(run_dir / STOP_FILE).exists, on_wait=waiting):
        print("[worker] stop requested while waiting for the devices", flush=True)
        _finish(store, run_id, run_dir)
        return 0
    print(f"[worker] {time.strftime('%Y-%m-%d %H:%M:%S')} run {run_id} started: pid {os.getpid()}, "
          f"resume={resume}", flush=True)
    rc, error = 0, None
    with _signals_request_stop(run_dir) as got:
        try:
            config = _read_config(config_path)
            entry = resolve_entry(config)
            entry(config, run_dir, RunRecorder(run_dir, is_main=True), resume)
        except BaseException as e:
            if not isinstance(e, UserError):
                traceback.print_exc()
            else:
                print(f"error: {e}", file=sys.stderr)
            sys.stderr.flush()
            error, rc = e, 130 if isinstance(e, KeyboardInterrupt) else 1
    _release_memory()
    claims.release()  # the devices are free before the run is seen to end: the next run may start at once
    if error is not None:
        _fail(store, run_id, run_dir, error)
    else:
        _finish(store, run_id, run_dir, got["signal"])
    ended = read_status(run_dir) or {}
    print(f"[worker] {time.strftime('%Y-%m-%d %H:%M:%S')} run {run_id} {ended.get('status')} at step "
          f"{ended.get('step')}", flush=True)

    try:
        Launcher(store).tick()
    except INDEX_ERRORS as e:
        store.index_failed("starting the next queued run", e)
    except Exception:
        print("[worker] starting the next queued run failed:", file=sys.stderr)
        traceback.print_exc()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
