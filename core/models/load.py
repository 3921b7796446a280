"""Build a model from a preset and load its weights (or a run checkpoint's)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from core.demo import configs as demo_configs
from core.models import checkpoint, llamagen, registry, vq


def build_generator(preset_name: str) -> llamagen.Transformer:
    """Random-init model of a preset's architecture (no file needed)."""
    p = registry.get_generator(preset_name)
    if p.demo_sized:
        return llamagen.Transformer(llamagen.GPTConfig(**p.overrides))
    return llamagen.build(p.size, model_type=p.task, image_size=p.image_size, downsample=16, **p.overrides)


def build_tokenizer(name: str) -> vq.VQModel:
    t = registry.get_tokenizer(name)
    if t.arch == "demo":
        return vq.VQModel(vq.VQConfig(**demo_configs.vq_config()))
    return vq.build(t.arch, codebook_size=t.codebook_size, codebook_embed_dim=t.codebook_embed_dim)


def _load_janus(p: registry.GeneratorPreset, weights: Optional[str | Path], device, dtype):
    from core.models import janus

    policy, tok = janus.load_janus(p.path, device=device, dtype=dtype)
    if weights is not None:
        sd, _ = checkpoint.read_file(weights)
        checkpoint.load_strict(policy, sd, weights)
    return policy, tok


def load_generator(preset_name: str, weights: Optional[str | Path] = None, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32):
    """A preset's generator with its published weights, or with `weights` (e.g. an aligned run checkpoint)."""
    p = registry.get_generator(preset_name)
    if weights is None:
        registry.require_files(preset_name)
    if p.family == "janus":
        return _load_janus(p, weights, device, torch.bfloat16 if dtype == torch.float32 else dtype)[0]
    model = build_generator(preset_name)
    checkpoint.load_gpt(model, weights or p.path, expected="" if p.demo_sized else p.size)
    return model.to(device=device, dtype=dtype).eval()


def load_tokenizer(name: str, device: str | torch.device = "cpu", image_size: Optional[int] = None):
    t = registry.get_tokenizer(name)
    if not t.present:
        raise registry.MissingWeightsError(f"missing tokenizer weights {t.path} — {registry.download_hint(t.filename, t.repo_id)}")
    if t.arch == "janus":
        from core.models import janus

        return janus.load_janus(t.path, device=device)[1]
    model = build_tokenizer(name)
    checkpoint.load_vq(model, t.path)
    if image_size is not None and image_size != model.config.image_size:
        # fully convolutional: the resolution only changes the token grid
        model.config = vq.VQConfig(**{**model.config.to_dict(), "image_size": image_size})
    return model.to(device).eval()


def load_pair(preset_name: str, weights: Optional[str | Path] = None, device: str | torch.device = "cpu"):
    """(generator, tokenizer) of a preset, the tokenizer set to the preset's resolution."""
    p = registry.get_generator(preset_name)
    if weights is None:
        registry.require_files(preset_name)  # one message naming every missing file
    if p.family == "janus":
        return _load_janus(p, weights, device, torch.bfloat16)
    tok = load_tokenizer(p.tokenizer, device, image_size=p.image_size)
    return load_generator(preset_name, weights, device), tok


def condition_encoder(policy, task: str, device: str | torch.device = "cpu", make_t5=None, text_encoder: str = "flan-t5-xl"):
    """prompts -> (cond, cond_mask) for a text-conditional generator; None for class-conditional ones.

    A policy that encodes its own prompts (Janus) is used as is; LlamaGen T2I gets the caption features of
    the text encoder its preset names (`GeneratorPreset.text_encoder`: FLAN-T5-XL, or MiniLM for the demo;
    MissingWeightsError when its weights are absent). `make_t5` lets a caller cache the encoder.
    """
    if task != "t2i":
        return None
    if hasattr(policy, "encode_prompts"):
        return policy.encode_prompts
    from core.models.text import caption_encoder

    encoder = make_t5() if make_t5 is not None else caption_encoder(text_encoder, device)
    return encoder.encode
