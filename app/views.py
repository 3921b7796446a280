"""Text the tabs show about runs: the run list, progress, ETA, latest reward. Read from the store only.

Runs are training runs or evaluation jobs (FID/IS/precision/recall, embedding shift) of the same
store; the store's `Run.kind` tells them apart. For a job, "step" counts samples drawn.
"""
from __future__ import annotations

import time
from typing import Optional

from core.runs import entries
from core.runs.store import ACTIVE, QUEUED, RUNNING, Run, RunStore

ETA_WINDOW = 20  # steps whose timestamps estimate the time per step
TABLE_HEADERS = ["run", "name", "kind", "status", "step", "ETA", "reward", "devices", "created"]
EVAL_KIND, EMBEDDINGS_KIND, TRAIN_KIND, SWEEP_KIND = entries.EVAL, entries.EMBEDDINGS, entries.TRAIN, entries.SWEEP


def run_choices(store: RunStore) -> list[tuple[str, str]]:
    """(label, run id) for the run selectors, newest first."""
    return [(r.id if r.name in r.id else f"{r.id} · {r.name}", r.id) for r in store.list_runs()]


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def seconds_per_step(points: list[dict]) -> Optional[float]:
    """Wall-clock seconds per step over consecutive metric rows (includes previews and checkpoints)."""
    if len(points) < 2:
        return None
    first, last = points[0], points[-1]
    steps = last["step"] - first["step"]
    if steps <= 0:
        return None
    return (last["time"] - first["time"]) / steps


def eta_seconds(run: Run, points: list[dict]) -> Optional[float]:
    """Time left for an active run, from the step times of its latest metric rows."""
    if run.status not in ACTIVE:
        return None
    per_step = seconds_per_step(points)
    if per_step is None:
        return None
    return per_step * max(0, run.total_steps - run.step)


def recent_points(store: RunStore, run: Run) -> list[dict]:
    return store.read_metrics(run.id, after_step=max(-1, run.step - ETA_WINDOW - 1))


def table_row(store: RunStore, run: Run, kind: str = TRAIN_KIND) -> list:
    latest = store.latest_metrics(run.id)
    reward = latest.get("reward_mean") if latest else None
    eta = eta_seconds(run, recent_points(store, run)) if run.status in ACTIVE else None
    eta_text = duration(eta) if run.status in ACTIVE else ("queued" if run.status == QUEUED else "—")
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created_at))
    return [run.id, run.name, kind, run.status, f"{run.step}/{run.total_steps}",
            eta_text, "—" if reward is None else f"{reward:.4g}", run.devices, created]


def header(run: Run, eta: Optional[float]) -> str:
    """Markdown summary of one run: status, progress, ETA, and the status message."""
    parts = [f"### `{run.id}` — {run.name}",
             f"**{run.status}** · step {run.step}/{run.total_steps}"
             + (f" · ETA {duration(eta)}" if run.status == RUNNING and eta is not None else "")
             + f" · devices `{run.devices}`"]
    if run.ran_seconds:
        parts[-1] += f" · {'ran' if run.ended_at or not run.started_at else 'running for'} {duration(run.ran_seconds)}"
    if run.message:
        lines = run.message.splitlines()
        shown = "\n".join(f"> {line}" for line in lines[:3])
        parts.append(shown + ("\n> …(full message in the log section)" if len(lines) > 3 else ""))
    return "\n\n".join(parts)


def job_results(store: RunStore, run: Run) -> Optional[str]:
    """Markdown of an evaluation or embedding job's results (what the Runs tab shows instead of training
    curves); None for a training run."""
    import json

    from core.eval.job_io import RESULTS_FILE

    kind = run.kind
    if kind == TRAIN_KIND:
        return None
    if kind == SWEEP_KIND:
        from core.sweep import table as sweep_table

        table = sweep_table.read(run.run_dir)
        if table is None:
            return f"**sweep** — {run.step}/{run.total_steps} rows measured; its table appears here as rows finish."
        return (f"**sweep table** ({run.step}/{run.total_steps} rows; verdicts: 95% interval of the change, paired by "
                f"seed; *within noise* unless it excludes 0; all metrics' changes in "
                f"`{run.run_dir / sweep_table.TABLE_CSV}`)\n\n" + sweep_table.markdown(table))
    tab = "Evaluate" if kind == EVAL_KIND else "Embeddings"
    try:
        results = json.loads((run.run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return (f"**{kind} job** — {run.step}/{run.total_steps} samples drawn. It has no training curves; its "
                f"results appear here and in the **{tab}** tab when it finishes.")
    lines = [f"**{kind} job results** (also in the **{tab}** tab)"]
    if kind == EVAL_KIND:
        spread = results.get("spread") or {k: {"mean": v, "std": 0.0, "values": [v]}
                                          for k, v in results.get("metrics", {}).items()}
        lines.append(f"{results.get('model')} · {results.get('checkpoint')} · mean ± std over "
                     f"{len(next(iter(spread.values()), {}).get('values', [])) if spread else 0} seeds")
        lines += [f"- {name}: {v['mean']:.4g} ± {v['std']:.2g}" for name, v in spread.items()]
    else:
        for name, v in (results.get("verdicts") or {}).items():
            b, a = v["base"], v["aligned"]
            lines.append(f"- {'FD' if name == 'fid' else name}: base {b['mean']:.4g} ± {b['std']:.2g} → aligned "
                         f"{a['mean']:.4g} ± {a['std']:.2g}; Δ 95% interval [{v['low']:+.3g}, {v['high']:+.3g}] → "
                         f"**{v['verdict']}**")
    return "\n".join(lines)
