"""Janus-Pro as a VA-π policy and tokenizer, through transformers' Janus implementation.

`JanusPolicy` wraps `transformers.JanusForConditionalGeneration` in the engine's Policy protocol
(core/models/protocols.py) and in the mode methods `core.models.generate.generate` drives (`null_condition`,
`new_cache`, `prefill`, `decode_one`), so Janus samples with the same sampler, seeds
and CFG formula as LlamaGen. `JanusTokenizer` wraps the model's `JanusVQVAE`.

Legend: B batch, L prompt tokens (left-padded), N image tokens (24 x 24 = 576 for Janus-Pro),
V image codebook (16384), D hidden size (2048 for Janus-Pro-1B).

How image generation differs from text in Janus (names: transformers / DeepSeek's original code):
- input side: an image token id is embedded by `model.generation_embeddings` / `gen_embed`
  (Embedding(V, 8)) and lifted to D by `model.generation_aligner` / `gen_aligner` (Linear 8->D,
  GELU, Linear D->D), i.e. `prepare_embeddings_for_image_generation`; text ids go through the
  language model's own `embed_tokens`. Image ids are NOT text ids: they index the VQ codebook.
- output side: the next image token comes from `model.generation_head` / `gen_head`
  (Linear D->D, GELU, Linear D->V) on the language model's final normed hidden state, never
  from `lm_head` (the text head, tied to `embed_tokens`).
- the trunk is shared: the same Llama layers, rotary positions continuing from the prompt.
  The understanding encoder (SigLIP `vision_model` + `aligner`) is not on this path at all.

Prompt template (DeepSeek's `deepseek` SFT format with an empty system prompt, as in Janus's
`generation_inference.py` and VA-Pi's `Janus/train/train_t2i_grpo_janus.py::build_prompt_tokens`):
    <BOS>"<|User|>: {prompt}\n\n<|Assistant|>:<begin_of_image>"
The unconditional (CFG) prompt keeps BOS and `<begin_of_image>` and replaces every token between
them by the pad token `<｜▁pad▁｜>`, same length, all attended (Janus: `tokens[1:-1] = pad_id`;
transformers' `JanusForConditionalGeneration.generate` masks all but BOS/BOI the same way).

Two departures from VA-Pi's training script, both deliberate:
- batching: prompts are LEFT-padded with the padding masked out and rotary positions counted from
  each row's first real token, so a batched row computes what the prompt alone does. VA-Pi
  right-pads: the masked pads then sit between a shorter prompt and its image tokens and still take
  positions, so its image tokens are farther (in RoPE distance) from the prompt than when unpadded.
- alignment: logits[:, i] predicts image token i from the prompt and tokens < i, the first from
  the `<begin_of_image>` position (as Janus samples). VA-Pi's `tf_logits_janus` feeds all N
  ground-truth tokens and reads the N outputs after them, so its logit i has already seen token i.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.errors import CheckpointError, ConfigError
from core.models.text import resolve_pretrained

JANUS_PRO_1B = "deepseek-community/Janus-Pro-1B"  # transformers-format conversion of deepseek-ai/Janus-Pro-1B
USER_ROLE, ASSISTANT_ROLE = "<|User|>", "<|Assistant|>"
IMAGE_START_TAG = "<begin_of_image>"
PAD_TAG = "<｜▁pad▁｜>"


def format_prompt(prompt: str) -> str:
    """One caption -> Janus-Pro's text-to-image prompt (BOS is added at tokenization).

    DeepSeek's template writes "role: message" + separator for a non-empty message and "role:" for
    an empty one; the user/assistant separators are "\\n\\n" and (unused here) the EOS string.
    """
    text = prompt.strip()
    user = f"{USER_ROLE}: {text}\n\n" if text else f"{USER_ROLE}:"
    return f"{user}{ASSISTANT_ROLE}:{IMAGE_START_TAG}"


def positions_from_mask(mask: Tensor) -> Tensor:
    """Rotary positions for a left-padded mask [B, T]: 0 at each row's first real token. -> [B, T] long."""
    return (mask.long().cumsum(dim=-1) - 1).clamp_(min=0)


@dataclass
class JanusCache:
    """KV cache of one sampling run: transformers' DynamicCache plus what decoding needs per row."""

    kv: object  # transformers.DynamicCache
    batch_size: int
    mask: Optional[Tensor] = None  # [B, T] long, 1 = attend (prompt padding is 0)
    next_position: Optional[Tensor] = None  # [B] long, rotary position of the next token

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]


