"""Generation throughput: tokens/s and images/s of KV-cache sampling (+ decoding) for a preset.

    python -m benchmarks.generation --preset demo-c2i --batch 32
    python -m benchmarks.generation --preset llamagen-c2i-b-256 --batch 8 --random-init   # no weights needed

--random-init builds the preset's architecture with random weights: the speed of sampling does not
depend on the weights, so the figure holds for the published checkpoint too.
"""
from __future__ import annotations

import argparse
import time

import torch

from core import device as devmod
from core.models import load, registry
from core.models.generate import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo-c2i")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--random-init", action="store_true", help="random weights of the preset's architecture")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = devmod.resolve(args.device)
    dtype = getattr(torch, args.dtype)
    p = registry.get_generator(args.preset)
    if args.random_init:
        gen = load.build_generator(args.preset).to(dev, dtype).eval()
        tok = load.build_tokenizer(p.tokenizer)
        tok.config = type(tok.config)(**{**tok.config.to_dict(), "image_size": p.image_size})
        tok = tok.to(dev).eval()
    else:
        gen, tok = load.load_pair(args.preset, device=dev)
        gen = gen.to(dtype)
    n_cls = gen.config.num_classes
    cond = torch.arange(args.batch, device=dev) % n_cls
    seeds = list(range(args.batch))

    def once():
        t0 = time.perf_counter()
        toks = generate(gen, cond, seeds=seeds, cfg_scale=args.cfg_scale).tokens
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        with torch.no_grad():
            tok.decode(toks)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return t1 - t0, time.perf_counter() - t1

    once()  # warm-up
    times = [once() for _ in range(args.repeats)]
    g = sorted(t[0] for t in times)[len(times) // 2]
    d = sorted(t[1] for t in times)[len(times) // 2]
    n = gen.num_tokens
    print(f"preset {args.preset} ({p.size}, {p.image_size}px, {n} tokens/image) on {dev} {args.dtype}, batch {args.batch}, "
          f"cfg {args.cfg_scale}, threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"  sampling: {g:.3f} s/batch  {args.batch * n / g:,.0f} tokens/s  {args.batch / g:.2f} images/s (tokens only)")
    print(f"  decoding: {d:.3f} s/batch")
    print(f"  end to end: {args.batch / (g + d):.2f} images/s")


if __name__ == "__main__":
    main()
