"""The demo-domain evaluator: a small CNN that scores generated demo samples.

It gives the demo two numbers for free-running samples: class accuracy (does the sample show the
conditioning class?) and demo-FID (Fréchet distance of its `features` against the held-out
"reference" split; the distance itself is in `core.eval.metrics`). It is trained only on the
"evaluator" split, checked on "val", and never used inside a training reward.

Design choices, measured on the 2-core dev machine (FD of n=1000 vs n=1000 "reference" images,
mean ± std over 15 pairs of disjoint sets, for evaluators trained with the defaults):

- Low-dimensional feature (default 16-d). FD between two real sets has a bias and a spread that grow
  with the dimension (the covariance term roughly as d²/n). Real vs real: 0.11–0.13 ± 0.02–0.03 at
  16-d (0.024 ± 0.004 at n=5000), 0.39 ± 0.10 at 32-d, 0.88 ± 0.28 at 64-d (wider trunks; the
  64-d one without augmentation). Signal, at 16-d: one
  4×4 patch per image swapped for another image's patch (a wrong token) 0.20–0.25, two patches
  0.46–0.67, 20% of the classes replaced 1.25–1.41. A wrong token is ~5σ above real-vs-real at
  16-d, ~4σ at 32-d, ~2.5σ at 64-d; 8-d was better still but lost class accuracy (0.96).
- Standardised feature: the bottleneck ends in a BatchNorm without affine parameters, calibrated on
  clean real images, so each feature has mean 0 and variance 1 on real images. FD is then in units
  of real-feature variance, comparable between evaluator checkpoints.
- Light blur / noise augmentation: without it, class accuracy on 2× down-up-sampled (blurred) real
  images was 0.65–0.76, so tokenizer smoothing would read as wrong classes; with it, 0.98–0.99.
  The feature then also moves less under blur (FD 0.30–0.40 instead of 2.9), which lowers the
  tokenizer floor of demo-FID while local errors (wrong tokens) stay visible.
- Multi-task heads: besides the class, linear heads read colour, background, count and position
  from the same feature. A classifier trained on the class alone has no reason to keep them, and
  its FD would be blind to wrong colours, counts or layouts; these heads keep that information in
  the feature (and give attribute accuracies for the text-conditional variant).
- Coarse spatial pooling (4×4 instead of global) so position survives into the feature.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from core.demo import shapes
from core.errors import CheckpointError, ConfigError, DataError

FORMAT = "vapi-demo-evaluator/1"  # safetensors metadata "format"; bump when the layout changes
# Attribute heads: name -> the values `shapes.render(...).attrs[name]` takes, in head-output order.
ATTRIBUTES: dict[str, tuple] = {
    "color": shapes.COLOR_NAMES,
    "background": shapes.BACKGROUND_NAMES,
    "count": shapes.COUNTS,
    "position": shapes.POSITIONS,
}


@dataclass(frozen=True)
class EvaluatorConfig:
    channels: tuple[int, ...] = (16, 32, 64, 64)  # a conv stage each, 2× down between: 32px -> 4px
    feature_dim: int = 16  # FD noise grows ~d²/n; 16-d keeps FD(real, real') small at n=1000
    hidden_dim: int = 128  # MLP between the pooled map and the feature bottleneck
    image_size: int = 32  # the demo domain's size; inputs of another size are rejected
    pooled_size: int = 4  # spatial grid kept after the trunk (position must survive pooling)
    # attributes also read by a linear head on the (standardised) pooled map instead of the 16-d feature;
    # `read` uses them. Position: the 16-d bottleneck caps it at ~0.95, the map reads it at ~0.97 (fit_map_head)
    map_heads: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.channels or any(not isinstance(c, int) or c <= 0 for c in self.channels):
            raise ConfigError("channels", f"must be a non-empty tuple of positive ints, got {self.channels!r}")
        for name in ("feature_dim", "hidden_dim", "image_size", "pooled_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(name, f"must be a positive int, got {value!r}")
        unknown = [n for n in self.map_heads if n not in ATTRIBUTES]
        if unknown:
            raise ConfigError("map_heads", f"unknown attribute {unknown[0]!r}; one of {', '.join(ATTRIBUTES)}")
        final_size = self.image_size // 2 ** (len(self.channels) - 1)
        if final_size < self.pooled_size:
            raise ConfigError(
                "channels",
                f"{len(self.channels)} stages shrink {self.image_size}px inputs to {final_size}px, below "
                f"pooled_size={self.pooled_size}; use fewer stages or a smaller pooled_size",
            )


class DemoEvaluator(nn.Module):
    """CNN: conv stages -> 4×4 average pool -> MLP -> standardised feature [B, D] -> linear heads."""

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(config.channels):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
            in_ch = out_ch
        self.trunk = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(config.pooled_size)
        self.neck = nn.Sequential(
            nn.Linear(in_ch * config.pooled_size**2, config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, config.feature_dim),
            nn.BatchNorm1d(config.feature_dim, affine=False),  # eval mode: mean 0, var 1 on real data
        )
        self.class_head = nn.Linear(config.feature_dim, shapes.NUM_CLASSES)
        self.attribute_heads = nn.ModuleDict(
            {name: nn.Linear(config.feature_dim, len(values)) for name, values in ATTRIBUTES.items()}
        )
        map_dim = in_ch * config.pooled_size**2
        self.map_heads = nn.ModuleDict({  # standardise the pooled map, then linear
            name: nn.Sequential(nn.BatchNorm1d(map_dim, affine=False), nn.Linear(map_dim, len(ATTRIBUTES[name])))
            for name in config.map_heads})

    def _check(self, images: Tensor) -> None:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise DataError(
                f"images: the demo evaluator takes [B, 3, {size}, {size}] in [-1, 1], got "
                f"{list(images.shape)}; resize samples to {size}px first"
            )

    def features(self, images: Tensor) -> Tensor:
        """images [B, 3, S, S] in [-1, 1] -> features [B, D] (the demo-FID space)."""
        self._check(images)
        x = self.trunk(images)  # [B, C, S', S']
        x = self.pool(x).flatten(1)  # [B, C * P * P]
        return self.neck(x)  # [B, D]

    def logits(self, images: Tensor) -> Tensor:
        """images [B, 3, S, S] in [-1, 1] -> class logits [B, 10]."""
        return self.class_head(self.features(images))

    def attribute_logits(self, images: Tensor) -> dict[str, Tensor]:
        """images -> {attribute: logits [B, len(ATTRIBUTES[attribute])]}."""
        feats = self.features(images)  # [B, D]
        return {name: head(feats) for name, head in self.attribute_heads.items()}

    def read(self, images: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """images -> (features [B, D], class logits [B, 10], attribute logits), the map heads standing in for the
        feature heads of their attributes: what prompt adherence reads."""
        self._check(images)
        pooled = self.pool(self.trunk(images)).flatten(1)  # [B, C * P * P]
        feats = self.neck(pooled)
        class_logits, attr_logits = self.heads(feats)
        attr_logits.update({name: head(pooled) for name, head in self.map_heads.items()})
        return feats, class_logits, attr_logits

    def heads(self, feats: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Class logits [B, 10] and attribute logits from already computed features [B, D]."""
        return self.class_head(feats), {name: head(feats) for name, head in self.attribute_heads.items()}


