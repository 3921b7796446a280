"""Run store: one folder per run on disk, indexed in SQLite.

Folder layout (the trainer, the UI and the CLI rely on it)::

    <runs_dir>/runs.db                  SQLite index of all runs (WAL mode; workers write, the UI reads)
    <runs_dir>/<run_id>/                run_id: "<YYYYmmdd-HHMMSS>-<name slug>-<4 hex>", sortable and unique
        config.json                     resolved run config, a JSON object; written at creation, never changed
        status.json                     mirror of the run's row (status, kind, step, total_steps, pid, message, times)
        log.txt                         worker stdout + stderr, appended by every attempt
        metrics.jsonl                   one object per optimizer step: {"step": int, "time": float, <name>: float}
        stop.request                    present while a stop is requested (the worker polls it)
        checkpoints/                    the run's checkpoints; their layout is `core.checkpoints`'s
        samples/step-000000.png         sample grids, step 0 = the base model

Statuses::

    queued -> running -> stopping -> stopped
       |         |          \\-----> failed
       |         +-> finished | failed
       \\-> stopped (cancelled before it started)
    stopped | failed -> queued (resume)

A run is *active* while running or stopping: it then owns its device set ("cpu", "cuda:0", "cuda:0,1").
Two device sets conflict when they share a device; at most one active run per device. Queued runs
start in queue order (creation order; a resumed run joins the end of the queue), and only on the
host that queued them: pids are only meaningful there.

Every write is one short `BEGIN IMMEDIATE` transaction on a fresh connection (safe across threads and
processes); a write to a run's row (not a metric point: `append_metrics`) rewrites status.json inside
that transaction, so the mirror follows the database.
The folders are the source of truth (`core.runs.folder`); the index is a cache of them. A missing, empty
or corrupt runs.db is rebuilt from them (status.json, metrics.jsonl) by whichever process opens it next,
workers included (a corrupt one is kept beside it as runs.db.corrupt-<time>). A worker whose index write
fails (corrupt, read-only, full: INDEX_ERRORS) says so once and goes on (`try_index`, `index_failed`),
recording its end in status.json; once it is gone, `adopt_folder` takes that end into the index.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sys
import sqlite3
import fcntl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.checkpoints import CHECKPOINTS_DIR, Checkpoint, find_last, list_checkpoints, remove_partial
from core.device import devices_conflict, normalize_devices, parse_devices
from core.errors import ConfigError, UserError
from core.runs import claims, kinds
from core.runs.folder import (  # noqa: F401  (re-exported: the names every caller imports from the store)
    ACTIVE, CONFIG_FILE, ENDED, FAILED, FINISHED, LOG_FILE, METRICS_FILE, QUEUED, RESUMABLE, RUNNING, SAMPLE_RE,
    SAMPLES_DIR, STATUS_FILE, STATUSES, STOP_FILE, STOPPED, STOPPING, FolderWriteError, append_metrics_line,
    describe_write_error, read_metrics_file, read_status, tail_lines, write_json_atomic,
)
from core.runs.procs import (  # noqa: F401  (re-exported)
    all_processes, parent_pid, process_alive, process_session, process_start_time, process_state,
)

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, STOPPED}),
    RUNNING: frozenset({STOPPING, FINISHED, FAILED}),
    STOPPING: frozenset({STOPPED, FAILED}),
    FINISHED: frozenset({QUEUED}),  # only to extend it (Launcher.resume_in_place with more total_steps)
    STOPPED: frozenset({QUEUED}),
    FAILED: frozenset({QUEUED}),
}

DB_FILE = "runs.db"

WAITING = "waiting"  # the message of a queued run that waits for a device starts with it
BUSY_TIMEOUT_S = 30.0  # several processes write; a writer waits this long for the lock
SCHEMA_VERSION = 3  # 2: runs.ran_before; 3: runs.kind
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    devices TEXT NOT NULL,          -- canonical device set: "cpu" or "cuda:0,1"
    host TEXT NOT NULL,             -- machine that runs it; pids are only checked there
    total_steps INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    queue_seq INTEGER NOT NULL,     -- queue position: queued runs start in this order
    resume INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    queued_at REAL,
    started_at REAL,
    ended_at REAL,
    updated_at REAL NOT NULL,
    pid INTEGER,                    -- launched process, leader of the worker's process group
    pid_start INTEGER,              -- its start time (/proc/<pid>/stat field 22): tells a recycled pid apart
    worker_pid INTEGER,             -- the rank-0 worker process (differs from pid under accelerate launch)
    worker_start INTEGER,
    stop_requested_at REAL,
    stop_deadline REAL,             -- after this time a stopping worker is killed
    message TEXT NOT NULL DEFAULT '',
    ran_before REAL NOT NULL DEFAULT 0,  -- seconds the run was active before its last resume
    kind TEXT NOT NULL DEFAULT 'train'   -- train | eval | embeddings: from the config's entry (core.runs.kinds)
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, queue_seq);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    time REAL NOT NULL,
    data TEXT NOT NULL,             -- JSON object {name: float}, without step and time
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
"""
_UPDATABLE = frozenset({
    "step", "total_steps", "resume", "started_at", "ended_at", "pid", "pid_start", "worker_pid",
    "worker_start", "stop_requested_at", "stop_deadline", "message", "host",
})


