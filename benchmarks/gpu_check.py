"""GPU check (see gpu_check.sh): the paper-scale VA-π step on random weights, its breakdown, MFU and memory,
and 1-process DDP / FSDP smoke runs of the real trainer. Prints one table. Needs only torch, accelerate and
numpy (no gradio, plotly, lpips, torchvision or PIL): LPIPS-VGG is timed with a torch-only VGG16 trunk of the
same layers and random weights (`RandomVGGLPIPS`), which costs what LPIPS-VGG costs.

    python -m benchmarks.gpu_check                 # GPT-XXL @ 384 px, 128 images x G 8 per step, bf16, on cuda:0
    python -m benchmarks.gpu_check --dry-run       # the same code on a tiny model on the CPU (CI: checks the script)
    python -m benchmarks.gpu_check --sampling      # GPT-XXL @ 384 px sampling, bf16: tokens/s and images/s,
                                                   # growing-cache sampler vs static cache + compiled step
    torchrun --nproc_per_node 1 -m benchmarks.gpu_check --smoke ddp|fsdp [--dry-run]

MFU counts the generator's forward + backward only: FLOPs = 6 * P * T + 12 * L * T^2 * d per sequence (P the
parameters used as matmuls: all but the embedding tables, so the output head counts; T tokens incl. the class
token, L layers, d width; the attention term counts QK^T and AV without causal halving), divided by time and the
GPU's dense bf16 peak for its variant (H100/H200 SXM 989, H100 NVL / H200 NVL 835, H100 PCIe 756 TFLOP/s).
Timers start and stop on a synchronised device. Peak memory: allocated (tensors) and reserved (the allocator's).

The smokes (DDP, and FSDP2 on a mesh of one process) run each method 3 steps uninterrupted and 2 + a resume to 3,
and assert that the trained weights moved and that the resumed run ends where the uninterrupted one does.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.generation import timed as timed_on  # synchronised before and after on a GPU
from core.vapi.estimate import GPU_CHECK_RESULTS, PEAK_BF16  # one table of peaks; the estimate reads our figures

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16.features


class RandomVGGLPIPS(nn.Module):
    """LPIPS-VGG's computation (VGG16 trunk to relu5_3, unit-normalised taps, 1x1 linear heads) with random
    weights: the reward's cost without torchvision or downloaded weights. Timing only, never a reward."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features_net = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in (64, 128, 256, 512, 512))
        self.requires_grad_(False)

    def features(self, x):
        out, h = [], x.float()
        for i, layer in enumerate(self.features_net):
            h = layer(h)
            if i in TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def distance(self, fa, fb):
        total = 0
        for lin, a, b in zip(self.lins, fa, fb):
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))
        return total.view(-1)


def tiny_pair():
    """The dry run's tiny random GPT (16 tokens) and VQ (16 px) on the CPU."""
    from core.models import llamagen, vq

    gen = llamagen.Transformer(llamagen.GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=1000,
                                                  block_size=16, class_dropout_prob=0.1))
    tok = vq.VQModel(vq.VQConfig(codebook_size=64, codebook_embed_dim=4, ch=32, encoder_ch_mult=[1, 2, 2],
                                 decoder_ch_mult=[1, 2, 2], z_channels=32, num_res_blocks=1, image_size=16))
    return gen, tok

def use_random_lpips(device) -> None:
    from core.vapi import rewards

    net = RandomVGGLPIPS().to(device).eval()
    rewards.check_backbone = lambda name: None
    rewards.load_lpips = lambda name, dev: net


def gpt_flops(model, tokens: int) -> float:
    cfg = model.config
    emb = sum(p.numel() for n, p in model.named_parameters() if "embedding" in n)  # lookups; the output head is a matmul
    params = sum(p.numel() for p in model.parameters()) - emb
    return 6 * params * tokens + 12 * cfg.n_layer * tokens ** 2 * cfg.dim


def peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def step_check(dry: bool) -> list[tuple[str, str]]:
    from core.models import llamagen, vq
    from core.vapi import objective
    from benchmarks.reference_step import SCHEDULES
    from benchmarks.step import median_seconds
    from core.vapi.config import resolve
    from core.vapi.objective import Batch

    device = torch.device("cpu" if dry else "cuda:0")
    if dry:
        gen, tok = tiny_pair()
        images_per_step, micro, G, size, what = 8, 4, 4, 16, "tiny GPT + VQ on CPU (dry run: figures meaningless)"
    else:
        gen = llamagen.build("GPT-XXL", model_type="c2i", image_size=384)
        tok = vq.build("VQ-16", image_size=384)
        images_per_step, micro, G, size, what = 128, 16, 8, 384, "GPT-XXL @ 384 px + VQ-16, random weights, bf16"
    gen, tok = gen.to(device).train(), tok.to(device).eval()
    use_random_lpips(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if not dry else torch.autocast("cpu", enabled=False)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(micro, 3, size, size, generator=g) * 2 - 1).to(device)
    labels = torch.randint(0, 1000, (micro,), generator=g).to(device)
    with torch.no_grad():
        batch = Batch(images=images, cond=labels, tokens=tok.encode(images))
    T = batch.tokens.shape[1]
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-6, weight_decay=1e-4)
    # per-sample (the reference): the authors back-propagate B*G sequences in chunks of 8 (--train-batch-size 8), so
    # its micro-batch is 1 image = G sequences; the grouped schedule's is `micro` images = `micro` sequences
    micro_of = {"grouped": micro, "per-sample": 1}
    rows = [("setting", what), ("step", f"{images_per_step} images x G {G}; micro-batches of {micro} images (grouped) "
                                       f"or 1 image = {G} sequences (per-sample); {T} tokens each")]
    results = {}
    for schedule, loss_fn in SCHEDULES.items():
        mb = micro_of[schedule]
        sub = Batch(images=batch.images[:mb], cond=batch.cond[:mb], tokens=batch.tokens[:mb])
        cfg = resolve(None, {"num_generations": G, "global_batch_size": images_per_step,
                             "per_device_train_batch_size": mb, "reward_chunk_size": 32})

        def full_step():
            steps = images_per_step // mb
            for m in range(steps):
                with amp:
                    out = loss_fn(gen, tok, sub, cfg, xi=0.0, generator=torch.Generator(device=device).manual_seed(m))
                (out.loss / steps).backward()
            torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results[schedule] = median_seconds(full_step, 1)
        cuda = device.type == "cuda"
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
        held = torch.cuda.max_memory_reserved(device) / 2**30 if cuda else float("nan")
        rows.append((f"step, {schedule}", f"{results[schedule]:.2f} s/step (100 steps: {results[schedule] * 100 / 60:.1f} min), "
                                          f"peak memory {mem:.1f} GiB allocated, {held:.1f} GiB reserved"))
    rows.append(("grouped vs per-sample", f"{results['per-sample'] / results['grouped']:.2f}x faster (target >= 4x at G 8)"))

    # breakdown of one grouped micro-batch
    cfg = resolve(None, {"num_generations": G, "reward_chunk_size": 32})

    def fwd_bwd():
        with amp:
            logits = gen(batch.cond, batch.tokens[:, :-1])
        logits.float().logsumexp(-1).mean().backward()

    t_fb = median_seconds(fwd_bwd, 2)
    gen.zero_grad(set_to_none=True)
    with torch.no_grad(), amp:
        logits = gen(batch.cond, batch.tokens[:, :-1])
    samples = objective.sample_groups(logits, G, 1.0, None)
    t_reward = median_seconds(lambda: objective.score_samples(tok, samples, images, cfg.reward_weights, 32), 1)
    flops = gpt_flops(gen, T) * micro
    peak = peak_flops(device)
    mfu = f", MFU {flops / t_fb / peak:.0%} of {peak / 1e12:.0f} TFLOP/s" if peak else ""
    rows.append(("generator fwd+bwd", f"{t_fb * 1000:.0f} ms per micro-batch, {flops / t_fb / 1e12:.1f} TFLOP/s{mfu}"))
    if peak and not dry:  # what `python -m core estimate` calibrates its step time with on this GPU
        GPU_CHECK_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        GPU_CHECK_RESULTS.write_text(json.dumps({"device": torch.cuda.get_device_name(device), "mfu": flops / t_fb / peak,
                                                 "step_seconds": results["grouped"], "setting": what}, indent=1) + "\n")
    rows.append(("decode + MSE + LPIPS", f"{t_reward * 1000:.0f} ms for {micro * G} samples per micro-batch"))
    return rows


