"""What a training loop uses inside the worker process: `RunRecorder`.

The worker builds one and passes it to the entry point. The whole contract with the trainer::

    recorder.set_progress(step, total)          # once at start (and after resume), optional
    for step in range(start + 1, total + 1):
        if recorder.should_stop():              # cheap (one stat); check at every step boundary
            save a checkpoint of the last completed step, then return
        ...one optimizer step...
        recorder.log_metrics(step, {"loss": loss, "reward": reward})   # once per optimizer step
        with recorder.save_checkpoint(step) as d:                       # when due
            torch.save({"model": ...}, d / "model.pt")                  # trainer_state.json: see below
    return                                       # finished (or stopped, when a stop was requested)

Steps count completed optimizer steps: the metrics of step s describe the s-th update, and
checkpoints/step-s holds the state after it. Resume restarts after the last checkpoint and drops the
metrics past it, so a run that resumes from `recorder.last_checkpoint().step` continues without gaps.

Multi-process (accelerate): only rank 0 writes. On other ranks log_metrics and set_progress do
nothing, so they may be called unconditionally; should_stop works on every rank, but ranks may see
the flag at different steps, so reduce the decision across ranks (e.g. any-reduce) before acting.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.device import parse_devices
from core.errors import UserError
from core.runs.store import (
    CHECKPOINTS_DIR, SAMPLES_DIR, STOP_FILE, TRAINER_STATE_FILE, Checkpoint, RunStore, find_last_checkpoint,
)
from core.runs.threads import ThreadBalancer


class DiskFullError(UserError):
    """A checkpoint could not be written: the file system of the run folder is full."""


DISK_FULL_FREE_BYTES = 8 * 2**20  # a write that failed with less free space than this ran out of space


def _disk_full(error: BaseException, free: int | None) -> bool:
    """ENOSPC / EDQUOT anywhere in the exception chain, or a write error (torch's zip writer says
    "unexpected pos" or "file write failed") with (almost) no free space left."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return isinstance(error, (OSError, RuntimeError)) and free is not None and free < DISK_FULL_FREE_BYTES


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f}" if n >= 2**20 else f"{n / 2**20:.2f}"


def describe_filesystem(path: Path) -> str:
    """The device holding `path` and where it is mounted, e.g. "/dev/sda1 (mounted at /data)"."""
    mount = Path(os.path.abspath(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    device = None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].replace("\\040", " ") == str(mount):
                device = parts[0]  # the last line for a mount point wins (over-mounts)
    except OSError:
        pass
    return f"{device} (mounted at {mount})" if device else str(mount)


class RunRecorder:
    """Reports a run's progress and metrics and relays stop requests; see the module docstring."""

    def __init__(self, run_dir: str | os.PathLike, *, is_main: bool | None = None):
        self.run_dir = Path(run_dir).resolve()
        self.run_id = self.run_dir.name
        self.is_main = int(os.environ.get("RANK", "0")) == 0 if is_main is None else is_main
        self.checkpoints_dir = self.run_dir / CHECKPOINTS_DIR
        self.samples_dir = self.run_dir / SAMPLES_DIR
        self._stop_flag = self.run_dir / STOP_FILE
        self._store = RunStore(self.run_dir.parent) if self.is_main else None
        self._threads = None  # a CPU run lends threads to torch work beside it (core.runs.threads)
        if self._store is not None:
            try:
                if "cpu" in parse_devices(self._store.get(self.run_id).devices):
                    self._threads = ThreadBalancer(self.run_dir.parent)
            except UserError:
                pass

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Record the scalars of optimizer step `step` (values: anything float() accepts, e.g. a 0-d
        tensor) in metrics.jsonl and the run index, and set the run's current step."""
        if self._store is not None:
            self._store.append_metrics(self.run_id, step, metrics)

    def set_progress(self, step: int, total: int | None = None) -> None:
        """Set the current step (and the total number of steps, when it changed)."""
        if self._store is None:
            return
        fields = {"step": int(step)}
        if total is not None:
            fields["total_steps"] = int(total)
        self._store.update(self.run_id, **fields)

    def should_stop(self) -> bool:
        """True once a stop was requested (UI, CLI, or a signal to the worker). The trainer then
        checkpoints and returns. Also where a CPU run adjusts its threads to the host's budget."""
        if self._threads is not None:
            self._threads.balance()
        return self._stop_flag.exists()

    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint to resume from (None: the run stopped before its first checkpoint)."""
        return find_last_checkpoint(self.run_dir)

    def sample_path(self, step: int) -> Path:
        """Where the sample grid of `step` goes (step 0: the base model)."""
        self.samples_dir.mkdir(exist_ok=True)
        return self.samples_dir / f"step-{step:06d}.png"

    @contextmanager
    def save_checkpoint(self, step: int) -> Iterator[Path]:
        """Yield an empty temporary folder; write the checkpoint files into it. On a clean exit it is
        renamed to checkpoints/step-NNNNNN (replacing an older one of the same step); on an exception
        it is removed, and a full disk becomes a DiskFullError that says so (earlier checkpoints stay). trainer_state.json is written as {"step": step} unless the trainer wrote its
        own, which must then hold the same "step". Call it on one process only."""
        self.checkpoints_dir.mkdir(exist_ok=True)
        final = self.checkpoints_dir / f"step-{step:06d}"
        tmp = self.checkpoints_dir / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            state_path = tmp / TRAINER_STATE_FILE
            if state_path.exists():
                written = json.loads(state_path.read_text()).get("step")
                if written != step:
                    raise ValueError(f"{state_path}: step {written!r} differs from the checkpoint step {step}")
            else:
                state_path.write_text(json.dumps({"step": step}) + "\n")
            if final.exists():
                old = self.checkpoints_dir / f".old-{final.name}-{os.getpid()}"
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
        except BaseException as e:
            written = _folder_bytes(tmp)
            free = _free_bytes(self.checkpoints_dir)
            shutil.rmtree(tmp, ignore_errors=True)  # frees what the cut-off write took
            if _disk_full(e, free):
                last = find_last_checkpoint(self.run_dir)
                needed = max(written, _folder_bytes(last.path) if last is not None else 0)
                kept = f"the last good checkpoint {last.path.name} is kept" if last else "no earlier checkpoint"
                raise DiskFullError(
                    f"no space left on {describe_filesystem(self.checkpoints_dir)} (needed ~{_mb(needed)} MB for a "
                    f"checkpoint, {_mb(free)} MB free): free some space, then resume the run; {kept}") from e
            raise
