"""The demo's before/after table (README "Base vs VA-π on the demo"): the three sweeps that make it, then the table.

    python -m benchmarks.demo_ablations                       # the three sweeps, then the table
    python -m benchmarks.demo_ablations --only 1 2            # the first two sweeps only
    python -m benchmarks.demo_ablations --from DIR [DIR ...]  # the table of sweeps already run (sweep folders or runs dirs)

Training and measuring are `python -m core sweep` (the one home of "train variants, measure each the same way"):
SWEEPS below are the three commands README prints, run as they are. Every row is the `demo-c2i` preset with the
change named, trained from the committed base, measured by the sweep (`eval demo`: 1000 samples x 3 sampling
seeds, CFG 1.0, temperature 1.0, paired by seed). This script adds the two columns README's table shows beyond
the sweep's own table: the demo-FID change against the base model in percent, and the evaluator's attribute
predictions on the samples of seed 0 of each row's last checkpoint (real data: one third of each background,
50% one shape), which show where a teacher-forced pixel reward pushes the free-running distribution.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from core import paths
from core.checkpoints import MODEL_FILE
from core.cli import main as core_main
from core.demo import report as demo_report
from core.runs.store import RunStore
from core.sweep import table as T
from core.sweep.job import VARIANTS_DIR

SWEEPS: list[list[str]] = [  # README's three commands (`python -m core sweep ...`)
    ["--preset", "demo-c2i", "--one-at-a-time", "--eval", "demo", "--vary", "learning_rate=3e-5",
     "--vary", "beta=0,1", "--vary", "prior=kl", "--vary", "xi=0.5", "--vary", "policy_coef=0",
     "--vary", "policy_skip_tokens=1", "--vary", "reward_per_token=true", "--vary", "max_steps=300",
     "--vary", 'reward_weights={"mse":1,"encoder":10}'],
    ["--preset", "demo-c2i", "--eval", "demo", "--vary", "num_generations=16", "--vary", "global_batch_size=64",
     "--vary", "per_device_train_batch_size=64"],  # G 16: three fields together, a grid of one
    ["--preset", "demo-c2i", "--eval", "demo", "--vary", "data_subset=1000", "--vary", "max_steps=500",
     "--vary", "save_steps=100"],  # the paper's 1% of the data (here 1000 of 100K scenes), 5x the steps
]


@torch.no_grad()
def attribute_shares(weights) -> dict:
    """The evaluator's background and count predictions on 1000 samples of sampling seed 0 (weights None: base)."""
    from core.demo import configs
    from core.demo.evaluator import ATTRIBUTES

    manifest = configs.read_manifest()
    ev = demo_report._evaluator(str(demo_report.paths.DEMO_DIR / manifest["evaluator"]["file"]))
    imgs, _ = demo_report.sample(demo_report.paths.DEMO_DIR, weights, 1000, 0)
    att = ev.attribute_logits(imgs)
    out = {}
    for name in ("background", "count"):
        counts = np.bincount(att[name].argmax(1).numpy(), minlength=len(ATTRIBUTES[name]))
        out[name] = {str(k): round(float(v), 3) for k, v in zip(ATTRIBUTES[name], counts / counts.sum())}
    return out


def sweep_folders(paths_: list[Path]) -> list[Path]:
    """Sweep folders (those holding a table.json) named directly or found one level inside a runs dir."""
    out = []
    for p in paths_:
        found = [p] if (p / T.TABLE_JSON).is_file() else sorted(q for q in p.glob("*") if (q / T.TABLE_JSON).is_file())
        if not found:
            raise SystemExit(f"error: --from {p}: no sweep there (no {T.TABLE_JSON} in it or in a folder inside it)")
        out += found
    return out


def table_rows(folders: list[Path]) -> list[str]:
    """README's Markdown rows: the base model once, then every row of every sweep."""
    head = ["| run | demo-FID ↓ | vs base | class acc ↑ | diversity | recall | KL to base | backgrounds white/gray/black | one shape |",
            "|---|---|---|---|---|---|---|---|---|"]
    lines, base_mean = [], None
    for folder in folders:
        table = T.read(folder)
        if table is None:  # unreadable or being written
            raise SystemExit(f"error: {folder / T.TABLE_JSON}: cannot be read; rerun `python -m core runs show "
                             f"{folder.name}` to see the sweep's state")
        children = RunStore(folder / VARIANTS_DIR)
        for row in table["rows"]:
            is_base = row["name"] == T.BASE_ROW
            if row["status"] != T.DONE or (is_base and base_mean is not None):
                if not is_base:
                    why = f"{row['status']}: {row['reason']}" if row.get("reason") else row["status"]
                    lines.append(f"| {row['name']} | {why} |" + " |" * 7)
                continue
            fid = row["metrics"]["demo_fid"]
            if is_base:
                base_mean, weights = fid["mean"], None
            else:
                weights = Path(children.last_checkpoint(row["run_id"]).path) / MODEL_FILE
            att = attribute_shares(weights)
            bg = att["background"]
            vs = fid.get("vs_base")
            change = "" if is_base else f"{100 * (fid['mean'] / base_mean - 1):+.0f}% ({vs['verdict']})" if vs else ""
            kl = "" if row.get("kl_base") is None else f"{row['kl_base']:.4f}"
            name = "base (committed generator)" if is_base else row["name"]
            lines.append(f"| {name} | {fid['mean']:.3f} ± {fid['std']:.3f} | {change} | "
                         f"{row['metrics']['class_accuracy']['mean']:.3f} ± {row['metrics']['class_accuracy']['std']:.3f} | "
                         f"{row['metrics']['diversity']['mean']:.3f} | {row['metrics']['recall']['mean']:.3f} | {kl} | "
                         f"{bg['white']:.2f} / {bg['gray']:.2f} / {bg['black']:.2f} | {att['count']['1']:.2f} |")
    return head + lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", type=int, default=None, choices=range(1, len(SWEEPS) + 1),
                    help="which of the three sweeps to run (default all)")
    ap.add_argument("--runs-dir", type=Path, default=None, help=f"where the sweeps run (default {paths.RUNS_DIR})")
    ap.add_argument("--from", dest="done", type=Path, nargs="+", default=None,
                    help="print the table of sweeps already run (sweep folders, or runs dirs holding them); trains nothing")
    args = ap.parse_args()
    if args.done:
        folders = sweep_folders(args.done)
    else:
        runs_dir = args.runs_dir or paths.RUNS_DIR
        before = set(sweep_folders([runs_dir])) if runs_dir.is_dir() and any(runs_dir.glob(f"*/{T.TABLE_JSON}")) else set()
        for i in args.only or range(1, len(SWEEPS) + 1):
            rc = core_main(["sweep", *SWEEPS[i - 1], "--runs-dir", str(runs_dir)])
            if rc != 0:
                raise SystemExit(f"error: sweep {i} ended with exit code {rc}; its folder is in {runs_dir}")
        folders = [f for f in sweep_folders([runs_dir]) if f not in before]
    print("\n".join(table_rows(folders)))


if __name__ == "__main__":
    main()
