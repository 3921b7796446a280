"""Subset sizes (VapiConfig.data_subset's convention) and class-count checks, without image decoding: the shapes
domain uses them too, and a bare GPU machine without PIL can train on it."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from torch.utils.data import Dataset

from core.errors import ConfigError, DataError


def subset_size(subset: Optional[float], total: int, field: str = "subset") -> int:
    """How many of `total` items a subset keeps: None = all; a fraction in (0, 1] (1% of ImageNet's
    1,281,167 = 12,812); a whole count above 1 (VapiConfig.data_subset's convention)."""
    if subset is None:
        return total
    if isinstance(subset, bool) or not isinstance(subset, (int, float, np.integer, np.floating)):
        raise ConfigError(field, f"expected a fraction in (0, 1], an image count > 1, or null for all; got {subset!r}")
    if not math.isfinite(subset) or subset <= 0:
        raise ConfigError(field, f"must be > 0 (a fraction in (0, 1] or an image count > 1), got {subset!r}")
    if subset <= 1:
        n = int(subset * total + 0.5)
        if n == 0:
            raise ConfigError(field, f"{subset} of {total} items rounds to 0; use a larger fraction or an image count")
        return n
    if not float(subset).is_integer():
        raise ConfigError(field, f"above 1 it is an image count and must be whole, got {subset!r}")
    if int(subset) > total:
        raise ConfigError(field, f"asks for {int(subset)} items but only {total} are available; "
                                 f"use a count <= {total} or a fraction")
    return int(subset)


def check_num_classes(dataset: Dataset, num_classes: int) -> None:
    """Raise DataError unless `dataset` has exactly the model's `num_classes` class ids."""
    if not hasattr(dataset, "num_classes"):
        raise DataError(f"{type(dataset).__name__} does not say how many classes it has; build it with "
                        f"core.data.build.build_dataset, which sets num_classes")
    have = dataset.num_classes
    where = getattr(dataset, "root", type(dataset).__name__)
    if have is None:
        raise DataError(f"{where} has captions, not class labels, but the model is class-conditional with "
                        f"{num_classes} classes; use data=imagefolder (root/<class>/<image>) "
                        f"or a text-conditional model")
    if have != num_classes:
        hint = " (ImageNet-1k: the train folder with the 1000 synset folders n01440764 ... n15075141)" \
            if num_classes == 1000 else ""
        raise DataError(f"{where} has {have} classes but the model has {num_classes}: data_path must hold exactly "
                        f"{num_classes} class folders{hint}")
