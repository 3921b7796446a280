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

from core import configmeta, paths

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


def _sampling_args(p: argparse.ArgumentParser, **defaults) -> None:
    """The sampling options every command shares, from EvalConfig's fields (`defaults`: a command's own)."""
    from core.eval.configs import SAMPLING_FIELDS, EvalConfig

    g = p.add_argument_group("sampling")
    configmeta.add_arguments(g, EvalConfig, SAMPLING_FIELDS, defaults=defaults)
    g.add_argument("--runs-dir", type=Path, default=None,
                   help=f"where run ids in --weights are looked up (default {paths.RUNS_DIR})")


def _out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed when it exists)")


# The options of each command that are fields of its config (EvalConfig or EmbeddingConfig), and renamed flags.
FID_FIELDS = ("model", "weights", "label", "num_samples", "classes", "prompts_file", "image_size", "reference",
              "reference_count", "extractor", "extractor_path", "metrics", "k", "clip_model", "num_seeds")
EMBEDDING_FIELDS = ("model", "base_weights", "aligned_weights", "classes", "per_class", "real", "extractor",
                    "extractor_path", "projections", "image_size", "num_seeds")
CLIP_FIELDS = ("model", "weights", "label", "prompts_file", "classes", "clip_template", "clip_model", "num_seeds")
FLAGS = {"prompts_file": "--prompts", "projections": "--projection", "clip_template": "--template"}


def _job_command(sub: argparse._SubParsersAction, name: str, help: str, description: str, func, cls: type,
                 fields: tuple, required: tuple = (), extra: tuple = (), **sampling_defaults) -> None:
    """`python -m core eval <name>`: the options of `cls`'s `fields` (from their metadata), `extra` ones
    ((flags, add_argument keywords) pairs), --out and the shared sampling options."""
    p = eval_subparsers(sub).add_parser(name, help=help, description=description)
    configmeta.add_arguments(p, cls, fields, flags=FLAGS, required=required)
    for flags, kw in extra:
        p.add_argument(*flags, **kw)
    _out_arg(p)
    _sampling_args(p, **sampling_defaults)
    p.set_defaults(func=func)


def register(sub: argparse._SubParsersAction) -> None:
    from core.eval.configs import EmbeddingConfig, EvalConfig

    _job_command(sub, "fid", "FID / IS / precision / recall of one model (Table 2)",
                 "Sample N images (resumable: rerun the same command to continue), pack them into "
                 "OUT/sampling/samples.npz (ADM/LlamaGen layout) and measure them against a reference; "
                 "the numbers go to OUT/results.json.", cmd_fid, EvalConfig, FID_FIELDS)
    _job_command(sub, "embeddings", "where base and aligned samples sit relative to real images (Fig. 1b-c)",
                 "Sample the same classes and seeds from the base and the aligned model, extract features of "
                 "those and of real images, and write OUT/embeddings.json, OUT/results.json and HTML figures "
                 "(t-SNE/UMAP maps with KDE contours, KDEs per axis, distances per class) to OUT/figures.",
                 cmd_embeddings, EmbeddingConfig, EMBEDDING_FIELDS, required=("aligned_weights",))
    _job_command(sub, "geneval-export", "GenEval image folder of a text-to-image model (Table 3)",
                 "Generate images for GenEval's 553 prompts (assets/geneval/evaluation_metadata.jsonl) in the "
                 "layout GenEval's evaluate_images.py reads: OUT/00000/metadata.jsonl, OUT/00000/samples/0000.png.",
                 cmd_geneval, EvalConfig, ("model", "weights"), required=("model",), cfg_scale=5.0,
                 extra=((("--images-per-prompt",), dict(type=int, default=4, help="default 4 (GenEval's)")),
                        (("--prompts-file",), dict(type=Path, default=None,
                                                   help="another GenEval metadata file (default: the official one)"))))
    _job_command(sub, "clip", "CLIP score of samples against their prompts (Table 1)",
                 "CLIP score = 100 x cosine similarity of the CLIP image and text embeddings, averaged over "
                 "images (torchmetrics' CLIPScore without its clamp at 0). Text-to-image presets take --prompts; "
                 "class-conditional ones score each class against --template filled with the class name.",
                 cmd_clip, EvalConfig, CLIP_FIELDS,
                 extra=((("--images-per-prompt",), dict(type=int, default=4, help="images per prompt or class (default 4)")),))

    p = eval_subparsers(sub).add_parser(
        "summary", help="all finished evaluations: per checkpoint, with the base model beside it",
        description="Table of every finished evaluation run in the runs dir (and of the given --out folders), "
                    "grouped by model and setting; each checkpoint's numbers with the base model's in brackets.")
    p.add_argument("folders", nargs="*", type=Path, help="extra evaluation folders (the --out of `eval fid`/`eval clip`)")
    p.add_argument("--runs-dir", type=Path, default=None, help=f"default {paths.RUNS_DIR}")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_summary)


