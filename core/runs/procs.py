"""Process identity on Linux (/proc; elsewhere a best effort through signal 0): is a pid still the process
we recorded (its start time), who is its parent, its session, and which processes exist.

`core.runs.launcher` signals only what these prove to be a run's own worker; `worker_token` below is the
second proof: a lock that only the live worker of that run holds.
"""
from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path


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




# ---------------------------------------------------------------------------------------------
# the worker token: a lock only the live worker of a run holds


def hold_worker_lock(lock_path: Path) -> int:
    """Take the run's worker lock for as long as this process keeps the returned fd open (the kernel
    releases it when the process dies, however it dies). Raises BlockingIOError when another process
    holds it (the run already has a live worker)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_holders(st: os.stat_result) -> set[int] | None:
    """Pids holding a flock on the file of `st`, from /proc/locks (None without it)."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (blocked waiters carry "->" and are skipped)
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want and parts[4].isdigit():
            holders.add(int(parts[4]))
    return holders


def is_our_worker(lock_path: Path, pid: int | None, start: int | None) -> bool:
    """Whether process `pid` is, provably, the live worker of the run whose lock file is `lock_path`:
    it started at `start` (a null start proves nothing) AND it holds that lock. The lock file must be a
    plain file with one name (a link to another run's lock proves nothing). Without /proc/locks, a lock
    held by anyone counts (the start time must still match)."""
    if pid is None or start is None or pid <= 0 or process_state(pid, start) != "alive":
        return False
    try:
        st = os.lstat(lock_path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return False
    holders = _lock_holders(st)
    if holders is not None:
        return pid in holders
    try:
        fd = hold_worker_lock(lock_path)
    except BlockingIOError:
        return True
    except OSError:
        return False
    os.close(fd)
    return False


def started_within(pid: int, ancestor: int, ancestor_start: int | None) -> bool:
    """Whether `ancestor` (started at `ancestor_start`) is `pid` itself or one of its ancestors."""
    if ancestor_start is None or process_state(ancestor, ancestor_start) != "alive":
        return False
    current: int | None = pid
    while current is not None and current > 1:
        if current == ancestor:
            return True
        current = parent_pid(current)
    return False
