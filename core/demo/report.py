"""The demo's measured result: demo-FID, class accuracy and diversity of free-running samples.

For a demo generator (the committed base, or an aligned run checkpoint): `num_samples` samples per
sampling seed, classes balanced (sample i shows class i % 10), the paper's "w/o CFG" setting by
default (CFG 1.0, temperature 1.0, no top-k/top-p); every sample's seed derives from (sampling
seed, i), so base and aligned are compared on the same random numbers. Features and class
predictions come from the demo evaluator (trained on its own split, never used in a reward).

- demo-FID: Fréchet distance of the evaluator's 16-d standardised features, samples vs the
  held-out "reference" split (real images).
- class accuracy: the evaluator's class prediction equals the conditioning class.
- diversity: mean pairwise feature distance within a class, divided by the same for real images
  (1.0 = as varied as real data; lower = mode collapse).
- precision / recall (k=3) in the same feature space.
The floor is the VQ reconstruction of real images: no generator can beat the tokenizer.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from core import paths
from core.demo import configs
from core.eval import metrics as M
from core.eval.sampling import sample_seed


@lru_cache(maxsize=4)
def _evaluator(path: str):
    from core.demo.evaluator import load_evaluator

    return load_evaluator(path)


@torch.no_grad()
def features_of(ev, images: torch.Tensor, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    feats, preds = [], []
    for lo in range(0, images.shape[0], batch):
        x = images[lo:lo + batch]
        f = ev.features(x)
        feats.append(f.double().numpy())
        preds.append(ev.logits(x).argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


@lru_cache(maxsize=4)
def reference_features(evaluator_path: str, count: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    from core.demo.shapes import images_tensor

    ev = _evaluator(evaluator_path)
    x, y = images_tensor("reference", range(count), ev.config.image_size)  # the domain at the evaluator's size
    f, _ = features_of(ev, x)
    return f, y.numpy()


def diversity(feats: np.ndarray, labels: np.ndarray, per_class: int = 100) -> float:
    """Mean within-class pairwise L2 distance (first `per_class` items of each class)."""
    vals = []
    for c in np.unique(labels):
        f = feats[labels == c][:per_class]
        if len(f) < 2:
            continue
        d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
        vals.append(d[np.triu_indices(len(f), 1)].mean())
    return float(np.mean(vals))


@torch.no_grad()
def sample(demo_dir: Path, weights: Optional[str | Path], n: int, sampling_seed: int, cfg_scale: float = 1.0,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, batch: int = 500) -> tuple[torch.Tensor, np.ndarray]:
    from core.models.generate import generate_images

    gen, tok = _models(str(demo_dir), str(weights) if weights else None)
    labels = torch.arange(n) % gen.config.num_classes
    seeds = [sample_seed(sampling_seed, i) for i in range(n)]
    imgs = generate_images(gen, tok, labels, seeds=seeds, batch_size=batch, cfg_scale=cfg_scale,
                           temperature=temperature, top_k=top_k, top_p=top_p)
    return imgs, labels.numpy()


@lru_cache(maxsize=4)
def _models(demo_dir: str, weights: Optional[str]):
    from core.models.load import load_pair

    if Path(demo_dir) != paths.DEMO_DIR:
        raise ValueError(f"demo models are read from {paths.DEMO_DIR}; set VAPI_DEMO_DIR to use {demo_dir}")
    return load_pair("demo-c2i", weights)


@dataclass
class _Reference:
    """The evaluator and the real reference features every demo report measures against."""

    ev: object
    feats: np.ndarray  # [R, D]
    labels: np.ndarray  # [R] class ids
    mu: np.ndarray
    sigma: np.ndarray
    diversity: float  # of the real features (the normaliser of a sample's diversity)


def _reference(demo_dir: Path, reference_count: int) -> _Reference:
    ev_path = str(demo_dir / configs.read_manifest(demo_dir)["evaluator"]["file"])
    feats, labels = reference_features(ev_path, reference_count)
    mu, sigma = M.feature_stats(feats)
    return _Reference(_evaluator(ev_path), feats, labels, mu, sigma, diversity(feats, labels))


def _feature_row(ref: _Reference, images: torch.Tensor, labels: np.ndarray, accuracy_key: str) -> dict:
    """demo-FID, accuracy of the class `labels`, diversity, precision and recall of one seed's samples."""
    f, pred = features_of(ref.ev, images)
    mu, sig = M.feature_stats(f)
    pr = M.precision_recall(ref.feats[: max(len(labels), 1000)], f, k=3)
    return {"demo_fid": M.frechet_distance(mu, sig, ref.mu, ref.sigma), accuracy_key: float((pred == labels).mean()),
            "diversity": diversity(f, labels) / ref.diversity, "precision": pr.precision, "recall": pr.recall}


