"""Runs: run folders indexed in SQLite, detached worker processes, a queue per device set.

- `store.RunStore`: folders, the SQLite index, statuses, metrics (checkpoints: `core.checkpoints`)
- `recorder.RunRecorder`: what the trainer calls inside the worker (metrics, progress, stop requests)
- `worker`: `python -m core.runs.worker --run-dir DIR [--resume]`, the process of one run
- `launcher.Launcher`: submit, tick (scheduler), stop, resume, orphan detection
- `threads`: the CPU thread budget shared by a CPU run and torch work beside it (Compare sampling)
- `cli`: `python -m core runs list|show|stop|resume|delete|reindex`

Nothing here imports torch: the UI and the CLI use it without loading the engine.
"""
from core.checkpoints import Checkpoint
from core.runs.launcher import Launcher
from core.runs.recorder import RunRecorder
from core.runs.store import (
    ACTIVE, FAILED, FINISHED, QUEUED, RESUMABLE, RUNNING, STATUSES, STOPPED, STOPPING, DevicesBusyError,
    IndexCorruptError, Run, RunNotFoundError, RunStateError, RunStore,
)

__all__ = [
    "ACTIVE", "FAILED", "FINISHED", "QUEUED", "RESUMABLE", "RUNNING", "STATUSES", "STOPPED", "STOPPING",
    "Checkpoint", "DevicesBusyError", "IndexCorruptError", "Launcher", "Run", "RunNotFoundError", "RunRecorder", "RunStateError", "RunStore",
]
