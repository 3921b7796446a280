"""A sweep's table: one row per variant, read against the base model and against the preset.

Per metric a row holds mean ± std over the sampling seeds and, for each reference (the base model, the
preset variant), the change with its 95% paired interval over the seeds and the verdict of
`core.eval.verdict` ("better" / "worse" only when the interval excludes 0, else "within noise"). Seed s
of every row was sampled with the same random numbers (the same sampling seeds, the same real images),
which is what pairs them. Also KL to base (the run's last `kl_base`), run time (training + evaluation),
and the status: a failed variant keeps its row with the reason. The best row beyond noise is the one
with the best mean of the first metric among the variants "better" than the preset on it.

Inputs are plain records (what `core.sweep.job` writes per variant):
    {"name", "changes", "status": "done" | "failed" | "pending" | "stopped", "reason", "run_id",
     "per_seed": {metric: [value per seed]}, "kl_base", "train_s", "eval_s"}
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional, Sequence

from core.eval import verdict as V
from core.units import format_duration

BASE_ROW = "base model"
DONE, FAILED, PENDING, STOPPED = "done", "failed", "pending", "stopped"
# the metrics shown per evaluation kind, the first one decides "best" (those a result lacks are left out)
METRICS = {
    "demo": ("demo_fid", "class_accuracy", "adherence", "shape_accuracy", "diversity", "precision", "recall"),
    "adherence": ("adherence", "adherence_shape", "adherence_color", "adherence_count", "adherence_position",
                  "adherence_background", "demo_fid"),
    "fid": ("fid", "precision", "recall", "is_mean", "clip_score"),
}
TABLE_JSON, TABLE_CSV, TABLE_TXT = "table.json", "table.csv", "table.txt"


def _compare(metric: str, ref: Optional[dict], row: dict) -> Optional[dict]:
    """Change of `row` vs `ref` on one metric (paired by seed), or None when either lacks it."""
    if ref is None or ref.get("status") != DONE or row.get("status") != DONE:
        return None
    a, b = ref["per_seed"].get(metric), row["per_seed"].get(metric)
    if not a or not b or len(a) != len(b):
        return None
    v = V.from_seed_values(metric, a, b)
    return {"delta": v.delta, "low": v.low, "high": v.high, "verdict": v.verdict, "method": v.method}


def build(sweep: dict, base: Optional[dict], rows: Sequence[dict]) -> dict:
    """The table as a dict (what table.json holds): {"sweep", "metrics", "rows", "best"}; `rows` holds the
    base model first, then the preset and the variants in order."""
    done = [r for r in [base, *rows] if r is not None and r.get("status") == DONE]
    metrics = [m for m in METRICS[sweep["eval"]] if any(m in r["per_seed"] for r in done)]
    preset = next((r for r in rows if not r.get("changes")), None)
    out_rows = []
    for r in [base, *rows]:
        if r is None:
            continue
        row = {k: r.get(k) for k in ("name", "changes", "status", "reason", "run_id", "kl_base", "train_s", "eval_s")}
        row["time_s"] = (r.get("train_s") or 0.0) + (r.get("eval_s") or 0.0) if r.get("status") == DONE else None
        row["metrics"] = {}
        for m in metrics:
            values = (r.get("per_seed") or {}).get(m)
            if r.get("status") != DONE or not values:
                continue
            s = V.spread(values)
            row["metrics"][m] = {"mean": s.mean, "std": s.std, "values": s.values,
                                 "vs_base": None if r is base else _compare(m, base, r),
                                 "vs_preset": None if r is base or r is preset else _compare(m, preset, r)}
        row["best"] = False
        out_rows.append(row)
    best = None
    if metrics:
        key = metrics[0]
        better = [row for row in out_rows if row["name"] != BASE_ROW and row.get("changes")
                  and (row["metrics"].get(key) or {}).get("vs_preset")
                  and row["metrics"][key]["vs_preset"]["verdict"] == "better"]
        if better:
            sign = 1 if key in V.LOWER_IS_BETTER else -1
            top = min(better, key=lambda row: sign * row["metrics"][key]["mean"])
            top["best"] = True
            best = top["name"]
    return {"sweep": sweep, "metrics": metrics, "rows": out_rows, "best": best}


# ----------------------------------------------------------------------------- text
def _num(x: float) -> str:
    return f"{x:.4g}"


def _change(c: Optional[dict]) -> str:
    if c is None:
        return ""
    return " ".join([*V.verdict_change(c), c["verdict"]])


def _grid(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def text(table: dict) -> str:
    """The table as text: one line per variant (metrics mean ± std, KL to base, time, status), then the
    changes of every metric against the base model and the preset with their intervals and verdicts."""
    s, metrics = table["sweep"], table["metrics"]
    seeds = s.get("seeds") or list(range(s["num_seeds"]))
    lines = [f"sweep of {s['preset']} ({s['mode']}): eval {s['eval']}, {s['num_samples']} samples x "
             f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); verdicts: 95% interval of the change, paired by "
             "seed; \"within noise\" unless it excludes 0"]
    head = ["variant", "status", *metrics, "KL to base", "time"]
    body = []
    for r in table["rows"]:
        cells = [("* " if r["best"] else "") + r["name"], r["status"]]
        for m in metrics:
            v = r["metrics"].get(m)
            cells.append("" if v is None else (f"{_num(v['mean'])} ± {v['std']:.2g}" if len(v["values"]) > 1
                                               else _num(v["mean"])))
        cells += ["" if r.get("kl_base") is None else f"{r['kl_base']:.4f}", format_duration(r.get("time_s"))]
        body.append(cells)
    lines += _grid([head, *body])
    changes = [["variant", "metric", "vs base model", "vs preset"]]
    for r in table["rows"]:
        for m in metrics:
            v = r["metrics"].get(m)
            if v and (v["vs_base"] or v["vs_preset"]):
                changes.append([r["name"], m, _change(v["vs_base"]), _change(v["vs_preset"])])
    if len(changes) > 1:
        lines += ["", "changes (mean over seeds, 95% interval, verdict):", *_grid(changes)]
    failed = [r for r in table["rows"] if r["status"] == FAILED]
    for r in failed:
        lines.append(f"failed: {r['name']}: {(r.get('reason') or '').splitlines()[0] if r.get('reason') else ''}")
    if metrics:
        lines.append(f"* best beyond noise on {metrics[0]} vs the preset: {table['best']}" if table["best"]
                     else f"no variant is better than the preset on {metrics[0]} beyond noise")
    return "\n".join(lines)


def markdown(table: dict) -> str:
    """The table for the Runs tab: per row the metrics (mean ± std), the first metric's changes against the
    base model and the preset with their verdicts, KL to base, time, status (a failed row: its reason)."""
    metrics = table["metrics"]
    key = metrics[0] if metrics else None
    head = ["variant", "status", *metrics] + ([f"{key} vs base", f"{key} vs preset"] if key else []) + ["KL to base", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        name = f"**{r['name']}** (best beyond noise)" if r["best"] else r["name"]
        status = r["status"] if r["status"] != FAILED else f"failed: {(r.get('reason') or '').splitlines()[0][:120]}"
        cells = [name.replace("|", "\\|"), status.replace("|", "\\|")]
        for m in metrics:
            v = r["metrics"].get(m)
            cells.append("" if v is None else f"{_num(v['mean'])} ± {v['std']:.2g}")
        if key:
            v = r["metrics"].get(key) or {}
            cells += [_change(v.get("vs_base")), _change(v.get("vs_preset"))]
        cells += ["" if r.get("kl_base") is None else f"{r['kl_base']:.4f}", format_duration(r.get("time_s"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- files
def csv_text(table: dict) -> str:
    """One CSV line per row: variant, status, reason, changes (JSON), per metric mean, std and both changes
    (delta, low, high, verdict), KL to base, seconds, best."""
    cols = ["variant", "status", "reason", "changes", "run_id"]
    for m in table["metrics"]:
        cols += [f"{m}_mean", f"{m}_std"]
        for ref in ("vs_base", "vs_preset"):
            cols += [f"{m}_{ref}_{k}" for k in ("delta", "low", "high", "verdict")]
    cols += ["kl_base", "train_s", "eval_s", "best"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in table["rows"]:
        line = {"variant": r["name"], "status": r["status"], "reason": (r.get("reason") or "").splitlines()[0]
                if r.get("reason") else "", "changes": json.dumps(r.get("changes") or {}), "run_id": r.get("run_id") or "",
                "kl_base": r.get("kl_base"), "train_s": r.get("train_s"), "eval_s": r.get("eval_s"), "best": r["best"]}
        for m, v in r["metrics"].items():
            line[f"{m}_mean"], line[f"{m}_std"] = v["mean"], v["std"]
            for ref in ("vs_base", "vs_preset"):
                for k in ("delta", "low", "high", "verdict"):
                    line[f"{m}_{ref}_{k}"] = (v[ref] or {}).get(k)
        w.writerow(line)
    return buf.getvalue()


def write(folder: Path, table: dict) -> None:
    """table.json, table.csv and table.txt into the sweep folder (each replaced atomically)."""
    folder = Path(folder)
    for name, content in ((TABLE_JSON, json.dumps(table, indent=2)), (TABLE_CSV, csv_text(table)),
                          (TABLE_TXT, text(table) + "\n")):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(content)
        tmp.replace(folder / name)


def read(folder: Path) -> Optional[dict]:
    path = Path(folder) / TABLE_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
