"""The two seams the VA-π engine depends on. Families adapt to these; the engine
imports nothing else from core.models."""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Tokenizer(Protocol):
    codebook_size: int
    grid: tuple[int, int]  # (h, w); N = h * w

    def encode(self, images: Tensor) -> Tensor:  # [B,3,H,W] in [-1,1] -> [B, N] long
        ...

    def decode(self, tokens: Tensor) -> Tensor:  # [B, N] long -> [B,3,H,W] in [-1,1]
        ...


@runtime_checkable
class Policy(Protocol):
    vocab_size: int
    num_tokens: int  # N

    def teacher_forced_logits(self, cond, context: Tensor, *, cond_drop_prob: float = 0.0,
                              cond_mask: Optional[Tensor] = None, generator=None) -> Tensor:
        """cond + context [B, N-1] -> logits [B, N, V] float32."""
        ...

    def generate(self, cond, **kwargs):
        """Free-running sampling with a KV cache -> core.models.generate.SampleOutput."""
        ...
