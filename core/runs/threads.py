"""The CPU thread budget of one host: torch work outside the queue must not fight a CPU run for the cores.

Runs and jobs on the same device set take turns (the queue). Torch work that must happen at once
beside them (the Compare tab sampling in the UI process) takes a *lease* of some threads: a file
`<runs_dir>/.cpu-leases/<pid>-<n>` that lives while the work runs. A CPU worker re-reads the leases
at every step boundary (`RunRecorder.should_stop` calls `balance_torch_threads`) and uses
`cores - leased` threads (at least 1, at most what it started with), so the total stays at the core
count. Two torch processes each using every core on a 2-core machine ran 17x slower than one.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LEASE_DIR = ".cpu-leases"


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leased_threads(runs_dir: str | os.PathLike, *, exclude_pid: int | None = None) -> int:
    """Threads leased by live processes other than `exclude_pid` (stale leases of dead ones are removed)."""
    folder = Path(runs_dir) / LEASE_DIR
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    total = 0
    for name in names:
        pid_text, _, rest = name.partition("-")
        threads_text = rest.split("-")[0]
        if not (pid_text.isdigit() and threads_text.isdigit()):
            continue
        pid = int(pid_text)
        if pid == exclude_pid:
            continue
        if not _pid_alive(pid):
            (folder / name).unlink(missing_ok=True)
            continue
        total += int(threads_text)
    return total


@contextmanager
def lease(runs_dir: str | os.PathLike, threads: int) -> Iterator[None]:
    """Hold `threads` CPU threads of the host's budget while the block runs."""
    folder = Path(runs_dir) / LEASE_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{os.getpid()}-{int(threads)}-{id(object())}"
    path.touch()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def active_cpu_runs(store) -> list:
    """Running or stopping runs of this host whose device set includes the CPU."""
    from core.device import parse_devices
    from core.runs.store import ACTIVE

    return [r for r in store.list_runs(ACTIVE) if r.host == store.host and "cpu" in parse_devices(r.devices)]


@contextmanager
def cpu_share(store, device: str) -> Iterator[int]:
    """Torch work on `device` in this process, beside the queue (Compare sampling). On the CPU while a
    CPU run is active: half the cores (at least 1) for this block, leased so that the run's worker
    gives them up at its next step boundary. Yields the threads this block uses (0: not on the CPU)."""
    if not str(device).startswith("cpu"):
        yield 0
        return
    import torch

    before = torch.get_num_threads()
    busy = active_cpu_runs(store)
    threads = max(1, cpu_cores() // 2) if busy else before
    torch.set_num_threads(threads)
    try:
        with lease(store.runs_dir, threads):
            yield threads
    finally:
        torch.set_num_threads(before)


class ThreadBalancer:
    """In a CPU worker: keep torch at `cores - leased` threads (never above its starting count)."""

    def __init__(self, runs_dir: str | os.PathLike):
        self.runs_dir = Path(runs_dir)
        self.start_threads: int | None = None

    def balance(self) -> int | None:
        torch = sys.modules.get("torch")
        if torch is None:
            return None
        if self.start_threads is None:
            self.start_threads = torch.get_num_threads()
        leased = leased_threads(self.runs_dir, exclude_pid=os.getpid())
        want = self.start_threads if leased == 0 else max(1, min(self.start_threads, cpu_cores() - leased))
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
            print(f"[threads] {want} torch thread(s): {self.start_threads - want} lent to work beside this run",
                  flush=True)
        return want
