"""What every evaluation job shares: the results file name, progress lines in the log, and JSON written
atomically. The jobs themselves: `core.eval.eval_job` (FID / IS / precision / recall / CLIP score of one
model) and `core.eval.shift_job` (the embedding shift of base vs aligned).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from core.eval.sampling import ProgressFn

RESULTS_FILE = "results.json"

Log = Callable[[str], None]


def sampling_progress(progress: Optional[ProgressFn], log: Log, what: str) -> ProgressFn:
    """Progress callback: the caller's, or one log line per ~10%."""
    if progress is not None:
        return progress
    return logging_progress(log, what)


def logging_progress(log: Log, what: str, then: Optional[ProgressFn] = None) -> ProgressFn:
    """One log line per ~10% of the samples; every call is passed on to `then`."""
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            log(f"{what}: {done}/{total} samples")
        if then is not None:
            then(done, total)

    return report


def write_json(path: Path, obj) -> None:
    """JSON into a temporary file beside `path`, then renamed over it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def print_flush(message: str) -> None:
    """Log to the worker's stdout (the run's log.txt), line by line."""
    print(message, flush=True)
