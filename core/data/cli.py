"""`python -m core data inspect --data KIND PATH`: what a data path holds before a run (core.data.inspect)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="look at training data before a run",
                       description="Training data, read the way the trainer reads it.")
    dsub = p.add_subparsers(dest="data_command", metavar="COMMAND")
    dsub.required = True
    i = dsub.add_parser("inspect", help="format found, item count, a few captions, bad files, full-pass time",
                        description="List PATH as data=KIND (the caption format is detected: captions.jsonl folder, "
                                    "TSV, tar shards or a {00000..00127}.tar pattern, saved HF dataset, parquet, "
                                    "LlamaGen .jsonl lists), decode a spread sample and time reading. No model is loaded.")
    i.add_argument("path", nargs="?", default=None, help="the data path (data_path of a run); shapes: the split")
    i.add_argument("--data", default="captions", choices=("captions", "imagefolder", "shapes"),
                   help="the kind of data (the run's `data` field; default captions)")
    i.add_argument("--image-size", type=int, default=256, help="the model's resolution (reading time depends on it)")
    i.add_argument("--subset", type=float, default=None, help="as data_subset: a fraction in (0, 1] or a count")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--sample", type=int, default=64, help="images decoded to count unreadable ones and time reading")
    i.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    from core.data.inspect import inspect_data
    from core.errors import ConfigError

    if args.sample < 1:
        raise ConfigError("--sample", f"must be >= 1, got {args.sample}")
    subset = int(args.subset) if args.subset is not None and args.subset > 1 else args.subset
    report = inspect_data(args.data, args.path, image_size=args.image_size, subset=subset, seed=args.seed,
                          sample=args.sample)
    print("\n".join(report.lines()))
    return 2 if report.problem else 0
