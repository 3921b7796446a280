"""Free-running sampling with a KV cache: CFG, temperature, top-k, top-p, reproducible seeds.

Randomness: each sequence draws its N uniforms up front and picks tokens by inverse-CDF
(`searchsorted` on the cumulative probabilities). With `seeds=[s_0, ..., s_{B-1}]` row i depends
only on s_i, so an image for (condition, seed) is the same whatever batch it was drawn in, and
base vs aligned models given the same seeds use the same uniforms (a fair side-by-side). With a
single `generator`, the [B, N] uniforms come from it in one draw.

Two decode loops draw the same tokens from the same uniforms:
- static (models with `decode_step`, i.e. LlamaGen): a preallocated KV cache, positions as tensors
  and a one-token step whose shapes never change (model + CFG mix + inverse-CDF pick), which
  `compile` hands to `torch.compile(fullgraph=True)` ("reduce-overhead": CUDA graphs on a GPU).
  Nothing in the loop reads a value back to the host, so a GPU runs it without a sync per token.
- growing (`decode_one`: Janus through transformers' cache, and LlamaGen when asked with
  `static=False`): attention over the filled prefix only; the reference the static loop is tested
  against, with the uncached teacher-forced forward.

compile: "off" | "on" | "auto". "auto" compiles where it pays: on CUDA with a working compiler
(triton) and at least AUTO_COMPILE_MIN_SAMPLES samples in the call. On a CPU it stays off: measured
on the 2-core dev machine, inductor's compile of GPT-B took minutes and its step was no faster than
the eager one (benchmarks/generation.py prints both). "on" where no compiler works is a ConfigError.
The first compiled call of each shape logs its compile time once (logger `core.models.generate`).
"""
from __future__ import annotations

import logging
import shutil
import time
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from core.errors import ConfigError

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
AUTO_COMPILE_MIN_SAMPLES = 64  # "auto" compiles only a call of at least this many samples (compile takes ~a minute)


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