def sampling_check(dry: bool, batch: int = 32, cfg_scale: float = 1.75) -> list[tuple[str, str]]:
    """Free-running sampling of GPT-XXL @ 384 px (576 tokens per image) in bf16 (the model cast, as LlamaGen
    samples), batch 32, CFG 1.75 (the paper's XXL setting: 64 rows per step): the growing-cache sampler and the
    static-cache one with its decode step compiled ("reduce-overhead": CUDA graphs), then VQ-16 decoding."""
    from core.models import llamagen, vq
    from core.models.generate import compile_seconds, decode_tokens, generate

    device = torch.device("cpu" if dry else "cuda:0")
    if dry:
        gen, tok = tiny_pair()
        batch, compile, what = 4, "off", "tiny GPT + VQ on CPU, compile off (dry run: figures meaningless)"
    else:
        gen = llamagen.build("GPT-XXL", model_type="c2i", image_size=384)
        tok = vq.build("VQ-16", image_size=384)
        compile, what = "on", f"GPT-XXL @ 384 px + VQ-16, random weights, bf16, batch {batch}, CFG {cfg_scale}"
    for p in gen.parameters():  # upstream zero-inits the head: give every logit a spread
        torch.nn.init.normal_(p, std=0.02)
    gen, tok = gen.to(device, torch.bfloat16).eval(), tok.to(device, torch.bfloat16).eval()
    cond = torch.arange(batch, device=device) % 1000
    seeds = list(range(batch))

    def timed(fn):
        return timed_on(fn, device)

    n = gen.num_tokens
    growing = lambda: generate(gen, cond, seeds=seeds, cfg_scale=cfg_scale, static=False, compile="off").tokens
    static = lambda: generate(gen, cond, seeds=seeds, cfg_scale=cfg_scale, compile=compile).tokens
    t_first, _ = timed(static)  # compiles (and records the CUDA graph) on a GPU
    t_grow, ref = timed(growing)
    t_static, toks = timed(static)
    t_decode, _ = timed(lambda: decode_tokens(tok, toks, batch))
    compiled = sum(compile_seconds.get(id(gen), {}).values())
    same = (ref == toks).float().mean().item()
    return [("sampling", what),
            ("sampling, growing cache", f"{batch * n / t_grow:,.0f} tokens/s, {batch / t_grow:.2f} images/s (tokens only)"),
            ("sampling, static cache" + (" + compiled step" if compile == "on" else ""),
             f"{batch * n / t_static:,.0f} tokens/s, {batch / t_static:.2f} images/s (tokens only); "
             f"{t_grow / t_static:.2f}x the growing cache; first call {t_first:.0f} s (compile {compiled:.0f} s)"),
            ("VQ decode", f"{t_decode:.2f} s for {batch} images; end to end {batch / (t_static + t_decode):.2f} images/s"),
            ("same tokens (bf16)", f"{same:.1%} of tokens equal between the two samplers (fp32: all, tested on CPU)")]


SMOKE_PHASES = ("first", "resume", "whole")


