"""Rendering speed of the demo's shapes domain: images/s of `core.demo.shapes.images_tensor` (vectorised numpy).

    python -m benchmarks.rendering --count 2000 --threads 1

A figure, not a test: on a shared machine a wall-clock floor fails for reasons that are not the code's. A
de-vectorised renderer (a Python loop per pixel or per shape) shows here as a drop of 10x or more.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from core.demo import shapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="scenes rendered per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--split", default="train")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes.images_tensor(args.split, range(50))  # warm-up: imports, first allocations
    times = []
    for r in range(args.repeats):
        start = time.perf_counter()
        x, _ = shapes.images_tensor(args.split, range(r * args.count, (r + 1) * args.count))
        times.append(time.perf_counter() - start)
    print(f"shapes rendering: {args.count} scenes of {tuple(x.shape[1:])}, median {statistics.median(times):.3f} s "
          f"= {args.count / statistics.median(times):,.0f} images/s ({args.threads} thread(s), {args.repeats} repeats)")


if __name__ == "__main__":
    main()
