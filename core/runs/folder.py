"""The run folder: the one truth about a run. Every other record of it (the SQLite index) is a cache.

    <run_dir>/config.json       resolved run config, a JSON object; written at creation
    <run_dir>/status.json       the run's status, kind, step, total_steps, pids, message and times
    <run_dir>/log.txt           worker stdout + stderr, appended by every attempt
    <run_dir>/metrics.jsonl     one object per optimizer step: {"step": int, "time": float, <name>: float}
    <run_dir>/stop.request      present while a stop is requested (the worker polls it)
    <run_dir>/worker.lock       flock-ed by the run's live worker (`core.runs.procs`: proof that a pid is ours)
    <run_dir>/checkpoints/      `core.checkpoints`'s layout
    <run_dir>/samples/step-000000.png   sample grids, step 0 = the base model

Every write here is atomic (a temporary file renamed over the old one) or an append of one line, and
none needs the index: a worker whose index write fails keeps its record here, and the index is rebuilt
from these files. A full disk is named as such (`describe_write_error`), wherever it strikes.
Plain files only: no sqlite, no torch.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from core.checkpoints import describe_filesystem
from core.errors import UserError

QUEUED = "queued"
RUNNING = "running"
STOPPING = "stopping"
FINISHED = "finished"
STOPPED = "stopped"
FAILED = "failed"
STATUSES = (QUEUED, RUNNING, STOPPING, FINISHED, STOPPED, FAILED)
ACTIVE = frozenset({RUNNING, STOPPING})
RESUMABLE = frozenset({STOPPED, FAILED})
ENDED = frozenset({FINISHED, STOPPED, FAILED})

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"
STOP_FILE = "stop.request"
LOCK_FILE = "worker.lock"
SAMPLES_DIR = "samples"
SAMPLE_RE = re.compile(r"step-(\d+)\.png")
LOG_TAIL_LINES = 20  # lines of log.txt kept in the message of a failed run


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


LOW_SPACE_BYTES = 1 << 20  # an I/O error from SQLite with less free space than this is a full disk


def is_disk_full(error: BaseException, path: Path | None = None) -> bool:
    """ENOSPC / EDQUOT, SQLite's "database or disk is full", or SQLite's "disk I/O error" on a file system
    (of `path`) with (almost) no space left: SQLite reports a failed WAL write so."""
    if getattr(error, "disk_full", False):
        return True
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "disk is full" in str(error):
            return True
        if path is not None and code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
            try:
                return shutil.disk_usage(Path(path).parent).free < LOW_SPACE_BYTES
            except OSError:
                return False
    return False


def describe_write_error(error: BaseException, path: Path) -> str:
    """One line for a failed write to `path`: "no space left on DEVICE (writing FILE)" when the disk is
    full, else the error itself with the file named."""
    if is_disk_full(error, path):
        return f"no space left on {describe_filesystem(Path(path).parent)} (writing {Path(path).name})"
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"{path}: {reason}"


class FolderWriteError(UserError, OSError):
    """A run folder's own record (metrics.jsonl, status.json) could not be written; the message says why
    and names the file ("no space left on DEVICE (writing FILE)" on a full disk: `.disk_full`)."""

    def __init__(self, error: BaseException, path: Path):
        super().__init__(describe_write_error(error, path))
        self.disk_full = is_disk_full(error)


def read_status(run_dir: Path) -> dict | None:
    """status.json as a dict (None when missing, unreadable or not a status)."""
    try:
        d = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("status") in STATUSES else None


def update_status(run_dir: Path, **fields: Any) -> dict:
    """Set `fields` in status.json, atomically (rename). On a full disk, where a new file cannot be
    made, it is rewritten in place (its blocks are already there). Raises FolderWriteError when neither
    works. Returns the new content."""
    path = Path(run_dir) / STATUS_FILE
    d = read_status(run_dir) or {}
    d.update(fields, updated_at=time.time())
    try:
        write_json_atomic(path, d)
        return d
    except OSError as first:
        try:  # compact, to fit in the blocks the file already has
            with open(path, "r+") as f:
                f.write(json.dumps(d) + "\n")
                f.truncate()
            return d
        except OSError:
            raise FolderWriteError(first, path) from first


def end_status(run_dir: Path, status: str, message: str, **fields: Any) -> dict | None:
    """Record the end of a run in its folder (when the index cannot): status, message, ended_at, and the
    step of the last metrics point. Never raises; returns what was written (None: nothing could be)."""
    points = read_metrics_file(Path(run_dir) / METRICS_FILE)
    if points:
        fields.setdefault("step", points[-1]["step"])
    try:
        return update_status(run_dir, status=status, message=message, ended_at=time.time(), **fields)
    except OSError:
        pass
    try:  # a full disk: the first line of the message may still fit where the whole did not
        return update_status(run_dir, status=status, message=message.split("\n", 1)[0], ended_at=time.time(),
                             **fields)
    except OSError:
        return None


class GuardedStream:
    """A text stream (stdout or stderr going to log.txt) whose failed writes are dropped instead of
    raised, so that a full disk never kills a run through a print; the first failure is kept in
    `.error` ("no space left on ... (writing log.txt)") and said once on `fallback` when given."""

    def __init__(self, stream, path: Path, fallback=None):
        self._stream, self._path, self._fallback = stream, Path(path), fallback
        self.error: str | None = None

    def _guard(self, call):
        try:
            return call()
        except OSError as e:
            if self.error is None:
                self.error = describe_write_error(e, self._path)
                if self._fallback is not None:
                    try:
                        self._fallback.write(f"[runs] {self.error}; the log misses lines from here\n")
                        self._fallback.flush()
                    except OSError:
                        pass
            return None

    def write(self, s: str) -> int:
        self._guard(lambda: self._stream.write(s))
        return len(s)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def append_metrics_line(run_dir: Path, step: int, values: dict[str, float], time_s: float) -> None:
    """Append one point to metrics.jsonl (one write of one line; a full disk: FolderWriteError naming it)."""
    path = Path(run_dir) / METRICS_FILE
    line = json.dumps({"step": step, "time": time_s, **values}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise FolderWriteError(e, path) from e


def read_metrics_file(path: Path) -> list[dict]:
    """Points of a metrics.jsonl ({"step": int, "time": float, name: float}); torn or foreign lines skipped."""
    points = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    for line in text.splitlines():
        try:
            point = json.loads(line)
        except ValueError:
            continue
        if (isinstance(point, dict) and isinstance(point.get("step"), int) and not isinstance(point["step"], bool)
                and isinstance(point.get("time"), (int, float))):
            points[point["step"]] = {k: v for k, v in point.items() if isinstance(v, (int, float))}
    return [points[s] for s in sorted(points)]


def tail_lines(path: Path, n: int = 20, max_bytes: int = 65536) -> list[str]:
    """The last `n` lines of a text file (reads at most `max_bytes` from its end); [] if missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line was cut by the seek
    return lines[-n:] if n > 0 else []
