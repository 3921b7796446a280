"""Sampling throughput: the growing-cache sampler vs the static-cache one, side by side in one process.

    python -m benchmarks.generation                                  # GPT-B (random weights) b8/b32 x CFG 1/2, the demo
    python -m benchmarks.generation --cases gpt-b:8:2 --repeats 3    # one case: GPT-B, batch 8, CFG 2
    python -m benchmarks.generation --cases gpt-b:8:2 --compile on   # the compiled step (its compile time printed)
    python -m benchmarks.generation --cases gpt-b:8:2 --image-size 128   # GPT-B at 64 tokens: a 4x shorter run

A case is MODEL:BATCH:CFG, MODEL `gpt-b` (llamagen-c2i-b-256's architecture with random weights: the speed of
sampling does not depend on the weights) or `demo` (the committed demo-c2i with its weights), or any preset name
(`llamagen-c2i-xxl-384`: random weights of its architecture). For every case the two samplers and the floor run in turn,
`--repeats` times each after one warm-up each, and the table gives the median tokens/s of each and their ratio,
so load from other processes hits both alike. "floor" is the one-token step's Linear layers alone (every weight
matrix times the step's rows, prepacked as the static loop does): no fp32 sampler of this model built on torch's
GEMM goes under it on this machine, whatever its cache or loop, so "of floor" says how much a better loop could still gain.
"growing" is `generate(static=False)`: prefill + `decode_one`
(the sampler before the static cache); "static" is `generate(static=True, compile=...)`. Both draw the same
tokens from the same seeds; the table says so for every case (fp32; a bf16 run may differ by rounding).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from core import device as devmod
from core.models import llamagen, load, registry
from core.models.llamagen import PackedLinears
from core.models.generate import compile_seconds, generate, use_compile

DEFAULT_CASES = "gpt-b:8:1,gpt-b:8:2,gpt-b:32:1,gpt-b:32:2,demo:32:1,demo:32:2"
ALIASES = {"gpt-b": "llamagen-c2i-b-256", "demo": "demo-c2i"}


def build(model: str, device: torch.device, dtype: torch.dtype, image_size: int = 0):
    preset = ALIASES.get(model, model)
    if model == "demo":
        gen, _ = load.load_pair(preset, device=device)
    else:
        torch.manual_seed(0)
        p = registry.get_generator(preset)
        gen = (llamagen.build(p.size, model_type=p.task, image_size=image_size, **p.overrides) if image_size
               else load.build_generator(preset))
        for p in gen.parameters():  # upstream zero-inits the head: give every logit a spread
            torch.nn.init.normal_(p, std=0.02)
    return gen.to(device, dtype).eval()


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def weights_floor(gen, rows: int):
    """One sampling run's Linear layers alone: every decode step's weight matrices times `rows` rows, prepacked as
    `pack_linears` packs them, `num_tokens` times (no attention, norms, cache or sampling)."""
    linears = [m for m in gen.layers.modules() if isinstance(m, nn.Linear)] + [gen.output]
    packed = PackedLinears(linears, rows) if PackedLinears.available(gen.output.weight) else None
    xs = {m: torch.randn(rows, m.in_features, device=m.weight.device, dtype=m.weight.dtype) for m in linears}

    def run():
        with torch.no_grad():
            for _ in range(gen.num_tokens):
                for m in linears:
                    packed(m, xs[m]) if packed is not None else m(xs[m])

    return run


def run_case(gen, batch: int, cfg: float, repeats: int, compile: str, device: torch.device) -> dict:
    cond = torch.arange(batch, device=device) % gen.config.num_classes
    seeds = list(range(batch))
    samplers = {
        "growing": lambda: generate(gen, cond, seeds=seeds, cfg_scale=cfg, static=False, compile="off").tokens,
        "static": lambda: generate(gen, cond, seeds=seeds, cfg_scale=cfg, compile=compile).tokens,
    }
    compile_seconds.pop(id(gen), None)
    warm = {name: timed(fn, device) for name, fn in samplers.items()}  # warm-up (and the compile, if any)
    samplers["floor"] = weights_floor(gen, cond.shape[0] * (2 if cfg != 1.0 else 1))
    timed(samplers["floor"], device)
    names = list(samplers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            times[name].append(timed(samplers[name], device)[0])
    tokens = batch * gen.num_tokens
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"tok/s growing": tokens / med["growing"], "tok/s static": tokens / med["static"],
            "tok/s floor": tokens / med["floor"],
            "speed-up": med["growing"] / med["static"], "same tokens": torch.equal(warm["growing"][1], warm["static"][1]),
            "compile s": sum(compile_seconds.get(id(gen), {}).values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated MODEL:BATCH:CFG (default {DEFAULT_CASES})")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each sampler per case (median)")
    ap.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="the static sampler's compile switch")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--image-size", type=int, default=0,
                    help="random-weight models: this resolution instead of the preset's (128: 64 tokens, a shorter run)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = devmod.resolve(args.device)
    dtype = getattr(torch, args.dtype)
    cases = []
    for text in args.cases.split(","):
        model, batch, cfg = text.strip().split(":")
        cases.append((model, int(batch), float(cfg)))
    print(f"device {dev}, {args.dtype}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"median of {args.repeats} runs of each of growing, static and floor (rotating who goes first), "
          f"compile {args.compile}")
    print("| model | tokens/image | batch | CFG | growing tok/s | static tok/s | speed-up | same tokens | compile "
          "| floor tok/s | static of floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    models: dict = {}
    for model, batch, cfg in cases:
        if model not in models:
            models = {model: build(model, dev, dtype, args.image_size)}  # one model in memory at a time
        gen = models[model]
        rows = batch * (2 if cfg != 1.0 else 1)
        compiled = use_compile(args.compile, dev, batch)
        r = run_case(gen, batch, cfg, args.repeats, args.compile, dev)
        comp = f"{r['compile s']:.0f} s" if compiled else "off"
        print(f"| {model} | {gen.num_tokens} | {batch} ({rows} rows) | {cfg:g} | {r['tok/s growing']:,.1f} | "
              f"{r['tok/s static']:,.1f} | {r['speed-up']:.2f}x | {'yes' if r['same tokens'] else 'NO'} | {comp} | "
              f"{r['tok/s floor']:,.1f} | {r['tok/s static'] / r['tok/s floor']:.0%} |",
              flush=True)


if __name__ == "__main__":
    main()
