"""LlamaGen VQ tokenizer (VQ-16, VQ-8), state-dict compatible with upstream.

Upstream: FoundationVision/LlamaGen `tokenizer/tokenizer_image/vq_model.py`. Same parameters and
names (including the `quantize.codebook_used` buffer), same math: a conv encoder, a 1x1 projection
to `codebook_embed_dim`, nearest-neighbour lookup in an L2-normalised codebook, a conv decoder.

Tokenizer protocol (core/models/protocols.py): `codebook_size`, `grid` (h, w), `encode(images [B,3,H,W] in [-1,1])
-> [B, N] long`, `decode(tokens [B, N]) -> [B, 3, H, W]`. Lower-level pieces (`encode_latent`,
`quantize`, `embed`, `decode_latent`) serve tokenizer training and the STE / decoder baselines.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.errors import ConfigError


@dataclass
class VQConfig:
    """Architecture of a LlamaGen VQ tokenizer. Defaults are upstream's VQ-16."""

    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True  # keeps the `codebook_used` buffer (in upstream checkpoints)
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    decoder_ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128  # base channels (upstream hard-codes 128; the demo tokenizer is smaller)
    num_res_blocks: int = 2
    image_size: int = 256  # the resolution this tokenizer is used at (fixes the token grid)

    def __post_init__(self):
        if self.encoder_ch_mult != self.decoder_ch_mult[: len(self.encoder_ch_mult)] or len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ConfigError("decoder_ch_mult", "must equal encoder_ch_mult (one downsample per upsample)")
        for m in self.encoder_ch_mult:
            if (self.ch * m) % 32:
                raise ConfigError("ch", f"ch * ch_mult = {self.ch * m} is not a multiple of 32 (GroupNorm groups)")
        if self.image_size % self.downsample:
            raise ConfigError("image_size", f"{self.image_size} is not divisible by the downsample factor {self.downsample}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.downsample
        return (g, g)

    def to_dict(self) -> dict:
        return asdict(self)


VQ_SIZES: dict[str, dict] = {
    "VQ-16": dict(encoder_ch_mult=[1, 1, 2, 2, 4], decoder_ch_mult=[1, 1, 2, 2, 4]),
    "VQ-8": dict(encoder_ch_mult=[1, 2, 2, 4], decoder_ch_mult=[1, 2, 2, 4]),
}


def config_for(name: str, **overrides) -> VQConfig:
    if name not in VQ_SIZES:
        raise ConfigError("tokenizer", f"unknown VQ model {name!r}; known: {', '.join(VQ_SIZES)}")
    return VQConfig(**{**VQ_SIZES[name], **overrides})


def build(name: str = "VQ-16", **overrides) -> "VQModel":
    """`vq.build("VQ-16")` -> VQModel (random init). Overrides e.g. image_size=384."""
    return VQModel(config_for(name, **overrides))


# ----------------------------------------------------------------------------- building blocks
def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, hh * ww).transpose(1, 2)  # [b, hw, c]
        k = self.k(h).reshape(b, c, hh * ww)  # [b, c, hw]
        v = self.v(h).reshape(b, c, hh * ww)  # [b, c, hw]
        w = torch.softmax(torch.bmm(q, k) * (c ** -0.5), dim=2)  # [b, hw_q, hw_k]
        out = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as upstream


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, dropout: float, in_channels: int = 3):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for i in range(self.num_resolutions):
            blk = nn.Module()
            blk.res, blk.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks):
                blk.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i == self.num_resolutions - 1:
                    blk.attn.append(AttnBlock(block_in))
            if i != self.num_resolutions - 1:
                blk.downsample = Downsample(block_in)
            self.conv_blocks.append(blk)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in), ResnetBlock(block_in, block_in, dropout)])
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for i, blk in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks):
                h = blk.res[j](h)
                if len(blk.attn):
                    h = blk.attn[j](h)
            if i != self.num_resolutions - 1:
                h = blk.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, dropout: float, out_channels: int = 3):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in, dropout), AttnBlock(block_in), ResnetBlock(block_in, block_in, dropout)])
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(self.num_resolutions)):
            blk = nn.Module()
            blk.res, blk.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks + 1):
                blk.res.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if i == self.num_resolutions - 1:
                    blk.attn.append(AttnBlock(block_in))
            if i != 0:
                blk.upsample = Upsample(block_in)
            self.conv_blocks.append(blk)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for i, blk in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks + 1):
                h = blk.res[j](h)
                if len(blk.attn):
                    h = blk.attn[j](h)
            if i != self.num_resolutions - 1:
                h = blk.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest code in an (optionally L2-normalised) codebook, straight-through gradients."""

    def __init__(self, n_e: int, e_dim: int, beta: float, entropy_loss_ratio: float, l2_norm: bool, show_usage: bool):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.entropy_loss_ratio = entropy_loss_ratio
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        with torch.no_grad():
            if self.embedding.weight.device.type != "meta":
                self.embedding.weight.uniform_(-1.0 / n_e, 1.0 / n_e)
                if l2_norm:
                    self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))
        if show_usage:
            self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> Tensor:
        """[n_e, e_dim], normalised if the tokenizer uses an L2-normalised codebook."""
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def nearest(self, z: Tensor) -> Tensor:
        """z: [B, e_dim, h, w] -> indices [B, h*w] (raster order)."""
        zf = z.permute(0, 2, 3, 1).reshape(-1, self.e_dim)
        emb = self.codebook()
        if self.l2_norm:
            zf = F.normalize(zf, p=2, dim=-1)
        d = zf.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1) - 2 * zf @ emb.t()  # [B*h*w, n_e]
        return d.argmin(dim=1).view(z.shape[0], -1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict]:
        """Training path. z: [B, e_dim, h, w] -> (z_q with straight-through grads, indices [B, h*w], losses)."""
        b, c, h, w = z.shape
        idx = self.nearest(z)
        zn = F.normalize(z, p=2, dim=1) if self.l2_norm else z
        zq = self.codebook()[idx.view(-1)].view(b, h, w, c).permute(0, 3, 1, 2)
        losses = {}
        if self.training:
            if hasattr(self, "codebook_used"):
                flat = idx.view(-1).float()
                n = min(flat.numel(), self.codebook_used.numel())
                self.codebook_used.copy_(torch.cat([self.codebook_used[n:], flat[-n:]]))
            losses["vq"] = torch.mean((zq - zn.detach()) ** 2)
            losses["commit"] = self.beta * torch.mean((zq.detach() - zn) ** 2)
        zq = zn + (zq - zn).detach()
        return zq, idx, losses


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg.ch, cfg.encoder_ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.dropout_p)
        self.decoder = Decoder(cfg.ch, cfg.decoder_ch_mult, cfg.num_res_blocks, cfg.z_channels, cfg.dropout_p)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.codebook_embed_dim, cfg.commit_loss_beta,
                                        cfg.entropy_loss_ratio, cfg.codebook_l2_norm, cfg.codebook_show_usage)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    # --- tokenizer protocol
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def encode_latent(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> pre-quantisation latent [B, e_dim, h, w]."""
        return self.quant_conv(self.encoder(images))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> tokens [B, h*w] long (raster order)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        return self.quantize.nearest(self.encode_latent(images))

    def embed(self, tokens_or_probs: Tensor, grid: Optional[tuple[int, int]] = None) -> Tensor:
        """Codebook vectors as a latent map [B, e_dim, h, w].

        tokens [B, N] long -> a lookup; probabilities / one-hots [B, N, V] float -> the
        probability-weighted codebook mix (differentiable: the STE baseline uses this).
        """
        h, w = grid or self.grid
        emb = self.quantize.codebook()
        if tokens_or_probs.dtype in (torch.long, torch.int32, torch.int64):
            z = emb[tokens_or_probs]  # [B, N, e_dim]
        else:
            z = tokens_or_probs.to(emb.dtype) @ emb  # [B, N, e_dim]
        return z.view(z.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()

    def decode_latent(self, zq: Tensor) -> Tensor:
        """[B, e_dim, h, w] -> images [B, 3, H, W] (roughly in [-1, 1])."""
        return self.decoder(self.post_quant_conv(zq))

    def decode(self, tokens: Tensor) -> Tensor:
        """tokens [B, N] long -> images [B, 3, H, W] (roughly in [-1, 1])."""
        if tokens.ndim != 2 or tokens.shape[1] != self.grid[0] * self.grid[1]:
            raise ValueError(f"expected tokens [B, {self.grid[0] * self.grid[1]}], got {tuple(tokens.shape)}")
        return self.decode_latent(self.embed(tokens))

    def forward(self, tokens: Tensor) -> Tensor:
        """Always decoding: tokens [B, N] -> images. (The decoder baseline trains through this, so a
        DDP wrapper, which hooks forward(), sees the pass.)"""
        return self.decode(tokens)

    def forward_train(self, images: Tensor) -> tuple[Tensor, dict]:
        """Reconstruction with straight-through quantisation: (recon [B,3,H,W], losses {vq, commit})."""
        zq, _, losses = self.quantize(self.encode_latent(images))
        return self.decode_latent(zq), losses
