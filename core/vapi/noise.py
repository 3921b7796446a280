"""Contextual noise kernel K_xi (paper Eq. 28-29, Appendix A.3).

Each position is kept with probability 1 - xi, otherwise replaced by a token drawn uniformly from
the codebook MINUS the ground-truth token: K(x~_i | x*_i) = (1 - xi) [x~_i = x*_i] + xi [x~_i != x*_i] / (K - 1).
(The authors' code draws from the whole codebook, so a "replaced" token equals x* with prob 1/K;
the paper's kernel, implemented here, never does.)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def corrupt(tokens: Tensor, xi: float, vocab_size: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """tokens [B, L] long -> noisy copy [B, L]: each position replaced w.p. xi by a uniform token != the original."""
    if xi <= 0.0:
        return tokens.clone()
    gen_dev = generator.device if generator is not None else tokens.device
    replace = torch.rand(tokens.shape, generator=generator, device=gen_dev) < xi  # [B, L]
    offset = torch.randint(1, vocab_size, tokens.shape, generator=generator, device=gen_dev)  # uniform on 1..K-1
    noisy = (tokens + offset.to(tokens.device)) % vocab_size  # uniform over the K-1 other tokens
    return torch.where(replace.to(tokens.device), noisy, tokens)
