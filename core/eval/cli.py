"""`python -m core eval fid | embeddings | geneval-export | clip | summary`.

Every command runs in the foreground with progress bars and resumes what its --out folder holds;
under `accelerate launch -m core eval ...` the sampling is sharded over the processes. Other
modules add `eval` sub-commands with `add_eval_command` (or take `eval_subparsers(sub)` and add
parsers to it), in any order relative to this module.
"""
from __future__ import annotations

import argparse
import weakref
from collections.abc import Callable
from pathlib import Path

from core import paths

# top-level sub-command table -> the `eval` command's own table, so several modules can share it
_EVAL_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def eval_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-command table of `python -m core eval`, created on first use."""
    table = _EVAL_TABLES.get(sub)
    if table is None:
        parser = sub.add_parser("eval", help="evaluate models: FID/IS/precision/recall, embedding shift, GenEval, CLIP",
                                description="Evaluate generators: sample at evaluation scale (resumable, sharded "
                                            "under `accelerate launch`) and measure.")
        table = parser.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
        table.required = True
        _EVAL_TABLES[sub] = table
    return table


def add_eval_command(sub: argparse._SubParsersAction, name: str, help: str,
                     configure: Callable[[argparse.ArgumentParser], None], description: str | None = None):
    """Add `python -m core eval <name>`; configure(parser) adds its arguments and set_defaults(func=...)."""
    parser = eval_subparsers(sub).add_parser(name, help=help, description=description or help)
    configure(parser)
    return parser


def _sampling_args(p: argparse.ArgumentParser, cfg_scale: float = 1.0, batch_size: int = 32) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--cfg-scale", type=float, default=cfg_scale,
                   help=f"classifier-free guidance (1 = off; default {cfg_scale}). Table 2: w/o cfg 1.0, "
                        "w/ cfg 2.0 (LlamaGen-XL) or 1.75 (XXL)")
    g.add_argument("--temperature", type=float, default=1.0, help="default 1.0 (paper App. D)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off (paper App. D)")
    g.add_argument("--top-p", type=float, default=1.0, help="1 = off (paper App. D)")
    g.add_argument("--seed", type=int, default=0, help="base seed: sample i uses a seed derived from (seed, i)")
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help="samples per batch; part of a sample folder's identity (a folder resumes only with the same)")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="generator dtype (LlamaGen samples in bf16)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (use auto under accelerate launch)")
    g.add_argument("--runs-dir", type=Path, default=None,
                   help=f"where run ids in --weights are looked up (default {paths.RUNS_DIR})")


def _seeds_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-seeds", type=int, default=3,
                   help="sampling seeds seed, seed+1, ... (default 3): numbers are mean ± std over them, and a "
                        "change is called better/worse only when its 95%% interval excludes zero")


def register(sub: argparse._SubParsersAction) -> None:
    weights_help = ("generator weights: a file, a checkpoint folder, a run folder (last checkpoint) or a run id "
                    "[@STEP]; default: the preset's own weights (the base model)")

    p = eval_subparsers(sub).add_parser(
        "fid", help="FID / IS / precision / recall of one model (Table 2)",
        description="Sample N images (resumable: rerun the same command to continue), pack them into "
                    "OUT/sampling/samples.npz (ADM/LlamaGen layout) and measure them against a reference; "
                    "the numbers go to OUT/results.json.")
    p.add_argument("--model", default="demo-c2i", help="generator preset (default: the embedded demo)")
    p.add_argument("--weights", default=None, help=weights_help)
    p.add_argument("--label", default="", help="free text shown in `eval summary`, e.g. 'aligned step 100'")
    p.add_argument("--num-samples", type=int, default=50_000, help="default 50000 (Table 2: 50 per ImageNet class)")
    p.add_argument("--classes", nargs="+", default=None, help="class ids or names to cycle through (default: all)")
    p.add_argument("--prompts", type=Path, default=None, help="text-to-image presets: a .txt or .jsonl prompt file")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize samples to this side before saving (Table 2: 256 for 384 px models)")
    p.add_argument("--reference", default=None,
                   help="reference set: an .npz batch (ADM layout, e.g. VIRTUAL_imagenet256_labeled.npz), an image "
                        "folder, or 'shapes[:split]' for the demo domain")
    p.add_argument("--reference-count", type=int, default=None, help="images taken from a folder/shapes reference (default N)")
    p.add_argument("--extractor", default="inception", help="inception (FID proper), dinov2, clip or demo")
    p.add_argument("--extractor-path", default=None,
                   help="the extractor's weights: Inception .pth file, demo evaluator .safetensors, CLIP/DINOv2 folder or hub id")
    p.add_argument("--metrics", nargs="+", default=["fid", "isc", "prc"], choices=("fid", "isc", "prc", "clip"),
                   help="default: fid isc prc")
    p.add_argument("--k", type=int, default=3, help="precision/recall neighbourhood (default 3)")
    p.add_argument("--clip-model", default=None, help="CLIP folder or hub id for the clip metric")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed when it exists)")
    _sampling_args(p)
    _seeds_arg(p)
    p.set_defaults(func=cmd_fid)

    p = eval_subparsers(sub).add_parser(
        "embeddings", help="where base and aligned samples sit relative to real images (Fig. 1b-c)",
        description="Sample the same classes and seeds from the base and the aligned model, extract features of "
                    "those and of real images, and write OUT/embeddings.json, OUT/results.json and HTML figures "
                    "(t-SNE/UMAP maps with KDE contours, KDEs per axis, distances per class) to OUT/figures.")
    p.add_argument("--model", default="demo-c2i", help="class-conditional generator preset")
    p.add_argument("--base-weights", default=None, help="the base model (default: the preset's weights); " + weights_help)
    p.add_argument("--aligned-weights", required=True, help="the aligned model: " + weights_help)
    p.add_argument("--classes", nargs="+", default=None, help="class ids or names (default: the first 10)")
    p.add_argument("--per-class", type=int, default=100,
                   help="samples per class, set and seed (default 100: with the 10 demo classes the same 1000 samples "
                        "as `eval fid --num-samples 1000`)")
    p.add_argument("--real", default="shapes",
                   help="real images: 'shapes[:split]' (demo, default split reference) or an ImageNet-layout folder")
    p.add_argument("--extractor", default=None, help="demo, clip, dinov2 or inception (default: demo for the demo, else inception)")
    p.add_argument("--extractor-path", default=None, help="the extractor's weights file or folder")
    p.add_argument("--projection", nargs="+", default=["tsne", "umap"], choices=("tsne", "umap"), help="default: tsne umap")
    p.add_argument("--image-size", type=int, default=None, help="resize samples (and real images) to this side")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed when it exists)")
    _sampling_args(p)
    _seeds_arg(p)
    p.set_defaults(func=cmd_embeddings)

    p = eval_subparsers(sub).add_parser(
        "geneval-export", help="GenEval image folder of a text-to-image model (Table 3)",
        description="Generate images for GenEval's 553 prompts (assets/geneval/evaluation_metadata.jsonl) in the "
                    "layout GenEval's evaluate_images.py reads: OUT/00000/metadata.jsonl, OUT/00000/samples/0000.png.")
    p.add_argument("--model", required=True, help="text-to-image preset, e.g. llamagen-t2i-xl-256")
    p.add_argument("--weights", default=None, help=weights_help)
    p.add_argument("--images-per-prompt", type=int, default=4, help="default 4 (GenEval's)")
    p.add_argument("--prompts-file", type=Path, default=None, help="another GenEval metadata file (default: the official one)")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed when it exists)")
    _sampling_args(p, cfg_scale=5.0)
    p.set_defaults(func=cmd_geneval)

    p = eval_subparsers(sub).add_parser(
        "clip", help="CLIP score of samples against their prompts (Table 1)",
        description="CLIP score = 100 x cosine similarity of the CLIP image and text embeddings, averaged over "
                    "images (torchmetrics' CLIPScore without its clamp at 0). Text-to-image presets take --prompts; "
                    "class-conditional ones score each class against --template filled with the class name.")
    p.add_argument("--model", default="demo-c2i", help="generator preset")
    p.add_argument("--weights", default=None, help=weights_help)
    p.add_argument("--label", default="", help="free text shown in `eval summary`")
    p.add_argument("--prompts", type=Path, default=None, help="text-to-image: .txt (one per line) or .jsonl prompt file")
    p.add_argument("--classes", nargs="+", default=None, help="class-conditional: class ids or names (default: all)")
    p.add_argument("--template", default="a photo of a {}", help="class-conditional: the text of a class ({} = its name)")
    p.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt or class (default 4)")
    p.add_argument("--clip-model", default=None, help="CLIP folder or hub id (default openai/clip-vit-large-patch14)")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed when it exists)")
    _sampling_args(p)
    _seeds_arg(p)
    p.set_defaults(func=cmd_clip)

    p = eval_subparsers(sub).add_parser(
        "summary", help="all finished evaluations: per checkpoint, with the base model beside it",
        description="Table of every finished evaluation run in the runs dir (and of the given --out folders), "
                    "grouped by model and setting; each checkpoint's numbers with the base model's in brackets.")
    p.add_argument("folders", nargs="*", type=Path, help="extra evaluation folders (the --out of `eval fid`/`eval clip`)")
    p.add_argument("--runs-dir", type=Path, default=None, help=f"default {paths.RUNS_DIR}")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_summary)


class _Bar:
    """A tqdm bar driven by progress(done, total) callbacks."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="img", dynamic_ncols=True)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _sampling_fields(args) -> dict:
    return dict(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                seed=args.seed, batch_size=args.batch_size, precision=args.precision, device=args.device)


