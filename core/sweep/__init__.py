"""Sweeps: train a set of variants of one run preset, evaluate each the same way, read one table with verdicts.

- `core.sweep.config`: `SweepConfig` (base preset, `--set` overrides, the fields that vary and their values,
  grid or one change at a time, the evaluation) and `expand`, which turns it into validated variants
  before anything is queued.
- `core.sweep.table`: the table (per variant: metrics as mean ± std over seeds, the change against the
  base model and against the preset with paired intervals and verdicts, KL to base, run time), as text,
  CSV and JSON.
- `core.sweep.job`: the sweep as a job (worker entry `run_sweep`): each variant a training run, then its
  evaluation on the same seeds and the same real images; a failed variant keeps its row with the reason.
- `core.sweep.cli`: `python -m core sweep ...`.

Level: runs (a sweep reads run configs and evaluations, and runs jobs).
"""