def labelled_batch(split: str, indices: Sequence[int],
                   image_size: int = 32) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Images [B, 3, S, S] in [-1, 1], class labels [B] and attribute targets {name: [B] long}."""
    samples = [shapes.render(split, i, image_size) for i in indices]
    images = shapes.to_tensor(np.stack([s.image for s in samples]))  # [B, S, S, 3] -> [B, 3, S, S]
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)  # [B]
    targets = {
        name: torch.tensor([values.index(s.attrs[name]) for s in samples], dtype=torch.long)  # [B]
        for name, values in ATTRIBUTES.items()
    }
    return images, labels, targets


@torch.no_grad()
def evaluate(model: DemoEvaluator, split: str = "val", start: int = 0, count: int = 2000,
             batch_size: int = 500) -> dict[str, float]:
    """Accuracy of every head on indices start .. start + count - 1 of `split` (real images)."""
    if not isinstance(count, int) or count <= 0:
        raise ConfigError("count", f"must be a positive int, got {count!r}")
    was_training = model.training
    model.eval()
    correct = {"class": 0, **{name: 0 for name in ATTRIBUTES}}
    for lo in range(start, start + count, batch_size):
        images, labels, targets = labelled_batch(split, range(lo, min(lo + batch_size, start + count)),
                                                 model.config.image_size)
        class_logits, attr_logits = model.heads(model.features(images))
        correct["class"] += int((class_logits.argmax(1) == labels).sum())
        for name, logits in attr_logits.items():
            correct[name] += int((logits.argmax(1) == targets[name]).sum())
    model.train(was_training)
    return {f"{name}_accuracy": n / count for name, n in correct.items()}


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Light, label-preserving degradations like a tokenizer's: blur and pixel noise.

    Half the images are blended towards a 2× down-up-sampled copy with a uniform weight in [0, 1];
    half get Gaussian noise with a standard deviation uniform in [0, 0.04]. Colours and geometry are
    untouched (they are labels).
    """
    per_image = (images.shape[0], 1, 1, 1)
    blurred = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="bilinear", align_corners=False)
    weight = torch.rand(per_image, generator=generator) * (torch.rand(per_image, generator=generator) < 0.5)
    sigma = 0.04 * torch.rand(per_image, generator=generator) * (torch.rand(per_image, generator=generator) < 0.5)
    noise = torch.randn(images.shape, generator=generator)  # [B, 3, S, S]
    return (images + weight * (blurred - images) + sigma * noise).clamp(-1.0, 1.0)


