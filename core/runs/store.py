"""Run store: one folder per run (`core.runs.folder`, the truth), indexed in SQLite (`core.runs.index`, a
cache), with the device queue (`core.runs.queue`).

    <runs_dir>/runs.db          the index of all runs (WAL mode; workers write, the UI reads)
    <runs_dir>/<run_id>/        run_id: "<YYYYmmdd-HHMMSS>-<name slug>-<4 hex>", sortable and unique;
                                its files: `core.runs.folder`

Statuses::

    queued -> running -> stopping -> stopped
       |         |          \\-----> failed
       |         +-> finished | failed
       \\-> stopped (cancelled before it started)
    stopped | failed -> queued (resume)
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.checkpoints import CHECKPOINTS_DIR, Checkpoint, find_last, list_checkpoints, remove_partial
from core.device import normalize_devices
from core.errors import ConfigError
from core.runs import claims, kinds
from core.runs.folder import (  # noqa: F401  (re-exported: the names every caller imports from the store)
    ACTIVE, CONFIG_FILE, ENDED, FAILED, FINISHED, LOG_FILE, METRICS_FILE, QUEUED, RESUMABLE, RUNNING, SAMPLE_RE,
    SAMPLES_DIR, STATUS_FILE, STATUSES, STOP_FILE, STOPPED, STOPPING, FolderWriteError, append_metrics_line,
    read_metrics_file, read_status, tail_lines, write_json_atomic,
)
from core.runs.index import (  # noqa: F401  (re-exported)
    DB_FILE, INDEX_ERRORS, IndexCorruptError, Run, RunIndex, RunNotFoundError, RunStateError,
)
from core.runs.procs import (  # noqa: F401  (re-exported)
    all_processes, parent_pid, process_alive, process_session, process_start_time, process_state,
)
from core.runs.queue import WAITING, DeviceQueue, DevicesBusyError  # noqa: F401  (re-exported)

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, STOPPED}),
    RUNNING: frozenset({STOPPING, FINISHED, FAILED}),
    STOPPING: frozenset({STOPPED, FAILED}),
    FINISHED: frozenset({QUEUED}),  # only to extend it (Launcher.resume_in_place with more total_steps)
    STOPPED: frozenset({QUEUED}),
    FAILED: frozenset({QUEUED}),
}

_UPDATABLE = frozenset({
    "step", "total_steps", "resume", "started_at", "ended_at", "pid", "pid_start", "worker_pid",
    "worker_start", "stop_requested_at", "stop_deadline", "message", "host",
})


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "run"



# ---------------------------------------------------------------------------------------------


class RunStore(RunIndex, DeviceQueue):
    """Run folders under `runs_dir` and their SQLite index `runs_dir/runs.db` (`core.runs.index`), with the
    device queue (`core.runs.queue`)."""

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