def _print_metrics(results: dict, out: Path) -> None:
    s = results["setting"]
    print(f"{results['model']} ({results['checkpoint']}): {s['num_samples']} samples, cfg {s['cfg_scale']}")
    for name, v in results["spread"].items():
        print(f"  {name:<16} {v['mean']:.4f} ± {v['std']:.4f}  (seeds: {', '.join(f'{x:.4f}' for x in v['values'])})")
    print(f"samples: {results['npz']}\nresults: {out / 'results.json'}")


def cmd_fid(args) -> int:
    from core.eval.configs import EvalConfig
    from core.eval.eval_job import evaluate

    cfg = EvalConfig(model=args.model, weights=args.weights, label=args.label, num_samples=args.num_samples,
                     image_size=args.image_size, classes=args.classes,
                     prompts_file=str(args.prompts) if args.prompts else None, metrics=args.metrics,
                     extractor=args.extractor, extractor_path=args.extractor_path, reference=args.reference,
                     reference_count=args.reference_count, clip_model=args.clip_model, k=args.k,
                     num_seeds=args.num_seeds, **_sampling_fields(args))
    bar = _Bar("sampling")
    try:
        results = evaluate(cfg, args.out, runs_dir=args.runs_dir, progress=bar, log=print)
    finally:
        bar.close()
    if results is not None:
        _print_metrics(results, args.out)
    return 0


