"""Runs: every job is a run folder (the truth), indexed in SQLite (a cache), queued per device, run by a
detached worker process. Module map (README, "The runs package"):

- `folder`: the run folder's files, atomic writes that need no index, a full disk named as such
- `index.RunIndex`: runs.db, rebuilt from the folders when missing, empty or corrupt; `queue.DeviceQueue`: which
  queued run starts; `store.RunStore`: both, plus statuses, metrics, files
- `claims`: device locks per machine; `procs`: process identity and the worker token, proof before any kill
- `kinds`: the job kinds (train, eval, embeddings, diagnose) and `submit`, the one way to queue a job
- `recorder.RunRecorder`: what an entry calls inside the worker (metrics, progress, stop requests)
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