class JanusPolicy(nn.Module):
    """Janus-Pro's image-generation path as a policy over image tokens.

    cond: prompt ids [B, L] long from `encode_prompts` (left-padded with the pad token, every row
    ending with `<begin_of_image>`); cond_mask: [B, L] bool, True for real tokens (None: no padding).

    Modules not on the generation path (the SigLIP understanding encoder, its aligner, the VQ
    model) are frozen here (`requires_grad_(False)`), so an optimizer and DDP see only the language
    model, the text embeddings (tied with `lm_head`) and the generation embedding/aligner/head.
    """

    def __init__(self, model, processor_or_tokenizer):
        super().__init__()
        self.model = model
        tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
        self.text_tokenizer = tokenizer
        self.bos_id = tokenizer.bos_token_id
        if self.bos_id is None:
            raise ConfigError("tokenizer", "the Janus tokenizer has no BOS token")
        self.boi_id = _single_token_id(tokenizer, IMAGE_START_TAG)
        vocab = tokenizer.get_vocab()
        self.pad_id = vocab[PAD_TAG] if PAD_TAG in vocab else tokenizer.pad_token_id
        if self.pad_id is None:
            raise ConfigError("tokenizer", f"the Janus tokenizer has neither {PAD_TAG!r} nor a pad token")
        for frozen in (model.model.vision_model, model.model.aligner, model.model.vqmodel):
            frozen.requires_grad_(False)

    # --- policy protocol properties
    @property
    def vocab_size(self) -> int:
        return int(self.model.model.generation_head.vision_head.out_features)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.model.model.vqmodel.quantize.quant_state_dims
        return int(h), int(w)

    @property
    def num_tokens(self) -> int:
        """N, image tokens per sample (the VQ grid, 24 x 24 for Janus-Pro)."""
        h, w = self.grid
        return h * w

    @property
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def gradient_checkpointing(self) -> bool:
        """Recompute each decoder layer in backward (transformers' activation checkpointing, train mode only)."""
        return any(getattr(m, "gradient_checkpointing", False) is True for m in self.model.modules())

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        # transformers >= 5.2x: activation_checkpointing_enable/disable (gradient_* kept as deprecated aliases);
        # earlier 5.x (5.17 on the GPU image): only gradient_checkpointing_enable/disable
        m = self.model
        if on:
            if hasattr(m, "activation_checkpointing_enable"):
                m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            (getattr(m, "activation_checkpointing_disable", None) or m.gradient_checkpointing_disable)()

    def fsdp_wrap_modules(self) -> list[nn.Module]:
        return list(self.language_model.layers)

    # --- conditions
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Captions -> (ids [B, L] long, mask [B, L] bool), left-padded, on the model's device."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        rows = [[self.bos_id] + self.text_tokenizer.encode(format_prompt(p), add_special_tokens=False) for p in prompts]
        bad = [p for p, r in zip(prompts, rows) if r[-1] != self.boi_id]
        if bad:
            raise ConfigError("prompts", f"{bad[0]!r} does not tokenize to a prompt ending in {IMAGE_START_TAG}")
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, L - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, L - len(r):] = True
        device = self.model.get_input_embeddings().weight.device
        return ids.to(device), mask.to(device)

    def null_condition(self, cond: Tensor) -> Tensor:
        """The unconditional prompt of each row: BOS and `<begin_of_image>` kept, everything else padding."""
        ids = self._check_ids(cond)
        first = (ids != self.pad_id).long().argmax(dim=1)  # [B] BOS position (left padding is pad ids)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[torch.arange(ids.shape[0], device=ids.device), first] = True
        keep[:, -1] = True
        return torch.where(keep, ids, torch.full_like(ids, self.pad_id))

    def _check_ids(self, cond: Tensor) -> Tensor:
        if cond.ndim != 2 or cond.dtype != torch.long:
            raise ValueError(f"Janus cond must be prompt ids [B, L] long (from encode_prompts), "
                             f"got {tuple(cond.shape)} {cond.dtype}")
        if not bool((cond[:, -1] == self.boi_id).all()):
            raise ValueError(f"every Janus prompt row must end with {IMAGE_START_TAG} (left padding, from encode_prompts)")
        return cond

    def _cond_mask(self, cond: Tensor, cond_mask: Optional[Tensor]) -> Tensor:
        if cond_mask is None:
            return torch.ones_like(cond, dtype=torch.long)
        if cond_mask.shape != cond.shape:
            raise ValueError(f"cond_mask {tuple(cond_mask.shape)} does not match cond {tuple(cond.shape)}")
        return cond_mask.long()

    def _drop_mask(self, batch: int, p: float, device, generator: Optional[torch.Generator]) -> Optional[Tensor]:
        if p <= 0.0:
            return None
        return torch.rand(batch, device=device, generator=generator) < p

    # --- the two embedding paths and the image head
    def text_embeddings(self, ids: Tensor) -> Tensor:
        """[B, L] text ids -> [B, L, D] (the language model's embed_tokens)."""
        return self.model.get_input_embeddings()(ids)

    def image_embeddings(self, tokens: Tensor) -> Tensor:
        """[B, T] image ids -> [B, T, D] (generation_embeddings, then generation_aligner)."""
        return self.model.prepare_embeddings_for_image_generation(tokens)

    def image_logits(self, hidden: Tensor) -> Tensor:
        """[..., D] final hidden states -> [..., V] float32 image-token logits (generation_head)."""
        return self.model.model.generation_head(hidden).float()

    def _trunk(self, h: Tensor, mask: Tensor, position_ids: Tensor, cache: Optional[JanusCache] = None) -> Tensor:
        kv = {_cache_kwarg(self.language_model): cache.kv} if cache is not None else {}
        out = self.language_model(inputs_embeds=h, attention_mask=mask, position_ids=position_ids,
                                  use_cache=cache is not None, **kv)
        return out.last_hidden_state

    # --- mode 1: teacher forcing (training, VA-π's forward)
    def teacher_forced_logits(self, cond: Tensor, context: Tensor, *, cond_drop_prob: float = 0.0,
                              cond_mask: Optional[Tensor] = None,
                              generator: Optional[torch.Generator] = None) -> Tensor:
        """Next-image-token logits for every image position given the prompt and a context.

        cond: [B, L] prompt ids; cond_mask: [B, L] bool; context: [B, N-1] image tokens x_1..x_{N-1}.
        cond_drop_prob: probability of replacing each row's prompt by the unconditional one.
        Returns [B, N, V] float32: logits[:, i] predicts image token i from the prompt and context[:, :i].
        """
        ids = self._check_ids(cond)
        mask = self._cond_mask(ids, cond_mask)
        drop = self._drop_mask(ids.shape[0], cond_drop_prob, ids.device, generator)
        if drop is not None:
            ids = torch.where(drop[:, None], self.null_condition(ids), ids)
        L = ids.shape[1]
        h = torch.cat([self.text_embeddings(ids), self.image_embeddings(context)], dim=1)  # [B, L+N-1, D]
        full = torch.cat([mask, torch.ones_like(context, dtype=torch.long)], dim=1)  # [B, L+N-1]
        hidden = self._trunk(h, full, positions_from_mask(full))
        return self.image_logits(hidden[:, L - 1:])  # [B, N, V]

    def forward(self, cond: Tensor, context: Tensor, cond_mask: Optional[Tensor] = None) -> Tensor:
        """The teacher-forced pass without condition dropout, for wrappers (DDP/FSDP) that hook forward()."""
        return self.teacher_forced_logits(cond, context, cond_mask=cond_mask)

    # --- mode 2 and 3: free-running decoding with transformers' KV cache
    def new_cache(self, batch_size: int) -> JanusCache:
        """An empty cache for `batch_size` rows (transformers' DynamicCache, grown by prefill and decode_one)."""
        from transformers import DynamicCache

        return JanusCache(DynamicCache(config=self.language_model.config), batch_size)

    def prefill(self, cond: Tensor, cache: JanusCache, cond_mask: Optional[Tensor] = None) -> Tensor:
        """Run the prompts into an empty cache. Returns logits [B, V] float32 for image token 0."""
        if cache.length:
            raise ValueError("prefill needs an empty cache")
        ids = self._check_ids(cond)
        if ids.shape[0] != cache.batch_size:
            raise ValueError(f"cache is for {cache.batch_size} rows, cond has {ids.shape[0]}")
        mask = self._cond_mask(ids, cond_mask)
        pos = positions_from_mask(mask)
        hidden = self._trunk(self.text_embeddings(ids), mask, pos, cache)
        cache.mask, cache.next_position = mask, pos[:, -1] + 1
        return self.image_logits(hidden[:, -1])

    def decode_one(self, token: Tensor, cache: JanusCache) -> Tensor:
        """Feed one image token [B] (or [B, 1]). Returns logits [B, V] float32 for the next one."""
        if cache.mask is None:
            raise ValueError("decode_one needs a prefilled cache")
        tok = token.view(-1, 1)
        cache.mask = torch.cat([cache.mask, torch.ones_like(tok)], dim=1)
        hidden = self._trunk(self.image_embeddings(tok), cache.mask, cache.next_position[:, None], cache)
        cache.next_position = cache.next_position + 1
        return self.image_logits(hidden[:, -1])

    def generate(self, cond: Tensor, **kwargs):
        """Free-running sampling; see `core.models.generate.generate` for the arguments (cond_mask too)."""
        from core.models.generate import generate

        return generate(self, cond, **kwargs)


