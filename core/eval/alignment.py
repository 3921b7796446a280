"""What alignment changed, per image: the views Compare shows and `python -m core compare` writes.

Three views of base vs aligned for the same conditions and seeds:

- "free": free-running samples (`core.models.generate`), the same uniforms for both models. They are
  samples of two distributions, not a before/after of one image: one differing token early in the
  sequence sends the rest down another path, so pairs are rarely alike.
- "teacher-forced": what VA-π optimises (core/vapi/objective.py). For a held-out real image I of the class,
  x* = Q(E(I)) (fp32, no autocast); each model gives its teacher-forced logits on x*; one token per
  position is drawn from softmax(logits / tau) by inverse CDF from ONE uniform tensor shared by both
  models (per row, from the row's seed), decoded and scored with the reward's terms (MSE; LPIPS
  where its VGG weights exist). The context is the clean x* (ξ = 0, the C2I setting; a run trained
  with ξ > 0 saw noisy contexts) and the condition is never dropped (training drops 10%). The draw
  is the rollout the reward scores (`objective.sample_groups` draws the same distribution; here the
  random numbers are common to both models, so a token differs only where the two distributions
  differ enough to move the inverse CDF).
- "prefix": both models continue the same prefix, the first k token rows of the base's free-running
  sample, with the same uniforms for the rest; a pair differs only in what each model does after
  the prefix (the base's continuation is its own sample again).

Each row also carries the pixel-difference heat map of its pair and, where a judge exists, each
image's score under it (the demo evaluator's probability of the row's class; CLIP score of the
prompt / class name where CLIP weights are on disk). `class_numbers` adds distribution-level numbers
per class (class accuracy and FD of a larger sample, several seeds, with `core.eval.verdict`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from core.errors import ConfigError

VIEWS = ("free", "teacher-forced", "prefix")
VIEW_TITLES = {
    "free": "free-running: samples of two distributions (same seeds), not one image before/after",
    "teacher-forced": "teacher-forced on held-out images: ground truth | base | aligned (the rollout VA-π scores)",
    "prefix": "shared prefix: both models continue the base's first k token rows",
}
MIN_SIDE_PX = 128  # small demo images are enlarged (nearest neighbour) to at least this size
CHANGED = (255, 0, 160)  # outline of tokens that differ between base and aligned
PREFIX_EDGE = (0, 160, 255)  # line under the shared prefix


# ----------------------------------------------------------------------------- sampling pieces
def reward_weights() -> dict[str, float]:
    """The reward terms shown with teacher-forced rows: MSE, plus LPIPS (VGG) where its weights exist."""
    from core.vapi.rewards import backbone_path

    return {"mse": 1.0, "lpips": 1.0} if backbone_path("vgg").is_file() else {"mse": 1.0}


def coupled_draw(logits: Tensor, u: Tensor, temperature: float) -> Tensor:
    """One token per position by inverse CDF of softmax(logits / tau). logits [B, N, V], u [B, N] -> [B, N].

    Two models given the same u draw the same token wherever their CDFs agree at u (common random
    numbers), and each draw is exactly Cat(softmax(logits / tau)) per position, as the rollout's."""
    from core.models.generate import pick

    B, N, V = logits.shape
    tok, _ = pick(logits.reshape(B * N, V), u.reshape(B * N), temperature, 0, 1.0)
    return tok.view(B, N)


@dataclass
class TeacherForced:
    truth: Tensor  # I, [B, 3, H, W] in [-1, 1]
    target: Tensor  # x*, [B, N]
    tokens: dict[str, Tensor]  # {"base", "aligned"}: [B, N] drawn with the same uniforms
    images: dict[str, Tensor]  # {"base", "aligned"}: decoded, [B, 3, H, W]
    distances: dict[str, dict[str, Tensor]]  # {"base"|"aligned": {term: [B]}} (lower is better)
    rewards: dict[str, Tensor]  # {"base"|"aligned": [B]}, r = -sum w_k d_k


