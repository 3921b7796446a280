"""The reference schedule of a VA-π micro-batch, as the authors' code runs it: B*G sequences.

The authors repeat each image's noisy context G times and run the gradient forward over all B*G rows (plus
one forward without grad for sampling). `core.vapi.objective.compute_loss` runs ONE forward of B rows shared by
the G samples of each image; the two give the same loss and, without dropout, the same gradients up to float
summation order (tests/test_objective.py, tests/test_gpu.py). This module keeps the B*G schedule for those
tests and for the step benchmarks (`python -m benchmarks.step`, benchmarks/gpu_check.py); training never uses it.
"""
from __future__ import annotations

from typing import Optional

import torch

from core.vapi import objective
from core.vapi.config import VapiConfig
from core.vapi.objective import Batch, StepOutput


def repeat_rows(batch: Batch, G: int) -> Batch:
    """Each image's row G times in a row: [B, ...] -> [B*G, ...]."""
    mask = batch.cond_mask.repeat_interleave(G, dim=0) if batch.cond_mask is not None else None
    return Batch(images=batch.images.repeat_interleave(G, dim=0), cond=batch.cond.repeat_interleave(G, dim=0),
                 tokens=batch.tokens.repeat_interleave(G, dim=0), cond_mask=mask)


def per_sample_loss(policy, tokenizer, batch: Batch, cfg: VapiConfig, *, xi: float,
                    generator: Optional[torch.Generator] = None, ref_policy=None) -> StepOutput:
    """compute_loss on the B*G schedule: the rollout from its own eval-mode forward of B rows, then the gradient
    forward(s) of the B*G repeated rows. Random draws in the same order as compute_loss (noise, then samples)."""
    B, N = batch.tokens.shape
    G = cfg.num_generations
    context, drop = objective.new_rollout_noise(batch, cfg, objective.unwrapped(policy).vocab_size, xi, generator)
    rollout = objective.sample_rollout(policy, tokenizer, batch, cfg, context, drop, generator)
    rows, rows_context, rows_drop = repeat_rows(batch, G), context.repeat_interleave(G, dim=0), drop.repeat_interleave(G)
    logits_pg, logits_prior = objective.gradient_forwards(policy, rows, rows_context, rows_drop, cfg)  # [B*G, N, V]
    logp = torch.log_softmax(logits_pg.float() / cfg.temperature, dim=-1).gather(
        -1, rollout.samples.reshape(B * G, N, 1)).view(B, G, N)
    ref_logits = None
    if cfg.prior == "kl" and ref_policy is not None:
        with torch.no_grad():
            ref_drop = rows_drop if cfg.rollout_mode != "eval" else torch.zeros_like(rows_drop)
            ref_logits = objective.teacher_forced(ref_policy, rows, rows_context, ref_drop)
    loss, metrics = objective.rollout_loss(rollout, logp, logits_prior, rows.tokens, cfg, ref_logits)
    return StepOutput(loss=loss, metrics={**metrics, "xi": xi}, rollout=rollout)


SCHEDULES = {"grouped": objective.compute_loss, "per-sample": per_sample_loss}
