"""The VA-π objective: one micro-batch of the step, one readable function per line of it.

Departures from the paper / the authors' code, on purpose:
- ONE teacher-forced forward of B sequences per micro-batch, shared by the G samples of each
  image (the reference recomputes it for B*G sequences, plus once more without grad for sampling).
  The logits are identical because the G samples share the noisy context; gradients are equal up
  to float summation order when the forward has no dropout (tests/test_objective.py compares them
  with the reference's per-sample schedule, kept in benchmarks/reference_step.py). With dropout
  (rollout_mode "train" on the real LlamaGen configs) the G samples of an image share one dropout
  mask where the reference draws one per sample: the same gradient in expectation, a different variance.
- Rollout modes follow the authors' --sample-model-mode (see gradient_forwards). The rollout forward is
  re-used instead of re-run where that is exact (eval mode; train mode without dropout layers).
- Condition dropout is drawn once per image and shared by its G samples and by every re-forward
  of the same rollout (the authors draw it per row of B*G, inside the train-mode forward).
- The noise kernel never "replaces" a token by itself (Eq. 29); the authors' code draws from the
  whole codebook.
- prior="kl" uses the exact per-position KL(pi || pi_ref) over the vocabulary, from the full
  logits of both models; the authors' code uses the k3 estimator on the sampled tokens.
- Groups whose G rewards are equal up to float rounding get advantage 0 (group_advantages_with_ties).
- Rewards are decoded and scored in fp32 under any autocast.

Legend: B images, G samples per image, N tokens per image, V vocabulary (codebook) size.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from core.device import any_rank
from core.errors import ConfigError
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
    advantages: Tensor  # A (normalised in the group, clipped), [B, G]; [B, G, N] with reward_per_token
    distances: dict = field(default_factory=dict)  # {reward name: [B, G]} per-term distances (lower is better)
    tied: Optional[Tensor] = None  # [B] bool: groups whose rewards were equal up to rounding (advantage 0)


@dataclass
class StepOutput:
    loss: Tensor  # scalar with grad
    metrics: dict  # floats
    rollout: Rollout


# ----------------------------------------------------------------------------- the pieces
def fp32(device):
    """A block that runs in fp32 under any caller's autocast (ground-truth tokens, rewards)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def unwrapped(policy):
    """The model inside a DDP/FSDP wrapper (attributes live there; calls go through the wrapper)."""
    return getattr(policy, "module", policy)


def drop_condition(policy, cond: Tensor, cond_mask: Optional[Tensor], drop: Tensor):
    """Replace the condition of the items where drop [B] is True by the policy's null condition."""
    policy = unwrapped(policy)
    if not bool(drop.any()):
        return cond, cond_mask
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


TIE_RTOL = 1e-5  # a group whose reward std is <= 1e-5 of its mean |r| is tied (see group_advantages_with_ties)


def group_advantages_with_ties(r: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """A = clip((r - mean_G r) / (std_G r + 1e-8), -A_max, A_max), and 0 for tied groups. r [B, G] -> ([B, G], tied [B]).

    std is the unbiased sample std, as the authors' code and TRL. The normalisation is scale-free, so a group
    whose G rewards differ only by float rounding (identical samples decoded in different chunks, reduced in
    another order) would turn that noise into advantages up to the clip. Such a group is "tied" when
    std_G r <= TIE_RTOL * mean_G |r| (+1e-12): fp32 rounding of a pixel mean is ~1e-7 relative, one changed
    token of a 24x24 grid moves MSE by ~1e-2 relative. Tied groups get advantage 0 (no policy signal); the
    trainer reports their share as `tied_groups`. (The authors' code has no such guard.)"""
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True)
    tied = (std <= TIE_RTOL * r.abs().mean(dim=1, keepdim=True) + 1e-12).view(-1)  # [B]
    a = ((r - mean) / (std + 1e-8)).clamp(-clip, clip)
    return torch.where(tied[:, None], torch.zeros_like(a), a), tied


