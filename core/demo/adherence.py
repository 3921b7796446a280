"""Prompt adherence on the shapes domain, GenEval-style: does a sample show what its prompt asks for?

The demo evaluator (core.demo.evaluator, trained on its own split, never used in a reward) reads five
attributes off an image: the shape (its class head), colour, count, position and background (its
attribute heads). A sample is checked on each attribute its prompt names (`core.demo.prompts.parse_prompt`):
per category, adherence = the fraction of samples whose prompt names that attribute and whose predicted
value equals it; overall = the fraction of samples right on every attribute their prompt names (GenEval's
"all of the prompt" rule). Eval level: used by the demo report, the Compare tab and the eval CLI.
"""
from __future__ import annotations

from typing import Sequence

import torch

from core.demo import prompts as P
from core.demo import shapes

CATEGORIES = P.CATEGORIES


@torch.no_grad()
def predict(ev, images: torch.Tensor, batch: int = 1000) -> list[dict]:
    """The evaluator's reading of each image: [{shape, color, count, position, background}]."""
    from core.demo.evaluator import ATTRIBUTES

    out: list[dict] = []
    for lo in range(0, images.shape[0], batch):
        x = images[lo:lo + batch]
        _, class_logits, attr_logits = ev.read(x)
        shape = class_logits.argmax(1).tolist()
        attrs = {name: logits.argmax(1).tolist() for name, logits in attr_logits.items()}
        for i in range(x.shape[0]):
            row = {"shape": shapes.CLASS_NAMES[shape[i]]}
            row.update({name: ATTRIBUTES[name][attrs[name][i]] for name in attrs})
            out.append(row)
    return out


def check(asked: dict, seen: dict) -> dict:
    """{category: True/False} for each attribute `asked` names (values compared as text)."""
    return {c: str(seen.get(c)) == str(asked[c]) for c in CATEGORIES if c in asked}


def score(predicted: Sequence[dict], prompts: Sequence[str]) -> dict:
    """Per-category and overall adherence of samples (predicted[i] shows prompts[i]).

    Returns {"overall": float, "per_category": {category: float}, "counts": {category: n checked},
    "samples": n}. A category no prompt names is absent from per_category."""
    if len(predicted) != len(prompts):
        raise ValueError(f"{len(predicted)} predictions for {len(prompts)} prompts")
    hits = {c: 0 for c in CATEGORIES}
    counts = {c: 0 for c in CATEGORIES}
    all_right = checked = 0
    for seen, prompt in zip(predicted, prompts):
        result = check(P.parse_prompt(prompt), seen)
        for c, ok in result.items():
            counts[c] += 1
            hits[c] += int(ok)
        if result:
            checked += 1
            all_right += int(all(result.values()))
    return {"overall": all_right / checked if checked else float("nan"),
            "per_category": {c: hits[c] / counts[c] for c in CATEGORIES if counts[c]},
            "counts": {c: counts[c] for c in CATEGORIES if counts[c]}, "samples": len(prompts)}


def real_scene_adherence(ev, count: int = 1000, split: str = "reference") -> dict:
    """Adherence of REAL held-out scenes to their own canonical captions, on scenes whose combination is held
    out: how far the scorer itself can be trusted (an ideal generator scores this)."""
    idx = P.heldout_indices(split, count)
    images, _ = shapes.images_tensor(split, idx.tolist(), ev.config.image_size)
    captions = [P.caption_of(P.scene_attrs(split, int(i))) for i in idx]
    return score(predict(ev, images), captions)
