"""LlamaGen GPT (class- and text-conditional), state-dict compatible with upstream LlamaGen.

Upstream: FoundationVision/LlamaGen `autoregressive/models/gpt.py`. Same parameters, same names, same
math (RMSNorm, SwiGLU, 2-D RoPE over the token grid), so every published checkpoint loads as is and
logits match upstream's in fp32. What differs is the interface: one explicit method per mode
(`teacher_forced_logits`, `prefill`, `decode_one`, `decode_step`) and a KV cache passed in by the
caller instead of living inside the modules, so one loaded model can serve concurrent samplers.
`decode_step` is the fixed-shape decode (position as a tensor, attention over the whole preallocated
cache under a mask) that `torch.compile` captures whole; `decode_one` attends over the filled prefix only.

Legend: B batch, T sequence length (condition tokens + image tokens), C = cls_token_num condition
tokens, N image tokens (= block_size = grid h*w), V vocab (codebook) size, H heads, Dh head dim.

Two upstream details reproduced on purpose:
- condition positions get an all-zero RoPE table (cos = sin = 0), which zeroes their queries and
  keys (their values still flow); image positions rotate by (row, col) on the two halves of Dh.
- label/caption dropout for CFG is the caller's decision here (`cond_drop_prob=`), never `.training`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor

from core.errors import ConfigError


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


@dataclass
class GPTConfig:
    """Architecture of a LlamaGen GPT. Defaults are upstream's `ModelArgs`."""

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: Optional[int] = None  # None: multi-head attention (upstream checkpoints)
    multiple_of: int = 256  # SwiGLU hidden size rounded up to this
    ffn_dim_multiplier: Optional[float] = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1  # upstream training defaults; dropout is active only in .train()
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048  # FLAN-T5-XL hidden size
    class_dropout_prob: float = 0.1  # > 0 adds the null-class row (CFG); the rate itself is the caller's
    model_type: str = "c2i"  # "c2i" | "t2i"
    vocab_size: int = 16384
    cls_token_num: int = 1  # condition tokens: 1 class token (c2i) or 120 caption tokens (t2i)
    block_size: int = 256  # image tokens N = grid_size**2

    def __post_init__(self):
        if self.model_type not in ("c2i", "t2i"):
            raise ConfigError("model_type", f"must be 'c2i' or 't2i', got {self.model_type!r}")
        if self.dim % self.n_head:
            raise ConfigError("dim", f"{self.dim} is not divisible by n_head={self.n_head}")
        if (self.dim // self.n_head) % 4:
            raise ConfigError("dim", "head dim must be divisible by 4 for the 2-D RoPE")
        g = math.isqrt(self.block_size)
        if g * g != self.block_size:
            raise ConfigError("block_size", f"{self.block_size} is not a square token grid")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ConfigError("n_kv_head", f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


# name -> (n_layer, n_head, dim), upstream `GPT_models`
GPT_SIZES: dict[str, tuple[int, int, int]] = {
    "GPT-B": (12, 12, 768),  # 111M
    "GPT-L": (24, 16, 1024),  # 343M
    "GPT-XL": (36, 20, 1280),  # 775M
    "GPT-XXL": (48, 24, 1536),  # 1.4B
    "GPT-XXXL": (48, 40, 2560),  # 3.9B
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),  # 3.1B
    "GPT-7B": (32, 32, 4096),
}


def size_name(cfg: GPTConfig) -> str:
    """The upstream size name of an architecture, or a description if it is not a named size."""
    for name, (n_layer, n_head, dim) in GPT_SIZES.items():
        if (cfg.n_layer, cfg.dim) == (n_layer, dim):
            return name
    return f"custom (dim {cfg.dim} x {cfg.n_layer} layers)"


def config_for(size: str, model_type: str = "c2i", image_size: int = 256, downsample: int = 16, **overrides) -> GPTConfig:
    """Config of a named upstream size. `image_size // downsample` is the token grid side."""
    if size not in GPT_SIZES:
        raise ConfigError("size", f"unknown GPT size {size!r}; known: {', '.join(GPT_SIZES)}")
    if image_size % downsample:
        raise ConfigError("image_size", f"{image_size} is not divisible by the tokenizer downsample {downsample}")
    n_layer, n_head, dim = GPT_SIZES[size]
    kw: dict = dict(n_layer=n_layer, n_head=n_head, dim=dim, model_type=model_type,
                    block_size=(image_size // downsample) ** 2)
    if model_type == "t2i":
        kw["cls_token_num"] = 120  # upstream t2i: 120 FLAN-T5 caption tokens
    kw.update(overrides)
    return GPTConfig(**kw)


def build(size: str, model_type: str = "c2i", image_size: int = 256, downsample: int = 16, **overrides) -> "Transformer":
    """`llamagen.build("GPT-B", model_type="c2i", image_size=256)` -> Transformer (random init)."""
    return Transformer(config_for(size, model_type, image_size, downsample, **overrides))


# ----------------------------------------------------------------------------- condition embedders
class LabelEmbedder(nn.Module):
    """Class id -> one condition token. Row `num_classes` is the null class used for CFG."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.has_null = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + int(self.has_null), hidden_size)
        self.num_classes = num_classes

    def forward(self, labels: Tensor, drop: Optional[Tensor] = None) -> Tensor:
        # labels: [B] long; drop: [B] bool -> [B, 1, dim]
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Caption features [B, L, caption_dim] -> L condition tokens. `uncond_embedding` is the null caption.

    Upstream always allocates 120 null-caption rows (its default), whatever cls_token_num is.
    """

    def __init__(self, in_channels: int, hidden_size: int, token_num: int = 120):
        super().__init__()
        self.cap_proj = MLP(in_channels, hidden_size, hidden_size)
        # upstream registers it as a (persistent) buffer, not a parameter: it is not trained
        self.register_buffer("uncond_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)

    def forward(self, caption: Tensor, drop: Optional[Tensor] = None) -> Tensor:
        # caption: [B, L, caption_dim]; drop: [B] bool -> [B, L, dim]
        caption = caption.to(self.cap_proj.fc1.weight.dtype)  # float32 T5 features into a bf16 model
        if drop is not None:
            null = self.uncond_embedding[: caption.shape[1]].to(caption.dtype)
            caption = torch.where(drop[:, None, None], null, caption)
        return self.cap_proj(caption)


# ----------------------------------------------------------------------------- blocks
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def _linear(m: nn.Linear, x: Tensor, packed: Optional["PackedLinears"]) -> Tensor:
    return m(x) if packed is None else packed(m, x)


class PackedLinears:
    """The decode step's Linear weights prepacked for MKL's fp32 GEMM at one batch size (CPU only).

    A one-token step multiplies a few rows by every weight matrix; unpacked, MKL repacks each matrix on
    every call. Packing once per sampling call (what inductor's `freezing` does once per compile) keeps
    the fp32 math and serves a model whose weights change between calls (training previews) correctly.
    """

    def __init__(self, modules: list[nn.Linear], rows: int):
        self.rows = rows
        self.packed = {m: torch.ops.mkl._mkl_reorder_linear_weight(m.weight.detach(), rows) for m in modules}

    MIN_DIM = 512  # below this width the per-call overhead outweighs the packing (the demo's 192-wide GPT)

    @staticmethod
    def available(weight: Tensor) -> bool:
        return (weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.shape[1] >= PackedLinears.MIN_DIM
                and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"))

    def __call__(self, m: nn.Linear, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] != self.rows:
            return m(x)
        y = torch.ops.mkl._mkl_linear(flat, self.packed[m], m.weight, m.bias, self.rows)
        return y.view(*x.shape[:-1], y.shape[-1])


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = int(2 * (4 * cfg.dim) / 3)
        if cfg.ffn_dim_multiplier is not None:
            hidden = int(cfg.ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, cfg.multiple_of)
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x: Tensor, packed: Optional[PackedLinears] = None) -> Tensor:
        hidden = F.silu(_linear(self.w1, x, packed)) * _linear(self.w3, x, packed)
        return self.ffn_dropout(_linear(self.w2, hidden, packed))


class DropPath(nn.Module):
    """Stochastic depth per sample (active only in .train() with p > 0)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class KVCache:
    """Keys/values of every layer for free-running decoding, preallocated once. Owned by the caller.

    k[i], v[i]: [B, H_kv, T_max, Dh]. key_mask: [B, T_max] bool, False where a key must be ignored
    (padding caption tokens of t2i). `length` = number of filled positions (a Python int, kept by
    prefill / decode_one; decode_step takes its position as a tensor and leaves `length` alone).
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int, device, dtype):
        n_kv = cfg.n_kv_head or cfg.n_head
        shape = (batch_size, n_kv, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.key_mask = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.key_pos = torch.arange(max_len, device=device)  # [T_max], for decode_step's causal mask
        self.length = 0
        self.packed: Optional[PackedLinears] = None  # decode_step's prepacked weights (Transformer.pack_linears)

    def tensors(self) -> list[Tensor]:
        """Every tensor the cache holds (for `torch._dynamo.mark_static_address` under CUDA graphs)."""
        return [*self.k, *self.v, self.key_mask, self.key_pos]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.dim = cfg.dim
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head
        self.head_dim = cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def _qkv(self, x: Tensor, rope: Tensor, packed: Optional[PackedLinears] = None) -> tuple[Tensor, Tensor, Tensor]:
        # x: [B, S, dim]; rope: [S, Dh/2, 2] -> q [B, H, S, Dh], k and v [B, H_kv, S, Dh]
        bsz, seqlen, _ = x.shape
        kv_size = self.n_kv_head * self.head_dim
        q, k, v = _linear(self.wqkv, x, packed).split([self.dim, kv_size, kv_size], dim=-1)
        q = apply_rotary_emb(q.view(bsz, seqlen, self.n_head, self.head_dim), rope)
        k = apply_rotary_emb(k.view(bsz, seqlen, self.n_kv_head, self.head_dim), rope)
        v = v.view(bsz, seqlen, self.n_kv_head, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                packed: Optional[PackedLinears] = None) -> Tensor:
        # q [B, H, S, Dh], k/v [B, H_kv, S_keys, Dh], mask [B, 1, S, S_keys] bool or None (causal) -> [B, S, dim]
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.attn_dropout_p if self.training else 0.0)
        bsz, _, seqlen, _ = q.shape
        return self.resid_dropout(_linear(self.wo, out.transpose(1, 2).contiguous().view(bsz, seqlen, self.dim), packed))

    def forward(self, x: Tensor, rope: Tensor, mask: Optional[Tensor], cache: Optional[KVCache] = None,
                layer: int = 0, start: int = 0) -> Tensor:
        # x: [B, S, dim]; rope: [S, Dh/2, 2]; mask: [B, 1, S, S_keys] bool or None (causal)
        q, k, v = self._qkv(x, rope)
        if cache is not None:
            end = start + x.shape[1]
            cache.k[layer][:, :, start:end] = k
            cache.v[layer][:, :, start:end] = v
            k, v = cache.k[layer][:, :, :end], cache.v[layer][:, :, :end]
        return self._attend(q, k, v, mask)

    def decode_static(self, x: Tensor, rope: Tensor, mask: Tensor, cache: KVCache, layer: int,
                      input_pos: Tensor) -> Tensor:
        """One token at position `input_pos` ([1] long), attending over the first S cached keys
        (S = mask's last dim: T_max, or fewer slots that hold every filled one).
        x: [B, 1, dim]; rope: [1, Dh/2, 2]; mask: [B, 1, 1, S] bool."""
        q, k, v = self._qkv(x, rope, cache.packed)
        # under autocast k/v come out bf16 beside an fp32 cache (the slice writes of `forward` cast by themselves)
        cache.k[layer].index_copy_(2, input_pos, k.to(cache.k[layer].dtype))
        cache.v[layer].index_copy_(2, input_pos, v.to(cache.v[layer].dtype))
        S = mask.shape[-1]
        return self._attend(q, cache.k[layer][:, :, :S], cache.v[layer][:, :, :S], mask, cache.packed)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, drop_path: float):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, rope: Tensor, mask: Optional[Tensor], cache: Optional[KVCache] = None,
                layer: int = 0, start: int = 0) -> Tensor:
        h = x + self.drop_path(self.attention(self.attention_norm(x), rope, mask, cache, layer, start))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h)))

    def decode_static(self, x: Tensor, rope: Tensor, mask: Tensor, cache: KVCache, layer: int,
                      input_pos: Tensor) -> Tensor:
        h = x + self.drop_path(self.attention.decode_static(self.attention_norm(x), rope, mask, cache, layer, input_pos))
        return h + self.drop_path(self.feed_forward(self.ffn_norm(h), cache.packed))


