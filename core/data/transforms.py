"""Training-image preprocessing, as in upstream LlamaGen and the VA-π reference training scripts.

`train_c2i_grpo.py` and `train_t2i_grpo.py` in Lil-Shake/VA-Pi (and LlamaGen's code extraction)
compose ``convert('RGB')`` -> ``center_crop_arr(image, image_size)`` -> ``ToTensor()`` ->
``Normalize(0.5, 0.5)``: a deterministic ADM center crop with no random flip and no random crop.
Keeping it deterministic matters here beyond fidelity to the reference: x* = Q(E(I)) is a fixed
function of the dataset index, so the trainer may encode each image once and cache its tokens.

No EXIF rotation is applied (upstream applies none either).
"""
from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.data.files import open_regular

# What PIL raises for a missing, truncated, corrupt or non-image file (UnidentifiedImageError is an
# OSError; broken PNG chunks raise SyntaxError; short headers raise struct.error or EOFError).
UNREADABLE_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError,
)


MAX_PIXELS = 8192 * 8192  # a training image's size by its header: LlamaGen trains at 256-384 px; PIL's own
# bomb check warns only above 89M pixels and refuses above 179M


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM's center crop (guided-diffusion `image_datasets.py`, used by LlamaGen and VA-π).

    While the short side is at least twice the target, halve both sides with a BOX filter (integer
    halving, as `x // 2`); then resize with BICUBIC so that the short side equals `image_size`
    (the long side rounded to the nearest pixel); then cut the central `image_size` square, the
    offset rounded down.
    """
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image)  # [H, W, C] uint8
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top: top + image_size, left: left + image_size])


def to_tensor(pil_image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3, H, W] in [-1, 1], bit-identical to torchvision's
    ``ToTensor()`` followed by ``Normalize(mean=0.5, std=0.5)``."""
    arr = np.array(pil_image, dtype=np.uint8, copy=True)  # [H, W, 3]
    x = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)  # [3, H, W] in [0, 1]
    return x.sub_(0.5).div_(0.5)


def preprocess(pil_image: Image.Image, image_size: int) -> torch.Tensor:
    """Any PIL image -> the training tensor [3, image_size, image_size] in [-1, 1]."""
    return to_tensor(center_crop_arr(pil_image.convert("RGB"), image_size))


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image file as RGB. Raises one of UNREADABLE_IMAGE_ERRORS when the
    file is missing, not a regular file (a FIFO is refused, not waited on), truncated, not an image
    (truncated files are never silently padded), or larger than MAX_PIXELS by its header (refused
    before anything is decoded)."""
    with warnings.catch_warnings():  # PIL warns from 89M pixels (a stderr line per file): refused below instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        f = open_regular(path)
        try:
            image = Image.open(f)
        except BaseException:
            f.close()
            raise
    with f, image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{width}x{height} pixels by its header, above the {MAX_PIXELS:,}-pixel limit of a "
                             f"training image; downscale it")
        return image.convert("RGB")  # decodes the whole file while it is open