def _schema_statements() -> list[str]:
    """_SCHEMA as single statements (executescript would commit the open transaction)."""
    statements, current = [], ""
    for line in _SCHEMA.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    return statements


class RunStateError(UserError):
    """The run is in a status that does not allow the requested action (e.g. resume a finished run)."""


class DevicesBusyError(RunStateError):
    """A run cannot start now: another active run of this host uses one of its devices (`.blocker`: the
    run, when it is one of this runs dir; `.stop_command`: how to stop it, wherever it is)."""

    def __init__(self, message: str, blocker: "Run | None", stop_command: str):
        self.blocker = blocker
        self.stop_command = stop_command
        super().__init__(message)


def _busy_elsewhere(what: str, devices: str, device: str, holder: dict) -> DevicesBusyError:
    """The error for a device held by a process of another runs dir (`core.runs.claims`)."""
    run_dir = holder.get("run_dir")
    where = f"run {run_dir}" if run_dir else "another process"
    stop = (f"python -m core runs stop {Path(run_dir).name} --runs-dir {Path(run_dir).parent}" if run_dir
            else f"kill {holder.get('pid')}")
    return DevicesBusyError(f"{what}: devices {devices} are used by {where} (process {holder.get('pid')}, "
                            f"{device} held machine-wide); wait for it or stop it", None, stop)


class IndexCorruptError(UserError):
    """runs.db is not a readable SQLite database."""

    def __init__(self, path: Path, cause: object):
        super().__init__(f"{path}: not a readable run index ({cause}); rebuild it from the run folders with "
                         f"`python -m core runs reindex --runs-dir {path.parent}` (the bad file is kept beside it)")