# ----------------------------------------------------------------------------- the model
class Transformer(nn.Module):
    """LlamaGen GPT. Parameter names and shapes are upstream's."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        if cfg.model_type == "c2i":
            self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout_prob)
        else:
            self.cls_embedding = CaptionEmbedder(cfg.caption_dim, cfg.dim)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        dpr = [cfg.drop_path_rate * i / max(cfg.n_layer - 1, 1) for i in range(cfg.n_layer)]  # linspace(0, rate)
        self.layers = nn.ModuleList(TransformerBlock(cfg, dpr[i]) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # [C + N, Dh/2, 2] float32; a plain attribute as upstream: not in the state dict, never cast
        # to bf16 by .to(dtype), never broadcast by DDP. Moved to the input's device on use.
        self._rope_cpu = precompute_freqs_cis_2d(cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num)
        self._rope_by_device: dict[torch.device, Tensor] = {}
        self.gradient_checkpointing = False  # set by the trainer (config.gradient_checkpointing)
        self.initialize_weights()

    # --- policy protocol properties
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def num_tokens(self) -> int:
        """N, image tokens per sample."""
        return self.config.block_size

    @property
    def model_type(self) -> str:
        return self.config.model_type

    def initialize_weights(self) -> None:
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                if m.weight.device.type == "meta":
                    continue
                nn.init.normal_(m.weight, mean=0.0, std=std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.output.weight.device.type != "meta":
            nn.init.zeros_(self.output.weight)  # upstream zero-inits the head

    def fsdp_wrap_modules(self) -> list[nn.Module]:
        return list(self.layers)

    # --- conditions
    def null_condition(self, cond: Tensor) -> Tensor:
        """The unconditional counterpart of `cond` (null class id / null caption), for CFG."""
        if self.model_type == "c2i":
            if not self.cls_embedding.has_null:
                raise ConfigError("class_dropout_prob", "this model has no null-class row (trained without label dropout): CFG and cond dropout are unavailable")
            return torch.full_like(cond, self.config.num_classes)
        null = self.cls_embedding.uncond_embedding[: cond.shape[1]].to(cond.dtype)
        return null.expand_as(cond).clone()

    def _drop_mask(self, cond: Tensor, p: float, generator: Optional[torch.Generator]) -> Optional[Tensor]:
        if p <= 0.0:
            return None
        if self.model_type == "c2i" and not self.cls_embedding.has_null:
            raise ConfigError("cond_drop_prob", "the model has no null-class row, so labels cannot be dropped")
        u = torch.rand(cond.shape[0], device=cond.device, generator=generator)
        return u < p

    def _rope_table(self, device: torch.device) -> Tensor:
        table = self._rope_by_device.get(device)
        if table is None:
            table = self._rope_by_device[device] = self._rope_cpu.to(device)
        return table

    def _rope(self, start: int, end: int, device: torch.device) -> Tensor:
        return self._rope_table(device)[start:end]

    def _cond_tokens(self, cond: Tensor, drop: Optional[Tensor] = None) -> Tensor:
        # -> [B, C, dim]
        return self.cls_embedding(cond, drop)[:, : self.config.cls_token_num]

    def _cond_key_mask(self, cond_mask: Optional[Tensor], total: int) -> Optional[Tensor]:
        """Upstream t2i attention mask: causal, padded caption keys masked, diagonal always allowed.

        cond_mask: [B, C] bool (True = real caption token). Returns [B, 1, total, total] bool or None.
        """
        if cond_mask is None:
            return None
        C = self.config.cls_token_num
        B = cond_mask.shape[0]
        mask = torch.ones(total, total, dtype=torch.bool, device=cond_mask.device).tril().expand(B, total, total).clone()
        mask[:, :, :C] &= cond_mask[:, None, :].bool()
        mask |= torch.eye(total, dtype=torch.bool, device=cond_mask.device)
        return mask.unsqueeze(1)

    def _trunk(self, h: Tensor, rope: Tensor, mask: Optional[Tensor], cache: Optional[KVCache] = None,
               start: int = 0, head_from: int = 0) -> Tensor:
        """The blocks over h [B, T, dim], then norm + output head on positions head_from.. only (the others'
        logits are not used: a T2I sequence's 119 caption positions) -> [B, T - head_from, V] float32."""
        h = self.tok_dropout(h)
        ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, layer in enumerate(self.layers):
            if ckpt:  # recompute each block in backward: activation memory of one block instead of all
                h = torch.utils.checkpoint.checkpoint(layer, h, rope, mask, use_reentrant=False)
            else:
                h = layer(h, rope, mask, cache, i, start)
        return self.output(self.norm(h[:, head_from:])).float()

    # --- mode 1: teacher forcing (training, VA-π's forward)
    def teacher_forced_logits(self, cond: Tensor, context: Tensor, *, cond_drop_prob: float = 0.0,
                              cond_mask: Optional[Tensor] = None,
                              generator: Optional[torch.Generator] = None) -> Tensor:
        """Next-token logits for every image position given the condition and a context.

        cond: [B] class ids (c2i) or [B, C, caption_dim] caption features (t2i).
        context: [B, N-1] tokens fed as x_1..x_{N-1} (clean ground truth, or a noisy copy).
        cond_drop_prob: probability of replacing each item's condition by the null one (CFG training).
        cond_mask: t2i only, [B, C] bool, True for real (non-padding) caption tokens.
        Returns [B, N, V] float32: logits[:, i] predicts image token i from cond and context[:, :i].
        """
        C = self.config.cls_token_num
        drop = self._drop_mask(cond, cond_drop_prob, generator)
        h = torch.cat([self._cond_tokens(cond, drop), self.tok_embeddings(context)], dim=1)  # [B, C+N-1, dim]
        T = h.shape[1]
        return self._trunk(h, self._rope(0, T, h.device), self._cond_key_mask(cond_mask, T), head_from=C - 1)  # [B, N, V]

    def forward(self, cond: Tensor, context: Tensor, cond_mask: Optional[Tensor] = None) -> Tensor:
        """Always the teacher-forced pass (== teacher_forced_logits without dropout of the condition).
        Training code calls the module so that DDP/FSDP wrappers, which hook forward(), see the pass."""
        return self.teacher_forced_logits(cond, context, cond_mask=cond_mask)

    # --- mode 2 and 3: free-running decoding with a KV cache
    def new_cache(self, batch_size: int, device=None, dtype=None) -> KVCache:
        w = self.tok_embeddings.weight
        return KVCache(self.config, batch_size, self.config.cls_token_num + self.num_tokens,
                       device or w.device, dtype or w.dtype)

    def prefill(self, cond: Tensor, cache: KVCache, cond_mask: Optional[Tensor] = None) -> Tensor:
        """Run the condition tokens into an empty cache. Returns logits [B, V] for image token 0."""
        C = self.config.cls_token_num
        h = self._cond_tokens(cond)
        mask = None
        if cond_mask is not None:
            cache.key_mask[:, :C] = cond_mask.bool()
            mask = self._cond_key_mask(cond_mask, C)
        logits = self._trunk(h, self._rope(0, C, h.device), mask, cache, start=0, head_from=C - 1)
        cache.length = C
        return logits[:, -1]

    def decode_one(self, token: Tensor, cache: KVCache) -> Tensor:
        """Feed one image token [B] (or [B, 1]) at the next position. Returns logits [B, V] for the next."""
        pos = cache.length
        if pos >= cache.key_mask.shape[1]:
            raise IndexError(f"KV cache is full ({pos} positions)")
        h = self.tok_embeddings(token.view(-1, 1))
        mask = cache.key_mask[:, None, None, : pos + 1]  # [B, 1, 1, pos+1]
        logits = self._trunk(h, self._rope(pos, pos + 1, h.device), mask, cache, start=pos)
        cache.length = pos + 1
        return logits[:, -1]

    def decode_step(self, token: Tensor, input_pos: Tensor, cache: KVCache, slots: Optional[int] = None) -> Tensor:
        """Fixed-shape decode: feed image tokens [B] at absolute position `input_pos` ([1] long, C + i
        for image token i). Attends over every cache slot under the mask key_mask & (slot <= input_pos),
        so no shape depends on the position and `torch.compile(fullgraph=True)` captures it whole (CUDA
        graphs too). Returns logits [B, V] float32 for the next token; `cache.length` is not touched.
        Same math as decode_one: masked slots get exactly zero attention weight.

        slots: attend over the first `slots` cache slots only (they must hold position input_pos); the
        eager loop passes the filled length so that it does not read the empty end of the cache."""
        h = self.tok_embeddings(token.view(-1, 1))  # [B, 1, dim]
        S = cache.key_pos.shape[0] if slots is None else slots
        mask = (cache.key_mask[:, :S] & (cache.key_pos[:S] <= input_pos))[:, None, None, :]  # [B, 1, 1, S]
        rope = self._rope_table(h.device).index_select(0, input_pos)  # [1, Dh/2, 2]
        for i, layer in enumerate(self.layers):
            h = layer.decode_static(h, rope, mask, cache, i, input_pos)
        return _linear(self.output, self.norm(h), cache.packed).float()[:, -1]

    def pack_linears(self, cache: KVCache) -> None:
        """Prepack the decode step's weights for the cache's batch (CPU fp32 with MKL; elsewhere a no-op).
        For eager decoding only: a compiled step reads the weights as they are."""
        if PackedLinears.available(self.output.weight):
            linears = [m for m in self.layers.modules() if isinstance(m, nn.Linear)] + [self.output]
            cache.packed = PackedLinears(linears, cache.key_mask.shape[0])

    def generate(self, cond: Tensor, **kwargs):
        """Free-running sampling; see `core.models.generate.generate` for the arguments."""
        from core.models.generate import generate

        return generate(self, cond, **kwargs)


# ----------------------------------------------------------------------------- 2-D RoPE
def precompute_freqs_cis_2d(grid_size: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 1) -> Tensor:
    """[C + grid**2, head_dim/2, 2] (cos, sin). First half of the rotary pairs encodes the row,
    second half the column; the C condition positions are all zeros (as upstream)."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half))  # [Dh/4]
    t = torch.arange(grid_size, dtype=torch.float32, device="cpu")
    freqs = torch.outer(t, freqs)  # [g, Dh/4]
    grid = torch.cat([freqs[:, None, :].expand(-1, grid_size, -1),
                      freqs[None, :, :].expand(grid_size, -1, -1)], dim=-1)  # [g, g, Dh/2]
    cache = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1).flatten(0, 1)  # [g*g, Dh/2, 2]
    return torch.cat([torch.zeros(cls_token_num, half, 2, device="cpu"), cache])


def apply_rotary_emb(x: Tensor, freqs: Tensor) -> Tensor:
    # x: [B, S, H, Dh]; freqs: [S, Dh/2, 2]
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, S, H, Dh/2, 2]
    f = freqs.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)