def _summary(per_seed: list[dict], **fields) -> dict:
    """`fields`, the per-seed rows, and each number's mean and (sample) std over the seeds."""
    out = {**fields, "per_seed": per_seed}
    for k in per_seed[0]:
        vals = [p[k] for p in per_seed]
        out[k] = statistics.fmean(vals)
        out[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def evaluate_checkpoint(demo_dir: Path | None = None, weights: Optional[str | Path] = None, num_samples: int = 1000,
                        sample_seeds: Sequence[int] = (0, 1, 2), cfg_scale: float = 1.0, temperature: float = 1.0,
                        reference_count: int = 5000, log: Callable[[str], None] = print) -> dict:
    """Metrics of one generator (weights=None: the committed base) as mean ± std over sampling seeds."""
    demo_dir = Path(demo_dir or paths.DEMO_DIR)
    ref = _reference(demo_dir, reference_count)
    per_seed = []
    for s in sample_seeds:
        imgs, labels = sample(demo_dir, weights, num_samples, s, cfg_scale, temperature)
        per_seed.append(_feature_row(ref, imgs, labels, "class_accuracy"))
        log(f"  seed {s}: " + ", ".join(f"{k} {v:.4f}" for k, v in per_seed[-1].items()))
    return _summary(per_seed, num_samples=num_samples, sample_seeds=list(sample_seeds), cfg_scale=cfg_scale,
                    temperature=temperature, weights=str(weights) if weights else "base")


@torch.no_grad()
def tokenizer_floor(demo_dir: Path | None = None, count: int = 5000, reference_count: int = 5000) -> dict:
    """demo-FID and accuracy of VQ reconstructions of real held-out images (the best any generator can do)."""
    from core.demo.shapes import images_tensor
    from core.models.load import load_tokenizer

    demo_dir = Path(demo_dir or paths.DEMO_DIR)
    ev_path = str(demo_dir / configs.read_manifest(demo_dir)["evaluator"]["file"])
    ref_f, _ = reference_features(ev_path, reference_count)
    tok = load_tokenizer("demo-vq")
    x, y = images_tensor("val", range(count), tok.image_size)
    rec = torch.cat([tok.decode(tok.encode(x[i:i + 500])) for i in range(0, count, 500)]).clamp(-1, 1)
    f, pred = features_of(_evaluator(ev_path), rec)
    return {"demo_fid": M.fid_from_features(f, ref_f), "class_accuracy": float((pred == y.numpy()).mean())}


# ----------------------------------------------------------------------------- the demo T2I
@lru_cache(maxsize=4)
def _t2i_models(demo_dir: str, weights: Optional[str]):
    from core.eval.sampling import load_sampler

    if Path(demo_dir) != paths.DEMO_DIR:
        raise ValueError(f"demo models are read from {paths.DEMO_DIR}; set VAPI_DEMO_DIR to use {demo_dir}")
    return load_sampler("demo-t2i", weights)


@torch.no_grad()
def sample_prompts(demo_dir: Path, weights: Optional[str | Path], prompt_list: Sequence[str], n: int,
                   sampling_seed: int, cfg_scale: float = 1.0, temperature: float = 1.0,
                   batch: int = 500) -> tuple[torch.Tensor, list[str]]:
    """n samples of the demo T2I, sample i showing prompt_list[i % P], seeded by (sampling seed, i)."""
    from core.models.generate import generate_images

    sampler = _t2i_models(str(demo_dir), str(weights) if weights else None)
    chosen = [prompt_list[i % len(prompt_list)] for i in range(n)]
    imgs = []
    for lo in range(0, n, batch):
        cond, mask = sampler.encode_prompts(chosen[lo:lo + batch])
        seeds = [sample_seed(sampling_seed, i) for i in range(lo, min(lo + batch, n))]
        imgs.append(generate_images(sampler.policy, sampler.tokenizer, cond, cond_mask=mask, seeds=seeds,
                                    batch_size=batch, cfg_scale=cfg_scale, temperature=temperature))
    return torch.cat(imgs), chosen


def evaluate_t2i(demo_dir: Path | None = None, weights: Optional[str | Path] = None, num_samples: int = 1000,
                 sample_seeds: Sequence[int] = (0, 1, 2), cfg_scale: float = 1.0, temperature: float = 1.0,
                 reference_count: int = 5000, log: Callable[[str], None] = print) -> dict:
    """The demo T2I (weights=None: the committed base) as mean ± std over sampling seeds:

    - prompt adherence on the held-out prompt set (core.demo.prompts; combinations never in training):
      `adherence` overall and `adherence_<category>` per category (core.demo.adherence);
    - demo-FID, precision, recall and diversity of samples prompted with the canonical captions of the first
      `num_samples` "reference" scenes, against the reference features (the same as the C2I report), and
      `shape_accuracy` (the shape the caption names)."""
    from core.demo import adherence
    from core.demo import prompts as P

    demo_dir = Path(demo_dir or paths.DEMO_DIR)
    ref = _reference(demo_dir, reference_count)
    fid_prompts = [P.caption_of(P.scene_attrs("reference", i)) for i in range(num_samples)]
    fid_labels = np.arange(num_samples) % configs.gpt_config(demo_dir)["num_classes"]  # reference scene i is class i % 10
    held = list(P.heldout_prompts())
    per_seed = []
    for s in sample_seeds:
        imgs, _ = sample_prompts(demo_dir, weights, fid_prompts, num_samples, s, cfg_scale, temperature)
        row = _feature_row(ref, imgs, fid_labels, "shape_accuracy")
        imgs, chosen = sample_prompts(demo_dir, weights, held, num_samples, s, cfg_scale, temperature)
        adh = adherence.score(adherence.predict(ref.ev, imgs), chosen)
        row["adherence"] = adh["overall"]
        row.update({f"adherence_{c}": v for c, v in adh["per_category"].items()})
        per_seed.append(row)
        log(f"  seed {s}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    return _summary(per_seed, num_samples=num_samples, sample_seeds=list(sample_seeds), cfg_scale=cfg_scale,
                    temperature=temperature, weights=str(weights) if weights else "base", heldout_prompts=len(held))