@torch.no_grad()
def teacher_forced(policies: dict, tokenizer, images: Tensor, cond: Tensor, seeds: Sequence[int], *,
                   temperature: float = 1.0, weights: Optional[dict] = None, cond_mask: Optional[Tensor] = None,
                   chunk: int = 64) -> TeacherForced:
    """The teacher-forced rollout of each policy ({"base": ..., "aligned": ...}) on the images' own tokens."""
    from core.models.generate import draw_uniforms
    from core.vapi.objective import score_samples

    if len(seeds) != images.shape[0]:
        raise ConfigError("seeds", f"got {len(seeds)} seeds for {images.shape[0]} images")
    weights = weights or reward_weights()
    device = images.device
    with torch.autocast(device_type=device.type, enabled=False):
        target = tokenizer.encode(images.float())  # x* in fp32, as the trainer
    u = draw_uniforms(target.shape[0], target.shape[1], device, seeds=seeds).float()  # shared by both models
    tokens, decoded, dist, rew = {}, {}, {}, {}
    for name, policy in policies.items():
        logits = policy.teacher_forced_logits(cond, target[:, :-1], cond_mask=cond_mask)  # [B, N, V]
        tokens[name] = coupled_draw(logits, u, temperature)
        r, d = score_samples(tokenizer, tokens[name][:, None], images, weights, chunk)  # [B, 1]
        rew[name], dist[name] = r[:, 0], {k: v[:, 0] for k, v in d.items()}
        decoded[name] = torch.cat([tokenizer.decode(tokens[name][s:s + chunk]).float().clamp(-1, 1)
                                   for s in range(0, target.shape[0], chunk)])
    return TeacherForced(images, target, tokens, decoded, dist, rew)


@dataclass
class Continuations:
    prefix_len: int  # tokens shared (k rows x grid width)
    tokens: dict[str, Tensor]  # {"base", "aligned"}: [B, N]
    images: dict[str, Tensor]


@torch.no_grad()
def prefix_continuations(policies: dict, tokenizer, cond: Tensor, seeds: Sequence[int], prefix_rows: int, *,
                         cond_mask: Optional[Tensor] = None, **sampling) -> Continuations:
    """Both policies continue the first `prefix_rows` token rows of the base's free-running sample."""
    from core.models.generate import decode_tokens, generate_tokens

    base = policies["base"]
    h = w = int(round(base.num_tokens ** 0.5))
    if h * w != base.num_tokens:
        raise ConfigError("prefix_rows", f"{base.num_tokens} tokens are not a square grid")
    if not 0 <= int(prefix_rows) <= h:
        raise ConfigError("prefix_rows", f"must be between 0 and {h} (the token grid has {h} rows), got {prefix_rows}")
    P = int(prefix_rows) * w
    free = generate_tokens(base, cond, seeds=seeds, cond_mask=cond_mask, **sampling)
    tokens, images = {}, {}
    for name, policy in policies.items():
        tokens[name] = generate_tokens(policy, cond, seeds=seeds, cond_mask=cond_mask, prefix=free[:, :P], **sampling)
        images[name] = decode_tokens(tokenizer, tokens[name])
    return Continuations(P, tokens, images)


@torch.no_grad()
def free_running(policies: dict, tokenizer, cond: Tensor, seeds: Sequence[int], *,
                 cond_mask: Optional[Tensor] = None, **sampling) -> Continuations:
    """Free-running samples of each policy with the same seeds (prefix length 0)."""
    from core.models.generate import decode_tokens, generate_tokens

    tokens = {n: generate_tokens(p, cond, seeds=seeds, cond_mask=cond_mask, **sampling) for n, p in policies.items()}
    return Continuations(0, tokens, {n: decode_tokens(tokenizer, t) for n, t in tokens.items()})


