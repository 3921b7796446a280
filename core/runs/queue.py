"""The device queue of one runs dir: at most one active run per device, queued runs start in queue order.

A run is *active* while running or stopping: it then owns its device set ("cpu", "cuda:0", "cuda:0,1").
Two device sets conflict when they share a device. Queued runs start in queue order (creation order; a
resumed run joins the end of the queue), and only on the host that queued them: pids are only meaningful
there. Beyond this runs dir, the devices are claimed per machine (`core.runs.claims`): a device another
runs dir (or user) holds is busy here too. `DeviceQueue` is a part of `core.runs.store.RunStore`.
"""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from core.device import devices_conflict, parse_devices
from core.runs import claims
from core.runs.folder import QUEUED, RESUMABLE, RUNNING, STOPPING
from core.runs.index import Run, RunStateError

WAITING = "waiting"  # the message of a queued run that waits for a device starts with it


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



class DeviceQueue:
    """Claims of devices within the index (used through RunStore: `_write`, `_get`, `_apply`, `_mirror`,
    `_transition`, `_row_to_run`)."""

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
