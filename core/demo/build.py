"""The demo's build recipe: pretrain the embedded demo models from scratch, reproducibly
(`python -m core demo build`, registered in `core.demo.cli`).

Three models, all on the procedural shapes domain (core.demo.shapes), seeded, on the CPU:
  1. the VQ tokenizer (LlamaGen's VQModel, small config): reconstruction + codebook losses,
     dead codes re-seeded from encoder outputs during the first part of training;
  2. the class-conditional GPT (LlamaGen's Transformer, small config): next-token CE on tokens of
     pre-encoded "train" images, label dropout 0.1 (CFG works), AdamW + cosine schedule;
  3. the domain evaluator (core.demo.evaluator), on its own "evaluator" split.
Then the base model's measured metrics (core.demo.report) go into manifest.json together
with the configs, the recipe, the sha256 of every file and the wall time of each stage.

`--budget tiny` runs the same pipeline with minutes-to-seconds budgets (tests prove the recipe
with it; the quality is not meant to be good).
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from core.demo import configs, evaluator, report
from core.models import checkpoint
from core.models.llamagen import GPTConfig, Transformer
from core.models.vq import VQConfig, VQModel


@dataclass
class Recipe:
    """Everything the build depends on. Defaults = the committed demo (full budget)."""

    seed: int = 0
    threads: int = 2
    # tokenizer
    vq: dict = field(default_factory=lambda: dict(configs.DEMO_VQ))
    vq_steps: int = 1000
    vq_batch: int = 64
    vq_lr: float = 1e-3
    vq_restart_until: float = 0.5  # re-seed dead codes during this fraction of training
    # generator
    gpt: dict = field(default_factory=lambda: dict(configs.DEMO_GPT))
    gpt_images: int = 100_000  # "train" scenes encoded once, then sampled in minibatches
    gpt_steps: int = 3300  # ~27M tokens: about compute-optimal for 1.4M parameters in ~30 CPU minutes
    gpt_batch: int = 128
    gpt_lr: float = 2e-3
    gpt_weight_decay: float = 0.05
    gpt_warmup: int = 200
    # evaluator
    evaluator_steps: int = 1500
    evaluator_batch: int = 64
    # base metrics written to the manifest
    eval_samples: int = 1000

    @classmethod
    def tiny(cls) -> "Recipe":
        return cls(vq_steps=30, vq_batch=16, gpt_images=400, gpt_steps=30, gpt_batch=16, gpt_warmup=5,
                   evaluator_steps=20, evaluator_batch=16, eval_samples=100)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- tokenizer
def train_vq(r: Recipe, log: Callable[[str], None] = print) -> tuple[VQModel, dict]:
    from core.demo.shapes import images_tensor

    torch.manual_seed(r.seed)
    cfg = VQConfig(**r.vq)
    model = VQModel(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=r.vq_lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / r.vq_steps)))
    restart_until = int(r.vq_restart_until * r.vq_steps)
    usage = torch.zeros(cfg.codebook_size, dtype=torch.long)
    t0 = time.perf_counter()
    for step in range(r.vq_steps):
        x, _ = images_tensor("train", range(step * r.vq_batch, (step + 1) * r.vq_batch), cfg.image_size)
        z = model.encode_latent(x)
        zq, idx, q = model.quantize(z)
        rec = model.decode_latent(zq)
        loss = F.mse_loss(rec, x) + F.l1_loss(rec, x) + q["vq"] + q["commit"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        usage += torch.bincount(idx.flatten(), minlength=cfg.codebook_size)
        if step < restart_until and step % 50 == 49:
            _restart_dead_codes(model, z.detach(), usage == 0)
            usage.zero_()
        if (step + 1) % max(1, r.vq_steps // 10) == 0:
            log(f"[vq] step {step + 1}/{r.vq_steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()
    metrics = vq_metrics(model)
    metrics["train_seconds"] = time.perf_counter() - t0
    log(f"[vq] val mse {metrics['val_mse']:.5f}, codes used {metrics['codes_used']}/{cfg.codebook_size}")
    return model, metrics


@torch.no_grad()
def _restart_dead_codes(model: VQModel, z: torch.Tensor, dead: torch.Tensor) -> None:
    """Codes unused over the last window (dead [V] bool) move onto random encoder outputs of this batch."""
    n = int(dead.sum())
    if n == 0:
        return
    zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = zf[torch.randint(0, zf.shape[0], (n,))]
    model.quantize.embedding.weight[dead] = F.normalize(pick, dim=-1) if model.quantize.l2_norm else pick


@torch.no_grad()
def vq_metrics(model: VQModel, count: int = 1000) -> dict:
    from core.demo.shapes import images_tensor

    x, _ = images_tensor("val", range(count), model.image_size)
    ids = model.encode(x)
    rec = model.decode(ids)
    return {"val_mse": F.mse_loss(rec, x).item(), "codes_used": int(ids.unique().numel()), "val_count": count}


@torch.no_grad()
def encode_split(model: VQModel, split: str, count: int, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    from core.demo.shapes import images_tensor

    toks, labels = [], []
    for lo in range(0, count, batch):
        x, y = images_tensor(split, range(lo, min(lo + batch, count)), model.image_size)
        toks.append(model.encode(x))
        labels.append(y)
    return torch.cat(toks), torch.cat(labels)


# ----------------------------------------------------------------------------- generator
def train_gpt(r: Recipe, tokens: torch.Tensor, labels: torch.Tensor, log: Callable[[str], None] = print) -> tuple[Transformer, dict]:
    torch.manual_seed(r.seed + 1)
    cfg = GPTConfig(**r.gpt)
    model = Transformer(cfg).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.gpt_weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r.gpt_lr, betas=(0.9, 0.95))

    def lr_at(t):
        if t < r.gpt_warmup:
            return (t + 1) / r.gpt_warmup
        return 0.5 * (1 + math.cos(math.pi * (t - r.gpt_warmup) / max(1, r.gpt_steps - r.gpt_warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(r.seed + 2)
    t0 = time.perf_counter()
    n = tokens.shape[0]
    ema = None
    for step in range(r.gpt_steps):
        idx = torch.randint(0, n, (r.gpt_batch,), generator=g)
        x, y = tokens[idx], labels[idx]
        logits = model.teacher_forced_logits(y, x[:, :-1], cond_drop_prob=cfg.class_dropout_prob, generator=g)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % max(1, r.gpt_steps // 20) == 0:
            log(f"[gpt] step {step + 1}/{r.gpt_steps} loss {ema:.4f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()
    return model, {"train_ce_ema": ema, "train_seconds": time.perf_counter() - t0}


@torch.no_grad()
def heldout_ce(model: Transformer, tokens: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    total, count = 0.0, 0
    for lo in range(0, tokens.shape[0], batch):
        x, y = tokens[lo:lo + batch], labels[lo:lo + batch]
        logits = model.teacher_forced_logits(y, x[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="sum").item()
        count += x.numel()
    return total / count


# ----------------------------------------------------------------------------- the build
def build(out: Path, r: Recipe, log: Callable[[str], None] = print) -> dict:
    torch.set_num_threads(r.threads)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    vq, vq_m = train_vq(r, log)
    checkpoint.save_safetensors(vq, out / "vq.safetensors", metadata={"config": vq.config.to_dict()})
    times["tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    tokens, labels = encode_split(vq, "train", r.gpt_images)
    val_tokens, val_labels = encode_split(vq, "val", min(2000, r.gpt_images))
    times["encode"] = time.perf_counter() - t
    log(f"[data] encoded {tokens.shape[0]} train and {val_tokens.shape[0]} val images ({times['encode']:.0f}s)")

    t = time.perf_counter()
    gpt, gpt_m = train_gpt(r, tokens, labels, log)
    gpt_m["val_ce"] = heldout_ce(gpt, val_tokens, val_labels)
    log(f"[gpt] held-out CE {gpt_m['val_ce']:.4f}")
    checkpoint.save_safetensors(gpt, out / "gpt_c2i.safetensors", metadata={"config": gpt.config.to_dict()})
    times["generator"] = time.perf_counter() - t

    t = time.perf_counter()
    ev, ev_m = evaluator.train_evaluator(steps=r.evaluator_steps, batch_size=r.evaluator_batch, seed=r.seed,
                                              log=log)
    evaluator.save_evaluator(ev, out / "evaluator.safetensors", metrics=ev_m)
    times["evaluator"] = time.perf_counter() - t

    manifest = {
        "about": "Embedded demo models of the VA-π Workbench, built by `python -m core demo build`.",
        "tokenizer": {"file": "vq.safetensors", "config": vq.config.to_dict(), "metrics": vq_m},
        "generator": {"file": "gpt_c2i.safetensors", "config": gpt.config.to_dict(), "metrics": gpt_m},
        "evaluator": {"file": "evaluator.safetensors", "metrics": ev_m},
        "recipe": asdict(r),
        "build": {"seconds": times, "torch": torch.__version__, "machine": platform.machine(),
                  "threads": r.threads, "date": time.strftime("%Y-%m-%d")},
    }
    (out / configs.MANIFEST).write_text(json.dumps(manifest, indent=2))

    t = time.perf_counter()
    base = report.evaluate_checkpoint(out, weights=None, num_samples=r.eval_samples, sample_seeds=(0,), log=log)
    times["base_metrics"] = time.perf_counter() - t
    manifest["generator"]["base_metrics"] = base
    manifest["build"]["seconds"] = times
    manifest["build"]["total_seconds"] = sum(times.values())
    for key in ("tokenizer", "generator", "evaluator"):
        manifest[key]["sha256"] = sha256(out / manifest[key]["file"])
    (out / configs.MANIFEST).write_text(json.dumps(manifest, indent=2))
    log(f"[build] done in {manifest['build']['total_seconds'] / 60:.1f} min -> {out}")
    return manifest
