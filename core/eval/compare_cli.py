"""`python -m core compare`: base vs aligned per image, as the Compare tab shows it: both go through `core.eval.compare`.

Writes, in --out: NNN_<panel>.png for every row (truth / base / aligned / difference) and scores.json
(per row: reward terms for teacher-forced rows, the judge's score, tokens that differ; and, with
--class-samples N, per-class class accuracy and FD of N samples x 3 seeds with their intervals).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="base vs aligned per image: free-running, teacher-forced or shared-prefix view",
                       description=__doc__.split("\n\n")[0] + " Same seeds for both models.")
    p.add_argument("--base", default=None, help="preset name or checkpoint (file, folder, run id[@step]); default: the "
                                                "aligned checkpoint's model preset")
    p.add_argument("--aligned", required=True, help="checkpoint: file, checkpoint folder, run folder or run id[@step]")
    p.add_argument("--model", default=None, help="generator preset of the checkpoints (default: the aligned run's)")
    p.add_argument("--classes", nargs="+", default=None, help="class ids or names (default: the first 4)")
    p.add_argument("--prompts", nargs="+", default=None,
                   help="prompts, each quoted, for text-conditional models (views free and prefix)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3], help="one row per seed and class")
    p.add_argument("--view", choices=("free", "teacher-forced", "prefix"), default="teacher-forced")
    p.add_argument("--prefix-rows", type=int, default=2, help="prefix view: token rows taken from the base's sample")
    p.add_argument("--real", default=None, help="teacher-forced view: held-out images, 'shapes' (demo, its val split) "
                                                "or an ImageNet-layout folder")
    p.add_argument("--class-samples", type=int, default=0,
                   help="also per-class accuracy and FD of this many free-running samples per class and seed (3 seeds)")
    p.add_argument("--cfg-scale", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile the sampler's decode step (same images either way; auto: GPU, 64+ images)")
    p.add_argument("--out", default="outputs/compare", help="output folder")
    p.set_defaults(func=cmd_compare)


def summary_line(result) -> str:
    """Identical pairs, where pairs first differ and how many tokens differ, over all rows."""
    rows = [r.scores for r in result.rows]
    firsts = [s["first_difference"] for s in rows if s["first_difference"] is not None]
    line = (f"identical pairs: {sum(s['identical'] for s in rows)} of {len(rows)}; tokens that differ: "
            f"{sum(s['changed_tokens'] for s in rows) / max(len(rows), 1):.1f} of {rows[0]['tokens'] if rows else 0}"
            + (f"; first difference at token {sum(firsts) / len(firsts):.1f} on average" if firsts else ""))
    for term in result.reward_terms:
        b = sum(s["base"][term] for s in rows) / len(rows)
        a = sum(s["aligned"][term] for s in rows) / len(rows)
        line += f"; mean {term} base {b:.4f}, aligned {a:.4f}"
    return line


def _run_model(ref) -> str | None:
    if ref.run_id is None:
        return None
    config = Path(ref.path).parents[2] / "config.json"
    try:
        return json.loads(config.read_text()).get("model")
    except (OSError, ValueError):
        return None


def cmd_compare(args) -> int:
    from core import device as devmod
    from core.checkpoints import resolve_weights
    from core.eval import compare as C
    from core.models import load, registry

    aligned = resolve_weights(args.aligned)
    if aligned.path is None:
        raise ConfigError("aligned", "name a checkpoint (the aligned model)")
    base_is_preset = args.base is not None and args.base in {g.name for g in registry.all_generators()}
    model = args.model or (args.base if base_is_preset else None) or _run_model(aligned) or registry.DEFAULT_GENERATOR
    preset = registry.get_generator(model)
    t2i = preset.task != "c2i"
    if t2i and args.classes is not None:
        raise ConfigError("prompts", f"{model} is text-conditional: give --prompts \"...\" (not --classes)")
    request = C.CompareRequest(model, model, view=args.view, seeds=list(args.seeds),
                               classes=None if t2i else (args.classes or list(range(4))), prompts=args.prompts,
                               sampling=dict(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                                             top_p=args.top_p),
                               prefix_rows=args.prefix_rows, class_samples=args.class_samples, real=args.real,
                               compile=args.compile)
    C.check(request)  # before any model is loaded
    base_weights = None if (args.base is None or base_is_preset) else resolve_weights(args.base).path
    dev = devmod.resolve(args.device)
    base_gen, tok = load.load_pair(model, base_weights, dev)
    aligned_gen = load.load_generator(model, aligned.path, dev)
    encode = load.condition_encoder(base_gen, "t2i", dev, text_encoder=preset.text_encoder) if t2i else None
    out = Path(args.out)
    compared = C.compare(request, {"base": base_gen.eval(), "aligned": aligned_gen.eval()}, tok, dev, out,
                         encode_prompts=encode)
    result, path = compared.view, compared.scores_path
    for row in compared.per_class:
        fd = row["fd"]
        print(f"  {row['class']:<12} FD {fd['base']['mean']:.3f} -> {fd['aligned']['mean']:.3f} "
              f"[{fd['low']:+.3f}, {fd['high']:+.3f}] {fd['verdict']}")
    for note in compared.notes:
        print(f"note: {note}")
    print(f"{result.title}\nwrote {len(result.rows)} rows to {out} (scores: {path})")
    print(summary_line(result))
    for row in result.rows:
        s = row.scores
        line = f"  {row.caption:<24} {s['changed_tokens']:>3}/{s['tokens']} tokens differ"  # caption: class or prompt
        for who in ("base", "aligned"):
            parts = [f"{k} {v:.4f}" for k, v in s.get(who, {}).items() if k in (*result.reward_terms, "judge") and v is not None]
            if parts:
                line += f" | {who}: " + ", ".join(parts)
        print(line)
    return 0
