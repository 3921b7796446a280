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

import os
from collections.abc import Iterator
from pathlib import Path

from core import checkpoints
from core.checkpoints import CHECKPOINTS_DIR, Checkpoint
from core.device import parse_devices
from core.runs.folder import FolderWriteError, SAMPLES_DIR, STOP_FILE, read_status, update_status
from core.runs.store import INDEX_ERRORS, RunStore
from core.runs.threads import ThreadBalancer


class RunRecorder:
    """Reports a run's progress and metrics and relays stop requests; see the module docstring."""

    def __init__(self, run_dir: str | os.PathLike, *, is_main: bool | None = None):
        self.run_dir = Path(run_dir).resolve()
        self.run_id = self.run_dir.name
        self.is_main = int(os.environ.get("RANK", "0")) == 0 if is_main is None else is_main
        self.checkpoints_dir = self.run_dir / CHECKPOINTS_DIR
        self.samples_dir = self.run_dir / SAMPLES_DIR
        self._stop_flag = self.run_dir / STOP_FILE
        self._store = None
        if self.is_main:
            try:
                self._store = RunStore(self.run_dir.parent)
            except INDEX_ERRORS as e:  # the index is rebuilt later; this run goes on from its folder
                self._store = RunStore(self.run_dir.parent, open_index=False)
                self._store.index_failed("opening it", e)
        self._threads = None  # a CPU run lends threads to torch work beside it (core.runs.threads)
        status = read_status(self.run_dir) if self.is_main else None
        try:
            if status is not None and "cpu" in parse_devices(str(status.get("devices") or "cpu")):
                self._threads = ThreadBalancer(self.run_dir.parent)
        except ValueError:  # an unreadable device set: no thread budget
            pass

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Record the scalars of optimizer step `step` (values: anything float() accepts, e.g. a 0-d
        tensor) in metrics.jsonl and the run index, and set the run's current step. Only a failed write
        to metrics.jsonl raises (FolderWriteError, "no space left on ..." on a full disk)."""
        if self._store is not None:
            self._store.append_metrics(self.run_id, step, metrics)

    def set_progress(self, step: int, total: int | None = None) -> None:
        """Set the current step (and the total number of steps, when it changed), in the index, or in
        status.json when the index cannot be written."""
        if self._store is None:
            return
        fields = {"step": int(step)}
        if total is not None:
            fields["total_steps"] = int(total)
        try:
            self._store.update(self.run_id, **fields)
        except INDEX_ERRORS as e:
            self._store.index_failed("progress", e)
            try:
                update_status(self.run_dir, **fields)
            except FolderWriteError as folder_error:
                print(f"[runs] {folder_error}", flush=True)

    def should_stop(self) -> bool:
        """True once a stop was requested (UI, CLI, or a signal to the worker). The trainer then
        checkpoints and returns. Also where a CPU run adjusts its threads to the host's budget."""
        if self._threads is not None:
            self._threads.balance()
        return self._stop_flag.exists()

    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint to resume from (None: the run stopped before its first checkpoint)."""
        return checkpoints.find_last(self.run_dir)

    def sample_path(self, step: int) -> Path:
        """Where the sample grid of `step` goes (step 0: the base model)."""
        self.samples_dir.mkdir(exist_ok=True)
        return self.samples_dir / f"step-{step:06d}.png"

    def save_checkpoint(self, step: int) -> Iterator[Path]:
        """`core.checkpoints.save` into this run folder (a temporary folder to write into, renamed to
        checkpoints/step-NNNNNN when the block exits cleanly). Call it on one process only."""
        return checkpoints.save(self.run_dir, step)
