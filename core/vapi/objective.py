"""The VA-π objective: one step of DESIGN.md §1, one readable function per line of it.

Departures from the paper / the authors' code, on purpose:
- ONE teacher-forced forward of B sequences per micro-batch, shared by the G samples of each
  image (the reference recomputes it for B*G sequences, plus once more without grad for sampling).
  The logits are identical because the G samples share the noisy context; gradients are equal up
  to float summation order when the forward has no dropout (tests/test_objective.py compares them
  with `schedule="per-sample"`). With dropout (rollout_mode "train" on the real LlamaGen configs) the
  G samples of an image share one dropout mask where the reference draws one per sample: the same
  gradient in expectation, a different variance.
- Rollout modes follow the authors' --sample-model-mode (see compute_loss). The rollout forward is
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

from contextlib import contextmanager
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


def group_advantages(r: Tensor, clip: float) -> Tensor:
    """group_advantages_with_ties without the tie mask. r [B, G] -> [B, G]."""
    return group_advantages_with_ties(r, clip)[0]


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
    """Decode X [B, G, N] in chunks and score against the ground truth -> (r [B, G], {name: distance [B, G]}).
    Decode and distances run in fp32 whatever autocast the caller is under (as the authors' reward; under bf16
    0.4% of the demo's advantages changed sign)."""
    B, G, N = samples.shape
    flat = samples.reshape(B * G, N)
    item = torch.arange(B, device=samples.device).repeat_interleave(G)
    ref = rewards.Reference(images.float(), tokenizer)
    parts: dict[str, list[Tensor]] = {}
    for s in range(0, B * G, chunk):
        with fp32(samples.device):
            pred = tokenizer.decode(flat[s:s + chunk]).float()
            scored = rewards.score(pred, ref, item[s:s + chunk], weights)
        for name, d in scored.items():
            parts.setdefault(name, []).append(d.float())
    dist = {k: torch.cat(v).view(B, G) for k, v in parts.items()}
    return rewards.combine(dist, weights), dist


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


def teacher_forced(policy, batch: Batch, context: Tensor, drop: Tensor, repeat: int = 1) -> Tensor:
    """pi_theta(c, x~): [B * repeat, N, V] in the policy's current mode. repeat > 1 is the reference's per-sample
    forward. Calls the module (its forward is the teacher-forced pass) so DDP/FSDP wrappers see it."""
    cond, mask = drop_condition(policy, batch.cond, batch.cond_mask, drop)
    if repeat > 1:
        cond = cond.repeat_interleave(repeat, dim=0)
        mask = mask.repeat_interleave(repeat, dim=0) if mask is not None else None
        context = context.repeat_interleave(repeat, dim=0)
    return policy(cond, context, cond_mask=mask)


def forward_in_mode(policy, batch: Batch, context: Tensor, drop: Tensor, *, train: bool, repeat: int = 1) -> Tensor:
    """The teacher-forced forward of a rollout mode's phase: train mode drops the condition where `drop` [B] is
    True (and runs dropout layers); eval mode never drops it."""
    with model_mode(policy, train):
        return teacher_forced(policy, batch, context, drop if train else torch.zeros_like(drop), repeat)


@torch.no_grad()
def rollout_logits(policy, batch: Batch, context: Tensor, drop: Tensor, train_logits: Optional[Tensor] = None) -> Tensor:
    """The rollout's logits: an eval-mode forward of B sequences, condition never dropped (the authors sample
    after `gpt.eval()`). `train_logits` [B, N, V] of a train-mode forward on the same context are re-used where
    they are provably the same numbers: the policy has no dropout layers, and only the rows whose condition
    was dropped are run again."""
    if train_logits is None or has_dropout(policy):
        return forward_in_mode(policy, batch, context, drop, train=False).detach()
    logits = train_logits.detach().clone()
    if bool(drop.any()):
        rows = drop.nonzero().view(-1)
        sub = Batch(images=batch.images[rows], cond=batch.cond[rows], tokens=batch.tokens[rows],
                    cond_mask=batch.cond_mask[rows] if batch.cond_mask is not None else None)
        logits[rows] = forward_in_mode(policy, sub, context[rows], drop[rows], train=False).to(logits.dtype)
    return logits


def new_rollout_noise(batch: Batch, cfg: VapiConfig, vocab_size: int, xi: float,
                      generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    """(x~[:, :-1] the noisy context [B, N-1], drop [B] bool: the condition dropped in train-mode forwards)."""
    B = batch.tokens.shape[0]
    gen_dev = generator.device if generator is not None else batch.tokens.device
    context = noise.corrupt(batch.tokens[:, :-1], xi, vocab_size, generator)
    drop = (torch.rand(B, generator=generator, device=gen_dev) < cfg.cond_drop_prob).to(batch.tokens.device)
    return context, drop


def compute_loss(policy, tokenizer, batch: Batch, cfg: VapiConfig, *, xi: float,
                 generator: Optional[torch.Generator] = None, ref_policy=None,
                 rollout: Optional[Rollout] = None) -> StepOutput:
    """loss = policy_coef * L_pg + beta * L_prior for one micro-batch (DESIGN §1; policy_coef is 1 but in ablations).

    rollout=None draws a new rollout (noisy context, condition dropout, G samples, rewards); a
    stored rollout is re-used for PPO iterations 2..num_iterations (one re-forward of B sequences).
    cfg.rollout_mode picks the model mode of each forward, as the authors' --sample-model-mode:
      rollout (sampling, old log-probs)  eval, no condition dropout, no grad   (every mode)
      policy-loss forward (with grad)    train: train mode + condition dropout | eval, twice: eval mode
      prior forward                      train, eval: the policy-loss forward | twice: a second, train-mode forward
    Under "train" with dropout layers the ratio differs from 1 on the first update and the PPO clip acts.
    """
    B, N = batch.tokens.shape
    G, tau = cfg.num_generations, cfg.temperature
    per_sample = cfg.schedule == "per-sample"
    rep = G if per_sample else 1
    fresh = rollout is None
    if fresh:
        context, drop = new_rollout_noise(batch, cfg, unwrapped(policy).vocab_size, xi, generator)
    else:
        context, drop = rollout.context, rollout.drop
    pg_train = cfg.rollout_mode == "train"
    prior_train = cfg.rollout_mode in ("train", "twice")

    logits_pg = forward_in_mode(policy, batch, context, drop, train=pg_train, repeat=rep)  # [B*rep, N, V], with grad
    if cfg.rollout_mode == "twice":
        logits_prior = forward_in_mode(policy, batch, context, drop, train=True, repeat=rep)
    else:
        logits_prior = logits_pg
    targets_prior = batch.tokens.repeat_interleave(rep, dim=0)

    if fresh:
        if per_sample:
            logits_roll = rollout_logits(policy, batch, context, drop)
        elif pg_train:
            logits_roll = rollout_logits(policy, batch, context, drop, train_logits=logits_pg)
        else:
            logits_roll = logits_pg.detach()  # the eval-mode forward IS the rollout's: one forward serves both
        samples = sample_groups(logits_roll, G, tau, generator)  # [B, G, N]
        old = gather_logprobs(logits_roll, samples, tau)  # log pi_old(X), [B, G, N]
        r, dist = score_samples(tokenizer, samples, batch.images, cfg.reward_weights, cfg.reward_chunk_size)
        adv, tied = group_advantages_with_ties(r, cfg.advantage_clip)  # [B, G], [B]
    else:
        samples, r, dist, adv = rollout.samples, rollout.rewards, rollout.distances, rollout.advantages
        old, tied = rollout.old_logprobs, rollout.tied

    if per_sample:
        logp = torch.log_softmax(logits_pg.float() / tau, dim=-1).gather(
            -1, samples.reshape(B * G, N, 1)).view(B, G, N)
    else:
        logp = gather_logprobs(logits_pg, samples, tau)  # [B, G, N], from the SAME logits
    loss_pg, clip_frac = clipped_policy_loss(logp, old, adv, cfg.epsilon)

    if cfg.prior == "ce":
        loss_prior = ce_prior(logits_prior, targets_prior)
    else:
        if ref_policy is None:
            raise ValueError("prior='kl' needs the frozen reference policy")
        with torch.no_grad():  # the reference sees the prior forward's condition (dropped where it was)
            ref_logits = teacher_forced(ref_policy, batch, context, drop if prior_train else torch.zeros_like(drop), repeat=rep)
        loss_prior = kl_prior(logits_prior, ref_logits, tau)
    loss = cfg.policy_coef * loss_pg + cfg.beta * loss_prior

    new_rollout = rollout or Rollout(context=context, drop=drop, samples=samples, old_logprobs=old,
                                     rewards=r, advantages=adv, distances=dist, tied=tied)
    metrics = {
        "loss": loss.item(), "loss_pg": loss_pg.item(), "loss_prior": loss_prior.item(),
        "reward_mean": r.mean().item(), "reward_std": r.std().item(),
        "clip_frac": clip_frac.item(), "entropy": entropy(logits_prior, tau).item(),
        "ratio_mean": torch.exp(logp.detach() - old).mean().item(), "xi": xi,
        "cond_dropped": drop.float().mean().item() if prior_train or pg_train else 0.0,
        "tied_groups": tied.float().mean().item(),
        "token_match": (samples == batch.tokens[:, None, :]).float().mean().item(),
    }
    for name, d in dist.items():
        metrics[f"dist_{name}"] = d.mean().item()
    return StepOutput(loss=loss, metrics=metrics, rollout=new_rollout)
