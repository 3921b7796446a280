"""The paper's two baselines (Appendix C), trained with the same trainer, CLI and run folders.

- STE (App. C.1): the generator is trained end-to-end through the frozen tokenizer decoder with a
  straight-through estimator: forward with the hard argmax tokens, backward through the softmax.
  Loss = weighted reconstruction distances (the reward terms) + beta * CE prior.
- Decoder post-training (App. C.2): the generator is frozen; tokens are sampled under teacher
  forcing (one per position, x_i ~ pi(. | x*_<i)) and the tokenizer's decoder (post_quant_conv +
  decoder) is trained to reconstruct the image from them. Loss = weighted reconstruction distances.
  Quantizer, codebook and encoder are untouched, so x* (the AR model's targets) is unchanged.

Both use `reward_weights` as the weights of their reconstruction loss (MSE + LPIPS in the paper).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from core.vapi import noise, rewards
from core.vapi.config import VapiConfig
from core.vapi.objective import Batch, ce_prior, drop_condition, entropy, new_rollout_noise, unwrapped


def recon_loss(pred: torch.Tensor, images: torch.Tensor, weights: dict, tokenizer=None) -> tuple[torch.Tensor, dict]:
    """sum_k w_k mean(d_k(pred, images)), differentiable in pred. pred, images [B, 3, H, W]."""
    ref = rewards.Reference(images, tokenizer)
    item = torch.arange(images.shape[0], device=images.device)
    terms = rewards.score(pred, ref, item, weights)
    total = sum(weights[k] * d.mean() for k, d in terms.items())
    return total, {f"dist_{k}": d.mean().item() for k, d in terms.items()}


def ste_loss(policy, tokenizer, batch: Batch, cfg: VapiConfig, *, xi: float,
             generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict]:
    context, drop = new_rollout_noise(batch, cfg, unwrapped(policy).vocab_size, xi, generator)
    cond, mask = drop_condition(policy, batch.cond, batch.cond_mask, drop)
    logits = policy(cond, context, cond_mask=mask)  # [B, N, V]; the module's forward is the teacher-forced pass
    soft = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    hard = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(soft.dtype)
    y = hard - soft.detach() + soft  # forward: one-hot; backward: d softmax
    pred = tokenizer.decode_latent(tokenizer.embed(y))  # decoder params frozen, gradient flows to y
    rec, dist = recon_loss(pred.float(), batch.images.float(), cfg.reward_weights, tokenizer)
    prior = ce_prior(logits, batch.tokens)
    loss = rec + cfg.beta * prior
    metrics = {"loss": loss.item(), "loss_recon": rec.item(), "loss_prior": prior.item(), "xi": xi,
               "entropy": entropy(logits, cfg.temperature).item(),
               "token_match": (logits.argmax(-1) == batch.tokens).float().mean().item(), **dist}
    return loss, metrics


def decoder_loss(policy, tokenizer, batch: Batch, cfg: VapiConfig, *, xi: float,
                 generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        context = noise.corrupt(batch.tokens[:, :-1], xi, policy.vocab_size, generator)
        logits = policy.teacher_forced_logits(batch.cond, context, cond_mask=batch.cond_mask)
        B, N, V = logits.shape
        probs = torch.softmax(logits.float() / cfg.temperature, dim=-1).view(B * N, V)
        x = torch.multinomial(probs, 1, generator=generator).view(B, N)
    pred = tokenizer(x)  # decode; decoder + post_quant_conv trainable (through the DDP wrapper if any)
    rec, dist = recon_loss(pred.float(), batch.images.float(), cfg.reward_weights, unwrapped(tokenizer))
    metrics = {"loss": rec.item(), "loss_recon": rec.item(), "xi": xi,
               "token_match": (x == batch.tokens).float().mean().item(), **dist}
    return rec, metrics


def decoder_parameters(tokenizer) -> list[torch.nn.Parameter]:
    """What the decoder baseline trains: post_quant_conv + decoder."""
    return list(tokenizer.post_quant_conv.parameters()) + list(tokenizer.decoder.parameters())
