"""`python -m core <command>`: a thin entry point. Each subsystem registers its own commands.

Heavy imports (torch, models) happen inside the command functions, so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from core.errors import UserError

# module path -> each exposes `register(subparsers)` adding its commands with set_defaults(func=...)
COMMAND_MODULES = (
    "core.models.cli",   # info, download, sample
    "core.runs.cli",     # runs list, show, stop, resume, delete
    "core.vapi.cli",     # train
    "core.eval.cli",     # eval fid, embeddings, geneval-export, clip, summary (+ demo)
    "core.eval.compare_cli",  # compare (free / teacher-forced / prefix views)
    "core.demo.cli",           # demo build, eval demo, eval diagnose
    "core.data.cli",           # data inspect
    "core.sweep.cli",          # sweep (variants trained and evaluated, one table)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="VA-π Workbench: post-train autoregressive image generators (CLI).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
