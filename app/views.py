"""Text the tabs show about runs: the run list, progress, ETA, latest reward. Read from the store only.

Runs are training runs or evaluation jobs (FID/IS/precision/recall, embedding shift) of the same
store; the store's `Run.kind` tells them apart. For a job, "step" counts samples drawn.
"""
from __future__ import annotations

import re
import time
from typing import Optional

from core.runs import kinds
from core.runs.store import ACTIVE, QUEUED, RUNNING, Run, RunStore

ETA_WINDOW = 20  # steps whose timestamps estimate the time per step
TABLE_HEADERS = ["run", "name", "kind", "status", "step", "ETA", "reward", "devices", "created"]
EVAL_KIND, EMBEDDINGS_KIND, TRAIN_KIND = kinds.EVAL, kinds.EMBEDDINGS, kinds.TRAIN


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


_MARKUP = re.compile(r"[\\`*\[]|(?<!\w)_|_(?!\w)|^[#>+=-]", re.M)  # what starts code, emphasis, a link or a block


def as_text(value: object) -> str:
    """Text from a user or a file (a run name, a prompt, a path, an error message quoting either), for a Markdown
    output: shown as written, never as Markdown or HTML (`<img src=...>` stays those characters, no element; no
    emphasis, link or autolink). Only what would start markup is escaped, so the Markdown source still reads as
    the text (what gradio_client returns)."""
    text = _MARKUP.sub(lambda m: "\\" + m.group(0), str(value)).replace("&", "&amp;").replace("<", "&lt;")
    return text.replace("://", ":\\/\\/").replace("www.", "www\\.")


def header(run: Run, eta: Optional[float]) -> str:
    """Markdown summary of one run: status, progress, ETA, and the status message."""
    parts = [f"### `{run.id}` — {as_text(run.name)}",
             f"**{run.status}** · step {run.step}/{run.total_steps}"
             + (f" · ETA {duration(eta)}" if run.status == RUNNING and eta is not None else "")
             + f" · devices `{run.devices}`"]
    if run.ran_seconds:
        parts[-1] += f" · {'ran' if run.ended_at or not run.started_at else 'running for'} {duration(run.ran_seconds)}"
    if run.message:
        lines = run.message.splitlines()
        shown = "\n".join(f"> {as_text(line)}" for line in lines[:3])
        parts.append(shown + ("\n> …(full message in the log section)" if len(lines) > 3 else ""))
    return "\n\n".join(parts)


def job_results(store: RunStore, run: Run) -> Optional[str]:
    """Markdown of a job's results, through its kind (`core.runs.kinds`: label, tab, summary of its
    results.json; what the Runs tab shows instead of training curves); None for a training run."""
    import json

    kind = kinds.get(run.kind)
    if kind.summarize is None:  # a training run: its curves, no results.json
        return None
    also = f" (also in the **{kind.results_tab}** tab)" if kind.results_tab else ""
    try:
        results = json.loads((run.run_dir / kind.results_file).read_text())
    except (OSError, ValueError):
        where = f" and in the **{kind.results_tab}** tab" if kind.results_tab else ""
        return (f"**{kind.label}** — {run.step}/{run.total_steps} done. It has no training curves; its "
                f"results appear here{where} when it finishes.")
    if isinstance(results, dict):  # what a user typed (model, checkpoint) shows as text
        results = {**results, **{k: as_text(results[k]) for k in ("model", "checkpoint") if k in results}}
    return "\n".join([f"**{kind.label} results**{also}", *kind.summarize(results)])