def _lr_factor(step: int, steps: int) -> float:
    """5% linear warm-up, then cosine decay to 0."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_evaluator(steps: int = 1000, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                    image_size: int = 32, log: Callable[[str], None] = print,
                    config: EvaluatorConfig | None = None, val_count: int = 2000,
                    attribute_weight: float = 0.2, augment_data: bool = True) -> tuple[DemoEvaluator, dict]:
    """Train on the "evaluator" split (fresh images every step), report accuracies on "val".

    Step t reads indices [t * batch_size, (t + 1) * batch_size) of the split, so the data stream is
    fixed and `seed` sets the initialisation and the augmentation; the same seed gives the same
    weights on the same machine and thread count. AdamW, 5% linear warm-up, cosine decay to 0. The
    feature standardisation is calibrated on clean images at the end (`calibrate_features`).

    Measured on the 2-core dev machine, one torch thread, defaults: 1000 steps in 25–46 s, val
    accuracy 0.999–1.0 over 5 runs (3 seeds). On a machine shared with other jobs one thread was
    3× faster than two.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("val_count", val_count)):
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(name, f"must be a positive int, got {value!r}")
    if not lr > 0:
        raise ConfigError("lr", f"must be > 0, got {lr!r}")
    if not attribute_weight >= 0:
        raise ConfigError("attribute_weight", f"must be >= 0, got {attribute_weight!r}")
    config = config or EvaluatorConfig(image_size=image_size)
    if config.image_size != image_size:
        raise ConfigError("image_size", f"{image_size} differs from config.image_size={config.image_size}")
    torch.manual_seed(seed)
    model = DemoEvaluator(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: _lr_factor(t, steps))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start_time = time.perf_counter()
    loss_value = float("nan")
    for step in range(steps):
        images, labels, targets = labelled_batch("evaluator", range(step * batch_size, (step + 1) * batch_size),
                                                 image_size)
        if augment_data:
            images = augment(images, generator)
        class_logits, attr_logits = model.heads(model.features(images))
        loss = F.cross_entropy(class_logits, labels)
        loss = loss + attribute_weight * sum(F.cross_entropy(attr_logits[n], targets[n]) for n in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = loss.item()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log(f"evaluator step {step + 1}/{steps} loss {loss_value:.4f} "
                f"({time.perf_counter() - start_time:.0f}s)")
    calibrate_features(model)
    train_seconds = time.perf_counter() - start_time
    accuracies = evaluate(model, "val", 0, val_count)
    metrics = {
        "val_accuracy": accuracies["class_accuracy"],
        **{f"val_{k}": v for k, v in accuracies.items() if k != "class_accuracy"},
        "val_count": val_count,
        "final_loss": loss_value,
        "train_seconds": train_seconds,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "attribute_weight": attribute_weight,
        "augment_data": augment_data,
    }
    log(f"evaluator: val accuracy {metrics['val_accuracy']:.4f} after {steps} steps, {train_seconds:.0f}s")
    return model, metrics


def fit_map_head(model: DemoEvaluator, name: str, count: int = 40_000, l2: float = 1e-3, max_iter: int = 400,
                 seed: int = 0, start: int = 500_000, val_count: int = 2000,
                 log: Callable[[str], None] = print) -> tuple[DemoEvaluator, dict]:
    """A copy of `model` with a map head for attribute `name` fitted on the frozen trunk (nothing else changes:
    features, demo-FID and the other heads stay the same). Data: `count` clean and `count` augmented (as in
    training) "evaluator" split scenes from `start`, after the trunk's own training stream; the head is
    multinomial logistic regression on the standardised pooled map with an L2 penalty, fitted by full-batch
    L-BFGS. Measured for position (defaults, 2 threads): val accuracy 0.966 (the 16-d feature head: 0.947),
    about 2.5 min. Returns (model, metrics)."""
    if name not in ATTRIBUTES:
        raise ConfigError("name", f"unknown attribute {name!r}; one of {', '.join(ATTRIBUTES)}")
    config = EvaluatorConfig(**{**asdict(model.config), "map_heads": tuple(sorted(set(model.config.map_heads) | {name}))})
    out = DemoEvaluator(config)
    out.load_state_dict(model.state_dict(), strict=False)
    out.eval()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    maps, targets = [], []
    with torch.no_grad():
        for offset, augmented in ((0, False), (count, True)):
            for lo in range(start + offset, start + offset + count, 2000):
                images, _, t = labelled_batch("evaluator", range(lo, min(lo + 2000, start + offset + count)), config.image_size)
                maps.append(out.pool(out.trunk(augment(images, generator) if augmented else images)).flatten(1))
                targets.append(t[name])
    x, y = torch.cat(maps), torch.cat(targets)
    head = out.map_heads[name]
    head[0].running_mean.copy_(x.mean(0))
    head[0].running_var.copy_(x.var(0))
    x = head[0](x)  # standardised (eval-mode BatchNorm: the statistics just set)
    linear = head[1]
    linear.reset_parameters()
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    loss = float(opt.step(closure))
    out.eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, val_count, 500):
            images, _, t = labelled_batch("val", range(lo, min(lo + 500, val_count)), config.image_size)
            correct += int((out.read(images)[2][name].argmax(1) == t[name]).sum())
    metrics = {f"val_{name}_map_accuracy": correct / val_count, f"{name}_map_head": {
        "count": 2 * count, "l2": l2, "max_iter": max_iter, "final_loss": loss, "seconds": time.perf_counter() - t0}}
    log(f"map head {name}: val accuracy {correct / val_count:.4f} ({time.perf_counter() - t0:.0f}s)")
    return out, metrics