def _cache_kwarg(language_model) -> str:
    """The KV-cache argument of the language model's forward: `cache` (transformers >= 5.2x, which still reads
    the old name until 5.40) or `past_key_values` (earlier 5.x). The other name would land in **kwargs unread:
    no cache filled, and sampling without context."""
    import inspect

    params = inspect.signature(type(language_model).forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise ConfigError("model", f"{type(language_model).__name__}.forward takes neither `cache` nor `past_key_values`: "
                               "this transformers version is not supported; install transformers>=5.0,<5.40")


def _single_token_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError("tokenizer", f"{text!r} must be one special token of the Janus tokenizer, got ids {ids}")
    return int(ids[0])


class JanusTokenizer(nn.Module):
    """Janus's VQ (LlamaGen's VQ-16 design) in the engine's Tokenizer protocol.

    Janus-Pro: 384 px images, 16x downsample, a 24 x 24 grid, 16384 codes of dim 8.

    encode is the original's nearest-code lookup with BOTH the latent and the codebook L2-normalised
    (`codebook_l2_norm=True` in DeepSeek's `vq_model.py`, as in LlamaGen). transformers'
    `JanusVQVAEVectorQuantizer.forward` skips that normalisation (its decode path,
    `get_codebook_entry`, does normalise), so it is not used for encoding here.
    """

    def __init__(self, vqmodel):
        super().__init__()
        self.vq = vqmodel

    @property
    def codebook_size(self) -> int:
        return int(self.vq.config.num_embeddings)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.vq.quantize.quant_state_dims
        return int(h), int(w)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vq.config.channel_multiplier) - 1)

    @property
    def image_size(self) -> int:
        return self.grid[0] * self.downsample

    @property
    def post_quant_conv(self) -> nn.Module:
        return self.vq.post_quant_conv

    @property
    def decoder(self) -> nn.Module:
        return self.vq.decoder

    def encode_latent(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> pre-quantisation latent [B, e_dim, h, w]."""
        return self.vq.quant_conv(self.vq.encoder(images))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> tokens [B, h*w] long (raster order)."""
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"expected images [B, 3, {s}, {s}] in [-1, 1], got {tuple(images.shape)}")
        z = self.encode_latent(images.to(self.vq.quant_conv.weight.dtype))  # [B, e, h, w]
        B, e, h, w = z.shape
        zf = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, e).float(), dim=-1)  # [B*h*w, e]
        codes = F.normalize(self.vq.quantize.embedding.weight.float(), dim=-1)  # [V, e]
        dist = (zf * zf).sum(1, keepdim=True) + (codes * codes).sum(1)[None, :] - 2 * zf @ codes.t()  # [B*h*w, V]
        return dist.argmin(dim=1).view(B, h * w)

    def decode(self, tokens: Tensor) -> Tensor:
        """tokens [B, h*w] long -> images [B, 3, H, W] (roughly in [-1, 1])."""
        n = self.grid[0] * self.grid[1]
        if tokens.ndim != 2 or tokens.shape[1] != n:
            raise ValueError(f"expected tokens [B, {n}], got {tuple(tokens.shape)}")
        return self.vq.decode(tokens)


