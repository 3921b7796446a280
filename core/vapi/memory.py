"""A first-order estimate of one process's peak GPU memory in a VA-π step, and whether gradient checkpointing
is needed to fit. A small local stand-in for the run-size estimator (`python -m core estimate`, another issue);
the trainer uses it to switch checkpointing on by itself, and says so in the log.

Peak = states + max(gradient graph, rollout decode) when the rollout is sampled before the gradient forward
(core.vapi.objective.compute_loss: models with dropout, rollout_mode "train"), else their sum:
- states: fp32 weights (4 B) of the whole generator; for the trained weights fp32 grads (4 B) and AdamW's two
  moments (8 B), all divided by the ranks under FSDP;
- gradient graph: saved activations, ACT_BYTES * dim per position per block per image (measured on GPT-XXL,
  bf16 autocast, SDPA: 50 MiB per block per 384-px image, 577 positions x 1536); with checkpointing only
  each block's fp32 input (4 * dim) plus one block's full activations; plus LOGIT_COPIES fp32 [B, N, V] tensors;
- rollout decode: DECODE_BYTES per pixel per image of a reward chunk (measured: 11 GiB for 32 images at 384 px).
Figures are in GiB. The README's memory table for GPT-XXL is computed from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 2 ** 30
ACT_BYTES = 59  # saved activation bytes per position per unit of model width, per block (GPT-XXL measurement)
DECODE_BYTES = 2500  # bytes per pixel per image to decode and score a reward chunk in fp32 (VQ-16 at 384 px)
LOGIT_COPIES = 4  # fp32 [B, N, V] tensors alive in the loss: logits, log-softmax, its gradient, the CE's
FIT_FRACTION = 0.9  # of the device's memory: what the estimate may use (the allocator's fragmentation, CUDA context)


@dataclass(frozen=True)
class Estimate:
    states: float  # GiB
    graph: float
    decode: float
    overlap: bool  # whether the decode coexists with the gradient graph

    @property
    def peak(self) -> float:
        return self.states + (self.graph + self.decode if self.overlap else max(self.graph, self.decode))


def estimate(*, params: int, trained: int, blocks: int, dim: int, positions: int, vocab: int, images: int,
             image_size: int, reward_chunk: int, checkpointing: bool, shards: int = 1, overlap: bool = True) -> Estimate:
    """One process: `images` per micro-batch, `positions` = condition + image tokens per sequence."""
    states = (4 * params + 12 * trained) / shards
    if checkpointing:
        acts = images * positions * dim * (4 * blocks + ACT_BYTES)
    else:
        acts = images * positions * dim * ACT_BYTES * blocks
    logits = LOGIT_COPIES * images * positions * vocab * 4
    decode = DECODE_BYTES * reward_chunk * image_size ** 2
    return Estimate(states / GIB, (acts + logits) / GIB, decode / GIB, overlap)


def model_shape(policy) -> dict:
    """blocks, width, positions and vocabulary of a policy, read from its modules (any family): the width from a
    block's parameter count (a transformer block holds about 12 * dim^2)."""
    blocks = list(policy.fsdp_wrap_modules())
    per_block = sum(p.numel() for p in blocks[0].parameters())
    config = getattr(policy, "config", None)
    cond = int(getattr(config, "cls_token_num", 0) or 0)
    return {"blocks": len(blocks), "dim": int(math.sqrt(per_block / 12)), "positions": cond + int(policy.num_tokens),
            "vocab": int(policy.vocab_size)}


def checkpointing_needed(policy, *, images: int, image_size: int, reward_chunk: int, capacity_bytes: int,
                         shards: int = 1, overlap: bool = True) -> tuple[bool, Estimate, Estimate]:
    """(whether to switch gradient checkpointing on, the estimate without it, the estimate with it): on when the
    estimate without it exceeds FIT_FRACTION of `capacity_bytes`."""
    shape = model_shape(policy)
    params = sum(p.numel() for p in policy.parameters())
    trained = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    common = dict(params=params, trained=trained, images=images, image_size=image_size, reward_chunk=reward_chunk,
                  shards=shards, overlap=overlap, **shape)
    without, with_ = estimate(checkpointing=False, **common), estimate(checkpointing=True, **common)
    return without.peak > FIT_FRACTION * capacity_bytes / GIB, without, with_


def reward_chunk_that_fits(est: Estimate, reward_chunk: int, capacity_bytes: int) -> int:
    """The largest reward chunk (images decoded at once, at most `reward_chunk`) whose decode fits beside the
    states (and the gradient graph, when they coexist) in FIT_FRACTION of `capacity_bytes`; at least 1."""
    budget = FIT_FRACTION * capacity_bytes / GIB - est.states - (est.graph if est.overlap else 0.0)
    per_image = est.decode / reward_chunk
    return max(1, min(reward_chunk, int(budget // per_image) if budget > 0 else 1))
