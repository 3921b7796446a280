"""Prompts of the shapes domain: the held-out prompt set, training-caption variants, and a parser that
reads what a prompt asks for.

A prompt names up to five attributes: shape, colour, count (1 or 2), position (3×3 grid) and background;
the canonical caption of a scene (`shapes.render(...).caption`) names all five. There are
10 × 8 × 2 × 9 × 3 = 4320 combinations. The **held-out** ones (about 1 in 16, picked by a hash of the
combination) never occur in the demo T2I's training data nor in VA-π's alignment data on the shapes
domain (`heldout_scene` filters them): every attribute value is seen in training, those combinations never.
Prompt adherence (`core.demo.adherence`) is measured on them.

Data level: imports only `core.demo.shapes`.
"""
from __future__ import annotations

import hashlib
import itertools
import re
from functools import lru_cache

import numpy as np

from core.demo import shapes

CATEGORIES = ("shape", "color", "count", "position", "background")  # what a prompt can ask for
VALUES: dict[str, tuple] = {  # each category's values, in a fixed order (group ids of the Embeddings job)
    "shape": shapes.CLASS_NAMES, "color": shapes.COLOR_NAMES, "count": shapes.COUNTS, "position": shapes.POSITIONS,
    "background": shapes.BACKGROUND_NAMES}
HELDOUT_EVERY = 16  # about 1 in 16 combinations is held out


def caption_of(attrs: dict, *, article: str = "a", position: bool = True, background: bool = True) -> str:
    """The caption of a combination, in the domain's grammar. `article` for one shape: "a" (a/an by the
    colour) or "one"; `position` / `background` False leave that phrase out."""
    color, label = attrs["color"], shapes.CLASS_NAMES.index(attrs["shape"])
    if int(attrs["count"]) == 1:
        art = ("an" if color[0] in "aeiou" else "a") if article == "a" else article
        words = [f"{art} {color} {shapes.CLASS_NAMES[label]}"]
    else:
        words = [f"two {color} {shapes.PLURALS[label]}"]
    if position:
        words.append(shapes.POSITION_PHRASES[shapes.POSITIONS.index(attrs["position"])])
    if background:
        words.append(f"on a {attrs['background']} background")
    return " ".join(words)


def _key(attrs: dict) -> str:
    return "|".join(str(attrs[c]) for c in CATEGORIES)


def is_heldout(attrs: dict) -> bool:
    """True for the held-out combinations (a fixed hash of the five attributes)."""
    digest = hashlib.sha256(("vapi-demo-heldout/1|" + _key(attrs)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_EVERY == 0


def all_combinations() -> list[dict]:
    return [dict(zip(CATEGORIES, c)) for c in itertools.product(
        shapes.CLASS_NAMES, shapes.COLOR_NAMES, shapes.COUNTS, shapes.POSITIONS, shapes.BACKGROUND_NAMES)]


@lru_cache(maxsize=1)
def heldout_prompts() -> tuple[str, ...]:
    """The held-out prompt set: the canonical caption of every held-out combination, in a fixed order."""
    return tuple(caption_of(a) for a in all_combinations() if is_heldout(a))


def scene_attrs(split: str, index: int) -> dict:
    """The five attributes of a scene, without rendering it."""
    s = shapes._scene(shapes.SPLITS[split], index)
    return {"shape": shapes.CLASS_NAMES[s.label], "color": shapes.COLOR_NAMES[s.color], "count": s.count,
            "position": shapes.POSITIONS[s.position], "background": shapes.BACKGROUND_NAMES[s.background]}


def heldout_scene(split: str, index: int) -> bool:
    return is_heldout(scene_attrs(split, index))


def _scan(split: str, start: int, count: int, held: bool) -> np.ndarray:
    """The first `count` scene indices of `split` from `start` whose combination is (held) / is not held out."""
    out, i = [], start
    while len(out) < count:
        if heldout_scene(split, i) == held:
            out.append(i)
        i += 1
    return np.asarray(out, dtype=np.int64)


def training_indices(split: str, start: int, count: int) -> np.ndarray:
    """The first `count` scene indices of `split` from `start` whose combination is not held out."""
    return _scan(split, start, count, held=False)


def heldout_indices(split: str, count: int, start: int = 0) -> np.ndarray:
    """The first `count` scene indices of `split` from `start` whose combination IS held out."""
    return _scan(split, start, count, held=True)


def training_caption(attrs: dict, rng: np.random.Generator) -> str:
    """A caption variant for training the T2I model: one shape is "a"/"an" or "one" (half each), the
    position phrase is left out 20% of the time and the background 10%, so that a prompt naming fewer
    attributes (as a user types it) is in the training distribution."""
    u = rng.random(3)
    return caption_of(attrs, article="one" if u[0] < 0.5 else "a", position=u[1] >= 0.2, background=u[2] >= 0.1)


# ------------------------------------------------------------------------------------------- parser
_NUMBERS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "2": 2, "1": 1, "pair": 2}
_POSITION_WORDS = {  # longest first: "top left" before "top"
    p: tuple(p.split()) for p in sorted(shapes.POSITIONS, key=lambda s: -len(s.split()))}


def parse_prompt(prompt: str) -> dict:
    """What a prompt asks for: {category: value} for each attribute it names (shape, color, count,
    position, background); attributes it does not name are absent. Words outside the domain are ignored."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    found: dict = {}
    background_at = None
    for i, w in enumerate(words):
        if w == "background" and i > 0 and words[i - 1] in shapes.BACKGROUND_NAMES:
            found["background"] = words[i - 1]
            background_at = i - 1
    for i, w in enumerate(words):
        if i == background_at:
            continue
        if "shape" not in found and (w in shapes.CLASS_NAMES or w in shapes.PLURALS):
            plural = w in shapes.PLURALS
            found["shape"] = shapes.CLASS_NAMES[(shapes.PLURALS if plural else shapes.CLASS_NAMES).index(w)]
            number = next((_NUMBERS[x] for x in reversed(words[max(0, i - 3):i]) if x in _NUMBERS), None)
            if number is not None or plural:
                found["count"] = number if number is not None else 2
        elif "color" not in found and w in shapes.COLOR_NAMES:
            found["color"] = w
    text = " ".join(words)
    for position, parts in _POSITION_WORDS.items():
        if re.search(r"\b" + r"\s+".join(parts) + r"\b(?!\s+background)", text):
            found["position"] = position
            break
    return found


def describe(found: dict) -> str:
    """'shape circle, color red, count 1' — for messages and table cells."""
    return ", ".join(f"{c} {found[c]}" for c in CATEGORIES if c in found) or "nothing the evaluator can check"
