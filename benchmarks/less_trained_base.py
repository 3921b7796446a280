"""VA-π from a less trained demo generator, where the tokenizer-generator mismatch is larger (issue 15).

    python -m benchmarks.less_trained_base --gpt-steps 600 --json results.json

Trains a generator with the demo build's recipe (core.demo.build) but `--gpt-steps` instead of 3300
optimizer steps (its own warm-up and cosine schedule, so it is a shorter-trained model, not a snapshot of the
committed one) on tokens of the committed tokenizer; measures it as `python -m core eval demo` does (1000
samples x 3 sampling seeds, CFG 1); then runs the demo-c2i preset from it as a sweep
(`python -m core sweep --preset demo-c2i --vary init_weights=W --eval demo`: the preset from the committed base
and from W, measured on the same seeds) and prints the sweep's table. The table's "vs base" column compares
with the committed base; the change against W itself (README's "vs its base") is the W row's demo-FID over the
"less trained base" line printed before the sweep. About 25 min on 2 CPU cores at 600 steps.
The generator is kept in the runs dir (`--runs-dir`), where the sweep's config names it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core import paths
from core.cli import main as core_main
from core.demo import build as demo_build
from core.demo import report as demo_report
from core.models import checkpoint, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpt-steps", type=int, default=600, help="generator optimizer steps (the committed base: 3300)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--runs-dir", type=Path, default=None, help=f"where the generator and the sweep go (default {paths.RUNS_DIR})")
    args = ap.parse_args()
    r = demo_build.Recipe(gpt_steps=args.gpt_steps, gpt_warmup=min(200, args.gpt_steps // 10))
    _, vq = load.load_pair("demo-c2i", None, "cpu")
    t = time.perf_counter()
    tokens, labels = demo_build.encode_split(vq, "train", min(r.gpt_images, args.gpt_steps * r.gpt_batch))
    val_tokens, val_labels = demo_build.encode_split(vq, "val", 2000)
    gpt, gpt_m = demo_build.train_gpt(r, tokens, labels, log=lambda m: print(m, flush=True))
    gpt_m["val_ce"] = demo_build.heldout_ce(gpt, val_tokens, val_labels)
    print(f"generator: {args.gpt_steps} steps, held-out CE {gpt_m['val_ce']:.3f} (committed base: 1.450), "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    runs_dir = args.runs_dir or paths.RUNS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    weights = runs_dir / f"gpt_c2i_{args.gpt_steps}steps.safetensors"
    checkpoint.save_safetensors(gpt, weights, metadata={"config": gpt.config.to_dict()})
    torch.manual_seed(0)
    base = demo_report.evaluate_checkpoint(weights=weights, log=lambda m: None)
    metrics = ("demo_fid", "class_accuracy", "diversity", "precision", "recall")
    results = {"generator": {"gpt_steps": args.gpt_steps, "weights": str(weights), **gpt_m},
               "base": {**{k: base[k] for k in metrics}, **{k + "_std": base[k + "_std"] for k in metrics}}}
    print(f"less trained base: demo-FID {base['demo_fid']:.3f} ± {base['demo_fid_std']:.3f}, "
          f"class accuracy {base['class_accuracy']:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    rc = core_main(["sweep", "--preset", "demo-c2i", "--vary", f"init_weights={weights}", "--eval", "demo",
                    "--name", "less trained base", "--runs-dir", str(runs_dir)])
    raise SystemExit(rc)


if __name__ == "__main__":
    main()