def token_advantages(r: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """Per-token advantages of the per-token reward extension: each position normalised over the G samples
    of its image, as group_advantages_with_ties does for whole sequences. r [B, G, N] -> ([B, G, N], tied [B])
    where a group is tied when every one of its positions is."""
    B, G, N = r.shape
    a, tied = group_advantages_with_ties(r.permute(0, 2, 1).reshape(B * N, G), clip)  # one group per (image, position)
    return a.view(B, N, G).permute(0, 2, 1), tied.view(B, N).all(dim=1)


def clipped_policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, epsilon: float,
                        skip_first: int = 0) -> tuple[Tensor, Tensor]:
    """PPO: mean_{B,G,N} max(-A rho, -A clip(rho, 1-eps, 1+eps)). logp/old [B,G,N], adv [B,G] (one per
    sequence) or [B,G,N] (per token). skip_first: leading positions left out of the mean (an extension).
    Returns (loss, fraction of tokens where the clipped branch was taken)."""
    a = adv.unsqueeze(-1) if adv.ndim == 2 else adv
    if skip_first >= logp.shape[-1]:
        raise ConfigError("policy_skip_tokens", f"{skip_first} leaves none of the {logp.shape[-1]} positions in the policy loss")
    if skip_first:
        logp, old_logp, a = logp[..., skip_first:], old_logp[..., skip_first:], a[..., skip_first:] if a.shape[-1] > 1 else a
    ratio = torch.exp(logp - old_logp)
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


PER_TOKEN = "patch_mse"  # the key of the per-token distances [B, G, N] in a rollout's distances


@torch.no_grad()
def score_samples(tokenizer, samples: Tensor, images: Tensor, weights: dict, chunk: int,
                  per_token: bool = False) -> tuple[Tensor, dict]:
    """Decode X [B, G, N] in chunks and score against the ground truth -> (r [B, G], {name: distance [B, G]}).
    Decode and distances run in fp32 whatever autocast the caller is under (as the authors' reward; under bf16
    0.4% of the demo's advantages changed sign). per_token: also the patch MSE of every token, [B, G, N] under
    the key PER_TOKEN (the per-token reward extension; N must be a square grid)."""
    B, G, N = samples.shape
    flat = samples.reshape(B * G, N)
    item = torch.arange(B, device=samples.device).repeat_interleave(G)
    ref = rewards.Reference(images.float(), tokenizer)
    parts: dict[str, list[Tensor]] = {}
    grid = math.isqrt(N)
    for s in range(0, B * G, chunk):
        with fp32(samples.device):
            pred = tokenizer.decode(flat[s:s + chunk]).float()
            scored = rewards.score(pred, ref, item[s:s + chunk], weights)
            if per_token:
                scored[PER_TOKEN] = rewards.patch_mse(pred, ref, item[s:s + chunk], grid)
        for name, d in scored.items():
            parts.setdefault(name, []).append(d.float())
    dist = {k: torch.cat(v).view(B, G, -1).squeeze(-1) if k != PER_TOKEN else torch.cat(v).view(B, G, N)
            for k, v in parts.items()}
    return rewards.combine({k: d for k, d in dist.items() if k != PER_TOKEN}, weights), dist


# ----------------------------------------------------------------------------- the step
def has_dropout(model) -> bool:
    """Whether train mode changes the model's forward: any dropout / drop-path / attention dropout p > 0."""
    for m in unwrapped(model).modules():
        for attr in ("p", "drop_prob", "attn_dropout_p", "attention_dropout", "dropout_p"):
            v = getattr(m, attr, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                return True
    return False


@contextmanager
def model_mode(model, train: bool):
    """Run a block with `model` in train or eval mode, then restore its mode."""
    was = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was)


def teacher_forced(policy, batch: Batch, context: Tensor, drop: Tensor) -> Tensor:
    """pi_theta(c, x~): [B, N, V] in the policy's current mode. Calls the module (its forward is the
    teacher-forced pass) so DDP/FSDP wrappers see it."""
    cond, mask = drop_condition(policy, batch.cond, batch.cond_mask, drop)
    return policy(cond, context, cond_mask=mask)


def forward_in_mode(policy, batch: Batch, context: Tensor, drop: Tensor, *, train: bool) -> Tensor:
    """The teacher-forced forward of a rollout mode's phase: train mode drops the condition where `drop` [B] is
    True (and runs dropout layers); eval mode never drops it."""
    with model_mode(policy, train):
        return teacher_forced(policy, batch, context, drop if train else torch.zeros_like(drop))


