"""The VA-π objective: one step of DESIGN.md §1, one readable function per line of it.

Departures from the paper / the authors' code, on purpose:
- ONE teacher-forced forward of B sequences per micro-batch, shared by the G samples of each
  image (the reference recomputes it for B*G sequences, plus once more without grad for sampling).
  The logits are identical because the G samples share the noisy context; gradients are equal up
  to float summation order (tests/test_objective.py compares them with `schedule="per-sample"`).
- The noise kernel never "replaces" a token by itself (Eq. 29); the authors' code draws from the
  whole codebook.
- prior="kl" uses the exact per-position KL(pi || pi_ref) over the vocabulary, from the full
  logits of both models; the authors' code uses the k3 estimator on the sampled tokens.
- Condition dropout is drawn once per image and shared by its G samples and by every re-forward
  of the same rollout, so the ratio compares like with like.

Legend: B images, G samples per image, N tokens per image, V vocabulary (codebook) size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from core.vapi import noise, rewards
from core.vapi.config import VapiConfig


@dataclass
class Batch:
    images: Tensor  # [B, 3, H, W] in [-1, 1]
    cond: Tensor  # [B] class ids | [B, C, D] caption features | policy-specific prompt ids
    tokens: Tensor  # x* = Q(E(I)), [B, N] long
    cond_mask: Optional[Tensor] = None  # [B, C] bool, True = real condition token (padded captions)


@dataclass
class Rollout:
    context: Tensor  # x~[:, :-1], the noisy teacher-forcing context, [B, N-1]
    drop: Tensor  # [B] bool: condition replaced by the null one for this rollout
    samples: Tensor  # X, [B, G, N]
    old_logprobs: Tensor  # log pi_old(X), [B, G, N]
    rewards: Tensor  # r, [B, G]
    advantages: Tensor  # A (normalised in the group, clipped), [B, G]
    distances: dict = field(default_factory=dict)  # {reward name: [B, G]} per-term distances (lower is better)


@dataclass
class StepOutput:
    loss: Tensor  # scalar with grad
    metrics: dict  # floats
    rollout: Rollout


# ----------------------------------------------------------------------------- the pieces
def unwrapped(policy):
    """The model inside a DDP/FSDP wrapper (attributes live there; calls go through the wrapper)."""
    return getattr(policy, "module", policy)


def drop_condition(policy, cond: Tensor, cond_mask: Optional[Tensor], drop: Tensor):
    """Replace the condition of the items where drop [B] is True by the policy's null condition."""
    policy = unwrapped(policy)
    if not bool(drop.any()):
        return cond, cond_mask
    if hasattr(policy, "drop_condition"):
        return policy.drop_condition(cond, cond_mask, drop)
    null = policy.null_condition(cond)
    d = drop.view(-1, *([1] * (cond.ndim - 1)))
    return torch.where(d, null, cond), cond_mask


def sample_groups(logits: Tensor, G: int, temperature: float, generator: Optional[torch.Generator]) -> Tensor:
    """X ~ Cat(softmax(L / tau)), G independent draws per position. logits [B, N, V] -> [B, G, N]."""
    B, N, V = logits.shape
    probs = torch.softmax(logits.detach().float() / temperature, dim=-1).view(B * N, V)
    x = torch.multinomial(probs, G, replacement=True, generator=generator)  # [B*N, G]
    return x.view(B, N, G).permute(0, 2, 1).contiguous()


def gather_logprobs(logits: Tensor, samples: Tensor, temperature: float) -> Tensor:
    """log softmax(L / tau) at the sampled tokens. logits [B, N, V], samples [B, G, N] -> [B, G, N]."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, N, V]
    return logp.gather(-1, samples.permute(0, 2, 1)).permute(0, 2, 1)  # [B, N, G] -> [B, G, N]


def group_advantages(r: Tensor, clip: float) -> Tensor:
    """A = clip((r - mean_G r) / (std_G r + 1e-8), -A_max, A_max). r [B, G] -> [B, G].
    std is the unbiased sample std, as the authors' code and TRL."""
    a = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-8)
    return a.clamp(-clip, clip)


def clipped_policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """PPO: mean_{B,G,N} max(-A rho, -A clip(rho, 1-eps, 1+eps)). logp/old [B,G,N], adv [B,G].
    Returns (loss, fraction of tokens where the clipped branch was taken)."""
    ratio = torch.exp(logp - old_logp)
    a = adv.unsqueeze(-1)
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1 - epsilon, 1 + epsilon)
    loss = torch.maximum(unclipped, clipped).mean()
    clip_frac = (clipped > unclipped).float().mean()
    return loss, clip_frac