def is_corrupt(error: sqlite3.DatabaseError) -> bool:
    """A database file that is not SQLite or is damaged (not: locked, read-only, full)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return "not a database" in str(error) or "malformed" in str(error)


INDEX_ERRORS = (sqlite3.Error, OSError, IndexCorruptError)  # what a write to the index may raise


class RunNotFoundError(UserError):
    """No run with this id (or id fragment) in the runs dir."""


@dataclass(frozen=True)
class Run:
    """One row of the runs table, plus the folder it lives in."""

    id: str
    name: str
    status: str
    devices: str
    host: str
    total_steps: int
    step: int
    queue_seq: int
    resume: int
    created_at: float
    queued_at: float | None
    started_at: float | None
    ended_at: float | None
    updated_at: float
    pid: int | None
    pid_start: int | None
    worker_pid: int | None
    worker_start: int | None
    stop_requested_at: float | None
    stop_deadline: float | None
    message: str
    run_dir: Path
    ran_before: float = 0.0  # seconds active before the last resume
    kind: str = kinds.TRAIN  # train | eval | embeddings (core.runs.kinds), fixed at creation

    @property
    def ran_seconds(self) -> float | None:
        """Active time over every start of the run (resumes included), up to now while it is active."""
        if self.started_at is None:
            return self.ran_before or None
        return self.ran_before + ((self.ended_at or time.time()) - self.started_at)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    @property
    def is_resumable(self) -> bool:
        return self.status in RESUMABLE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "run"


# ---------------------------------------------------------------------------------------------


class RunStore:
    """Run folders under `runs_dir` and their SQLite index `runs_dir/runs.db`."""

    def __init__(self, runs_dir: str | os.PathLike, *, open_index: bool = True):
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.runs_dir / DB_FILE
        self.host = socket.gethostname()
        self._index_errors_said: set[str] = set()
        if open_index:  # False: for `reindex`, which must also work on an unreadable runs.db
            with self._connection() as con:  # creates the index, or rebuilds it when runs.db is missing or empty
                empty = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
            if empty and any((p / STATUS_FILE).is_file() for p in self.runs_dir.iterdir() if p.is_dir()):
                self.reindex()  # an index recreated empty (by an older version) beside existing run folders

    # -- connections ------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        """A connection to an index with the schema. A missing, empty or corrupt runs.db (deleted or
        overwritten while runs were active, or never made) is rebuilt from the run folders first (a
        corrupt one is kept beside it as runs.db.corrupt-<time>)."""
        for _ in range(3):
            if not self.db_path.exists():
                self._initialize()
            con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                con.row_factory = sqlite3.Row
                con.execute("PRAGMA synchronous=NORMAL")
                version = con.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.DatabaseError as e:
                con.close()
                if not is_corrupt(e):
                    raise
                self._set_aside_corrupt()
                continue
            if version == SCHEMA_VERSION:
                return con
            con.close()
            self._initialize()
        raise IndexCorruptError(self.db_path, "its schema could not be created")

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        """One process at a time sets a corrupt index aside (a lock file beside runs.db)."""
        with open(self.runs_dir / f".{DB_FILE}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _set_aside_corrupt(self) -> Path | None:
        """Move an unreadable runs.db (and its -wal, -shm) to runs.db.corrupt-<time>, unless another
        process did it meanwhile; the next connection rebuilds the index. Returns where it went."""
        with self._index_lock():
            try:
                con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                try:
                    con.execute("PRAGMA user_version").fetchone()
                    con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                    return None  # readable again: another process rebuilt it
                finally:
                    con.close()
            except sqlite3.DatabaseError as e:
                if not is_corrupt(e):
                    raise
            moved = self.db_path.with_name(f"{DB_FILE}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            try:
                os.replace(self.db_path, moved)
            except FileNotFoundError:
                return None
            except OSError as e:  # e.g. runs.db is a mount point or the folder is read-only
                raise IndexCorruptError(self.db_path, f"corrupt, and it cannot be moved aside: {e}") from None
            for suffix in ("-wal", "-shm", "-journal"):
                side = Path(f"{self.db_path}{suffix}")
                if side.exists():
                    os.replace(side, f"{moved}{suffix}")
            print(f"[runs] {self.db_path} was not a readable index: moved to {moved.name}; rebuilding it from "
                  "the run folders", file=sys.stderr, flush=True)
            return moved

    def _initialize(self) -> int:
        """Create the schema and index every run folder (in one transaction; another process doing the
        same meanwhile is waited for). Returns the runs added."""
        if not self.db_path.exists():  # a WAL left by a deleted database must not be replayed into the new one
            for suffix in ("-wal", "-shm", "-journal"):
                Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as e:
                raise IndexCorruptError(self.db_path, e) from None
            try:
                if con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
                    con.execute("ROLLBACK")
                    return 0
                for statement in _schema_statements():
                    con.execute(statement)
                columns = {r["name"] for r in con.execute("PRAGMA table_info(runs)")}
                if "ran_before" not in columns:  # a version-1 index
                    con.execute("ALTER TABLE runs ADD COLUMN ran_before REAL NOT NULL DEFAULT 0")
                if "kind" not in columns:  # a version-1 or -2 index: each run's kind from its config
                    con.execute("ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'train'")
                    for (run_id,) in con.execute("SELECT id FROM runs").fetchall():
                        con.execute("UPDATE runs SET kind = ? WHERE id = ?", (self._kind_in_folder(run_id), run_id))
                added = self._index_folders(con)
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return added
        finally:
            con.close()

    def _index_folders(self, con: sqlite3.Connection) -> int:
        """Add a row (and the metrics) of every run folder the index lacks: from status.json, the mirror of
        the row; metrics from metrics.jsonl. A folder without a readable status.json is indexed as failed."""
        columns = [r["name"] for r in con.execute("PRAGMA table_info(runs)").fetchall()]
        known = {r["id"] for r in con.execute("SELECT id FROM runs").fetchall()}
        added = 0
        for folder in sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and not p.is_symlink()):
            if folder.name in known or not (folder / CONFIG_FILE).is_file():
                continue
            row = self._row_from_folder(folder)
            if row is None:
                continue
            seq = con.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs").fetchone()[0]
            row.setdefault("queue_seq", seq)
            row = {k: v for k, v in row.items() if k in columns}
            con.execute(f"INSERT OR IGNORE INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))
            for point in read_metrics_file(folder / METRICS_FILE):
                step, t = point.pop("step"), point.pop("time")
                con.execute("INSERT OR IGNORE INTO metrics (run_id, step, time, data) VALUES (?, ?, ?, ?)",
                            (folder.name, step, t, json.dumps(point)))
            self._mirror(con, folder.name)
            added += 1
        return added

    def _kind_in_folder(self, run_id: str) -> str:
        """The kind of run its config.json's entry makes (train when the file is unreadable)."""
        try:
            config = json.loads((self.run_dir(run_id) / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            return kinds.TRAIN
        return kinds.kind_of(config.get("entry")) if isinstance(config, dict) else kinds.TRAIN

    def _row_from_folder(self, folder: Path) -> dict[str, Any] | None:
        row = self._status_row(folder)
        row["kind"] = self._kind_in_folder(folder.name)
        return row

    def _status_row(self, folder: Path) -> dict[str, Any]:
        now = time.time()
        try:
            status = json.loads((folder / STATUS_FILE).read_text())
            if not isinstance(status, dict) or status.get("status") not in STATUSES:
                raise ValueError("no valid status")
        except (OSError, ValueError):
            status = None
        points = read_metrics_file(folder / METRICS_FILE)
        last_step = max((p["step"] for p in points), default=0)
        if status is not None:
            row = {k: v for k, v in status.items() if k != "run_dir"}
            row["id"] = folder.name
            row["step"] = max(int(row.get("step") or 0), last_step)
            for key in ("name", "devices", "host"):
                if not isinstance(row.get(key), str) or not row[key]:
                    row[key] = {"name": folder.name, "devices": "cpu", "host": self.host}[key]
            row.setdefault("total_steps", max(last_step, 1))
            row.setdefault("created_at", folder.stat().st_mtime)
            row.setdefault("updated_at", now)
            row.setdefault("message", "")
            return row
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, ValueError):
            config = {}
        config = config if isinstance(config, dict) else {}
        total = config.get("max_steps") or config.get("num_samples") or max(last_step, 1)
        try:
            devices = normalize_devices(str(config.get("device") or "cpu").replace("auto", "cpu"))
        except ConfigError:
            devices = "cpu"
        created = folder.stat().st_mtime
        return dict(id=folder.name, name=folder.name, status=FAILED, devices=devices, host=self.host,
                    total_steps=int(total) if isinstance(total, int) and total > 0 else max(last_step, 1),
                    step=last_step, created_at=created, updated_at=now, ended_at=now,
                    message=f"re-indexed from its folder without a readable {STATUS_FILE}; resume it to continue")

    def reindex(self) -> tuple[int, Path | None]:
        """Rebuild the index from the run folders: add every folder it lacks. An unreadable runs.db is
        first moved aside (to runs.db.corrupt-<time>). Returns (runs added, where the bad file went)."""
        moved = self._set_aside_corrupt() if self.db_path.exists() else None
        with self._write() as con:
            added = self._index_folders(con)
        return added, moved

    def adopt_folder(self, run_id: str) -> Run | None:
        """Take an active run's end from its folder, where its worker recorded it when the index could not be
        written (status.json says finished, stopped or failed); its metrics come from metrics.jsonl. Call it
        once the worker is gone. Returns the run as adopted (None: the folder says nothing new)."""
        folder = read_status(self.run_dir(run_id))
        if folder is None or folder.get("status") not in ENDED:
            return None
        points = read_metrics_file(self.run_dir(run_id) / METRICS_FILE)
        with self._write() as con:
            run = self._get(con, run_id)
            if not run.is_active:
                return None
            values = {"status": folder["status"], "message": str(folder.get("message") or ""),
                      "ended_at": folder.get("ended_at") or time.time()}
            step = folder.get("step")
            values["step"] = max(step if isinstance(step, int) else 0, points[-1]["step"] if points else 0)
            self._apply(con, run_id, values, check={})
            for point in points:
                point = dict(point)
                step, t = point.pop("step"), point.pop("time")
                con.execute("INSERT OR REPLACE INTO metrics (run_id, step, time, data) VALUES (?, ?, ?, ?)",
                            (run_id, step, t, json.dumps(point)))
            return self._mirror(con, run_id)

    def _row_to_run(self, row: sqlite3.Row) -> Run:
        return Run(**{k: row[k] for k in row.keys()}, run_dir=self.runs_dir / row["id"])

    def _get(self, con: sqlite3.Connection, run_id: str) -> Run:
        row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"run {run_id!r}: not found in {self.runs_dir}")
        return self._row_to_run(row)

    def _mirror(self, con: sqlite3.Connection, run_id: str) -> Run:
        """Re-read the row and rewrite status.json (called inside the write transaction)."""
        run = self._get(con, run_id)
        if run.run_dir.is_dir():
            d = run.to_dict()
            d.pop("run_dir")
            write_json_atomic(run.run_dir / STATUS_FILE, d)
        return run

    # -- runs -------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def create_run(self, name: str, config: dict, devices: str, total_steps: int, run_id: str | None = None,
                   claim: dict[str, Any] | None = None) -> Run:
        """Create the run folder (config.json, status.json, empty log and metrics) and a queued row.
        `run_id` names the folder explicitly (it must not exist yet); by default one is generated.

        With `claim` (fields such as worker_pid, worker_start) the run is created running, in the same
        transaction that checks its devices are free: a foreground run never sits in the queue where
        another process's scheduler could start it. If they are not free, DevicesBusyError is raised
        and no folder is left behind."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("name", "a run needs a non-empty name")
        if len(name) > 200:
            raise ConfigError("name", f"{len(name)} characters; keep it under 200")
        devices = normalize_devices(devices)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ConfigError("total_steps", f"{total_steps!r}; expected a positive integer")
        if not isinstance(config, dict):
            raise ConfigError("config", f"expected a JSON object (dict), got {type(config).__name__}")
        try:
            config_text = json.dumps(config, indent=2, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ConfigError("config", f"not storable as JSON ({e}); use plain numbers, strings, "
                                        "lists and dicts") from e
        if run_id is None:
            run_id, run_dir = self._new_folder(name)
        else:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", run_id):
                raise ConfigError("run_dir", f"{run_id!r}: use letters, digits, '.', '_' and '-' for a run folder name")
            run_dir = self.runs_dir / run_id
            try:
                run_dir.mkdir()
            except FileExistsError:
                raise ConfigError("run_dir", f"{run_dir} already exists; pick a new folder (or --resume it)") from None
        try:
            (run_dir / CONFIG_FILE).write_text(config_text + "\n")
            (run_dir / CHECKPOINTS_DIR).mkdir()
            (run_dir / SAMPLES_DIR).mkdir()
            (run_dir / LOG_FILE).touch()
            (run_dir / METRICS_FILE).touch()
            now = time.time()
            with self._write() as con:
                if claim is not None:
                    self._check_free(con, devices, f"run {run_id}", hold_for=run_dir)
                seq = con.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs").fetchone()[0]
                con.execute(
                    "INSERT INTO runs (id, name, status, devices, host, total_steps, queue_seq, created_at,"
                    " queued_at, updated_at, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, name.strip(), QUEUED, devices, self.host, total_steps, seq, now, now, now,
                     kinds.kind_of(config.get("entry"))),
                )
                if claim is not None:
                    return self._transition(con, self._get(con, run_id), RUNNING, dict(claim))
                return self._mirror(con, run_id)
        except BaseException:
            if claim is not None:
                claims.release(devices)
            shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def _new_folder(self, name: str) -> tuple[str, Path]:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for _ in range(1000):
            run_id = f"{stamp}-{_slug(name)}-{secrets.token_hex(2)}"
            run_dir = self.runs_dir / run_id
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            return run_id, run_dir
        raise RuntimeError(f"could not create a unique run folder in {self.runs_dir}")

    def get(self, run_id: str) -> Run:
        with self._connection() as con:
            return self._get(con, run_id)

    def find(self, ref: str) -> Run:
        """A run by its full id, or by a fragment of it that matches exactly one run (CLI convenience)."""
        with self._connection() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (ref,)).fetchone()
            if row is not None:
                return self._row_to_run(row)
            pattern = "%" + ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = con.execute("SELECT * FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY id",
                               (pattern,)).fetchall()
        if len(rows) == 1:
            return self._row_to_run(rows[0])
        if not rows:
            raise RunNotFoundError(f"run {ref!r}: not found in {self.runs_dir} (no run id contains it); "
                                   "`python -m core runs list` shows the ids")
        ids = ", ".join(r["id"] for r in rows[:5])
        raise RunNotFoundError(f"run {ref!r}: matches {len(rows)} runs ({ids}); give more of the id")

    def list_runs(self, statuses: Iterable[str] | None = None, *, newest_first: bool = True) -> list[Run]:
        sql = "SELECT * FROM runs"
        args: tuple = ()
        if statuses is not None:
            statuses = tuple(statuses)
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            args = statuses
        sql += " ORDER BY created_at DESC, id DESC" if newest_first else " ORDER BY created_at, id"
        with self._connection() as con:
            return [self._row_to_run(r) for r in con.execute(sql, args).fetchall()]

    def read_config(self, run_id: str) -> dict:
        return json.loads((self.run_dir(run_id) / CONFIG_FILE).read_text())

    # -- status -----------------------------------------------------------------------------

    def set_status(self, run_id: str, status: str, **fields: Any) -> Run:
        """Move a run to `status` (validated against TRANSITIONS; raises RunStateError) and set `fields`."""
        with self._write() as con:
            run = self._get(con, run_id)
            return self._transition(con, run, status, fields)

    def try_set_status(self, run_id: str, status: str, expect: Iterable[str], **fields: Any) -> Run | None:
        """Compare-and-set: move to `status` only if the run is now in one of `expect`, else return None.

        For processes racing on the same run (worker exit vs. launcher kill vs. orphan check)."""
        with self._write() as con:
            run = self._get(con, run_id)
            if run.status not in set(expect):
                return None
            return self._transition(con, run, status, fields)

    def _transition(self, con: sqlite3.Connection, run: Run, status: str, fields: dict) -> Run:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if status not in TRANSITIONS[run.status]:
            allowed = ", ".join(sorted(TRANSITIONS[run.status])) or "none"
            raise RunStateError(f"run {run.id}: cannot go from {run.status} to {status} "
                                f"(from {run.status}: {allowed})")
        now = time.time()
        values = dict(fields)
        if status == RUNNING:
            values.setdefault("started_at", now)
            values.setdefault("host", self.host)
        if status in (FINISHED, STOPPED, FAILED):
            values.setdefault("ended_at", now)
        extra = {}
        if status == QUEUED:
            if run.started_at is not None:  # a resume: keep the time the run was active so far
                extra["ran_before"] = run.ran_before + ((run.ended_at or now) - run.started_at)
            for key in ("started_at", "ended_at", "pid", "pid_start", "worker_pid", "worker_start",
                        "stop_requested_at", "stop_deadline"):
                values.setdefault(key, None)
            values.setdefault("host", self.host)
            extra["queued_at"] = now
            extra["queue_seq"] = con.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs").fetchone()[0]
        self._apply(con, run.id, {**values, **extra, "status": status}, check=values)
        return self._mirror(con, run.id)

    def update(self, run_id: str, expect: Iterable[str] | None = None, **fields: Any) -> Run | None:
        """Set fields without a status change; with `expect`, only if the status is one of them."""
        with self._write() as con:
            run = self._get(con, run_id)
            if expect is not None and run.status not in set(expect):
                return None
            self._apply(con, run_id, fields, check=fields)
            return self._mirror(con, run_id)

    def _apply(self, con: sqlite3.Connection, run_id: str, values: dict, check: dict) -> None:
        unknown = set(check) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable run fields: {sorted(unknown)}")
        values = {**values, "updated_at": time.time()}
        cols = ", ".join(f"{k} = ?" for k in values)
        con.execute(f"UPDATE runs SET {cols} WHERE id = ?", (*values.values(), run_id))

    def claim_startable(self, host: str | None = None) -> list[Run]:
        """Atomically mark running every queued run (of this host) whose devices are free.

        Queued runs are visited in queue order; a run waiting for a device also holds it against
        later queued runs, so runs sharing a device start in the order they were queued."""
        host = host or self.host
        now = time.time()
        with self._write() as con:
            rows = con.execute(
                "SELECT * FROM runs WHERE host = ? AND status IN (?, ?, ?) ORDER BY queue_seq",
                (host, QUEUED, RUNNING, STOPPING),
            ).fetchall()
            runs = [self._row_to_run(r) for r in rows]
            busy = set()
            for run in runs:
                if run.is_active:
                    busy |= set(parse_devices(run.devices))
            claimed = []
            holder: dict[str, Run] = {}  # device -> the run that holds it (active) or waits for it first
            for run in runs:
                if run.is_active:
                    holder.update({d: run for d in parse_devices(run.devices) if d not in holder})
            for run in runs:
                if run.status != QUEUED:
                    continue
                devs = set(parse_devices(run.devices))
                elsewhere = None if devs & busy else claims.held_elsewhere(run.devices)
                if elsewhere is not None:  # a process of another runs dir (or user) holds one of them
                    device, who = elsewhere
                    message = (f"{WAITING} for {device}, used by run {who.get('run_dir') or '?'} of another runs "
                               f"dir (process {who.get('pid')})")
                    if run.message != message and not run.message.startswith("resumed"):
                        self._apply(con, run.id, {"message": message}, check={})
                        self._mirror(con, run.id)
                    busy |= devs
                    holder.update({d: run for d in devs if d not in holder})
                    continue
                if not devs & busy:
                    started = {"status": RUNNING, "started_at": now}
                    if run.message.startswith(WAITING):
                        started["message"] = ""
                    self._apply(con, run.id, started, check={})
                    claimed.append(self._mirror(con, run.id))
                else:  # say what it waits for (the UI shows the message of a queued run)
                    other = next(holder[d] for d in sorted(devs) if d in holder)
                    why = (f"{WAITING} for run {other.id} ({other.status}) " if other.is_active
                           else f"{WAITING} behind queued run {other.id} ")
                    message = why + f"to free {', '.join(sorted(devs & set(parse_devices(other.devices))))}"
                    if run.message != message and not run.message.startswith("resumed"):
                        self._apply(con, run.id, {"message": message}, check={})
                        self._mirror(con, run.id)
                holder.update({d: run for d in devs if d not in holder})
                busy |= devs
            return claimed

    def claim(self, run_id: str, **fields: Any) -> Run:
        """Mark one queued run running now, if its devices are free (a worker started by hand)."""
        with self._write() as con:
            run = self._get(con, run_id)
            if run.status != QUEUED:
                raise RunStateError(f"run {run_id}: is {run.status}, not queued")
            self._check_free(con, run.devices, f"run {run_id}", hold_for=run.run_dir)
            if run.message.startswith(WAITING):
                fields = {"message": "", **fields}
            return self._transition(con, run, RUNNING, fields)

    def requeue_and_claim(self, run_id: str, queued_fields: dict[str, Any], claim: dict[str, Any],
                          expect: Iterable[str] = RESUMABLE) -> Run:
        """Resume a stopped or failed (or, to extend it, finished) run straight into running (foreground resume):
        one transaction checks its devices are free (else DevicesBusyError, and the run keeps its status)."""
        with self._write() as con:
            run = self._get(con, run_id)
            if run.status not in set(expect):
                raise RunStateError(f"run {run_id}: is {run.status}; only stopped or failed runs can be resumed")
            self._check_free(con, run.devices, f"run {run_id}", hold_for=run.run_dir)
            run = self._transition(con, run, QUEUED, dict(queued_fields))
            return self._transition(con, run, RUNNING, dict(claim))

    def active_on(self, devices: str, con: sqlite3.Connection | None = None) -> Run | None:
        """The active run of this host that uses one of `devices` (None when they are free)."""
        if con is None:
            with self._connection() as c:
                return self.active_on(devices, c)
        for row in con.execute("SELECT * FROM runs WHERE host = ? AND status IN (?, ?) ORDER BY queue_seq",
                               (self.host, RUNNING, STOPPING)).fetchall():
            if devices_conflict(row["devices"], devices):
                return self._row_to_run(row)
        return None

    def check_free(self, devices: str, what: str) -> None:
        """Raise DevicesBusyError (naming the run that holds them) unless `devices` are free now."""
        with self._connection() as con:
            self._check_free(con, devices, what)

    def _check_free(self, con: sqlite3.Connection, devices: str, what: str, hold_for: Path | None = None) -> None:
        """Raise DevicesBusyError unless `devices` are free in this index AND on this machine (no process
        of another runs dir holds them: `core.runs.claims`). With `hold_for` (a run folder) this process
        then holds them machine-wide, as the worker of that run."""
        other = self.active_on(devices, con)
        if other is not None:
            raise DevicesBusyError(f"{what}: devices {devices} are used by run {other.id} ({other.status}, step "
                                   f"{other.step}/{other.total_steps}); wait for it or stop it", other,
                                   f"python -m core runs stop {other.id}")
        try:
            if hold_for is not None:
                claims.hold(devices, hold_for)
            else:
                held = claims.held_elsewhere(devices)
                if held is not None:
                    raise claims.DeviceHeldError(*held)
        except claims.DeviceHeldError as e:
            raise _busy_elsewhere(what, devices, e.device, e.holder) from None

    def delete_run(self, run_id: str) -> None:
        """Remove a run (row, metrics, folder). Refuses a running or stopping run."""
        with self._write() as con:
            run = self._get(con, run_id)
            if run.is_active:
                raise RunStateError(f"run {run_id}: is {run.status}; stop it before deleting it")
            con.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        shutil.rmtree(run.run_dir, ignore_errors=True)

    # -- stop requests ----------------------------------------------------------------------

    def request_stop(self, run_id: str) -> None:
        (self.run_dir(run_id) / STOP_FILE).touch()

    def clear_stop_request(self, run_id: str) -> None:
        (self.run_dir(run_id) / STOP_FILE).unlink(missing_ok=True)

    # -- metrics ----------------------------------------------------------------------------

    def append_metrics(self, run_id: str, step: int, values: dict[str, float], time_s: float | None = None) -> None:
        """Record one point, the only writer of metrics. Two sinks, each for its reader:

        - metrics.jsonl in the run folder: the durable record, from which `reindex` (and a process that
          finds runs.db missing) rebuilds the table; `trim_after` cuts it on resume. A failed write raises
          FolderWriteError ("no space left on ..." on a full disk).
        - the metrics table (and the run's step): what the UI and the CLI read. A cache: when it cannot be
          written (corrupt, read-only, full) the point is skipped there with one line on stderr, and the
          caller goes on.

        status.json is not rewritten per point (nothing reads a running run's step there: a rebuild
        takes the step from metrics.jsonl); every other write to the row rewrites it."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        clean = {}
        for key, value in values.items():
            if key in ("step", "time") or not isinstance(key, str):
                raise ValueError(f"metric name {key!r} is reserved or not a string")
            clean[key] = float(value)
        t = time.time() if time_s is None else float(time_s)
        append_metrics_line(self.run_dir(run_id), step, clean, t)

        def index(con: sqlite3.Connection) -> None:
            con.execute("INSERT OR REPLACE INTO metrics (run_id, step, time, data) VALUES (?, ?, ?, ?)",
                        (run_id, step, t, json.dumps(clean)))
            con.execute("UPDATE runs SET step = ?, updated_at = ? WHERE id = ?", (step, time.time(), run_id))

        self.try_index(f"metrics of step {step}", index)

    def try_index(self, what: str, write: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `write` in one index transaction; when the index cannot be written (INDEX_ERRORS) say so
        (`index_failed`) and return None: the run folder keeps the record, the index is rebuilt from it.
        For workers, which never wait on, nor die of, the index."""
        try:
            with self._write() as con:
                result = write(con)
        except INDEX_ERRORS as e:
            self.index_failed(what, e)
            return None
        if self._index_errors_said:
            self._index_errors_said.clear()
            print(f"[runs] run index written again ({what})", file=sys.stderr, flush=True)
        return result

    def index_failed(self, what: str, error: BaseException) -> None:
        """One line on stderr for an index write that failed (once per cause: not one per step)."""
        cause = describe_write_error(error, self.db_path)
        if cause not in self._index_errors_said:
            self._index_errors_said.add(cause)
            print(f"[runs] run index not written ({what}): {cause}; the run folder keeps the record and the "
                  "index is rebuilt from it", file=sys.stderr, flush=True)

    def read_metrics(self, run_id: str, after_step: int = -1) -> list[dict[str, float]]:
        """Points with step > after_step, by step: [{"step": s, "time": t, name: value, ...}, ...].

        Cheap to poll: the UI passes the last step it has and gets only the new points."""
        with self._connection() as con:
            rows = con.execute("SELECT step, time, data FROM metrics WHERE run_id = ? AND step > ? "
                               "ORDER BY step", (run_id, after_step)).fetchall()
        return [{"step": r["step"], "time": r["time"], **json.loads(r["data"])} for r in rows]

    def latest_metrics(self, run_id: str) -> dict[str, float] | None:
        with self._connection() as con:
            r = con.execute("SELECT step, time, data FROM metrics WHERE run_id = ? ORDER BY step DESC LIMIT 1",
                            (run_id,)).fetchone()
        return None if r is None else {"step": r["step"], "time": r["time"], **json.loads(r["data"])}

    def trim_after(self, run_id: str, step: int) -> int:
        """Drop everything a resumed run will redo: metrics with step > `step` (table and metrics.jsonl,
        the file rewritten atomically; torn lines dropped), sample grids past `step`, and leftover
        temporary checkpoint folders. Call only while no worker runs. Returns the table rows removed."""
        with self._write() as con:
            removed = con.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step)).rowcount
        run_dir = self.run_dir(run_id)
        path = run_dir / METRICS_FILE
        kept = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    point = json.loads(line)
                except ValueError:
                    continue
                if isinstance(point, dict) and isinstance(point.get("step"), int) and point["step"] <= step:
                    kept.append(line + "\n")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
        for sample_step, sample in self.samples(run_id):
            if sample_step > step:
                sample.unlink(missing_ok=True)
        remove_partial(run_dir)
        return removed

    # -- files ------------------------------------------------------------------------------

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        return list_checkpoints(self.run_dir(run_id))

    def last_checkpoint(self, run_id: str) -> Checkpoint | None:
        return find_last(self.run_dir(run_id))

    def samples(self, run_id: str) -> list[tuple[int, Path]]:
        """(step, path) of the sample grids samples/step-NNNNNN.png, by step."""
        root = self.run_dir(run_id) / SAMPLES_DIR
        if not root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in root.iterdir() if (m := SAMPLE_RE.fullmatch(p.name))]
        return sorted(found)

    def log_tail(self, run_id: str, lines: int = 20) -> str:
        return "\n".join(tail_lines(self.run_dir(run_id) / LOG_FILE, lines))
