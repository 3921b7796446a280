"""The project's worker entry points, what kind of run each makes, and the names they had before.

A run's config.json names its entry ("package.module:function"); the worker imports only these (and
what $VAPI_WORKER_ENTRIES adds). The store records each run's kind (train / eval / embeddings) from
its entry when the run is created (train / eval / embeddings / diagnose / sweep), so nothing downstream matches entry strings.

Entries are stored in existing run folders: when an entry moves, its old name goes into `RENAMED`
(old -> new), the one place that maps it, so runs created before still resume and show.
Plain strings, no imports: this module must not load torch or the engine.
"""
from __future__ import annotations

from typing import Optional

TRAIN, EVAL, EMBEDDINGS, DIAGNOSE, SWEEP = "train", "eval", "embeddings", "diagnose", "sweep"
KINDS = (TRAIN, EVAL, EMBEDDINGS, DIAGNOSE, SWEEP)

TRAIN_ENTRY = "core.vapi.trainer:run_worker"
EVAL_ENTRY = "core.eval.eval_job:run_eval"  # FID / IS / precision / recall / CLIP score of one model
EMBEDDINGS_ENTRY = "core.eval.shift_job:run_embeddings"  # embedding shift of base vs aligned
DIAGNOSE_ENTRY = "core.eval.diagnostics:run_diagnose"  # where an aligned demo generator moved (eval diagnose)
SWEEP_ENTRY = "core.sweep.job:run_sweep"  # variants trained and evaluated, one table (python -m core sweep)
ENTRY_KINDS = {TRAIN_ENTRY: TRAIN, EVAL_ENTRY: EVAL, EMBEDDINGS_ENTRY: EMBEDDINGS, DIAGNOSE_ENTRY: DIAGNOSE,
               SWEEP_ENTRY: SWEEP}

RENAMED = {  # before core/eval/jobs.py was split by job (issue 13)
    "core.eval.jobs:run_eval": EVAL_ENTRY,
    "core.eval.jobs:run_embeddings": EMBEDDINGS_ENTRY,
}


def current(entry: Optional[str]) -> Optional[str]:
    """The entry's name today (an old name mapped through `RENAMED`; anything else as given)."""
    return RENAMED.get(entry, entry) if isinstance(entry, str) else entry


def kind_of(entry: Optional[str]) -> str:
    """The kind of run an entry makes; entries from elsewhere ($VAPI_WORKER_ENTRIES: tests, plugins) and
    configs without one train."""
    return ENTRY_KINDS.get(current(entry), TRAIN)