def load_janus(model_dir_or_id: str | Path = JANUS_PRO_1B, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.bfloat16, *, allow_download: bool = False) -> tuple[JanusPolicy, JanusTokenizer]:
    """(policy, tokenizer) of a Janus checkpoint in transformers' format, eval mode, on `device`.

    model_dir_or_id: a folder, or a hub id looked up in checkpoints/<name> and the HF cache
    (downloaded only with allow_download). DeepSeek's original repos (deepseek-ai/Janus-Pro-*,
    model_type "multi_modality") need their `janus` package; transformers reads the converted
    ones (deepseek-community/Janus-Pro-1B), which this refuses to confuse.
    """
    text = str(model_dir_or_id)
    if text.startswith("deepseek-ai/"):
        raise ConfigError("model", f"{text} is DeepSeek's original layout, which transformers' Janus classes do not read; "
                                   f"use the converted {text.replace('deepseek-ai/', 'deepseek-community/')}")
    folder = resolve_pretrained(model_dir_or_id, what="Janus model", allow_download=allow_download,
                                hub_id_hint=JANUS_PRO_1B)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "janus":
        raise CheckpointError(f"{folder}/config.json has model_type {model_type!r}, not 'janus': this is not a "
                              f"transformers-format Janus checkpoint (use {JANUS_PRO_1B})")
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = JanusForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype=dtype)
    model = model.to(device)
    return JanusPolicy(model, tokenizer).eval(), JanusTokenizer(model.model.vqmodel).eval()