def cmd_embeddings(args) -> int:
    from core.eval.configs import EmbeddingConfig
    from core.eval.shift_job import embedding_shift, shift_table

    cfg = EmbeddingConfig(model=args.model, base_weights=args.base_weights, aligned_weights=args.aligned_weights,
                          classes=args.classes, per_class=args.per_class, real=args.real, extractor=args.extractor,
                          extractor_path=args.extractor_path, projections=args.projection, image_size=args.image_size,
                          num_seeds=args.num_seeds, **_sampling_fields(args))
    bar = _Bar("base + aligned samples")
    try:
        report = embedding_shift(cfg, args.out, runs_dir=args.runs_dir, progress=bar, log=print)
    finally:
        bar.close()
    if report is None:
        return 0
    print(shift_table(report.results))
    print(f"numbers: {args.out / 'results.json'} (full analysis: {args.out / 'embeddings.json'})")
    for name, path in report.figures.items():
        print(f"figure {name}: {path}")
    return 0


def cmd_geneval(args) -> int:
    from core.eval.geneval import export_geneval_samples

    bar = _Bar("GenEval samples")
    try:
        out = export_geneval_samples(args.model, args.out, weights=args.weights, prompts_file=args.prompts_file,
                                     images_per_prompt=args.images_per_prompt, runs_dir=args.runs_dir, progress=bar,
                                     **_sampling_fields(args))
    finally:
        bar.close()
    if out is not None:
        print(f"GenEval folder: {out} (samples and their spec: {out}.sampling)\n"
              f"score it with GenEval's evaluation/evaluate_images.py {out} --outfile results.jsonl ...")
    return 0


def cmd_clip(args) -> int:
    from core.errors import ConfigError
    from core.eval.configs import EvalConfig, class_ids_of, num_classes_of, read_prompts
    from core.eval.eval_job import evaluate
    from core.models import registry

    if args.images_per_prompt < 1:
        raise ConfigError("images_per_prompt", f"must be >= 1, got {args.images_per_prompt}")
    if registry.get_generator(args.model).task == "t2i":
        if args.prompts is None:
            raise ConfigError("prompts", f"{args.model} is text-conditional: give --prompts FILE")
        count = len(read_prompts(args.prompts))
    else:
        if args.prompts is not None:
            raise ConfigError("prompts", f"{args.model} is class-conditional: give --classes (and --template)")
        count = len(class_ids_of(args.model, args.classes) or range(num_classes_of(args.model) or 0))
    cfg = EvalConfig(model=args.model, weights=args.weights, label=args.label,
                     num_samples=count * args.images_per_prompt, classes=args.classes,
                     prompts_file=str(args.prompts) if args.prompts else None, metrics=["clip"],
                     clip_model=args.clip_model, clip_template=args.template, num_seeds=args.num_seeds,
                     **_sampling_fields(args))
    bar = _Bar("sampling")
    try:
        results = evaluate(cfg, args.out, runs_dir=args.runs_dir, progress=bar, log=print)
    finally:
        bar.close()
    if results is None:
        return 0
    s = results["spread"]["clip_score"]
    print(f"CLIP score (100 x cosine, mean over {cfg.num_samples} images): {s['mean']:.3f} "
          f"± {s['std']:.3f} (std over {len(s['values'])} seeds)")
    worst = sorted(results["clip_per_text"].items(), key=lambda kv: kv[1])[:5]
    for text, score in worst:
        print(f"  lowest: {score:7.3f}  {text}")
    print(f"results: {args.out / 'results.json'}")
    return 0


def cmd_summary(args) -> int:
    import json

    from core.eval.summary import evaluation_summary, summary_table

    rows = evaluation_summary(args.runs_dir, args.folders)
    print(json.dumps(rows, indent=2) if args.json else summary_table(rows))
    return 0