def check_compile(compile: str) -> str:
    if compile not in COMPILE_MODES:
        raise ConfigError("compile", f"must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    return compile


def compiler_problem(device: torch.device) -> Optional[str]:
    """Why torch.compile cannot run on `device` here (None: it can): triton on CUDA, a C++ compiler on CPU."""
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "this torch has no triton support"
        return None if has_triton() else "triton is not installed (pip install triton)"
    if device.type == "cpu":
        return None if any(shutil.which(c) for c in ("c++", "g++", "clang++")) else "no C++ compiler (g++) on PATH"
    return f"torch.compile is not wired up for {device.type} here"


def use_compile(compile: str, device: torch.device, samples: int) -> bool:
    """Resolve the compile switch for `samples` samples on `device` (see the module docstring)."""
    check_compile(compile)
    if compile == "off":
        return False
    problem = compiler_problem(device)
    if compile == "on":
        if problem:
            raise ConfigError("compile", f"'on' but {problem}; use compile off (or auto)")
        return True
    return device.type == "cuda" and problem is None and samples >= AUTO_COMPILE_MIN_SAMPLES


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
    # a zero-probability token can only be reached through rounding at the very top: step back to the
    # most likely one. Done unconditionally (no `.any()`): nothing here reads a value back to the host.
    bad = torch.isinf(logp.gather(-1, tok[:, None]).squeeze(-1))
    tok = torch.where(bad, logp.argmax(-1), tok)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def forced_logprob(logits: Tensor, tok: Tensor, temperature: float) -> Tensor:
    """Log-prob [B] of given tokens [B] under logits [B, V] at `temperature` (no filtering): prefix positions."""
    return torch.log_softmax(logits.float() / max(temperature, 1e-8), dim=-1).gather(-1, tok[:, None]).squeeze(-1)


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
             prefix: Optional[Tensor] = None, compile: str = "auto", static: bool = True) -> SampleOutput:
    """Sample N image tokens per condition from a LlamaGen-style model (prefill, then one token per step).

    prefix: [B, P] tokens forced at positions 0..P-1 (a shared-prefix continuation); the model samples
    positions P..N-1 with the same uniforms u[:, P:] it would use without a prefix, so two models
    continuing one prefix with one seed differ only by what each does after it, and a model
    continuing its own sample's prefix reproduces that sample. Their logprobs are the model's.

    cond: [B] class ids or [B, C, D] caption features; cond_mask: [B, C] bool for padded captions.
    cfg_scale > 1 runs the conditional and the null condition as one doubled batch and mixes
    their logits: uncond + s * (cond - uncond). cfg_scale == 1 runs only the conditional batch.
    compile: "off" | "on" | "auto" (module docstring). static: the fixed-shape loop where the model
    has `decode_step` (False: the growing-prefix `decode_one` loop, the reference).
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
    settings = (cfg_scale, temperature, top_k, top_p)
    if static and hasattr(model, "decode_step"):
        compiled = use_compile(compile, cond.device, B)
        tokens, logprobs = _static_loop(model, cond_in, mask_in, u, prefix, settings, compiled)
    else:
        use_compile(compile, cond.device, B)  # validates the switch; the growing loop is never compiled
        tokens, logprobs = _growing_loop(model, cond_in, mask_in, u, prefix, settings)
    return SampleOutput(tokens, logprobs if return_logprobs else None)


def _guide(logits: Tensor, cfg_scale: float) -> Tensor:
    """[2B, V] logits of (cond, uncond) rows -> [B, V] guided; [B, V] unchanged when cfg_scale == 1."""
    if cfg_scale == 1.0:
        return logits
    c, unc = logits.chunk(2)
    return cfg_mix(c, unc, cfg_scale)


def _growing_loop(model, cond_in: Tensor, mask_in: Optional[Tensor], u: Tensor, prefix: Optional[Tensor],
                  settings: tuple) -> tuple[Tensor, Tensor]:
    """Prefill + `decode_one` per token (attention over the filled prefix). -> tokens, logprobs [B, N]."""
    cfg_scale, temperature, top_k, top_p = settings
    (B, N), P = u.shape, 0 if prefix is None else prefix.shape[1]
    cache = model.new_cache(cond_in.shape[0])
    tokens = torch.empty(B, N, dtype=torch.long, device=u.device)
    logprobs = torch.empty(B, N, dtype=torch.float32, device=u.device)
    logits = _guide(model.prefill(cond_in, cache, cond_mask=mask_in), cfg_scale)
    for i in range(N):
        if i < P:
            tok = prefix[:, i].to(tokens.device)
            lp = forced_logprob(logits, tok, temperature)
        else:
            tok, lp = pick(logits, u[:, i], temperature, top_k, top_p)
        tokens[:, i], logprobs[:, i] = tok, lp
        if i + 1 < N:
            logits = _guide(model.decode_one(torch.cat([tok, tok]) if cfg_scale != 1.0 else tok, cache), cfg_scale)
    return tokens, logprobs


def decode_pick(model, cache, tok: Tensor, input_pos: Tensor, u: Tensor, cfg_scale: float, temperature: float,
                top_k: int, top_p: float, slots: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """One fixed-shape step: feed tokens [B] at `input_pos` ([1] long), mix CFG, pick the next token with
    uniforms u [B]. -> (guided logits [B, V], next tokens [B], their logprobs [B]). What torch.compile
    captures (with slots None: the whole cache); eager, `slots` bounds the attended cache slots."""
    tok = torch.cat([tok, tok]) if cfg_scale != 1.0 else tok
    logits = _guide(model.decode_step(tok, input_pos, cache, slots), cfg_scale)
    nxt, lp = pick(logits, u, temperature, top_k, top_p)
    return logits, nxt, lp


# compiled steps and their caches, per model: a CUDA graph replays fixed addresses, so the cache of a
# (rows, dtype, device) is kept and reused by the next call instead of allocated again
_COMPILED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def _compiled_step(model, rows: int, device: torch.device, dtype: torch.dtype):
    """(compiled decode_pick, its static cache, whether it is new: its first call compiles) for a model and
    batch shape. The kept cache serves one sampling call at a time (the app samples under a device lock)."""
    per_model = _COMPILED.setdefault(model, {})
    key = (rows, device, dtype)
    if key in per_model:
        step, cache = per_model[key]
        return step, cache, False
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # one graph per setting
    cache = model.new_cache(rows, device=device, dtype=dtype)
    cuda = device.type == "cuda"
    if cuda:
        for t in cache.tensors():
            torch._dynamo.mark_static_address(t)
    step = torch.compile(decode_pick, fullgraph=True, mode="reduce-overhead" if cuda else None)
    per_model[key] = (step, cache)
    return step, cache, True


def _static_loop(model, cond_in: Tensor, mask_in: Optional[Tensor], u: Tensor, prefix: Optional[Tensor],
                 settings: tuple, compiled: bool) -> tuple[Tensor, Tensor]:
    """Prefill, then `decode_pick` per token on a preallocated cache. -> tokens, logprobs [B, N]."""
    cfg_scale, temperature, top_k, top_p = settings
    (B, N), P = u.shape, 0 if prefix is None else prefix.shape[1]
    dev = u.device
    dtype = model.tok_embeddings.weight.dtype
    rows = cond_in.shape[0]
    step, fresh = decode_pick, False
    if compiled:
        step, cache, fresh = _compiled_step(model, rows, dev, dtype)
        cache.key_mask.fill_(True)
    else:
        cache = model.new_cache(rows)
        model.pack_linears(cache)  # CPU fp32: the weights prepacked for this batch (same math, less repacking)
    C = model.config.cls_token_num
    positions = [p.clone() for p in torch.arange(C, C + N, device=dev).view(N, 1)]  # [1] long each: token i at C+i
    ut = u.t().contiguous()  # [N, B]: ut[i] is a contiguous row
    tokens = torch.empty(B, N, dtype=torch.long, device=dev)
    logprobs = torch.empty(B, N, dtype=torch.float32, device=dev)
    logits = _guide(model.prefill(cond_in, cache, cond_mask=mask_in), cfg_scale)
    tok, lp = pick(logits, ut[0], temperature, top_k, top_p)
    for i in range(N):
        if i < P:
            tok = prefix[:, i].to(dev)
            lp = forced_logprob(logits, tok, temperature)
        tokens[:, i], logprobs[:, i] = tok, lp
        if i + 1 < N:
            t0 = time.perf_counter() if fresh and i == 0 else None
            slots = None if compiled else C + i + 1  # eager: shapes are free, read only the filled slots
            logits, tok, lp = step(model, cache, tokens[:, i].clone(), positions[i], ut[i + 1], *settings, slots)
            if t0 is not None:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                seconds = time.perf_counter() - t0
                log.info("sampler: compiled the decode step for %d rows on %s in %.1f s", rows, dev, seconds)
                compile_seconds.setdefault(id(model), {})[rows] = seconds
    return tokens, logprobs


compile_seconds: dict[int, dict[int, float]] = {}  # id(model) -> {rows: seconds of its first compiled step}


@torch.no_grad()
def generate_images(policy, tokenizer, cond: Tensor, *, seeds: Sequence[int], batch_size: int = 32,
                    cond_mask: Optional[Tensor] = None, compile: str = "auto", **sampling) -> Tensor:
    """Sample and decode one image per (cond[i], seeds[i]), in batches. -> [B, 3, H, W] on the policy's device.

    Row i depends only on (cond[i], seeds[i]) and the sampling settings, not on the batching (nor on compile).
    """
    return decode_tokens(tokenizer, generate_tokens(policy, cond, seeds=seeds, batch_size=batch_size,
                                                    cond_mask=cond_mask, compile=compile, **sampling), batch_size)


@torch.no_grad()
def decode_tokens(tokenizer, tokens: Tensor, batch_size: int = 32) -> Tensor:
    """[B, N] tokens -> [B, 3, H, W] images in [-1, 1], decoded in batches."""
    return torch.cat([tokenizer.decode(tokens[s:s + batch_size]).float().clamp(-1, 1)
                      for s in range(0, tokens.shape[0], batch_size)])


@torch.no_grad()
def generate_tokens(policy, cond: Tensor, *, seeds: Sequence[int], batch_size: int = 32,
                    cond_mask: Optional[Tensor] = None, prefix: Optional[Tensor] = None, compile: str = "auto",
                    **sampling) -> Tensor:
    """Sample one token sequence per (cond[i], seeds[i]) (after prefix[i] if given), in batches. -> [B, N].

    compile "auto" is decided once for the whole call (all of cond), not per batch."""
    if len(seeds) != cond.shape[0]:
        raise ConfigError("seeds", f"got {len(seeds)} seeds for {cond.shape[0]} conditions")
    compile = "on" if use_compile(compile, cond.device, cond.shape[0]) else "off"
    out = []
    for s in range(0, cond.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        out.append(generate(policy, cond[sl], seeds=list(seeds[sl]),
                            cond_mask=cond_mask[sl] if cond_mask is not None else None,
                            prefix=prefix[sl] if prefix is not None else None, compile=compile, **sampling).tokens)
    return torch.cat(out)
