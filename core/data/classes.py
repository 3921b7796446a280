"""Class names (ImageNet-1k for the real C2I models, the shapes domain for the demo) and
turning what a user types ("golden retriever", "207", 207) into class ids."""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Iterable, Sequence

from core import paths
from core.errors import ConfigError


@lru_cache(maxsize=None)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in class-id order (assets/imagenet_classes.json, the
    torchvision ordering, identical to LlamaGen's label ids)."""
    return tuple(json.loads((paths.ASSETS_DIR / "imagenet_classes.json").read_text()))


@lru_cache(maxsize=None)
def demo_class_names() -> tuple[str, ...]:
    return tuple(json.loads((paths.ASSETS_DIR / "demo_classes.json").read_text()))


def class_names_for(num_classes: int) -> tuple[str, ...]:
    """Names for a model with `num_classes` classes: demo (10) or ImageNet (1000)."""
    if num_classes == len(demo_class_names()):
        return demo_class_names()
    if num_classes == 1000:
        return imagenet_class_names()
    return tuple(f"class {i}" for i in range(num_classes))


def resolve_classes(items: Iterable[str | int], names: Sequence[str], field: str = "classes") -> list[int]:
    """Class ids from ids or names (case-insensitive exact name, then a unique substring match)."""
    out = []
    lowered = [n.lower() for n in names]
    for item in items:
        s = str(item).strip()
        if s.lstrip("-").isdigit():
            i = int(s)
            if not 0 <= i < len(names):
                raise ConfigError(field, f"class id {i} is out of range 0..{len(names) - 1}")
            out.append(i)
            continue
        key = s.lower()
        if key in lowered:
            out.append(lowered.index(key))
            continue
        hits = [i for i, n in enumerate(lowered) if key in n]
        if len(hits) == 1:
            out.append(hits[0])
        elif not hits:
            raise ConfigError(field, f"no class named {s!r}")
        else:
            sample = ", ".join(f"{names[i]} ({i})" for i in hits[:6])
            raise ConfigError(field, f"{s!r} is ambiguous: {sample}{' ...' if len(hits) > 6 else ''}; give the id or the full name")
    return out
