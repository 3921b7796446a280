"""Free-running sampling with a KV cache: CFG, temperature, top-k, top-p, reproducible seeds.

Randomness: each sequence draws its N uniforms up front and picks tokens by inverse-CDF
(`searchsorted` on the cumulative probabilities). With `seeds=[s_0, ..., s_{B-1}]` row i depends
only on s_i, so an image for (condition, seed) is the same whatever batch it was drawn in, and
base vs aligned models given the same seeds use the same uniforms (a fair side-by-side). With a
single `generator`, the [B, N] uniforms come from it in one draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from core.errors import ConfigError


@dataclass
class SampleOutput:
    tokens: Tensor  # [B, N] long
    logprobs: Optional[Tensor] = None  # [B, N] float32: log-prob of each token under the distribution it was drawn from


def check_sampling_args(cfg_scale: float, temperature: float, top_k: int, top_p: float) -> None:
    if cfg_scale < 1.0:
        raise ConfigError("cfg_scale", f"must be >= 1.0 (1.0 = no guidance), got {cfg_scale}")
    if temperature < 0:
        raise ConfigError("temperature", f"must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ConfigError("top_k", f"must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError("top_p", f"must be in (0, 1] (1 = off), got {top_p}")


def cfg_mix(cond_logits: Tensor, uncond_logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond). scale 1 returns cond exactly."""
    if scale == 1.0:
        return cond_logits
    return uncond_logits + (cond_logits - uncond_logits) * scale


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: [B, V]."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses the threshold
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def pick(logits: Tensor, u: Tensor, temperature: float, top_k: int, top_p: float) -> tuple[Tensor, Tensor]:
    """Draw one token per row by inverse CDF. logits [B, V], u [B] in [0, 1) -> (tokens [B], logprobs [B])."""
    if temperature == 0:
        tok = logits.argmax(dim=-1)
        return tok, torch.zeros_like(tok, dtype=torch.float32)
    logp = torch.log_softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    cdf = torch.cumsum(logp.exp(), dim=-1)  # [B, V]
    target = (u * cdf[:, -1]).unsqueeze(-1)  # scale to the summed mass (float rounding)
    tok = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    # a zero-probability token can only be reached through rounding at the very top: step back
    lp = logp.gather(-1, tok[:, None]).squeeze(-1)
    bad = torch.isinf(lp)
    if bad.any():
        tok = torch.where(bad, logp.argmax(-1), tok)
        lp = logp.gather(-1, tok[:, None]).squeeze(-1)
    return tok, lp


