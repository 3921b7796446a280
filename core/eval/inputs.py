"""What an evaluation is measured against and with: the shapes domain's images, image folders, the
reference set of FID / precision-recall, real images per class, and feature extractors by name.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import ConfigError, DataError

SHAPES_PREFIX = "shapes"


def shapes_split(ref: str, field_name: str = "reference") -> Optional[str]:
    """"shapes" -> "reference", "shapes:val" -> "val"; None when `ref` does not name the shapes domain."""
    from core.demo import shapes

    head, _, split = ref.partition(":")
    if head != SHAPES_PREFIX or Path(ref).exists():
        return None
    split = split or "reference"
    if split not in shapes.SPLITS:
        raise ConfigError(field_name, f"{ref!r}: unknown shapes split; use one of "
                                       f"{', '.join(f'shapes:{s}' for s in shapes.SPLITS)}")
    return split


class ShapesImages(Dataset):
    """Images of a shapes split as uint8 [3, S, S]: indices start .. start+count-1 (labels index % 10)."""

    def __init__(self, split: str, count: int, image_size: int, start: int = 0):
        self.split, self.count, self.image_size, self.start = split, count, image_size, start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> torch.Tensor:
        from core.demo import shapes

        return torch.from_numpy(shapes.render(self.split, self.start + i, self.image_size).image).permute(2, 0, 1)


class FolderImages(Dataset):
    """Every image under a folder (recursively, sorted by path) as uint8 [3, S, S], ADM centre-cropped."""

    def __init__(self, root: str | Path, image_size: int, count: Optional[int] = None):
        from core.data.files import list_files
        from core.data.imagefolder import is_image_file

        self.root, self.image_size = Path(root), image_size
        listing = list_files(self.root, is_image_file)  # regular files inside the folder, no loops, bounded
        files = [self.root / f for f in listing.files]
        if not files:
            raise DataError(f"{root}: no images in this folder (or its sub-folders){listing.note()}")
        self.files = files[:count] if count is not None else files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from core.data.transforms import UNREADABLE_IMAGE_ERRORS, center_crop_arr, load_rgb

        try:
            image = center_crop_arr(load_rgb(self.files[i]), self.image_size)
        except UNREADABLE_IMAGE_ERRORS as e:
            raise DataError(f"{self.files[i]}: unreadable image ({e}); remove or replace it") from None
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def reference_input(ref: str, image_size: int, count: int):
    """The reference set of FID / precision-recall: an ``.npz`` path (ADM layout, used whole), a
    ShapesImages ("shapes[:split]", `count` images) or FolderImages (`count` first images)."""
    split = shapes_split(ref)
    if split is not None:
        return ShapesImages(split, count, image_size)
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".npz":
        return path
    if path.is_dir():
        return FolderImages(path, image_size, count)
    raise DataError(f"reference {ref}: not an .npz file, an image folder or 'shapes[:split]'")


def real_images(real: str, classes: Sequence[int], per_class: int, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """`per_class` real images of each class: ([K*n, 3, S, S] in [-1, 1], labels [K*n]).

    "shapes[:split]": scenes c, c+10, c+20, ... of the split (the label of scene i is i % 10), in index
    order: with all 10 classes, scenes 0 .. 10n-1 in order, the very set and order of Evaluate's reference;
    a folder in the ImageNet layout: the first `per_class` images of each class folder, by path.
    """
    from core.demo import shapes

    split = shapes_split(real, "real")
    if split is not None:
        bad = [c for c in classes if c >= shapes.NUM_CLASSES]
        if bad:
            raise ConfigError("classes", f"class {bad[0]} is not a shapes class (0..{shapes.NUM_CLASSES - 1})")
        indices = sorted(c + shapes.NUM_CLASSES * j for c in classes for j in range(per_class))
        images, labels = shapes.images_tensor(split, indices, image_size)
        return images, labels.numpy()
    from core.data.imagefolder import ImageFolderDataset

    dataset = ImageFolderDataset(real, image_size)
    labels = np.asarray(dataset.labels)
    picked, out_labels = [], []
    for c in classes:
        where = np.flatnonzero(labels == c)[:per_class]
        if len(where) < per_class:
            raise DataError(f"{real}: class {c} has {len(where)} images, fewer than per_class={per_class}")
        picked += where.tolist()
        out_labels += [c] * per_class
    return torch.stack([dataset[int(i)][0] for i in picked]), np.asarray(out_labels)


def _extractor_options(name: str, path: Optional[str], device) -> dict:
    key = {"inception": "weights_path", "demo": "path", "clip": "name_or_path", "dinov2": "name_or_path"}.get(name)
    options: dict = {"device": device}
    if path is not None:
        if key is None:
            raise ConfigError("extractor_path", f"extractor '{name}' takes no path")
        options[key] = path
    return options


def build_metric_extractor(name: str, path: Optional[str] = None, device="cpu"):
    """A feature extractor by name (`core.eval.extractors`), with its weights file or folder."""
    from core.eval.extractors import build_extractor

    return build_extractor(name, **_extractor_options(name, path, device))

