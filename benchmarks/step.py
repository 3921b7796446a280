"""Step time of the grouped vs the per-sample (reference) schedule of a VA-π micro-batch.

    python -m benchmarks.step --preset demo-c2i
    python -m benchmarks.step --preset llamagen-c2i-xl --set model=llamagen-c2i-b-256 --set data_path=DIR \
        --set 'reward_weights={"mse": 1}' --random-init --batch 2
"""
from __future__ import annotations

import statistics
import time

import torch

from core.models import load, registry
from core.vapi import objective
from core.vapi.config import parse_overrides, resolve
from core.vapi.objective import Batch
from benchmarks.reference_step import SCHEDULES


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls after one warm-up call (CUDA synchronised)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the warm-up's (or the last call's) queued kernels are not this call's time
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_step(preset_name: str, overrides: list[str], batch: int | None, repeats: int, random_init: bool) -> dict:
    cfg = resolve(preset_name, parse_overrides(overrides))
    p = registry.get_generator(cfg.model)
    dev = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    if random_init:
        gen = load.build_generator(cfg.model).to(dev)
        tok = load.build_tokenizer(p.tokenizer)
        tok.config = type(tok.config)(**{**tok.config.to_dict(), "image_size": p.image_size})
        tok = tok.to(dev).eval()
    else:
        gen, tok = load.load_pair(cfg.model, cfg.init_weights, dev)
    gen.train()
    B = batch or cfg.per_device_train_batch_size
    g = torch.Generator().manual_seed(0)
    if p.demo_sized:
        from core.demo.shapes import images_tensor

        images, labels = images_tensor("train", range(B), p.image_size)
    else:
        images = torch.rand(B, 3, p.image_size, p.image_size, generator=g) * 2 - 1
        labels = torch.randint(0, gen.config.num_classes, (B,), generator=g)
    images, labels = images.to(dev), labels.to(dev)
    with torch.no_grad():
        data = Batch(images=images, cond=labels, tokens=tok.encode(images))
    results = {}
    for schedule, loss_fn in SCHEDULES.items():
        def step():
            gen.zero_grad(set_to_none=True)
            out = loss_fn(gen, tok, data, cfg, xi=cfg.xi, generator=torch.Generator(device=dev).manual_seed(1))
            out.loss.backward()

        results[schedule] = median_seconds(step, repeats)
    samples = objective.sample_groups(gen.teacher_forced_logits(data.cond, data.tokens[:, :-1]).detach(), cfg.num_generations, 1.0, None)
    score = median_seconds(lambda: objective.score_samples(tok, samples, images, cfg.reward_weights, cfg.reward_chunk_size), repeats)
    ratio = results["per-sample"] / results["grouped"]
    print(f"preset {preset_name} ({cfg.model}, {p.size}, {gen.num_tokens} tokens) on {dev}, B={B} images, "
          f"G={cfg.num_generations}, threads {torch.get_num_threads()}, median of {repeats}")
    print(f"  grouped    (1 forward of {B} sequences):          {results['grouped']:.3f} s/step")
    print(f"  per-sample (1 + {cfg.num_generations} x {B} sequences, the reference): {results['per-sample']:.3f} s/step")
    print(f"  speed-up: {ratio:.2f}x   (decode + reward of the {B * cfg.num_generations} samples, common to both: {score:.3f} s)")
    return {**results, "ratio": ratio, "decode_reward": score}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo-c2i")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: the preset's per-device batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--random-init", action="store_true", help="random weights of the preset's architecture (speed only)")
    args = ap.parse_args()
    bench_step(args.preset, args.overrides, args.batch, args.repeats, args.random_init)


if __name__ == "__main__":
    main()
