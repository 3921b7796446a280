"""Shared test helpers: tiny random models and a tiny demo folder that the presets can load."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from core.models import checkpoint
from core.models.llamagen import GPTConfig, Transformer
from core.models.vq import VQConfig, VQModel

TINY_VQ = dict(codebook_size=32, codebook_embed_dim=4, ch=32, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2],
               z_channels=32, num_res_blocks=1, image_size=16)
TINY_GPT = dict(dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=32, num_classes=10, block_size=64,
                class_dropout_prob=0.1, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, model_type="c2i")


def tiny_gpt(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(GPTConfig(**{**TINY_GPT, **kw}))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m.eval()


def tiny_vq(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(VQConfig(**TINY_VQ)).eval()


def make_tiny_demo(folder: Path) -> Path:
    """A demo folder with random tiny weights in the committed demo's layout (manifest + safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save_safetensors(tiny_vq(), folder / "vq.safetensors")
    checkpoint.save_safetensors(tiny_gpt(), folder / "gpt_c2i.safetensors")
    manifest = {"tokenizer": {"file": "vq.safetensors", "config": TINY_VQ},
                "generator": {"file": "gpt_c2i.safetensors", "config": TINY_GPT}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


class ToyTokenizer:
    """Tokenizer protocol with an exactly known decoder: token t -> a pixel of grey level t / (V-1) in [-1, 1].

    A toy reward (MSE to the ground truth) then measures how far each sampled token is from x*, so a
    policy trained on it must move its mass toward x*."""

    def __init__(self, codebook_size: int = 32, grid: tuple[int, int] = (8, 8)):
        self.codebook_size, self.grid = codebook_size, grid

    def encode(self, images):
        grey = images.mean(dim=1).flatten(1)  # [B, h*w]
        return ((grey + 1) / 2 * (self.codebook_size - 1)).round().long().clamp(0, self.codebook_size - 1)

    def decode(self, tokens):
        h, w = self.grid
        grey = tokens.float() / (self.codebook_size - 1) * 2 - 1
        return grey.view(-1, 1, h, w).expand(-1, 3, h, w)