def draw_uniforms(batch: int, n: int, device, generator: Optional[torch.Generator] = None,
                  seeds: Optional[Sequence[int]] = None) -> Tensor:
    """[batch, n] uniforms in [0, 1): per-row seeds, or one generator, or the global RNG."""
    if seeds is not None:
        if len(seeds) != batch:
            raise ConfigError("seeds", f"got {len(seeds)} seeds for a batch of {batch}")
        rows = [torch.rand(n, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
        return torch.stack(rows).to(device)
    gen_device = generator.device if generator is not None else "cpu"
    return torch.rand(batch, n, generator=generator, device=gen_device, dtype=torch.float64).to(device)


@torch.no_grad()
def generate(model, cond: Tensor, *, cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, generator: Optional[torch.Generator] = None, seeds: Optional[Sequence[int]] = None,
             cond_mask: Optional[Tensor] = None, return_logprobs: bool = False,
             prefix: Optional[Tensor] = None) -> SampleOutput:
    """Sample N image tokens per condition from a LlamaGen-style model (prefill + decode_one).

    prefix: [B, P] tokens forced at positions 0..P-1 (a shared-prefix continuation); the model samples
    positions P..N-1 with the same uniforms u[:, P:] it would use without a prefix, so two models
    continuing one prefix with one seed differ only by what each does after it, and a model
    continuing its own sample's prefix reproduces that sample. Their logprobs are the model's.

    cond: [B] class ids or [B, C, D] caption features; cond_mask: [B, C] bool for padded captions.
    cfg_scale > 1 runs the conditional and the null condition as one doubled batch and mixes
    their logits: uncond + s * (cond - uncond). cfg_scale == 1 runs only the conditional batch.
    """
    check_sampling_args(cfg_scale, temperature, top_k, top_p)
    B, N = cond.shape[0], model.num_tokens
    P = 0 if prefix is None else prefix.shape[1]
    if prefix is not None and (prefix.shape[0] != B or P > N):
        raise ConfigError("prefix", f"expected [{B}, <= {N}] tokens, got {list(prefix.shape)}")
    u = draw_uniforms(B, N, cond.device, generator, seeds).float()
    guided = cfg_scale != 1.0
    if guided:
        cond_in = torch.cat([cond, model.null_condition(cond)])
        mask_in = torch.cat([cond_mask, cond_mask]) if cond_mask is not None else None
    else:
        cond_in, mask_in = cond, cond_mask
    cache = model.new_cache(cond_in.shape[0])

    def guide(logits: Tensor) -> Tensor:
        if not guided:
            return logits
        c, unc = logits.chunk(2)
        return cfg_mix(c, unc, cfg_scale)

    tokens = torch.empty(B, N, dtype=torch.long, device=cond.device)
    logprobs = torch.empty(B, N, dtype=torch.float32, device=cond.device)
    logits = guide(model.prefill(cond_in, cache, cond_mask=mask_in))
    for i in range(N):
        if i < P:
            tok = prefix[:, i].to(tokens.device)
            lp = torch.log_softmax(logits.float() / max(temperature, 1e-8), dim=-1).gather(-1, tok[:, None]).squeeze(-1)
        else:
            tok, lp = pick(logits, u[:, i], temperature, top_k, top_p)
        tokens[:, i], logprobs[:, i] = tok, lp
        if i + 1 < N:
            logits = guide(model.decode_one(torch.cat([tok, tok]) if guided else tok, cache))
    return SampleOutput(tokens, logprobs if return_logprobs else None)


@torch.no_grad()
def generate_images(policy, tokenizer, cond: Tensor, *, seeds: Sequence[int], batch_size: int = 32,
                    cond_mask: Optional[Tensor] = None, **sampling) -> Tensor:
    """Sample and decode one image per (cond[i], seeds[i]), in batches. -> [B, 3, H, W] on the policy's device.

    Row i depends only on (cond[i], seeds[i]) and the sampling settings, not on the batching.
    """
    return decode_tokens(tokenizer, generate_tokens(policy, cond, seeds=seeds, batch_size=batch_size,
                                                    cond_mask=cond_mask, **sampling), batch_size)


@torch.no_grad()
def decode_tokens(tokenizer, tokens: Tensor, batch_size: int = 32) -> Tensor:
    """[B, N] tokens -> [B, 3, H, W] images in [-1, 1], decoded in batches."""
    return torch.cat([tokenizer.decode(tokens[s:s + batch_size]).float().clamp(-1, 1)
                      for s in range(0, tokens.shape[0], batch_size)])


@torch.no_grad()
def generate_tokens(policy, cond: Tensor, *, seeds: Sequence[int], batch_size: int = 32,
                    cond_mask: Optional[Tensor] = None, prefix: Optional[Tensor] = None, **sampling) -> Tensor:
    """Sample one token sequence per (cond[i], seeds[i]) (after prefix[i] if given), in batches. -> [B, N]."""
    if len(seeds) != cond.shape[0]:
        raise ConfigError("seeds", f"got {len(seeds)} seeds for {cond.shape[0]} conditions")
    out = []
    for s in range(0, cond.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        out.append(generate(policy, cond[sl], seeds=list(seeds[sl]),
                            cond_mask=cond_mask[sl] if cond_mask is not None else None,
                            prefix=prefix[sl] if prefix is not None else None, **sampling).tokens)
    return torch.cat(out)
