"""CLIP score of generated images against their prompts (or class names in a template)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from core.errors import DataError


@torch.no_grad()
def clip_score(clip, images, texts: Sequence[str], batch_size: int = 50) -> dict:
    """CLIP score of images against their texts: 100 x cosine similarity of the CLIP image and text
    embeddings, averaged over images (torchmetrics' CLIPScore without its clamp at 0; Hessel et
    al.'s CLIPScore is 2.5 x max(cos, 0)).

    images: anything `core.eval.extractors.extract` reads ([N,3,H,W] in [-1,1], uint8 [N,H,W,3], an
    .npz path); texts: [N]. Returns {"clip_score", "clip_score_std", "per_text": {text: mean}}.
    """
    from core.eval.extractors import extract

    img = torch.nn.functional.normalize(extract(clip, images, batch_size).features, dim=-1)  # [N, D]
    if img.shape[0] != len(texts):
        raise DataError(f"clip score: {img.shape[0]} images but {len(texts)} texts")
    unique = sorted(set(texts))
    txt = torch.cat([clip.text_features(unique[s:s + batch_size]) for s in range(0, len(unique), batch_size)])
    txt = torch.nn.functional.normalize(txt, dim=-1)  # [T, D]
    row = {t: i for i, t in enumerate(unique)}
    score = 100.0 * (img * txt[[row[t] for t in texts]]).sum(-1)  # [N]
    per_text = {t: float(score[[i for i, x in enumerate(texts) if x == t]].mean()) for t in unique}
    return {"clip_score": float(score.mean()), "clip_score_std": float(score.std()) if len(score) > 1 else 0.0,
            "per_text": per_text}

