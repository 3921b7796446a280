"""Launcher: starts each run's worker as a detached process and keeps the queue moving.

- `submit` creates a queued run and starts it at once when its devices are free.
- `tick` starts queued runs whose devices are free (in queue order), kills workers that ignored a
  stop past its deadline, and marks runs whose worker is gone as failed. The UI calls it from a
  timer, every worker calls it when it ends, `wait` calls it while waiting.
- `stop` asks the worker to stop at the next step boundary (the trainer checkpoints and returns);
  after the grace period the worker and the processes it started are killed (`kill_process_tree`:
  never a foreground run's caller, its process group, or PID 1) and the run is stopped. Only a process
  proven to be the run's worker is ever signalled (`core.runs.procs.is_our_worker`: its start time and
  the lock it holds on the run's worker.lock); a run naming any other process is marked failed.
- `resume` drops what the run will redo (metrics past its last checkpoint) and queues it again; with config
  changes (a training run: `resume_config`, e.g. max_steps to continue a finished run) checked first.

Workers never hang off the caller: own session (`start_new_session`), stdin from /dev/null, stdout
and stderr appended to the run's log.txt, so a closed browser tab or a dead UI cannot stall them.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from core.checkpoints import check_states, step_dir_name
from core.configmeta import MAX_JOB_STEPS
from core.device import gpu_ids
from core.errors import ConfigError
from core.paths import ROOT
from core.runs import kinds
from core.runs.folder import LOCK_FILE, LOG_TAIL_LINES, write_json_atomic
from core.runs.procs import is_our_worker, started_within
from core.runs.store import (
    ACTIVE, CONFIG_FILE, FAILED, FINISHED, LOG_FILE, QUEUED, RESUMABLE, RUNNING, STOPPED, STOPPING, Run,
    RunStateError, RunStore, all_processes, parent_pid, process_alive, process_session,
    process_start_time, process_state, tail_lines,
)

DEFAULT_GRACE_S = 60.0   # a stopping worker gets this long to checkpoint and return before it is killed
SPAWN_GRACE_S = 30.0     # a run marked running without any worker pid after this long is an orphan
STARTUP_GRACE_S = 300.0  # a launched process whose worker has not claimed the run after this long is not one
KILL_WAIT_S = 10.0       # after SIGKILL, wait at most this long for the processes to disappear
WORKER_MODULE = "core.runs.worker"
ACCELERATE_CONFIG = Path(__file__).with_name("accelerate_multi_gpu.json")  # plain multi-GPU data parallel
DEFAULT_ENTRY = kinds.TRAIN_ENTRY
_ENTRY_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(run_dir: Path, devices: str, resume: bool = False, *,
                   port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment additions) that run the worker of `run_dir` on `devices`.

    CPU or one GPU: `python -m core.runs.worker --run-dir DIR`, with CUDA_VISIBLE_DEVICES naming the
    GPU ("" for CPU, so a CPU run never touches a GPU). Several GPUs: the same module under
    `accelerate launch --multi_gpu`, one process per GPU, on its own rendezvous port (`port`, or a
    free one) so runs on disjoint GPU sets can run side by side, with the project's accelerate config
    (`ACCELERATE_CONFIG`): a user's default config (FSDP, dynamo, mixed precision) never applies silently;
    precision and FSDP come from the run's config (core.vapi.trainer)."""
    ids = gpu_ids(devices)
    tail = ["--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in ids)}
    if len(ids) <= 1:
        return [sys.executable, "-m", WORKER_MODULE, *tail], env
    argv = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
        "--multi_gpu", "--num_processes", str(len(ids)), "--num_machines", "1",
        "--gpu_ids", env["CUDA_VISIBLE_DEVICES"],
        "--main_process_port", str(port if port is not None else free_port()),
        "-m", WORKER_MODULE, *tail,
    ]
    return argv, env


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group `pgid`."""
    procs = all_processes()
    if procs:
        return any(pgrp == pgid and state not in ("Z", "X") for state, _, pgrp, _ in procs.values())
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _has_sessions() -> bool:
    return process_session(os.getpid()) is not None


def _protected_pids() -> set[int]:
    """This process and its ancestors (and PID 1): never signalled by a stop, whatever a run's row says."""
    protected = {1, os.getpid()}
    current = os.getppid()
    while current and current > 1 and current not in protected:
        protected.add(current)
        current = parent_pid(current)
    return protected