@torch.no_grad()
def calibrate_features(model: DemoEvaluator, count: int = 2000, batch_size: int = 500) -> None:
    """Set the feature BatchNorm's statistics to those of clean "evaluator" images; eval mode after.

    Training updates them on augmented batches; after this, `features` of real images have mean 0
    and variance 1 per dimension (up to the sampling error of `count` images).
    """
    model.eval()
    standardise = model.neck[-1]
    pre = torch.cat([
        model.neck[:-1](model.pool(model.trunk(
            shapes.images_tensor("evaluator", range(lo, min(lo + batch_size, count)), model.config.image_size)[0]
        )).flatten(1))  # [b, D]
        for lo in range(0, count, batch_size)
    ])  # [count, D]
    standardise.running_mean.copy_(pre.mean(0))
    standardise.running_var.copy_(pre.var(0))


def save_evaluator(model: DemoEvaluator, path: str | Path, metrics: dict | None = None) -> None:
    """Write weights (eval-mode state dict) to safetensors; config and metrics go in its metadata."""
    metadata = {"format": FORMAT, "config": json.dumps(asdict(model.config))}
    if metrics is not None:
        metadata["metrics"] = json.dumps(metrics)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def load_evaluator(path: str | Path) -> DemoEvaluator:
    """Read a `save_evaluator` file; returns the model in eval mode. Strict: every key must match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such evaluator file; train one with train_evaluator() and "
                              f"save_evaluator(), or fix the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); re-save the evaluator") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a demo evaluator (metadata format {metadata.get('format')!r}, "
                              f"expected {FORMAT!r})")
    try:
        raw = json.loads(metadata["config"])
        config = EvaluatorConfig(**{**raw, "channels": tuple(raw["channels"]), "map_heads": tuple(raw.get("map_heads", ()))})
    except (KeyError, TypeError, json.JSONDecodeError, ConfigError) as err:
        raise CheckpointError(f"{path}: evaluator config in the metadata is unreadable ({err})") from None
    model = DemoEvaluator(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the stored config ({err})") from None
    return model.eval()


def read_metrics(path: str | Path) -> dict:
    """The metrics stored with a saved evaluator ({} if none were saved)."""
    model_file = Path(path)
    try:
        with safe_open(str(model_file), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{model_file}: not a readable safetensors file ({err})") from None
    return json.loads(metadata.get("metrics", "{}"))