@torch.no_grad()
def rollout_logits(policy, batch: Batch, context: Tensor, drop: Tensor, train_logits: Optional[Tensor] = None) -> Tensor:
    """The rollout's logits: an eval-mode forward of B sequences, condition never dropped (the authors sample
    after `gpt.eval()`). `train_logits` [B, N, V] of a train-mode forward on the same context are re-used where
    they are provably the same numbers: the policy has no dropout layers, and only the rows whose condition
    was dropped are run again."""
    if train_logits is None or has_dropout(policy):
        return forward_in_mode(policy, batch, context, drop, train=False).detach()
    logits = train_logits.detach().clone()
    if not any_rank(bool(drop.any())):
        return logits
    # the same forwards on every rank (FSDP's gathers and DDP's buffer broadcasts are collectives): a rank with
    # no dropped row runs its first row and discards the result
    rows = drop.nonzero().view(-1)
    run = rows if len(rows) else torch.zeros(1, dtype=torch.long, device=drop.device)
    sub = Batch(images=batch.images[run], cond=batch.cond[run], tokens=batch.tokens[run],
                cond_mask=batch.cond_mask[run] if batch.cond_mask is not None else None)
    out = forward_in_mode(policy, sub, context[run], drop[run], train=False)
    if len(rows):
        logits[rows] = out.to(logits.dtype)
    return logits