def ce_prior(logits: Tensor, targets: Tensor) -> Tensor:
    """L_prior (Eq. 9): CE of the CLEAN tokens given the noisy context, mean over B, N."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def kl_prior(logits: Tensor, ref_logits: Tensor, temperature: float) -> Tensor:
    """KL(pi || pi_ref) per position over the vocabulary, mean over B, N."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    logq = torch.log_softmax(ref_logits.float() / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def entropy(logits: Tensor, temperature: float) -> Tensor:
    logp = torch.log_softmax(logits.detach().float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


@torch.no_grad()
def score_samples(tokenizer, samples: Tensor, images: Tensor, weights: dict, chunk: int) -> tuple[Tensor, dict]:
    """Decode X [B, G, N] in chunks and score against the ground truth -> (r [B, G], {name: distance [B, G]})."""
    B, G, N = samples.shape
    flat = samples.reshape(B * G, N)
    item = torch.arange(B, device=samples.device).repeat_interleave(G)
    ref = rewards.Reference(images, tokenizer)
    parts: dict[str, list[Tensor]] = {}
    for s in range(0, B * G, chunk):
        pred = tokenizer.decode(flat[s:s + chunk]).float()
        for name, d in rewards.score(pred, ref, item[s:s + chunk], weights).items():
            parts.setdefault(name, []).append(d.float())
    dist = {k: torch.cat(v).view(B, G) for k, v in parts.items()}
    return rewards.combine(dist, weights), dist


# ----------------------------------------------------------------------------- the step
def teacher_forced(policy, batch: Batch, context: Tensor, drop: Tensor, repeat: int = 1) -> Tensor:
    """pi_theta(c, x~) with grad: [B * repeat, N, V]. repeat > 1 is the reference's per-sample forward.
    Calls the module (its forward is the teacher-forced pass) so DDP/FSDP wrappers see it."""
    cond, mask = drop_condition(policy, batch.cond, batch.cond_mask, drop)
    if repeat > 1:
        cond = cond.repeat_interleave(repeat, dim=0)
        mask = mask.repeat_interleave(repeat, dim=0) if mask is not None else None
        context = context.repeat_interleave(repeat, dim=0)
    return policy(cond, context, cond_mask=mask)


def compute_loss(policy, tokenizer, batch: Batch, cfg: VapiConfig, *, xi: float,
                 generator: Optional[torch.Generator] = None, ref_policy=None,
                 rollout: Optional[Rollout] = None) -> StepOutput:
    """loss = policy_coef * L_pg + beta * L_prior for one micro-batch (DESIGN §1; policy_coef is 1 but in ablations).

    rollout=None draws a new rollout (noisy context, condition dropout, G samples, rewards); a
    stored rollout is re-used for PPO iterations 2..num_iterations (one re-forward of B sequences).
    """
    B, N = batch.tokens.shape
    G, tau = cfg.num_generations, cfg.temperature
    per_sample = cfg.schedule == "per-sample"
    fresh = rollout is None
    if fresh:
        gen_dev = generator.device if generator is not None else batch.tokens.device
        context = noise.corrupt(batch.tokens[:, :-1], xi, unwrapped(policy).vocab_size, generator)  # x~[:, :-1], [B, N-1]
        drop = (torch.rand(B, generator=generator, device=gen_dev) < cfg.cond_drop_prob).to(batch.tokens.device)
    else:
        context, drop = rollout.context, rollout.drop

    if per_sample:
        # the reference schedule: a no-grad forward of B sequences to sample from, then B*G with grad
        if fresh:
            with torch.no_grad():
                logits_b = teacher_forced(policy, batch, context, drop)
        logits_g = teacher_forced(policy, batch, context, drop, repeat=G)  # [B*G, N, V]
        logits_for_prior = logits_g
        targets_for_prior = batch.tokens.repeat_interleave(G, dim=0)
    else:
        logits_b = teacher_forced(policy, batch, context, drop)  # [B, N, V], the ONE forward with grad
        logits_for_prior, targets_for_prior = logits_b, batch.tokens

    if fresh:
        samples = sample_groups(logits_b, G, tau, generator)  # [B, G, N]
        r, dist = score_samples(tokenizer, samples, batch.images, cfg.reward_weights, cfg.reward_chunk_size)
        adv = group_advantages(r, cfg.advantage_clip)  # [B, G]
    else:
        samples, r, dist, adv = rollout.samples, rollout.rewards, rollout.distances, rollout.advantages

    if per_sample:
        logp = torch.log_softmax(logits_g.float() / tau, dim=-1).gather(
            -1, samples.reshape(B * G, N, 1)).view(B, G, N)
    else:
        logp = gather_logprobs(logits_b, samples, tau)  # [B, G, N], from the SAME logits
    old = logp.detach() if fresh else rollout.old_logprobs
    loss_pg, clip_frac = clipped_policy_loss(logp, old, adv, cfg.epsilon)

    if cfg.prior == "ce":
        loss_prior = ce_prior(logits_for_prior, targets_for_prior)
    else:
        if ref_policy is None:
            raise ValueError("prior='kl' needs the frozen reference policy")
        with torch.no_grad():
            ref_logits = teacher_forced(ref_policy, batch, context, drop, repeat=G if per_sample else 1)
        loss_prior = kl_prior(logits_for_prior, ref_logits, tau)
    loss = cfg.policy_coef * loss_pg + cfg.beta * loss_prior

    new_rollout = rollout or Rollout(context=context, drop=drop, samples=samples, old_logprobs=old,
                                     rewards=r, advantages=adv, distances=dist)
    metrics = {
        "loss": loss.item(), "loss_pg": loss_pg.item(), "loss_prior": loss_prior.item(),
        "reward_mean": r.mean().item(), "reward_std": r.std().item(),
        "clip_frac": clip_frac.item(), "entropy": entropy(logits_for_prior, tau).item(),
        "ratio_mean": torch.exp(logp.detach() - old).mean().item(), "xi": xi,
        "cond_dropped": drop.float().mean().item(),
        "token_match": (samples == batch.tokens[:, None, :]).float().mean().item(),
    }
    for name, d in dist.items():
        metrics[f"dist_{name}"] = d.mean().item()
    return StepOutput(loss=loss, metrics=metrics, rollout=new_rollout)
