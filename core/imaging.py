"""Image tensors <-> uint8 arrays and PNG files (grids and single images)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8 (the ADM/LlamaGen sample layout)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


GRID_PAD = 2  # pixels of white between tiles of `grid`


def grid(images: Tensor, nrow: int, pad: int = GRID_PAD, upscale: int = 1) -> np.ndarray:
    """Tile [B, 3, H, W] in [-1, 1] into one [rows*(H+pad)+pad, ...] uint8 image, `nrow` per row."""
    arr = to_uint8(images)
    if upscale > 1:
        arr = arr.repeat(upscale, axis=1).repeat(upscale, axis=2)
    b, h, w, _ = arr.shape
    nrow = max(1, min(nrow, b))
    rows = (b + nrow - 1) // nrow
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[i]
    return out


def save_png(arr: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def save_images(images: Tensor, folder: str | Path, names: Sequence[str], upscale: int = 1) -> list[Path]:
    arr = to_uint8(images)
    if upscale > 1:
        arr = arr.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return [save_png(a, Path(folder) / n) for a, n in zip(arr, names)]


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe stem of a label or prompt: runs of other characters become "_"."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "x"
