"""The run index: `runs_dir/runs.db`, a SQLite cache of the run folders that any process may rebuild.

Schema (runs, metrics), migrations, connections, and what keeps the cache honest: a missing, empty or
corrupt runs.db is rebuilt from the folders (status.json, metrics.jsonl) by whichever process opens it
next, workers included (a corrupt one is kept beside it as runs.db.corrupt-<time>); a worker whose index
write fails (corrupt, read-only, full: INDEX_ERRORS) says so once and goes on (`try_index`,
`index_failed`), recording its end in status.json; once it is gone, `adopt_folder` takes that end in.

Every write is one short `BEGIN IMMEDIATE` transaction on a fresh connection (safe across threads and
processes); a write to a run's row rewrites status.json inside that transaction (`_mirror`).
`RunIndex` is the base of `core.runs.store.RunStore`.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.runs import kinds
from core.runs.folder import (
    ACTIVE, CONFIG_FILE, ENDED, METRICS_FILE, RESUMABLE, STATUS_FILE, describe_write_error, kind_in_folder,
    read_metrics_file, read_status, row_from_folder, write_json_atomic,
)

DB_FILE = "runs.db"
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



# ---------------------------------------------------------------------------------------------


class RunIndex:
    """The SQLite index of the run folders under `runs_dir` (see the module docstring)."""

    def __init__(self, runs_dir: str | os.PathLike, *, open_index: bool = True, private_if_unwritable: bool = False):
        """`open_index` False: for `reindex`, which must also work on an unreadable runs.db.
        `private_if_unwritable`: for a reader (`runs list`, `runs show`) facing a runs.db it cannot write (a
        read-only file or mount): the index is rebuilt from the folders into a private file of this process."""
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.runs_dir / DB_FILE
        self.host = socket.gethostname()
        self._index_errors_said: set[str] = set()
        if open_index:
            with self._connection() as con:  # creates the index, or rebuilds it when runs.db is missing or empty
                empty = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
            if empty and any((p / STATUS_FILE).is_file() for p in self.runs_dir.iterdir() if p.is_dir()):
                self.reindex()  # an index recreated empty (by an older version) beside existing run folders
            if private_if_unwritable and not self._writable():
                self._use_private_index()

    def _writable(self) -> bool:
        """Whether this process can write runs.db (a write inside a transaction that is rolled back)."""
        with self._connection() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_READONLY or "readonly" in str(e):
                    return False
                raise
            finally:
                con.execute("ROLLBACK")
        return True

    def _use_private_index(self) -> None:
        """Read the runs through an index rebuilt from the folders in a temporary file of this process."""
        shared = self.db_path
        self.db_path = Path(tempfile.gettempdir()) / f"vapi-runs-index-{os.getpid()}-{id(self):x}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db_path}{suffix}").unlink(missing_ok=True)
        atexit.register(lambda: [Path(f"{self.db_path}{s}").unlink(missing_ok=True) for s in ("", "-wal", "-shm")])
        print(f"[runs] {shared} cannot be written (read-only); the runs are read from their folders",
              file=sys.stderr, flush=True)
        with self._connection():
            pass  # created and filled from the folders

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
                        con.execute("UPDATE runs SET kind = ? WHERE id = ?", (kind_in_folder(self.run_dir(run_id)), run_id))
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
            row = row_from_folder(folder, self.host)
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

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

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