def smoke(kind: str, method: str, root: Path, phase: str, dry: bool) -> None:
    """One process under torchrun, one trainer (a trainer ends the process group). Phases, each its own process:
    "first": 2 steps of the demo preset, a checkpoint each; "resume": that run continued to step 3; "whole": 3
    steps uninterrupted, then the checks: the trained module moved from the preset's weights, and the resumed
    run's step 3 equals this one's (within 5% of how far the weights moved: GPU kernels need not be bitwise
    reproducible). VA-π and the decoder baseline (FSDP must save and load the trained module: the tokenizer)."""
    from core.models import checkpoint, load
    from core.runs.recorder import RunRecorder
    from core.runs.store import RunStore
    from core.vapi.config import resolve
    from core.vapi.methods import method_of
    from core.runs.kinds import TRAIN_ENTRY as ENTRY
    from core.vapi.trainer import Trainer

    class NoPreviewTrainer(Trainer):  # sample grids need PIL, which a bare GPU machine may lack
        def write_preview(self, step: int) -> None:
            pass

    store = RunStore(root)
    steps = 2 if phase == "first" else 3
    cfg = resolve("demo-c2i", {"method": method, "max_steps": steps, "save_steps": 1, "sharding": kind,
                               "global_batch_size": 4, "per_device_train_batch_size": 4, "num_generations": 2,
                               "data_subset": 16, "device": "cpu" if dry else "cuda:0", "mixed_precision": "bf16",
                               "learning_rate": 1e-3})
    run_id = f"{kind}-{method}" + ("-whole" if phase == "whole" else "")
    if phase != "resume":
        store.create_run(run_id, {**cfg.to_dict(), "entry": ENTRY}, "cpu", steps, run_id=run_id)
    run_dir = store.run_dir(run_id)
    trainer = NoPreviewTrainer(cfg, run_dir, RunRecorder(run_dir, is_main=True))
    last = trainer.train(resume=phase == "resume")
    saved = sorted(c.step for c in store.checkpoints(run_id))
    assert saved == list(range(1, steps + 1)), saved
    report = {"smoke": kind, "method": method, "phase": phase, "checkpoints": saved, "sharded": trainer.fsdp,
              "loss": last.get("loss")}
    if phase == "whole":
        name = method_of(cfg).weights_file
        trained = method_of(cfg).trains
        policy, tokenizer = load.load_pair(cfg.model, None, "cpu")
        base = (policy if trained == "generator" else tokenizer).state_dict()
        a, _ = checkpoint.read_file(run_dir / "checkpoints" / "step-000003" / name)
        b, _ = checkpoint.read_file(store.run_dir(f"{kind}-{method}") / "checkpoints" / "step-000003" / name)
        moved = max((a[k].float() - base[k].float()).abs().max().item() for k in a)
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        assert moved > 0, f"{kind} {method}: the trained weights did not move"
        assert diff <= 0.05 * moved, f"{kind} {method}: resumed run differs by {diff:.3g} (moved {moved:.3g})"
        report.update(moved=moved, resume_diff=diff)
    import sys

    report["imported_beyond_a_bare_gpu_machine"] = [m for m in ("PIL", "torchvision", "gradio", "plotly", "lpips",
                                                                "umap") if m in sys.modules]
    print(json.dumps(report), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: checks the script, not the GPU")
    ap.add_argument("--smoke", choices=("ddp", "fsdp"), default=None, help="run a trainer smoke test (under torchrun)")
    ap.add_argument("--method", choices=("vapi", "decoder"), default="vapi", help="smoke: the training method")
    ap.add_argument("--root", type=Path, default=None, help="smoke: the runs folder")
    ap.add_argument("--phase", choices=SMOKE_PHASES, default="first", help="smoke: first 2 steps, resume to 3, "
                                                                            "or 3 uninterrupted steps and the checks")
    ap.add_argument("--sampling", action="store_true", help="GPT-XXL sampling throughput instead of the VA-π step")
    args = ap.parse_args()
    if args.smoke:
        smoke(args.smoke, args.method, args.root or Path(tempfile.mkdtemp(prefix="vapi-smoke-")), args.phase, args.dry_run)
        return
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a machine without a GPU")
    rows = sampling_check(args.dry_run) if args.sampling else step_check(args.dry_run)
    dev = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    print(f"\n| VA-π GPU check — {dev}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')} | |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