# ----------------------------------------------------------------------------- pictures
def enlarge(arr: np.ndarray) -> np.ndarray:
    """[..., H, W, 3] uint8 enlarged by an integer factor (nearest neighbour) to at least MIN_SIDE_PX."""
    scale = max(1, -(-MIN_SIDE_PX // arr.shape[-2]))
    return arr.repeat(scale, axis=-3).repeat(scale, axis=-2) if scale > 1 else arr


def outline_cells(image: np.ndarray, mask: np.ndarray, color=CHANGED) -> np.ndarray:
    """A copy of image [H, W, 3] with a 1-px outline around each token cell where mask [h, w] is True."""
    out = image.copy()
    h, w = mask.shape
    ch, cw = image.shape[0] // h, image.shape[1] // w
    for r, c in zip(*np.nonzero(mask)):
        y0, x0, y1, x1 = r * ch, c * cw, (r + 1) * ch - 1, (c + 1) * cw - 1
        out[y0, x0:x1 + 1] = out[y1, x0:x1 + 1] = color
        out[y0:y1 + 1, x0] = out[y0:y1 + 1, x1] = color
    return out


def mark_prefix(image: np.ndarray, rows: int, grid_h: int, color=PREFIX_EDGE) -> np.ndarray:
    """A copy of image with a 2-px line under the first `rows` token rows (the shared prefix)."""
    if rows <= 0 or rows >= grid_h:
        return image
    out = image.copy()
    y = rows * image.shape[0] // grid_h
    out[max(0, y - 1):y + 1] = color
    return out


HEAT_GAMMA = 0.5  # the heat map's colour is at |Δ|^0.5 along its scale: a typical |Δ| of 0.05 is red, not black
HEAT_STOPS = ((0.0, "#000000"), (1 / 3, "#ff0000"), (2 / 3, "#ffff00"), (1.0, "#ffffff"))  # position -> colour


def heat_position(d: float) -> float:
    """Where a mean |Δ| over RGB (0..1) sits on the heat map's colour scale (0..1)."""
    return float(np.clip(d, 0.0, 1.0)) ** HEAT_GAMMA


def diff_heatmap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| averaged over RGB as a heat map [H, W, 3] uint8: black (equal) -> red -> yellow -> white (255 apart),
    the colour at |Δ|^HEAT_GAMMA along that scale (HEAT_STOPS; the Compare tab draws it under the gallery)."""
    d = (np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=-1) / 255.0) ** HEAT_GAMMA  # [H, W] in [0, 1]
    r = np.clip(3 * d, 0, 1)
    g = np.clip(3 * d - 1, 0, 1)
    bl = np.clip(3 * d - 2, 0, 1)
    return (np.stack([r, g, bl], axis=-1) * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- judges
@dataclass
class Judge:
    name: str  # what the score is, for captions and the JSON
    score: Callable[[Tensor, list], Tensor]  # (images [B, 3, H, W] in [-1, 1], conditions) -> [B]
    # per image, what the score is made of ({attribute: seen as asked}), for a judge whose score is a share
    parts: Optional[Callable[[Tensor, list], list[dict]]] = None


def demo_judge(path: Optional[str] = None, device="cpu") -> Judge:
    """The demo evaluator's probability of the row's class (never used in a reward)."""
    from core.eval.inputs import build_metric_extractor

    ext = build_metric_extractor("demo", path, device)

    def score(images: Tensor, classes: list) -> Tensor:
        logits = ext.extract(images).logits  # [B, 10]
        return torch.softmax(logits, -1)[torch.arange(len(classes)), torch.tensor(classes)]

    return Judge("P(class) under the demo evaluator", score)


def clip_judge(names: Sequence[str], path: Optional[str] = None, device="cpu", template: str = "a photo of a {}") -> Judge:
    """CLIP score (100 x cosine) of each image against its prompt (or `template` of its class name)."""
    from core.eval.inputs import build_metric_extractor

    clip = build_metric_extractor("clip", path, device)

    def score(images: Tensor, conds: list) -> Tensor:
        texts = [c if isinstance(c, str) else template.format(names[c]) for c in conds]
        img = torch.nn.functional.normalize(clip.extract(images).features, dim=-1)
        txt = torch.nn.functional.normalize(clip.text_features(texts), dim=-1)
        return 100 * (img * txt.to(img.device)).sum(-1)

    return Judge("CLIP score", score)


def adherence_judge(device="cpu") -> Judge:
    """Prompt adherence of each image under the demo evaluator: the fraction of the attributes its prompt names
    (shape, colour, count, position, background) that the evaluator reads off the image (NaN when the prompt
    names none). Never used in a reward."""
    from core import paths
    from core.demo import adherence, configs, prompts
    from core.demo.evaluator import load_evaluator

    ev = load_evaluator(paths.DEMO_DIR / configs.read_manifest()["evaluator"]["file"]).to(device)

    def parts(images: Tensor, conds: list) -> list[dict]:
        seen = adherence.predict(ev, images.to(device).float())
        return [adherence.check(prompts.parse_prompt(prompt), found) for found, prompt in zip(seen, conds)]

    def score(images: Tensor, conds: list) -> Tensor:
        return torch.tensor([sum(r.values()) / len(r) if r else float("nan") for r in parts(images, conds)])

    return Judge("prompt adherence under the demo evaluator (share of the prompt's attributes seen)", score, parts)


def find_judge(preset: str, names: Sequence[str], device="cpu") -> tuple[Optional[Judge], str]:
    """(judge, why) — the demo evaluator for embedded presets (class probability; prompt adherence for the demo
    T2I), CLIP where its weights are cached, else None."""
    from core.errors import CheckpointError, MissingWeightsError
    from core.models import registry

    try:
        p = registry.get_generator(preset)
        if p.is_demo and p.task == "t2i":
            return adherence_judge(device=device), "demo evaluator (prompt adherence)"
        if p.is_demo:
            return demo_judge(device=device), "demo evaluator"
        return clip_judge(names, device=device), "CLIP"
    except (MissingWeightsError, CheckpointError, OSError) as e:
        return None, f"no judge: {str(e).splitlines()[0][:200]}"


# ----------------------------------------------------------------------------- rows
@dataclass
class Row:
    caption: str
    condition: str  # class name or prompt
    seed: int
    panels: dict[str, np.ndarray]  # ordered: ["truth",] "base", "aligned", "difference"; uint8 [H, W, 3], enlarged
    scores: dict = field(default_factory=dict)  # JSON-able numbers of the row


@dataclass
class ViewResult:
    view: str
    rows: list[Row]
    title: str
    judge: Optional[str]  # what the judge score is, or why there is none
    reward_terms: list[str] = field(default_factory=list)
    prefix_rows: int = 0

    def to_json(self) -> dict:
        return {"view": self.view, "title": self.title, "judge": self.judge, "reward_terms": self.reward_terms,
                "prefix_rows": self.prefix_rows,
                "rows": [{"caption": r.caption, "condition": r.condition, "seed": r.seed, "scores": r.scores,
                          "files": {k: f"{i:03d}_{k}.png" for k in r.panels}} for i, r in enumerate(self.rows)]}


def _grid_hw(n: int) -> tuple[int, int]:
    h = int(round(n ** 0.5))
    return (h, n // h) if h * (n // h) == n else (1, n)


def _first_difference(a: Tensor, b: Tensor) -> Optional[int]:
    diff = torch.nonzero(a != b)
    return int(diff[0]) if len(diff) else None


def build_rows(view: str, result, conds: list, labels: list[str], seeds: list[int], judge: Optional[Judge],
               prefix_rows: int = 0) -> list[Row]:
    """The rows of a view from a TeacherForced / Continuations result (one row per condition x seed)."""
    from core.imaging import to_uint8

    tokens_b, tokens_a = result.tokens["base"], result.tokens["aligned"]
    gh, gw = _grid_hw(tokens_b.shape[1])
    pics = {n: enlarge(to_uint8(result.images[n])) for n in ("base", "aligned")}
    truth = enlarge(to_uint8(result.truth)) if view == "teacher-forced" else None
    judged, judged_parts = {}, {}
    if judge is not None:
        judged = {n: judge.score(result.images[n], conds).cpu() for n in ("base", "aligned")}
        if judge.parts is not None:
            judged_parts = {n: judge.parts(result.images[n], conds) for n in ("base", "aligned")}
        if truth is not None:
            judged["truth"] = judge.score(result.truth, conds).cpu()
    rows = []
    for i, (cond, label, seed) in enumerate(zip(conds, labels, seeds)):
        changed = (tokens_b[i] != tokens_a[i]).view(gh, gw).cpu().numpy()
        base_img, aligned_img = pics["base"][i], pics["aligned"][i]
        scores: dict = {"changed_tokens": int(changed.sum()), "tokens": int(changed.size),
                        "first_difference": _first_difference(tokens_b[i], tokens_a[i]),
                        "identical": bool(np.array_equal(base_img, aligned_img)),
                        "pixel_mad": float(np.abs(base_img.astype(np.int16) - aligned_img.astype(np.int16)).mean() / 255)}
        panels: dict[str, np.ndarray] = {}
        if view == "teacher-forced":
            panels["truth"] = truth[i]
            for n in ("base", "aligned"):
                scores[n] = {**{k: float(v[i]) for k, v in result.distances[n].items()},
                             "reward": float(result.rewards[n][i]),
                             "token_match": float((result.tokens[n][i] == result.target[i]).float().mean())}
        else:
            scores["base"], scores["aligned"] = {}, {}
        for n in ("base", "aligned"):
            if n in judged:
                value = float(judged[n][i])
                scores[n]["judge"] = None if value != value else value  # None: nothing the judge can check
            if n in judged_parts:
                scores[n]["judge_parts"] = {k: bool(v) for k, v in judged_parts[n][i].items()}
        if "truth" in judged:
            scores["truth"] = {"judge": float(judged["truth"][i])}
        if view == "prefix":
            base_img, aligned_img = (mark_prefix(x, prefix_rows, gh) for x in (base_img, aligned_img))
        panels["base"] = outline_cells(base_img, changed) if view != "free" else base_img
        panels["aligned"] = outline_cells(aligned_img, changed) if view != "free" else aligned_img
        panels["difference"] = diff_heatmap(pics["base"][i], pics["aligned"][i])
        rows.append(Row(f"{label} · seed {seed}", label, seed, panels, scores))
    return rows


def caption_of(view: str, panel: str, row: Row, reward_terms: Sequence[str]) -> str:
    """A gallery caption for one panel: who it is and its numbers."""
    s = row.scores
    if panel == "difference":
        first = s["first_difference"]
        return (f"|base − aligned| · {row.caption} · {s['changed_tokens']}/{s['tokens']} tokens differ"
                + (f" (first at {first})" if first is not None else "") + f" · mean |Δ| {s['pixel_mad']:.3f}")
    parts = [panel if panel != "truth" else "ground truth", row.caption]
    own = s.get(panel, {})
    for term in reward_terms:
        if term in own:
            parts.append(f"{term} {own[term]:.4f}")
    if own.get("judge") is not None:
        parts.append(f"judge {own['judge']:.3f}")
    elif "judge" in own:
        parts.append("judge —")
    return " · ".join(parts)


def save_view(result: ViewResult, folder: str | Path) -> Path:
    """PNGs of every panel (`NNN_<panel>.png`) and scores.json in `folder`. Returns the JSON's path."""
    from core.imaging import save_png

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(result.rows):
        for name, arr in row.panels.items():
            save_png(arr, folder / f"{i:03d}_{name}.png")
    path = folder / "scores.json"
    path.write_text(json.dumps(result.to_json(), indent=2))
    return path


def held_out_images(real: str, classes: Sequence[int], per_class: int, image_size: int) -> tuple[Tensor, np.ndarray]:
    """Held-out real images of the classes, grouped by class in the order given (image j of class c is row
    c * per_class + j): "shapes" means the demo's val split (never trained on)."""
    from core.eval.inputs import real_images

    images, labels = real_images("shapes:val" if real == "shapes" else real, classes, per_class, image_size)
    rank = {c: i for i, c in enumerate(classes)}
    order = np.argsort([rank[int(y)] for y in labels], kind="stable")
    return images[torch.from_numpy(order)], labels[order]


def run_view(view: str, policies: dict, tokenizer, *, conds: list, labels: list[str], seeds: list[int],
             task: Optional[str], device, sampling: dict, prefix_rows: int = 2, real: Optional[str] = None,
             image_size: Optional[int] = None, judge: Optional[Judge] = None, judge_note: Optional[str] = None,
             encode_prompts=None) -> ViewResult:
    """One view for every (condition, seed): conds are class ids (c2i) or prompts (t2i)."""
    if view not in VIEWS:
        raise ConfigError("view", f"choose one of {', '.join(VIEWS)}, got {view!r}")
    row_conds = [c for c in conds for _ in seeds]
    row_labels = [lab for lab in labels for _ in seeds]
    row_seeds = [s for _ in conds for s in seeds]
    if task is None:
        cond, mask = torch.tensor(row_conds, device=device), None
    else:
        cond, mask = encode_prompts(row_conds)
        cond, mask = cond.to(device), (mask.to(device) if mask is not None else None)
    terms: list[str] = []
    if view == "teacher-forced":
        if task is not None:
            raise ConfigError("view", "the teacher-forced view needs held-out images of the condition: class-"
                                      "conditional models only; for prompts use the shared-prefix or free-running view")
        if not real:
            raise ConfigError("real", "the teacher-forced view needs held-out real images: 'shapes' for the demo, "
                                      "or an ImageNet-layout folder")
        # image j of class c pairs with seed j: one row per (class, seed), as the other views
        images, _ = held_out_images(real, conds, len(seeds), image_size)
        weights = reward_weights()
        terms = list(weights)
        out = teacher_forced(policies, tokenizer, images.to(device), cond, row_seeds,
                             temperature=sampling.get("temperature", 1.0) or 1.0, weights=weights)
    elif view == "prefix":
        out = prefix_continuations(policies, tokenizer, cond, row_seeds, prefix_rows, cond_mask=mask, **sampling)
    else:
        out = free_running(policies, tokenizer, cond, row_seeds, cond_mask=mask, **sampling)
    rows = build_rows(view, out, row_conds, row_labels, row_seeds, judge, prefix_rows if view == "prefix" else 0)
    title = VIEW_TITLES[view] + (f" (k = {prefix_rows} rows = {out.prefix_len} tokens)" if view == "prefix" else "")
    return ViewResult(view, rows, title, judge.name if judge is not None else judge_note, terms,
                      prefix_rows if view == "prefix" else 0)


# ----------------------------------------------------------------------------- per-class numbers
@torch.no_grad()
def class_numbers(policies: dict, tokenizer, classes: Sequence[int], names: Sequence[str], *, per_class: int,
                  seeds: Sequence[int], real: str, extractor, image_size: int, sampling: dict,
                  n_boot: int = 100) -> list[dict]:
    """Per class: class accuracy (demo evaluator) and FD of `per_class` free-running samples per seed
    against `per_class` held-out real images, base vs aligned, each with its spread and verdict."""
    from core.eval import verdict as V
    from core.eval.sampling import sample_seed
    from core.models.generate import generate_images

    device = next(policies["base"].parameters()).device
    rows = []
    real_x, real_y = held_out_images(real, classes, per_class, image_size)
    real_f = extractor.extract(real_x.to(device))
    for c in classes:
        feats: dict[str, list] = {"base": [], "aligned": []}
        correct: dict[str, list] = {"base": [], "aligned": []}
        for s in seeds:
            cond = torch.full((per_class,), int(c), device=device)
            row_seeds = [sample_seed(s, 1_000_000 * int(c) + j) for j in range(per_class)]
            for name, policy in policies.items():
                images = generate_images(policy, tokenizer, cond, seeds=row_seeds, **sampling)
                ext = extractor.extract(images)
                feats[name].append(ext.features.numpy())
                if ext.logits is not None:
                    correct[name].append((ext.logits.argmax(-1) == int(c)).numpy())
        real_c = real_f.features[torch.from_numpy(real_y) == int(c)].numpy()
        fd = V.compare_features(real_c, feats["base"], feats["aligned"], n_boot=n_boot, metrics=("fd",))["fd"]
        row = {"class": names[c], "fd": fd.to_dict()}
        if correct["base"]:
            row["accuracy"] = V.compare_indicators("accuracy", correct["base"], correct["aligned"], n_boot=n_boot).to_dict()
        rows.append(row)
    return rows