class _Bar:
    """A tqdm bar driven by progress(done, total) callbacks; `with _Bar(desc) as bar:` closes it."""

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

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sampling_fields(args) -> dict:
    from core.eval.configs import SAMPLING_FIELDS

    return configmeta.values_from_args(args, SAMPLING_FIELDS)


def _print_metrics(results: dict, out: Path) -> None:
    s = results["setting"]
    print(f"{results['model']} ({results['checkpoint']}): {s['num_samples']} samples, cfg {s['cfg_scale']}")
    for name, v in results["spread"].items():
        print(f"  {name:<16} {v['mean']:.4f} ± {v['std']:.4f}  (seeds: {', '.join(f'{x:.4f}' for x in v['values'])})")
    print(f"samples: {results['npz']}\nresults: {out / 'results.json'}")


def cmd_fid(args) -> int:
    from core.eval.configs import EvalConfig
    from core.eval.eval_job import evaluate

    cfg = EvalConfig(**configmeta.values_from_args(args, FID_FIELDS), **_sampling_fields(args))
    with _Bar("sampling") as bar:
        results = evaluate(cfg, args.out, runs_dir=args.runs_dir, progress=bar, log=print)
    if results is not None:
        _print_metrics(results, args.out)
    return 0


def cmd_embeddings(args) -> int:
    from core.eval.configs import EmbeddingConfig
    from core.eval.shift_job import embedding_shift, shift_table

    cfg = EmbeddingConfig(**configmeta.values_from_args(args, EMBEDDING_FIELDS), **_sampling_fields(args))
    with _Bar("base + aligned samples") as bar:
        report = embedding_shift(cfg, args.out, runs_dir=args.runs_dir, progress=bar, log=print)
    if report is None:
        return 0
    print(shift_table(report.results))
    print(f"numbers: {args.out / 'results.json'} (full analysis: {args.out / 'embeddings.json'})")
    for name, path in report.figures.items():
        print(f"figure {name}: {path}")
    return 0


def cmd_geneval(args) -> int:
    from core.eval.geneval import export_geneval_samples

    with _Bar("GenEval samples") as bar:
        out = export_geneval_samples(args.model, args.out, weights=args.weights, prompts_file=args.prompts_file,
                                     images_per_prompt=args.images_per_prompt, runs_dir=args.runs_dir, progress=bar,
                                     **_sampling_fields(args))
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
        if args.prompts_file is None:
            raise ConfigError("prompts", f"{args.model} is text-conditional: give --prompts FILE")
        count = len(read_prompts(args.prompts_file))
    else:
        if args.prompts_file is not None:
            raise ConfigError("prompts", f"{args.model} is class-conditional: give --classes (and --template)")
        count = len(class_ids_of(args.model, args.classes) or range(num_classes_of(args.model) or 0))
    cfg = EvalConfig(**configmeta.values_from_args(args, CLIP_FIELDS), num_samples=count * args.images_per_prompt,
                     metrics=["clip"], **_sampling_fields(args))
    with _Bar("sampling") as bar:
        results = evaluate(cfg, args.out, runs_dir=args.runs_dir, progress=bar, log=print)
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