def kill_process_tree(leader: int | None, leader_start: int | None,
                      others: list[tuple[int | None, int | None]] = ()) -> tuple[dict[int, int], set[int]]:
    """SIGKILL a worker: every descendant of `leader` (the process the launcher started, which leads
    a session of its own) and of `others` (pid, start time: the worker process), and the process
    group of `leader` when the launcher made it (the group is then a session: its id is its session
    id), which also catches processes that escaped the tree.

    Only what the run started is killed: a group that is not the run's own session (a foreground
    run's group is its caller's: a shell script, nohup, CI, PID 1 in a container), this process, its
    ancestors and PID 1 are never signalled. Descendants are found through /proc before anything is
    killed, since torch's elastic agent puts each rank in a session of its own. A pid whose start time
    differs belongs to another process now and is left alone. Returns ({pid: start time} of the
    processes signalled, the groups signalled)."""
    procs = all_processes()
    children = defaultdict(list)
    for pid, (_, ppid, _, _) in procs.items():
        children[ppid].append(pid)
    protected = _protected_pids()
    own_group = os.getpgid(0)
    victims: dict[int, int] = {}
    groups = set()
    for root, start, is_group in [(leader, leader_start, True), *((p, s, False) for p, s in others)]:
        if root is None or root in protected:
            continue
        stat = procs.get(root)
        if stat is None:
            if is_group:
                groups.add(root)  # the leader is gone; its session's members keep the group id
            continue
        if start is not None and stat[3] != start:
            continue
        if is_group and _has_sessions() and process_session(root) != root:
            continue  # not a session the launcher made: an older foreground row naming its caller's group
        todo = [root]
        while todo:
            pid = todo.pop()
            if pid not in victims and pid not in protected:
                victims[pid] = procs[pid][3]
                todo.extend(children.get(pid, ()))
    groups |= {procs[pid][2] for pid in victims if procs[pid][2] in victims}  # groups the run's processes lead
    # a group is the run's own only when it is the session the launcher created (pgid == sid);
    # every member must belong to that session, and neither this process nor PID 1 may be in it
    safe_groups = set()
    for pgid in groups:
        if pgid in (0, 1, own_group) or pgid in protected:
            continue
        members = [p for p, st in procs.items() if st[2] == pgid]
        if members and all(process_session(p) == pgid and p not in protected for p in members):
            safe_groups.add(pgid)
    for pgid in safe_groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return victims, safe_groups


def check_resumable(run_dir: Path) -> None:
    """Refuse (one line naming the file and the fix) a run folder whose config.json or checkpoints are
    unreadable: resuming it would fail in the worker, or silently start again from step 0."""
    config_path = run_dir / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except OSError as e:
        raise ConfigError(str(config_path), f"cannot be read ({e.strerror}); restore the file") from None
    except ValueError as e:
        raise ConfigError(str(config_path), f"is not valid JSON ({e}); fix the file (it is the run's "
                                            "resolved config)") from None
    if not isinstance(config, dict):
        raise ConfigError(str(config_path), "must hold a JSON object; fix the file")
    check_states(run_dir)


FIXED_ON_RESUME = ("method", "model", "init_weights", "data", "data_path", "data_subset", "seed")  # what the checkpoint and data order depend on


def resume_config(run_dir: Path, overrides: dict[str, Any]):
    """A training run's config.json validated (errors name the file), with `overrides` applied (errors name the
    field; those in FIXED_ON_RESUME are refused). Returns (the config the run continues with, config.json as read).
    The engine's config module is imported here, on use: this module stays free of torch."""
    from core.vapi import config as C

    check_resumable(run_dir)  # config.json is a JSON object, trainer_state.json files hold integer steps
    path = run_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    entry = config.get("entry", kinds.TRAIN_ENTRY)
    if kinds.current(entry) != kinds.TRAIN_ENTRY:
        raise RunStateError(f"run {run_dir.name}: is a {kinds.get(kinds.kind_of(entry)).label} (entry {entry!r}), "
                            "not a training run; resume it without changes (`python -m core runs resume`)")
    base = {k: v for k, v in config.items() if k != "entry"}
    for key in overrides:
        if key.split(".", 1)[0] in FIXED_ON_RESUME:
            raise ConfigError(key, "cannot change on resume (the run's checkpoints and data order depend on it); start a "
                                   "new run from one of its checkpoints instead: init_weights=RUN/checkpoints/step-N/model.pt")
    try:
        C.VapiConfig.from_dict(base)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.field}", f"{str(e).split(': ', 1)[1]}; fix the file "
                                                f"(or pass --set {e.field}=VALUE)") from None
    return C.resolve(None, overrides, base=base), config


