"""Process identity on Linux (/proc; elsewhere a best effort through signal 0): is a pid still the process
we recorded (its start time), who is its parent, its session, and which processes exist.

`core.runs.launcher` signals only what these prove to be a run's own worker; `worker_token` below is the
second proof: a lock that only the live worker of that run holds.
"""
from __future__ import annotations

import os


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, starttime) of a process, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses, so split after the last ")"
    rest = raw[raw.rindex(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[2]), int(rest[19])  # fields 3, 4, 5 and 22


def _has_proc() -> bool:
    return os.path.isdir("/proc/self")


def process_start_time(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot), None if it does not exist. 0 without /proc."""
    if _has_proc():
        stat = _proc_stat(pid)
        return None if stat is None else stat[3]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return 0
    return 0


def process_session(pid: int) -> int | None:
    """Session id of a process (/proc/<pid>/stat field 6); None if unknown."""
    if not _has_proc():
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw[raw.rindex(")") + 2:].split()[3])


def parent_pid(pid: int) -> int | None:
    """Parent of process `pid` (None if unknown: no such process, or no /proc)."""
    stat = _proc_stat(pid) if _has_proc() else None
    return None if stat is None else stat[1]


def process_state(pid: int | None, start: int | None) -> str:
    """"alive"; "gone" (no such process); "exited" (a zombie not yet reaped by its parent); or
    "recycled": the pid now belongs to another process, told apart by its start time."""
    if pid is None or pid <= 0:
        return "gone"
    if not _has_proc():
        return "gone" if process_start_time(pid) is None else "alive"
    stat = _proc_stat(pid)
    if stat is None:
        return "gone"
    if start is not None and stat[3] != start:
        return "recycled"
    return "exited" if stat[0] in ("Z", "X") else "alive"


def process_alive(pid: int | None, start: int | None) -> bool:
    """True when process `pid` exists, is not a zombie, and (if `start` is known) started at `start`."""
    return process_state(pid, start) == "alive"


def all_processes() -> dict[int, tuple[str, int, int, int]]:
    """pid -> (state, ppid, pgrp, starttime) of every process visible in /proc ({} without /proc)."""
    out = {}
    if not _has_proc():
        return out
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _proc_stat(int(name))
            if stat is not None:
                out[int(name)] = stat
    return out


