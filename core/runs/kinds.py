"""Job kinds: what the workbench runs in the background, each a record of one kind, queued one way (`submit`).

A kind names its worker entry ("package.module:function", the one place each is written), its config
class, the config field that counts its steps, how the UI labels it and summarises its results.json.
A run's config.json names its entry; the store records the run's kind from it at creation, so nothing
downstream matches entry strings. Entries are stored in existing run folders: when one moves, its old
name goes into `RENAMED` (old -> new), so runs made before still resume and show.

Plain strings and dict readers only: this module must not load torch or the engine (the UI and the CLI
import it); a kind's config class and checks are imported when a job of it is submitted.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional


def _eval_lines(results: dict) -> list[str]:
    from core.eval.summary import metric_label  # numpy: on use only
    from core.eval.verdict import mean_std

    spread = results.get("spread") or {k: {"mean": v, "std": 0.0, "values": [v]}
                                      for k, v in results.get("metrics", {}).items()}
    seeds = len(next(iter(spread.values()), {}).get("values", [])) if spread else 0
    extractor = (results.get("setting") or {}).get("extractor")  # a demo-feature FD is not called "fid"
    return [f"{results.get('model')} · {results.get('checkpoint')} · mean ± std over {seeds} seeds",
            *(f"- {metric_label(name, extractor)}: {mean_std(v['mean'], v['std'])}" for name, v in spread.items())]


def _embedding_lines(results: dict) -> list[str]:
    from core.eval.summary import embedding_verdict_lines

    return embedding_verdict_lines(results)


def _diagnose_lines(results: dict) -> list[str]:
    tf = results.get("teacher_forced_reward") or {}
    rates = results.get("off_manifold_rate") or {}
    lines = [f"- KL(aligned ‖ base) per position: mean {results.get('kl_mean', float('nan')):.4g}, first token "
             f"{results.get('kl_first_token', float('nan')):.4g}"]
    if tf:
        lines.append(f"- teacher-forced reward gain: {tf.get('paired_gain', float('nan')):+.4g} ± "
                     f"{tf.get('paired_gain_std', float('nan')):.2g}")
    if rates:
        lines.append("- off-manifold rate: " + ", ".join(f"{k} {v:.3g}" for k, v in rates.items()))
    for row in results.get("cfg_sweep") or []:
        lines.append(f"- demo FID at CFG {row['cfg_scale']:g}: base {row['base']['demo_fid']:.4g} → aligned "
                     f"{row['aligned']['demo_fid']:.4g}")
    return lines


@dataclass(frozen=True)
class Kind:
    """One kind of job. `config`, `check`: "module:name" (imported on use). `check(cfg, runs_dir)` validates
    a job's inputs (fields and files) before anything is queued and returns its default name."""

    name: str
    entry: str                       # the worker entry: entry(config, run_dir, recorder, resume)
    config: str                      # its config class: .from_dict(dict), .to_dict()
    total_field: str                 # the config attribute that counts its steps (progress units)
    label: str                       # what the UI calls a job of this kind
    check: Optional[str] = None
    results_tab: Optional[str] = None  # where else its results show (None: a training run, no results.json)
    summarize: Optional[Callable[[dict], list[str]]] = None  # markdown lines of its results file
    results_file: str = "results.json"  # in the run folder (core.eval.job_io.RESULTS_FILE)


def _sweep_lines(table: dict) -> list[str]:
    from core.sweep import table as T  # numpy: on use only

    return [f"verdicts: 95% interval of the change, paired by seed; *within noise* unless it excludes 0; every "
            f"metric's changes in {T.TABLE_CSV}", "", T.markdown(table)]


TRAIN, EVAL, EMBEDDINGS, DIAGNOSE, SWEEP = "train", "eval", "embeddings", "diagnose", "sweep"
REGISTRY: dict[str, Kind] = {k.name: k for k in (
    Kind(TRAIN, "core.vapi.trainer:run_worker", "core.vapi.config:VapiConfig", "max_steps", "training run"),
    Kind(EVAL, "core.eval.eval_job:run_eval", "core.eval.configs:EvalConfig", "total_samples", "eval job",
         check="core.eval.eval_job:check_job", results_tab="Evaluate", summarize=_eval_lines),
    Kind(EMBEDDINGS, "core.eval.shift_job:run_embeddings", "core.eval.configs:EmbeddingConfig", "total_samples",
         "embeddings job", check="core.eval.shift_job:check_job", results_tab="Embeddings",
         summarize=_embedding_lines),
    Kind(DIAGNOSE, "core.eval.diagnostics:run_diagnose", "core.eval.diagnostics:DiagnoseConfig", "total_steps",
         "diagnose job", check="core.eval.diagnostics:check_job", results_tab="Evaluate", summarize=_diagnose_lines),
    # variants of a run preset trained and evaluated the same way, one table (python -m core sweep, Launch's Sweep)
    Kind(SWEEP, "core.sweep.job:run_sweep", "core.sweep.config:SweepConfig", "total_steps", "sweep",
         check="core.sweep.job:check_job", summarize=_sweep_lines, results_file="table.json"),
)}
KINDS = tuple(REGISTRY)
TRAIN_ENTRY, EVAL_ENTRY, EMBEDDINGS_ENTRY, DIAGNOSE_ENTRY, SWEEP_ENTRY = (REGISTRY[k].entry for k in KINDS)
ENTRY_KINDS = {k.entry: k.name for k in REGISTRY.values()}

RENAMED = {  # before core/eval/jobs.py was split by job (issue 13)
    "core.eval.jobs:run_eval": EVAL_ENTRY,
    "core.eval.jobs:run_embeddings": EMBEDDINGS_ENTRY,
}


def get(name: str) -> Kind:
    """The kind of that name (a run of an unknown kind, e.g. from a newer version, shows as training)."""
    return REGISTRY.get(name, REGISTRY[TRAIN])


def current(entry: Optional[str]) -> Optional[str]:
    """The entry's name today (an old name mapped through `RENAMED`; anything else as given)."""
    return RENAMED.get(entry, entry) if isinstance(entry, str) else entry


def kind_of(entry: Optional[str]) -> str:
    """The kind of run an entry makes; entries from elsewhere ($VAPI_WORKER_ENTRIES: tests, plugins) and
    configs without one train."""
    return ENTRY_KINDS.get(current(entry), TRAIN)


def _load(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def record(kind: str, cfg: Any) -> dict:
    """The config.json of a job: its config's fields and the kind's entry."""
    return {**cfg.to_dict(), "entry": REGISTRY[kind].entry}


def submit(launcher, kind: str, cfg: Any, devices: str, name: Optional[str] = None):
    """The one way to queue a job of any kind (UI, CLI, eval tabs): its config checked (a dict is read
    through the kind's config class), its files checked (`Kind.check`), then a queued run that starts at
    once when its devices are free. Returns the Run."""
    k = REGISTRY[kind]
    if isinstance(cfg, dict):
        cfg = _load(k.config).from_dict(cfg)
    default = _load(k.check)(cfg, launcher.store.runs_dir) if k.check else None
    name = name or default or getattr(cfg, "preset", None) or k.name
    return launcher.submit(name, record(kind, cfg), devices, int(getattr(cfg, k.total_field)))