def _check_status(run: Run, extend: bool) -> None:
    """Refuse to resume a run that is not stopped or failed (or finished, when `extend`: more steps)."""
    if not run.is_resumable and not (run.status == FINISHED and extend):
        why = (f"it is complete at step {run.step}; continue it with --set max_steps=N (N > {run.step})"
               if run.status == FINISHED else "only stopped, failed or finished runs can be resumed")
        raise RunStateError(f"run {run.id}: is {run.status}; {why}")


class Launcher:
    """Starts, stops and resumes runs of `store`; see the module docstring."""

    def __init__(self, store: RunStore, *, grace_s: float = DEFAULT_GRACE_S):
        self.store = store
        self.grace_s = grace_s
        self._children: dict[str, subprocess.Popen] = {}

    # -- submit and schedule ----------------------------------------------------------------

    def submit(self, name: str, config: dict, devices: str, total_steps: int) -> Run:
        """Create a queued run (config gets "entry" = the trainer unless it names one) and start
        whatever can start now. Returns the run as it is after that (queued or running)."""
        if not isinstance(config, dict):
            raise ConfigError("config", f"expected a dict, got {type(config).__name__}")
        config = {**config}
        config.setdefault("entry", DEFAULT_ENTRY)
        if not isinstance(config["entry"], str) or not _ENTRY_RE.fullmatch(config["entry"]):
            raise ConfigError("entry", f"{config['entry']!r}; expected 'package.module:function'")
        if isinstance(total_steps, (int, float)) and not isinstance(total_steps, bool) and total_steps > MAX_JOB_STEPS:
            field = next((f for f in ("num_samples", "max_steps") if f in config), "total_steps")
            raise ConfigError(field, f"{total_steps:g} is more than this workbench runs as one job "
                                     f"(at most {MAX_JOB_STEPS:,}); split it into several runs")
        run = self.store.create_run(name, config, devices, total_steps)
        self.tick()
        return self.store.get(run.id)

    def tick(self) -> list[Run]:
        """Reap finished children, enforce stop deadlines, mark orphans, start queued runs whose
        devices are free. Returns the runs it started. Safe to call from several processes."""
        self._reap()
        self.enforce_deadlines()
        self.mark_orphans()
        return self.start_queued()

    def _reap(self) -> None:
        """Collect the exit status of workers this launcher started, so none lingers as a zombie."""
        for run_id, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._children.pop(run_id, None)

    def start_queued(self) -> list[Run]:
        started = []
        for run in self.store.claim_startable():
            self._spawn(run)
            started.append(self.store.get(run.id))
        return started

    def _spawn(self, run: Run) -> None:
        argv, env_update = worker_command(run.run_dir, run.devices, bool(run.resume))
        env = {**os.environ, **env_update, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        header = (f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} launching run {run.id} on {run.devices}"
                  f"{' (resume)' if run.resume else ''}: {shlex.join(argv)} ===\n")
        try:
            with open(run.run_dir / LOG_FILE, "ab") as log:
                log.write(header.encode())
                log.flush()
                proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            self.store.try_set_status(run.id, FAILED, expect=ACTIVE, message=f"could not start the worker: {e}")
            return
        self._children[run.id] = proc
        self.store.update(run.id, expect=ACTIVE, pid=proc.pid, pid_start=process_start_time(proc.pid))

    # -- liveness ---------------------------------------------------------------------------

    @staticmethod
    def worker_alive(run: Run, now: float | None = None) -> bool:
        """Whether the worker of an active run still exists: proven ours (`is_our_worker`: its start time
        and the run's worker lock), or just started (SPAWN_GRACE_S) and not holding its lock yet."""
        if is_our_worker(run.run_dir / LOCK_FILE, run.worker_pid, run.worker_start):
            return True
        now = time.time() if now is None else now
        age = None if run.started_at is None else now - run.started_at
        if run.pid is None and run.worker_pid is None:
            return age is not None and age < SPAWN_GRACE_S
        if run.worker_pid is None and run.pid_start is not None and process_alive(run.pid, run.pid_start):
            return age is not None and age < STARTUP_GRACE_S  # launched; its ranks still starting (accelerate)
        return (age is not None and age < SPAWN_GRACE_S
                and (process_alive(run.pid, run.pid_start) or process_alive(run.worker_pid, run.worker_start)))

    def mark_orphans(self) -> list[Run]:
        """Mark failed (resumable) every running/stopping run of this host whose worker is gone, or whose
        pid is not provably its worker (now another process, a null start time, or it does not hold the
        run's worker lock: nothing is signalled then); the message holds the end of log.txt. A run whose
        worker recorded its end only in its folder (the index was unwritable) takes that end instead."""
        self._reap()
        marked = []
        for run in self.store.list_runs(ACTIVE):
            if run.host != self.store.host or self.worker_alive(run):
                continue
            adopted = self.store.adopt_folder(run.id)  # the worker recorded its end there (the index was unwritable)
            if adopted is not None:
                marked.append(adopted)
                continue
            if run.pid is None and run.worker_pid is None:
                why = "its worker never started"
            else:
                pid, start = (run.worker_pid, run.worker_start) if run.worker_pid is not None else (run.pid, run.pid_start)
                state = process_state(pid, start)
                why = {"gone": f"worker process {pid} is gone",
                       "exited": f"worker process {pid} has exited",
                       "recycled": f"worker process {pid} is gone (the pid now belongs to another process)",
                       "alive": f"process {pid} is not this run's worker (no start time on record, or it does not "
                                f"hold {LOCK_FILE}); nothing was signalled",
                       }[state]
            tail = "\n".join(tail_lines(run.run_dir / LOG_FILE, LOG_TAIL_LINES))
            message = (f"{why} at step {run.step} while {run.status}; {self._resume_hint(run)}\n"
                       f"--- last lines of log.txt ---\n{tail}")
            failed = self.store.try_set_status(run.id, FAILED, expect={run.status}, message=message)
            if failed is not None:
                marked.append(failed)
        return marked

    def enforce_deadlines(self) -> list[Run]:
        """Kill the workers of stopping runs whose grace period ran out; those runs become stopped."""
        stopped = []
        now = time.time()
        for run in self.store.list_runs([STOPPING]):
            if run.host != self.store.host or run.stop_deadline is None or run.stop_deadline > now:
                continue
            if not self._kill(run):
                continue  # gone, or not provably ours: mark_orphans reports it, nothing is signalled
            grace = run.stop_deadline - (run.stop_requested_at or run.stop_deadline)
            message = (f"did not stop within {grace:g} s of the stop request; its processes were killed "
                       f"at step {run.step}. {self._resume_hint(run)}")
            done = self.store.try_set_status(run.id, STOPPED, expect={STOPPING}, message=message)
            if done is not None:
                stopped.append(done)
        return stopped

    def _kill(self, run: Run) -> bool:
        """SIGKILL the run's worker and what it started, only once it is proven ours (`is_our_worker`);
        the launched process (`pid`, its session) only when it is that worker or its ancestor. Returns
        whether anything was signalled."""
        if not is_our_worker(run.run_dir / LOCK_FILE, run.worker_pid, run.worker_start):
            return False
        leader = run.pid if run.pid is not None and started_within(run.worker_pid, run.pid, run.pid_start) else None
        victims, groups = kill_process_tree(leader, run.pid_start if leader is not None else None,
                                            [(run.worker_pid, run.worker_start)])
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline:
            proc = self._children.get(run.id)
            if proc is not None:
                proc.poll()
            if not any(process_alive(p, s) for p, s in victims.items()) and not any(map(group_alive, groups)):
                return True
            time.sleep(0.05)
        return True

    def _resume_hint(self, run: Run) -> str:
        ckpt = self.store.last_checkpoint(run.id)
        if ckpt is None:
            return "no checkpoint yet: resume starts it again from step 0"
        return f"resume continues from checkpoint {step_dir_name(ckpt.step)}"

    # -- user actions -----------------------------------------------------------------------

    def stop(self, run_id: str, grace_s: float | None = None) -> Run:
        """Queued: cancelled (stopped) at once. Running: stopping; the worker stops at its next step
        boundary, or is killed once `grace_s` (default: the launcher's) has passed (see `tick`)."""
        grace = self.grace_s if grace_s is None else float(grace_s)
        for _ in range(5):
            run = self.store.get(run_id)
            if run.status == QUEUED:
                done = self.store.try_set_status(run_id, STOPPED, expect={QUEUED},
                                                 message="cancelled before it started")
            elif run.status == RUNNING:
                now = time.time()
                done = self.store.try_set_status(
                    run_id, STOPPING, expect={RUNNING}, stop_requested_at=now, stop_deadline=now + grace,
                    message=f"stop requested; the worker is killed if it still runs after {grace:g} s")
                if done is not None:
                    self.store.request_stop(run_id)
            elif run.status == STOPPING:
                return run
            else:
                raise RunStateError(f"run {run_id}: is {run.status}; only queued or running runs can be stopped")
            if done is not None:
                return done
        raise RunStateError(f"run {run_id}: its status kept changing during stop; try again")

    def resume(self, run_id: str, overrides: Optional[dict[str, Any]] = None) -> Run:
        """Queue a stopped or failed run again, to continue from its last checkpoint (the worker gets
        --resume). Metrics and samples past that checkpoint are dropped first. With `overrides` (a training
        run) its config changes for the rest of the run, checked first (`check_resume`): {"max_steps": N}
        continues a stopped, failed or finished run to step N."""
        total_steps, config = self.check_resume(run_id, overrides) if overrides is not None else (None, None)
        self.resume_in_place(run_id, total_steps=total_steps, config=config)
        self.tick()
        return self.store.get(run_id)

    def check_resume(self, run_id: str, overrides: dict[str, Any]) -> tuple[int, Optional[dict]]:
        """A training run resumed with config changes, checked as a launch is (its fields, then `preflight`: data
        and weights) before anything changes. A max_steps at or below the step the run resumes from (or where a
        finished run ended) is refused, naming the field. Returns (its total steps, the config.json it continues
        with, or None when unchanged) for `resume_in_place`."""
        from core.vapi.preflight import preflight  # the engine's checks: on use only

        run = self.store.get(run_id)
        cfg, config = resume_config(run.run_dir, overrides)
        _check_status(run, run.status == FINISHED and "max_steps" in overrides)  # a running run: before preflight
        if "max_steps" in overrides:
            ckpt = self.store.last_checkpoint(run_id)
            step = run.step if run.status == FINISHED else (ckpt.step if ckpt is not None else 0)
            where = (f"where run {run_id} finished" if run.status == FINISHED else
                     f"where run {run_id} resumes from (checkpoint {step_dir_name(step)})" if ckpt is not None
                     else f"run {run_id} has no checkpoint and starts again from step 0")
            if cfg.max_steps <= step:
                raise ConfigError("max_steps", f"{cfg.max_steps} is at or below step {step}, {where}; "
                                               f"give max_steps > {step}")
        preflight(cfg)
        new = {**cfg.to_dict(), "entry": config.get("entry", kinds.TRAIN_ENTRY)} if overrides else None
        return cfg.max_steps, new

    def resume_in_place(self, run_id: str, claim: dict | None = None, total_steps: int | None = None,
                        config: dict | None = None) -> Run:
        """The first half of `resume`: check, trim and re-queue, without starting a worker. With `claim`
        (worker fields of the calling process: the CLI then runs the worker in its own process) the run
        goes straight to running, or DevicesBusyError is raised and nothing changes. `total_steps` above the
        run's step also re-opens a finished run (continue it for more steps; `config`, the run's new
        config.json from `check_resume`, says so: it is written before the run is queued, and put back when
        it is not). `total_steps` and `config` come from `check_resume`, which refuses a total at or below the
        step the run resumes from."""
        run = self.store.get(run_id)
        extend = total_steps is not None and total_steps > run.step
        _check_status(run, extend)
        check_resumable(run.run_dir)
        ckpt = self.store.last_checkpoint(run_id)
        step = ckpt.step if ckpt is not None else 0
        if claim is not None:
            self.store.check_free(run.devices, f"run {run_id}")  # before trimming; again, atomically, below
        path, before = run.run_dir / CONFIG_FILE, None
        if config is not None:  # before the run is queued: a worker that starts at once reads the new one
            before = json.loads(path.read_text())
            write_json_atomic(path, config)
        try:
            self.store.trim_after(run_id, step)
            self.store.clear_stop_request(run_id)
            message = (f"resumed from checkpoint {step_dir_name(step)}" if ckpt is not None
                       else "resumed without a checkpoint: starts again from step 0")
            fields = {"resume": 1, "step": step, "message": message}
            if total_steps is not None:
                fields["total_steps"] = int(total_steps)
            expect = RESUMABLE | ({FINISHED} if extend else set())
            if claim is not None:
                return self.store.requeue_and_claim(run_id, fields, claim, expect=expect)
            if self.store.try_set_status(run_id, QUEUED, expect=expect, **fields) is None:
                raise RunStateError(f"run {run_id}: is {self.store.get(run_id).status} now; not resumed")
        except BaseException:
            if before is not None:  # not resumed (its devices are busy, its status changed): its config as it was
                write_json_atomic(path, before)
            raise
        return self.store.get(run_id)

    def wait(self, run_id: str, timeout: float | None = None, poll_s: float = 0.5) -> Run:
        """Tick until the run is finished, stopped or failed (or `timeout` seconds passed); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.tick()
            run = self.store.get(run_id)
            if run.status not in ACTIVE and run.status != QUEUED:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                return run
            time.sleep(poll_s)
