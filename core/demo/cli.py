"""`python -m core demo build`, `python -m core eval demo` and `python -m core eval diagnose`: the demo's
commands. An entry point (it may import any layer: resolving a run folder to its last checkpoint reads
the run store); the work is in `core.demo.build`, `core.demo.report` and `core.eval.diagnostics`,
imported when a command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core import paths


def register(sub: argparse._SubParsersAction) -> None:
    register_build(sub)
    register_eval_demo(sub)
    register_diagnose(sub)


# ----------------------------------------------------------------------------- `python -m core demo build`
def register_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the embedded demo models (build them from scratch)",
                       description="The embedded demo: a VQ tokenizer, a class-conditional GPT and an evaluator on the shapes domain.")
    dsub = p.add_subparsers(dest="demo_command", metavar="COMMAND")
    dsub.required = True
    b = dsub.add_parser("build", help="pretrain the demo models (seeded; ~40 min on 2 CPU cores at full budget)",
                        description="Pretrain the demo tokenizer, generator and evaluator and write them with a manifest.")
    b.add_argument("--out", type=Path, default=None, help=f"output folder (default {paths.DEMO_DIR})")
    b.add_argument("--budget", choices=["full", "tiny"], default="full", help="tiny: seconds, to check the recipe")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--stage", choices=["all", "t2i"], default="all",
                   help="t2i: only the text-to-image generator, on a folder that holds a built demo (~30 min at full budget)")
    b.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    from core.demo.build import Recipe, build, build_t2i

    r = Recipe.tiny() if args.budget == "tiny" else Recipe()
    r.seed, r.threads = args.seed, args.threads
    (build_t2i if args.stage == "t2i" else build)(args.out or paths.DEMO_DIR, r, log=lambda m: print(m, flush=True))
    return 0


# ----------------------------------------------------------------------------- `python -m core eval demo`
def configure_cli(p) -> None:
    p.add_argument("--model", choices=["demo-c2i", "demo-t2i"], default="demo-c2i",
                   help="demo-t2i: prompt adherence on the held-out prompts per category, and demo-FID")
    p.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="an aligned generator checkpoint (a run's checkpoints/step-N/model.pt, the run folder, or RUN[@STEP]; repeatable)")
    p.add_argument("--no-base", action="store_true", help="skip the committed base model")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per sampling seed (classes balanced)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampling seeds (mean ± std over them)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="1.0 = the paper's w/o-CFG column")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--floor", action="store_true", help="also report the tokenizer floor (VQ reconstructions of real images)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")


def resolve_checkpoint(ref: str) -> Path:
    """A generator checkpoint named in the weights grammar of `core.checkpoints` (a model.pt, a checkpoint
    folder, a run folder or a run id[@step]) -> its model.pt."""
    from core.checkpoints import resolve_weights
    from core.errors import ConfigError

    weights = resolve_weights(ref, field="checkpoint")
    if weights.path is None:
        raise ConfigError("checkpoint", f"{ref!r} names the base model; give a model.pt, a checkpoint folder or "
                                        "a run folder with a checkpoint")
    return Path(weights.path)


def cmd_eval_demo(args) -> int:
    import json

    from core.demo.report import evaluate_checkpoint, evaluate_t2i, tokenizer_floor
    from core.models import registry

    registry.require_files(args.model)
    t2i = args.model == "demo-t2i"
    rows = []
    targets = ([] if args.no_base else [("base", None)]) + [(c, resolve_checkpoint(c)) for c in args.checkpoint]
    if t2i:
        from core.models.text import caption_encoder

        caption_encoder(registry.get_generator("demo-t2i").text_encoder)  # a missing text encoder: said before sampling
    for name, weights in targets:
        print(f"{name}: sampling {args.num_samples} x {len(args.seeds)} seeds", flush=True)
        rows.append((name, (evaluate_t2i if t2i else evaluate_checkpoint)(
            weights=weights, num_samples=args.num_samples, sample_seeds=args.seeds, cfg_scale=args.cfg_scale,
            temperature=args.temperature)))
    if t2i:
        _print_t2i(rows)
        if args.json:
            args.json.write_text(json.dumps({"model": args.model, "results": dict(rows)}, indent=2))
        return 0
    floor = tokenizer_floor() if args.floor else None
    keys = ("demo_fid", "class_accuracy", "diversity", "precision", "recall")
    print(f"\n{'model':40s} " + " ".join(f"{k:>18s}" for k in keys))
    for name, r in rows:
        print(f"{name[-40:]:40s} " + " ".join(f"{r[k]:9.4f} ± {r[k + '_std']:6.4f}" for k in keys))
    if floor:
        print(f"{'tokenizer floor (VQ recon of real)':40s} {floor['demo_fid']:9.4f}          {floor['class_accuracy']:9.4f}")
    if len(rows) > 1 and rows[0][0] == "base":
        b = rows[0][1]
        for name, r in rows[1:]:
            print(f"{name[-40:]}: demo-FID {100 * (r['demo_fid'] / b['demo_fid'] - 1):+.1f}% vs base, "
                  f"class accuracy {r['class_accuracy'] - b['class_accuracy']:+.4f}")
    if args.json:
        args.json.write_text(json.dumps({"results": dict(rows), "floor": floor}, indent=2))
    return 0


def t2i_verdicts(base: dict, other: dict) -> dict[str, dict]:
    """Per metric of `evaluate_t2i`: the change vs base with its paired t-interval over the sampling seeds and the
    verdict (core.eval.verdict: better / worse only when the interval excludes zero)."""
    from core.eval import verdict as V

    out = {}
    for k in [k for k in other["per_seed"][0] if k in base["per_seed"][0]]:
        v = V.from_seed_values("fid" if k == "demo_fid" else k, [r[k] for r in base["per_seed"]],
                               [r[k] for r in other["per_seed"]])
        out[k] = {"delta": v.delta, "low": v.low, "high": v.high, "verdict": v.verdict}
    return out


def _print_t2i(rows) -> None:
    """Prompt adherence per category (held-out prompts) and demo-FID, mean ± std; each checkpoint against the base
    with the 95% interval of the change (paired by sampling seed) and its verdict."""
    from core.demo.prompts import CATEGORIES

    keys = ["adherence"] + [f"adherence_{c}" for c in CATEGORIES] + ["demo_fid", "shape_accuracy", "recall"]
    keys = [k for k in keys if k in rows[0][1]]
    print(f"\n{'':24s} " + " ".join(f"{name[-20:]:>20s}" for name, _ in rows))
    for k in keys:
        print(f"{k:24s} " + " ".join(f"{r[k]:10.4f} ± {r[k + '_std']:6.4f}" for _, r in rows))
    if len(rows) > 1 and rows[0][0] == "base":
        b = rows[0][1]
        for name, r in rows[1:]:
            r["vs_base"] = t2i_verdicts(b, r)
            print(f"\n{name[-40:]} vs base (change, 95% interval over seeds, verdict):")
            for k in keys:
                v = r["vs_base"][k]
                print(f"  {k:22s} {v['delta']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}] {v['verdict']}")


def register_eval_demo(sub: argparse._SubParsersAction) -> None:
    from core.eval.cli import add_eval_command

    add_eval_command(sub, "demo", "demo-FID, class accuracy (demo-c2i) or prompt adherence (demo-t2i): base vs aligned",
                     lambda p: (configure_cli(p), p.set_defaults(func=cmd_eval_demo)),
                     description="Measure the embedded demo generator and aligned checkpoints on fixed seeds: "
                                 "demo-FID vs held-out real images, class accuracy, diversity (mean ± std over seeds).")


# ----------------------------------------------------------------------------- `python -m core eval diagnose`
def cmd_diagnose(args) -> int:
    import json

    from core import configmeta
    from core.eval import diagnostics

    cfg = diagnostics.DiagnoseConfig(**configmeta.values_from_args(args, diagnostics.DIAGNOSE_FIELDS))
    out = diagnostics.diagnose_demo(diagnostics.resolve(cfg, args.runs_dir), num_images=cfg.num_images,
                                    seeds=cfg.seeds, num_generations=cfg.num_generations, cfg_scales=cfg.cfg_scales,
                                    num_samples=cfg.num_samples)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def register_diagnose(sub: argparse._SubParsersAction) -> None:
    from core import configmeta
    from core.eval import diagnostics
    from core.eval.cli import add_eval_command

    def configure(p):
        configmeta.add_arguments(p, diagnostics.DiagnoseConfig, diagnostics.DIAGNOSE_FIELDS, required=["checkpoint"])
        p.add_argument("--runs-dir", type=Path, default=None, help="where run ids in --checkpoint are looked up")
        p.add_argument("--json", type=Path, default=None, help="write the results here")
        p.set_defaults(func=cmd_diagnose)

    add_eval_command(sub, "diagnose", "where an aligned demo generator moved: per-position KL, held-out reward, "
                                      "off-manifold rate, demo-FID vs CFG", configure,
                     description=diagnostics.__doc__.split("\n\n")[0])
