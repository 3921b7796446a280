"""`python -m core runs list|show|stop|resume|delete|reindex`: manage runs from a terminal.

Runs are started by the UI or by a train command (through `Launcher.submit`); these commands look at
them and act on them, on the same runs dir (`--runs-dir`, default core.paths.RUNS_DIR).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.paths import RUNS_DIR
from core.runs.launcher import DEFAULT_GRACE_S, KILL_WAIT_S, Launcher
from core.runs.store import (
    ACTIVE, CONFIG_FILE, DB_FILE, FINISHED, STATUS_FILE, STATUSES, STOPPED, RunStateError, RunStore,
)

CONFIG_LINES = 30  # config entries shown by `show`


def register(subparsers: argparse._SubParsersAction) -> None:
    runs = subparsers.add_parser(
        "runs", help="list, inspect, stop, resume and delete training runs",
        description="Manage training runs: each run is a folder under the runs dir, indexed in runs.db.")
    actions = runs.add_subparsers(dest="runs_action", metavar="ACTION")
    actions.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", type=Path, default=RUNS_DIR,
                        help=f"folder holding the runs and runs.db (default: {RUNS_DIR}; env VAPI_RUNS)")
    run_arg = argparse.ArgumentParser(add_help=False)
    run_arg.add_argument("run", metavar="RUN", help="run id, or any part of it that matches one run")

    p = actions.add_parser("list", parents=[common], help="list runs, newest first",
                           description="List runs, newest first: status, progress, devices, name.")
    p.add_argument("--status", choices=STATUSES, action="append",
                   help="only runs in this status (repeat for several)")
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("reindex", parents=[common], help="rebuild runs.db from the run folders",
                           description="Rebuild the run index (runs.db) from the run folders: every folder with a "
                                       "config.json that the index lacks is added with its status, step and metrics "
                                       "(from status.json and metrics.jsonl). An unreadable runs.db is moved aside "
                                       "first. Done automatically when runs.db is missing.")
    p.set_defaults(func=cmd_reindex)

    p = actions.add_parser("show", parents=[run_arg, common], help="status, config, last metrics and log tail",
                           description="Show a run: status, config summary, last metrics, checkpoints, log tail.")
    p.add_argument("--lines", type=int, default=20, help="lines of log.txt to show (default: 20)")
    p.set_defaults(func=cmd_show)

    p = actions.add_parser("stop", parents=[run_arg, common], help="stop a run (it checkpoints first)",
                           description="Stop a run: a queued run is cancelled; a running one stops at its next "
                                       "step boundary after writing a checkpoint, or is killed after the grace "
                                       "period. Waits until it has stopped unless --no-wait.")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S,
                   help=f"seconds to wait for a graceful stop before killing the worker (default: {DEFAULT_GRACE_S:g})")
    p.add_argument("--no-wait", action="store_true",
                   help="return at once; the UI or the next worker enforces the grace period")
    p.set_defaults(func=cmd_stop)

    p = actions.add_parser("resume", parents=[run_arg, common], help="continue a stopped or failed run",
                           description="Queue a stopped or failed run again; it continues from its last "
                                       "checkpoint (metrics past it are dropped) once its devices are free.")
    p.set_defaults(func=cmd_resume)

    p = actions.add_parser("delete", parents=[run_arg, common], help="delete a run and its folder",
                           description="Delete a run: its row in runs.db and its whole folder (checkpoints "
                                       "included). Refuses a running or stopping run.")
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    p.set_defaults(func=cmd_delete)


def _has_runs(runs_dir: Path) -> bool:
    """runs.db, or at least one run folder whose index can be rebuilt."""
    return (runs_dir / DB_FILE).is_file() or (runs_dir.is_dir() and any(
        (p / CONFIG_FILE).is_file() and (p / STATUS_FILE).is_file() for p in runs_dir.iterdir() if p.is_dir()))


def _open_store(runs_dir: Path) -> RunStore:
    runs_dir = runs_dir.expanduser()
    if not _has_runs(runs_dir):
        raise UserError(f"--runs-dir {runs_dir}: no {DB_FILE} there; point --runs-dir at the folder that "
                        "holds the run folders")
    return RunStore(runs_dir, private_if_unwritable=True)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_list(args: argparse.Namespace) -> int:
    runs_dir = args.runs_dir.expanduser()
    if not _has_runs(runs_dir):
        print(f"no runs in {runs_dir}")
        return 0
    store = RunStore(runs_dir, private_if_unwritable=True)
    Launcher(store).mark_orphans()
    runs = store.list_runs(args.status)
    if not runs:
        print(f"no runs in {runs_dir}" + (f" with status {', '.join(args.status)}" if args.status else ""))
        return 0
    rows = [("ID", "STATUS", "STEP", "DEVICES", "CREATED", "NAME")]
    rows += [(r.id, r.status, f"{r.step}/{r.total_steps}", r.devices, _when(r.created_at), r.name) for r in runs]
    print(_table(rows))
    return 0


def _flatten(d: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _short(value: Any, width: int = 80) -> str:
    if isinstance(value, list) and len(value) > 6:
        text = f"[{', '.join(map(repr, value[:5]))}, ... ({len(value)} items)]"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_show(args: argparse.Namespace) -> int:
    store = _open_store(args.runs_dir)
    run = store.find(args.run)
    Launcher(store).mark_orphans()
    run = store.get(run.id)
    checkpoints = store.checkpoints(run.id)
    status = run.status + (f" (worker pid {run.worker_pid or run.pid})" if run.is_active else "")
    fields = [
        ("run", run.id), ("name", run.name), ("status", status), ("devices", run.devices),
        ("step", f"{run.step} / {run.total_steps}"), ("created", _when(run.created_at)),
        ("started", _when(run.started_at)), ("ended", _when(run.ended_at)), ("folder", str(run.run_dir)),
        ("checkpoint", f"{checkpoints[-1].path.name} (of {len(checkpoints)})" if checkpoints else "none"),
    ]
    for key, value in fields:
        print(f"{key:<11}{value}")
    if run.message:
        lines = run.message.splitlines()
        print(f"{'message':<11}{lines[0]}")
        for line in lines[1:]:
            print(f"{'':<11}{line}")

    entries = list(_flatten(store.read_config(run.id)))
    print(f"\nconfig ({run.run_dir / 'config.json'}):")
    for key, value in entries[:CONFIG_LINES]:
        print(f"  {key} = {_short(value)}")
    if len(entries) > CONFIG_LINES:
        print(f"  ... {len(entries) - CONFIG_LINES} more entries in config.json")

    last = store.latest_metrics(run.id)
    if last is None:
        print("\nmetrics: none yet")
    else:
        print(f"\nlast metrics (step {last['step']}, {_when(last['time'])}):")
        for key, value in last.items():
            if key not in ("step", "time"):
                print(f"  {key} = {value:.6g}")

    from core.sweep import table as sweep_table

    table = sweep_table.read(run.run_dir)  # a sweep: its table (variants, verdicts)
    if table is not None:
        print(f"\nsweep table ({run.run_dir / sweep_table.TABLE_CSV}):")
        print(sweep_table.text(table))

    tail = store.log_tail(run.id, args.lines)
    print(f"\nlog (last {args.lines} lines of log.txt):" if tail else "\nlog: empty")
    for line in tail.splitlines():
        print(f"  {line}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    store = _open_store(args.runs_dir)
    launcher = Launcher(store, grace_s=args.grace)
    run = launcher.stop(store.find(args.run).id)
    print(f"{run.id}: {run.status}: {run.message}")
    if args.no_wait or run.status not in ACTIVE:
        return 0
    print(f"waiting for the worker to write a checkpoint and exit (killed after {args.grace:g} s) ...", flush=True)
    remaining = max(0.0, (run.stop_deadline or time.time()) - time.time())
    run = launcher.wait(run.id, timeout=remaining + KILL_WAIT_S + 30.0)
    print(f"{run.id}: {run.status}: {run.message}")
    if run.status in ACTIVE:
        print(f"still {run.status}: its worker runs on host {run.host}, whose launcher enforces the stop")
    return 0 if run.status in (STOPPED, FINISHED) else 1


def cmd_reindex(args: argparse.Namespace) -> int:
    runs_dir = args.runs_dir.expanduser()
    if not runs_dir.is_dir():
        raise UserError(f"--runs-dir {runs_dir}: no such folder; point --runs-dir at the folder that holds the run folders")
    store = RunStore(runs_dir, open_index=False)
    added, moved = store.reindex()
    if moved is not None:
        print(f"{DB_FILE} was not readable: moved to {moved}")
    total = len(store.list_runs())
    print(f"indexed {total} runs in {runs_dir} ({added} added from their folders)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    store = _open_store(args.runs_dir)
    run = Launcher(store).resume(store.find(args.run).id)
    print(f"{run.id}: {run.status}: {run.message}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    store = _open_store(args.runs_dir)
    run = store.find(args.run)
    Launcher(store).mark_orphans()
    run = store.get(run.id)
    if run.is_active:
        raise RunStateError(f"run {run.id}: is {run.status}; stop it first (`python -m core runs stop {run.id}`)")
    if not args.yes:
        n = len(store.checkpoints(run.id))
        raise UserError(f"run {run.id}: deleting removes {run.run_dir} ({n} checkpoints); add --yes to confirm")
    store.delete_run(run.id)
    print(f"deleted {run.id}")
    return 0
