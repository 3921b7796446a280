"""A summary of all finished evaluations: one row per (model, setting, checkpoint) with the base
model's numbers under the same setting beside each checkpoint's, and per metric a verdict (paired
bootstrap of the stored features, or the per-seed values).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from core import paths
from core.errors import DataError
from core.eval.eval_job import RESULTS_FORMAT
from core.eval.job_io import RESULTS_FILE


def _read_results(folder: Path) -> Optional[dict]:
    path = folder / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("format") == RESULTS_FORMAT else None


def evaluation_summary(runs_dir: Optional[str | Path] = None, folders: Sequence[str | Path] = ()) -> list[dict]:
    """Every finished evaluation, one row per (model, setting, checkpoint), newest result kept, with the
    base model's numbers under the same setting beside each checkpoint's.

    Sources: the evaluation runs of `runs_dir` (default core.paths.RUNS_DIR) that finished, i.e. whose
    folder holds an evaluation's results.json (written once, when all samples are drawn and the metrics
    computed), plus evaluation folders given in `folders` (the CLI's --out). Row keys: model,
    setting (dict), setting_key (str), checkpoint ("base" | "<run>@<step>" | path), run_id, step,
    label, metrics, base_metrics (None for the base row or when the base was not evaluated), delta
    (metrics - base_metrics), source (eval run id or folder), finished_at. Rows are grouped by model
    and setting, the base first, then by run and step.
    """
    found: list[tuple[str, dict]] = []
    runs = Path(runs_dir) if runs_dir is not None else paths.RUNS_DIR
    if runs.is_dir():
        for folder in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")):
            results = _read_results(folder)
            if results is not None:
                found.append((folder.name, results))
    for folder in folders:
        results = _read_results(Path(folder))
        if results is None:
            raise DataError(f"{folder}: no evaluation {RESULTS_FILE} here")
        found.append((str(folder), results))
    latest: dict[tuple[str, str, str], tuple[str, dict]] = {}
    for source, r in sorted(found, key=lambda item: item[1].get("finished_at", 0.0)):
        key = (r["model"], json.dumps(r["setting"], sort_keys=True), r["checkpoint"])
        latest[key] = (source, r)
    rows = []
    for (model, setting_key, checkpoint), (source, r) in latest.items():
        base = latest.get((model, setting_key, "base"))
        base_metrics = base[1]["metrics"] if base is not None and checkpoint != "base" else None
        delta = ({k: v - base_metrics[k] for k, v in r["metrics"].items() if k in base_metrics}
                 if base_metrics is not None else None)
        verdicts = pair_verdicts(base[1], r) if base_metrics is not None else None
        rows.append({"model": model, "setting": r["setting"], "setting_key": setting_key, "checkpoint": checkpoint,
                     "run_id": r.get("run_id"), "step": r.get("step"), "label": r.get("label", ""),
                     "metrics": r["metrics"], "base_metrics": base_metrics, "delta": delta, "source": source,
                     "spread": _spread_of(r), "base_spread": _spread_of(base[1]) if base_metrics is not None else None,
                     "verdicts": verdicts, "finished_at": r.get("finished_at")})
    rows.sort(key=lambda row: (row["model"], row["setting_key"], row["checkpoint"] != "base",
                               row["run_id"] or "", row["step"] or 0, row["checkpoint"]))
    return rows


SUMMARY_METRICS = ("fid", "is_mean", "precision", "recall", "clip_score", "adherence", "adherence_shape", "adherence_color",
                   "adherence_count", "adherence_position", "adherence_background")
_VERDICTS: dict[tuple, dict] = {}  # (base result, checkpoint result) -> verdicts: a bootstrap is ~1 s per pair
SPACES = {"demo": "demo evaluator", "inception": "Inception", "clip": "CLIP", "dinov2": "DINOv2"}


def feature_space(extractor: Optional[str]) -> str:
    """What an extractor's features are called on every page ("demo evaluator", "Inception", ...)."""
    return SPACES.get(extractor or "", extractor or "unknown")


def metric_label(metric: str, extractor: Optional[str]) -> str:
    """The name a summary metric is shown under (Evaluate's table, a job's results in Runs): a Fréchet distance is
    FID only on Inception features, an FD in that space otherwise ("FD (demo evaluator)")."""
    space = feature_space(extractor)
    if metric == "fid":
        return "FID (Inception)" if extractor == "inception" else f"FD ({space})"
    if metric == "is_mean":
        return f"IS ({space})"
    if metric in ("precision", "recall"):
        return f"{metric} ({space})"
    if metric == "clip_score":
        return "CLIP score"
    if metric == "adherence":
        return "prompt adherence (all named attributes)"
    if metric.startswith("adherence_"):
        return f"prompt adherence: {metric.split('_', 1)[1]}"
    return metric


def embedding_verdict_lines(results: dict) -> list[str]:
    """An embeddings job's results, one line per metric: base and aligned as mean ± std over the seeds, the change,
    its 95% interval, the verdict (the Embeddings tab and the job's summary in Runs)."""
    from core.eval.verdict import mean_std, verdict_change

    extractor = (results.get("config") or {}).get("extractor")
    lines = []
    for key, v in (results.get("verdicts") or {}).items():
        b, a = v["base"], v["aligned"]
        delta, interval = verdict_change(v)
        lines.append(f"- **{metric_label(key, extractor)}**: base {mean_std(b['mean'], b['std'])} → aligned "
                     f"{mean_std(a['mean'], a['std'])} (mean ± std over {v['seeds']} seeds); Δ {delta}, 95% interval "
                     f"{interval} → **{v['verdict']}**")
    return lines


def _spread_of(results: dict) -> dict:
    """{metric: {mean, std, values}} of a result; a result of one seed (older format) as one value."""
    if isinstance(results.get("spread"), dict):
        return results["spread"]
    return {k: {"mean": v, "std": 0.0, "values": [v]} for k, v in results["metrics"].items()}


def pair_verdicts(base: dict, checkpoint: dict) -> dict[str, dict]:
    """{metric: Verdict dict} of a checkpoint's evaluation against its base's under the same setting:
    FD / precision / recall from the stored features (paired bootstrap, `core.eval.verdict`), other
    metrics (IS, CLIP score, Inception FID through torch-fidelity) from their per-seed values."""
    from core.eval import verdict as V

    key = tuple((r.get("sampling_dir"), r.get("finished_at")) for r in (base, checkpoint))
    if key in _VERDICTS:
        return _VERDICTS[key]
    out: dict[str, dict] = {}
    bf, cf = base.get("features"), checkpoint.get("features")
    if bf and cf and len(bf["seeds"]) == len(cf["seeds"]) and all(
            Path(f).is_file() for f in [cf["reference"], *bf["seeds"], *cf["seeds"]]):
        wanted = [m for m in ("fd", "precision", "recall") if (m if m != "fd" else "fid") in checkpoint["metrics"]]
        found = V.compare_features(np.load(cf["reference"]), [np.load(f) for f in bf["seeds"]],
                                   [np.load(f) for f in cf["seeds"]], k=int(checkpoint["setting"].get("k", 3)),
                                   metrics=wanted)
        out.update({("fid" if m == "fd" else m): v.to_dict() for m, v in found.items()})
    base_spread, spread = _spread_of(base), _spread_of(checkpoint)
    for m in SUMMARY_METRICS:
        if m in out or m not in spread or m not in base_spread:
            continue
        if len(base_spread[m]["values"]) != len(spread[m]["values"]):
            continue
        out[m] = V.from_seed_values(m, base_spread[m]["values"], spread[m]["values"]).to_dict()
    _VERDICTS[key] = out
    return out


def summary_table(rows: Sequence[dict]) -> str:
    """Rows of `evaluation_summary` as text: one block per model and setting, each checkpoint's
    numbers with the base model's in brackets, then per metric the change, its interval and verdict."""
    from core.eval import verdict as V

    if not rows:
        return "no finished evaluations"
    lines = []
    current = None
    for row in rows:
        if (row["model"], row["setting_key"]) != current:
            current = (row["model"], row["setting_key"])
            s = row["setting"]
            extractor = s.get("extractor")
            lines.append(f"\n{row['model']}: {s['num_samples']} samples, cfg {s['cfg_scale']}, seed {s['seed']}"
                         + (f", {extractor} features vs {s.get('reference')}" if extractor else ""))
            names = [m for m in SUMMARY_METRICS if m in row["metrics"]]
            lines.append(f"  {'checkpoint':<40} " + " ".join(f"{m:>20}" for m in names))
        cells = []
        for m in names:
            value = row["metrics"].get(m)
            base = (row["base_metrics"] or {}).get(m)
            text = "-" if value is None else f"{value:.4g}" + (f" ({base:.4g})" if base is not None else "")
            cells.append(f"{text:>20}")
        title = row["checkpoint"] + (f" [{row['label']}]" if row["label"] else "")
        lines.append(f"  {title[:40]:<40} " + " ".join(cells))
        for m, v in (row.get("verdicts") or {}).items():
            b, c = v["base"], v["aligned"]
            delta, interval = V.verdict_change(v)
            lines.append(f"    {m}: {b['mean']:.4g} ± {b['std']:.2g} -> {c['mean']:.4g} ± {c['std']:.2g} over "
                         f"{v['seeds']} seeds, change {delta}, 95% {interval} ({v['method']}): {v['verdict']}")
    return "\n".join(lines).lstrip("\n")