def new_rollout_noise(batch: Batch, cfg: VapiConfig, vocab_size: int, xi: float,
                      generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    """(x~[:, :-1] the noisy context [B, N-1], drop [B] bool: the condition dropped in train-mode forwards)."""
    B = batch.tokens.shape[0]
    gen_dev = generator.device if generator is not None else batch.tokens.device
    context = noise.corrupt(batch.tokens[:, :-1], xi, vocab_size, generator)
    drop = (torch.rand(B, generator=generator, device=gen_dev) < cfg.cond_drop_prob).to(batch.tokens.device)
    return context, drop


def gradient_forwards(policy, batch: Batch, context: Tensor, drop: Tensor, cfg: VapiConfig) -> tuple[Tensor, Tensor]:
    """The forwards with grad of a rollout mode (the authors' --sample-model-mode) -> (policy-loss logits, prior
    logits), each [B, N, V]:
      policy-loss forward   train: train mode + condition dropout | eval, twice: eval mode
      prior forward         train, eval: the policy-loss forward  | twice: a second, train-mode forward"""
    logits_pg = forward_in_mode(policy, batch, context, drop, train=cfg.rollout_mode == "train")
    if cfg.rollout_mode == "twice":
        return logits_pg, forward_in_mode(policy, batch, context, drop, train=True)
    return logits_pg, logits_pg


@torch.no_grad()
def sample_rollout(policy, tokenizer, batch: Batch, cfg: VapiConfig, context: Tensor, drop: Tensor,
                   generator: Optional[torch.Generator] = None, policy_logits: Optional[Tensor] = None) -> Rollout:
    """The rollout of one micro-batch on a drawn context: G samples per image from the eval-mode forward without
    condition dropout (the authors sample after `gpt.eval()`), their old log-probs, rewards and advantages.

    `policy_logits` [B, N, V]: the policy-loss forward already run on this context (gradient_forwards). Under
    rollout_mode "eval"/"twice" it IS the eval-mode forward and serves as the rollout's; under "train" it is
    re-used where that is exact (rollout_logits). None: the rollout runs its own eval-mode forward."""
    if policy_logits is None:
        logits = rollout_logits(policy, batch, context, drop)
    elif cfg.rollout_mode == "train":
        logits = rollout_logits(policy, batch, context, drop, train_logits=policy_logits)
    else:
        logits = policy_logits.detach()
    samples = sample_groups(logits, cfg.num_generations, cfg.temperature, generator)  # [B, G, N]
    old = gather_logprobs(logits, samples, cfg.temperature)  # log pi_old(X), [B, G, N]
    r, dist = score_samples(tokenizer, samples, batch.images, cfg.reward_weights, cfg.reward_chunk_size,
                            per_token=cfg.reward_per_token)
    if cfg.reward_per_token:  # extension: each token credited with its own patch's error, [B, G, N]
        adv, tied = token_advantages(-dist[PER_TOKEN], cfg.advantage_clip)
    else:
        adv, tied = group_advantages_with_ties(r, cfg.advantage_clip)  # [B, G], [B]
    return Rollout(context=context, drop=drop, samples=samples, old_logprobs=old, rewards=r, advantages=adv,
                   distances=dist, tied=tied)


def rollout_loss(rollout: Rollout, logp: Tensor, logits_prior: Tensor, targets: Tensor, cfg: VapiConfig,
                 ref_logits: Optional[Tensor] = None) -> tuple[Tensor, dict]:
    """loss = policy_coef * L_pg + beta * L_prior (Eq. 11) from tensors only -> (loss, metrics).
    logp [B, G, N]: log pi_theta of the rollout's samples; logits_prior [R, N, V] with `targets` [R, N] (R = B,
    or B*G for the reference's per-sample schedule); ref_logits [R, N, V]: the frozen reference's, for prior "kl"."""
    loss_pg, clip_frac = clipped_policy_loss(logp, rollout.old_logprobs, rollout.advantages, cfg.epsilon,
                                             cfg.policy_skip_tokens)
    if cfg.prior == "ce":
        loss_prior = ce_prior(logits_prior, targets)
    else:
        if ref_logits is None:
            raise ValueError("prior='kl' needs the frozen reference policy")
        loss_prior = kl_prior(logits_prior, ref_logits, cfg.temperature)
    loss = cfg.policy_coef * loss_pg + cfg.beta * loss_prior
    r, samples = rollout.rewards, rollout.samples
    metrics = {
        "loss": loss.item(), "loss_pg": loss_pg.item(), "loss_prior": loss_prior.item(),
        "reward_mean": r.mean().item(), "reward_std": r.std().item(),
        "clip_frac": clip_frac.item(), "entropy": entropy(logits_prior, cfg.temperature).item(),
        "ratio_mean": torch.exp(logp.detach() - rollout.old_logprobs).mean().item(),
        "cond_dropped": rollout.drop.float().mean().item() if cfg.rollout_mode != "eval" else 0.0,
        "tied_groups": rollout.tied.float().mean().item(),
        "token_match": (samples == targets[::targets.shape[0] // samples.shape[0], None, :]).float().mean().item(),
    }
    for name, d in rollout.distances.items():
        metrics[f"dist_{name}"] = d.mean().item()
    return loss, metrics


def compute_loss(policy, tokenizer, batch: Batch, cfg: VapiConfig, *, xi: float,
                 generator: Optional[torch.Generator] = None, ref_policy=None,
                 rollout: Optional[Rollout] = None) -> StepOutput:
    """One micro-batch of VA-π (the VA-π step): draw a noisy context and condition dropout, run the gradient
    forward(s), sample the rollout from the same logits where exact, and return the loss with its metrics.

    rollout=None draws a new rollout; a stored one is re-used for PPO iterations 2..num_iterations (one
    re-forward of B sequences on its context). See gradient_forwards for the model mode of each forward; under
    "train" with dropout layers the ratio differs from 1 on the first update and the PPO clip acts.
    """
    if rollout is None:
        context, drop = new_rollout_noise(batch, cfg, unwrapped(policy).vocab_size, xi, generator)
    else:
        context, drop = rollout.context, rollout.drop
    if rollout is None and cfg.rollout_mode == "train" and has_dropout(policy):
        # the rollout is its own eval-mode forward here (nothing of the gradient forward is re-used), so it is
        # sampled, decoded and scored first: the decode's memory never adds to the gradient graph's. Exact: the
        # rollout draws only from `generator`, the gradient forward's dropout only from the global RNG
        rollout = sample_rollout(policy, tokenizer, batch, cfg, context, drop, generator)
    logits_pg, logits_prior = gradient_forwards(policy, batch, context, drop, cfg)
    if rollout is None:
        rollout = sample_rollout(policy, tokenizer, batch, cfg, context, drop, generator, policy_logits=logits_pg)
    ref_logits = None
    if cfg.prior == "kl" and ref_policy is not None:
        with torch.no_grad():  # the reference sees the prior forward's condition (dropped where it was)
            ref_logits = teacher_forced(ref_policy, batch, context,
                                        drop if cfg.rollout_mode != "eval" else torch.zeros_like(drop))
    logp = gather_logprobs(logits_pg, rollout.samples, cfg.temperature)  # [B, G, N], from the SAME logits
    loss, metrics = rollout_loss(rollout, logp, logits_prior, batch.tokens, cfg, ref_logits)
    return StepOutput(loss=loss, metrics={**metrics, "xi": xi}, rollout=rollout)
