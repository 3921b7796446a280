"""Evaluations as library calls and as background runs: FID/IS/precision/recall/CLIP of one model,
the embedding shift of base vs aligned, GenEval export, and a summary of all evaluations.

Background runs go through the run manager like training runs (a run folder, the worker, stop and
resume); the UI submits them with `submit_eval` / `submit_embeddings`, or directly::

    Launcher(store).submit(name, {"entry": EVAL_ENTRY, **EvalConfig(...).to_dict()}, devices, num_samples)

A run's progress is its number of samples on disk (`set_progress(done, total)`), so a stopped run
resumes where its samples end. Files of an evaluation folder (a run folder, or the CLI's --out)::

    results.json           numbers (mean and per seed) and what they were measured on (`RESULTS_FORMAT`)
    sampling/seed-<s>/     spec.json, samples/000000.png ..., samples.npz (core.eval.sampling), per seed
    features/              seed-<s>.npy and reference.npy: the features behind FD / precision / recall,
                           for the paired bootstrap of `pair_verdicts` (not with Inception)

and of an embedding-shift folder::

    results.json           overall and per-class numbers, the files below
    embeddings.json        the whole `EmbeddingShift` (maps, KDEs), for EmbeddingShift.from_json
    figures/*.html         plotly figures (plotly.min.js once beside them); PNGs too with kaleido
    base/, aligned/        the two sample folders

Model weights are named as a file, a checkpoint folder (``runs/<id>/checkpoints/step-N``), a run
folder (its last checkpoint), or a run id (fragment) with an optional ``@step``; see `resolve_weights`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from core import device as devmod
from core import paths
from core.errors import ConfigError, DataError, MissingWeightsError
from core.eval.configs import (DEFAULT_CLIP_TEMPLATE, METRICS, NO_LOGITS, EmbeddingConfig, EvalConfig, class_ids_of,
                               num_classes_of, read_prompts)
from core.eval.sampling import ProgressFn, SamplingSpec, run_sampling

EVAL_ENTRY = "core.eval.jobs:run_eval"
EMBEDDINGS_ENTRY = "core.eval.jobs:run_embeddings"
RESULTS_FILE = "results.json"
SAMPLING_DIR = "sampling"  # one sub-folder per seed: sampling/seed-<s>/
FEATURES_DIR = "features"  # seed-<s>.npy and reference.npy (not for Inception: torch-fidelity keeps its own)
FIGURES_DIR = "figures"
EMBEDDINGS_FILE = "embeddings.json"
RESULTS_FORMAT = "vapi-eval/1"
EMBEDDINGS_FORMAT = "vapi-embeddings/1"
SHAPES_PREFIX = "shapes"

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------ weights

@dataclass(frozen=True)
class WeightsRef:
    """Generator weights to evaluate: a file, or None for the preset's own (the base model)."""

    path: Optional[str] = None
    run_id: Optional[str] = None  # set when the file is a run's checkpoint
    step: Optional[int] = None

    @property
    def checkpoint(self) -> str:
        """"base", "<run id>@<step>", or the file path: the key summaries group by."""
        if self.path is None:
            return "base"
        if self.run_id is not None:
            return f"{self.run_id}@{self.step}"
        return self.path


def _checkpoint_file(folder: Path) -> Path:
    model = folder / "model.pt"
    if model.is_file():
        return model
    if (folder / "tokenizer.pt").is_file():
        raise ConfigError("weights", f"{folder} holds a post-trained tokenizer (decoder baseline), not generator "
                                     "weights; evaluating tokenizer checkpoints is not supported")
    raise ConfigError("weights", f"{folder}: no model.pt in this checkpoint folder")


def _from_file(path: Path) -> WeightsRef:
    """A weights file; when it sits in <run>/checkpoints/step-N/, its run and step too."""
    from core.runs.store import CHECKPOINTS_DIR, STEP_DIR_RE, TRAINER_STATE_FILE

    path = path.resolve()
    step_dir = path.parent
    m = STEP_DIR_RE.fullmatch(step_dir.name)
    if m and step_dir.parent.name == CHECKPOINTS_DIR:
        try:
            step = int(json.loads((step_dir / TRAINER_STATE_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            step = int(m.group(1))
        return WeightsRef(str(path), step_dir.parent.parent.name, step)
    return WeightsRef(str(path))


def resolve_weights(ref: Optional[str | Path], runs_dir: Optional[str | Path] = None) -> WeightsRef:
    """Turn what a user names into a weights file.

    ref: None, "" or "base" (the preset's weights); a file; a checkpoint folder (holds model.pt);
    a run folder (its last checkpoint); or a run id, or a unique fragment of one, in `runs_dir`
    (default `core.paths.RUNS_DIR`), optionally with "@STEP" for another checkpoint than the last.
    """
    from core.runs.store import CHECKPOINTS_DIR, DB_FILE, RunNotFoundError, RunStore, list_checkpoints

    if ref is None or str(ref).strip() in ("", "base"):
        return WeightsRef()
    text = str(ref).strip()
    path = Path(text).expanduser()
    if path.is_file():
        return _from_file(path)
    if path.is_dir():
        if (path / CHECKPOINTS_DIR).is_dir():
            found = list_checkpoints(path)
            if not found:
                raise ConfigError("weights", f"run folder {path} has no complete checkpoint yet")
            return _from_file(_checkpoint_file(found[-1].path))
        return _from_file(_checkpoint_file(path))
    runs = Path(runs_dir) if runs_dir is not None else paths.RUNS_DIR
    run_ref, _, step_text = text.partition("@")
    if not (runs / DB_FILE).is_file():
        raise ConfigError("weights", f"{text!r} is not a file or folder, and there is no run store in {runs} to "
                                     "look it up as a run id")
    try:
        run = RunStore(runs).find(run_ref)
    except RunNotFoundError as e:
        raise ConfigError("weights", f"{text!r} is not a file or folder, nor a run: {e}") from None
    found = list_checkpoints(run.run_dir)
    if not found:
        raise ConfigError("weights", f"run {run.id} has no complete checkpoint yet")
    if not step_text:
        return _from_file(_checkpoint_file(found[-1].path))
    if not step_text.isdigit():
        raise ConfigError("weights", f"{text!r}: the part after @ must be a step number")
    match = [c for c in found if c.step == int(step_text)]
    if not match:
        raise ConfigError("weights", f"run {run.id} has no checkpoint at step {step_text}; it has steps "
                                     f"{', '.join(str(c.step) for c in found)}")
    return _from_file(_checkpoint_file(match[0].path))


# ------------------------------------------------------------------------------------------ inputs


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
        from core.data.imagefolder import is_image_file

        self.root, self.image_size = Path(root), image_size
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and is_image_file(p.name))
        if not files:
            raise DataError(f"{root}: no images in this folder (or its sub-folders)")
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


# ------------------------------------------------------------------------------------------ CLIP score

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


# ------------------------------------------------------------------------------------------ FID job


def check_eval(cfg: EvalConfig, runs_dir: Optional[str | Path] = None) -> WeightsRef:
    """Cheap checks of every file an evaluation needs (no network, no model built). For the UI before
    submitting; `evaluate` runs them again, plus building the networks, before sampling."""
    from core.models import registry

    weights = resolve_weights(cfg.weights, runs_dir)
    preset = registry.get_generator(cfg.model)
    if weights.path is None:
        registry.require_files(cfg.model)
    if preset.task == "t2i" and cfg.resolved_prompts() is None:
        raise ConfigError("prompts", f"{cfg.model} is text-conditional; give prompts or a prompts_file")
    if preset.task == "c2i" and (cfg.prompts is not None or cfg.prompts_file is not None):
        raise ConfigError("prompts", f"{cfg.model} is class-conditional; give classes, not prompts")
    if cfg.reference:
        ref = Path(cfg.reference).expanduser()
        if shapes_split(cfg.reference) is None and not (ref.is_dir() or (ref.is_file() and ref.suffix == ".npz")):
            raise DataError(f"reference {cfg.reference}: not an .npz file, an image folder or 'shapes[:split]'")
    if any(m != "clip" for m in cfg.metrics):
        if cfg.extractor == "inception":
            from core.eval.extractors import find_inception_weights

            find_inception_weights(cfg.extractor_path)
        elif cfg.extractor == "demo":
            path = Path(cfg.extractor_path) if cfg.extractor_path else paths.DEMO_DIR / "evaluator.safetensors"
            if not path.is_file():
                raise MissingWeightsError(f"{path}: demo evaluator weights not found; they ship with the repository "
                                          f"in {paths.DEMO_DIR} (restore them with git)")
    return weights


def _sampling_progress(progress: Optional[ProgressFn], log: Log, what: str) -> ProgressFn:
    """Progress callback: the caller's, or one log line per ~10%."""
    if progress is not None:
        return progress
    return _logging_progress(log, what)


def _logging_progress(log: Log, what: str, then: Optional[ProgressFn] = None) -> ProgressFn:
    """One log line per ~10% of the samples; every call is passed on to `then`."""
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            log(f"{what}: {done}/{total} samples")
        if then is not None:
            then(done, total)

    return report


def evaluate(cfg: EvalConfig, out_dir: str | Path, *, runs_dir: Optional[str | Path] = None,
             progress: Optional[ProgressFn] = None, should_stop: Optional[Callable[[], bool]] = None,
             log: Log = print) -> Optional[dict]:
    """Sample `cfg.num_samples` images into out_dir/sampling (resuming), compute the metrics, write
    out_dir/results.json and return it. Returns None when stopped before all samples were drawn,
    and on processes other than the main one (the main one computes the metrics).

    Everything that can fail for a missing file or network weights fails here before any sample.
    """
    from core.models import registry

    out_dir = Path(out_dir)
    weights = check_eval(cfg, runs_dir)
    prompts = cfg.resolved_prompts()
    spec = cfg.sampling_spec(weights.path, prompts)
    device = devmod.resolve(cfg.device)
    needs_features = [m for m in cfg.metrics if m != "clip"]
    extractor = build_metric_extractor(cfg.extractor, cfg.extractor_path) if needs_features else None
    if cfg.extractor == "inception":
        extractor = None  # built only to validate the weights file now; torch-fidelity builds its own later
    clip = build_metric_extractor("clip", cfg.clip_model) if "clip" in cfg.metrics else None
    size = cfg.image_size or registry.get_generator(cfg.model).image_size
    reference = (reference_input(cfg.reference, size, cfg.reference_count or cfg.num_samples)
                 if ("fid" in cfg.metrics or "prc" in cfg.metrics) else None)
    log(f"[eval] {cfg.model} ({weights.checkpoint}): {cfg.num_samples} samples, cfg {cfg.cfg_scale}, "
        f"metrics {', '.join(cfg.metrics)}" + (f" with {cfg.extractor} features" if needs_features else ""))

    seeds = cfg.seeds()
    report = _sampling_progress(progress, log, "[eval] sampling")
    sampled_sets = []
    for j, seed in enumerate(seeds):
        def seed_progress(done: int, total: int, j: int = j) -> None:
            report(j * cfg.num_samples + done, cfg.total_samples)

        sampled = run_sampling(replace(spec, seed=seed), cfg.num_samples, out_dir / SAMPLING_DIR / f"seed-{seed}",
                               device=cfg.device, progress=seed_progress, should_stop=should_stop)
        if not sampled.complete:
            log(f"[eval] stopped with {sampled.written} new samples of seed {seed}; run it again to continue")
            return None
        sampled_sets.append(sampled)
    if any(x.npz is None for x in sampled_sets):  # a process other than the main one: it only samples
        return None
    seconds = sum(x.seconds for x in sampled_sets)
    log(f"[eval] {cfg.num_samples} samples x {len(seeds)} seeds in {out_dir / SAMPLING_DIR} "
        f"({cfg.total_samples / max(seconds, 1e-9):.2f}/s this run); computing metrics")
    start = time.perf_counter()
    per_seed: list[dict[str, float]] = [{} for _ in seeds]
    per_text: dict[str, float] = {}
    features: Optional[dict] = None
    if needs_features:
        real = None
        if cfg.extractor != "inception" and ("fid" in cfg.metrics or "prc" in cfg.metrics):
            from core.eval.extractors import extract

            extractor.to(device)
            real = extract(extractor, reference).features
        files = []
        for j, (seed, sampled) in enumerate(zip(seeds, sampled_sets)):
            values, feats = _feature_metrics(cfg, extractor, sampled.npz, reference, device, real)
            per_seed[j].update(values)
            if feats is not None:
                files.append(_save_features(out_dir / FEATURES_DIR / f"seed-{seed}.npy", feats))
        if real is not None and files:
            features = {"reference": str(_save_features(out_dir / FEATURES_DIR / "reference.npy", real)),
                        "seeds": [str(f) for f in files]}
    if clip is not None:
        clip.to(device)
        for j, sampled in enumerate(sampled_sets):
            if prompts is not None:
                texts = [prompts[int(i)] for i in sampled.labels]
            else:
                from core.data.classes import class_names_for

                names = class_names_for(num_classes_of(cfg.model) or 0)
                texts = [cfg.clip_template.format(names[int(c)]) for c in sampled.labels]
            scores = clip_score(clip, sampled.npz, texts)
            per_seed[j].update(clip_score=scores["clip_score"])
            if j == 0:
                per_text = scores["per_text"]
    from core.eval.verdict import spread

    spreads = {k: asdict(spread([row[k] for row in per_seed])) for k in per_seed[0]}
    metrics = {k: v["mean"] for k, v in spreads.items()}
    results = {
        "format": RESULTS_FORMAT, "kind": "eval", "label": cfg.label, "model": cfg.model,
        "weights": weights.path, "checkpoint": weights.checkpoint, "run_id": weights.run_id, "step": weights.step,
        "setting": cfg.setting(spec), "metrics": metrics, "spread": spreads, "seeds": seeds,
        "features": features, "clip_per_text": per_text,
        "npz": str(sampled_sets[0].npz), "npz_per_seed": [str(x.npz) for x in sampled_sets],
        "sampling_dir": str(out_dir / SAMPLING_DIR),
        "timing": {"sampling_s": seconds, "metrics_s": time.perf_counter() - start,
                   "samples_per_s": cfg.total_samples / max(seconds, 1e-9)},
        "finished_at": time.time(),
    }
    _write_json(out_dir / RESULTS_FILE, results)
    log("[eval] " + ", ".join(f"{k} {v['mean']:.4g} ± {v['std']:.2g}" for k, v in spreads.items())
        + f" (mean ± std over {len(seeds)} seeds)")
    return results


def _save_features(path: Path, feats) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = feats.numpy() if torch.is_tensor(feats) else np.asarray(feats)
    np.save(path, arr.astype(np.float32))
    return path


def _feature_metrics(cfg: EvalConfig, extractor, npz: Path, reference, device: torch.device,
                     real: Optional[torch.Tensor] = None) -> tuple[dict[str, float], Optional[torch.Tensor]]:
    """FID / IS / precision / recall of one sample set, and its features (None through torch-fidelity):
    torch-fidelity for Inception, core.eval.metrics otherwise. real: the reference's features."""
    from core.eval import metrics as M
    from core.eval.extractors import extract, fidelity_metrics

    fid, isc, prc = ("fid" in cfg.metrics), ("isc" in cfg.metrics), ("prc" in cfg.metrics)
    if cfg.extractor == "inception":
        return fidelity_metrics(npz, reference, fid=fid, isc=isc, prc=prc, weights_path=cfg.extractor_path,
                                isc_splits=cfg.isc_splits, prc_k=cfg.k, cuda=device.type == "cuda"), None
    extractor.to(device)
    gen = extract(extractor, npz)
    out: dict[str, float] = {}
    if isc:
        score = M.inception_score_from_logits(gen.logits, splits=cfg.isc_splits)
        out.update(is_mean=score.mean, is_std=score.std)
    if fid or prc:
        if real is None:
            real = extract(extractor, reference).features
        if fid:
            out["fid"] = M.fid_from_features(real, gen.features)
        if prc:
            pr = M.precision_recall(real, gen.features, k=cfg.k)
            out.update(precision=pr.precision, recall=pr.recall)
    return out, gen.features


def _write_json(path: Path, obj) -> None:
    from core.runs.store import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj)


def _print_flush(message: str) -> None:
    """Log to the worker's stdout (the run's log.txt), line by line."""
    print(message, flush=True)


def run_eval(config: dict, run_dir: Path, recorder, resume: bool) -> None:
    """Worker entry (config["entry"] == EVAL_ENTRY): `evaluate` into the run folder.

    Progress is the number of samples on disk; the metrics are logged at step num_samples.
    Stopping leaves the samples; resuming continues them.
    """
    cfg = EvalConfig.from_dict(config)
    run_dir = Path(run_dir)
    if resume:
        print(f"[eval] resuming: keeping the samples in {run_dir / SAMPLING_DIR}", flush=True)
    log = _print_flush
    results = evaluate(cfg, run_dir, runs_dir=run_dir.parent,
                       progress=_logging_progress(log, "[eval] sampling", recorder.set_progress),
                       should_stop=recorder.should_stop, log=log)
    if results is not None:
        recorder.log_metrics(cfg.total_samples, {**results["metrics"],
                                               "samples_per_s": results["timing"]["samples_per_s"]})


def submit_eval(launcher, config: dict | EvalConfig, devices: str = "cpu", name: Optional[str] = None):
    """Validate an evaluation (fields and files) and queue it as a background run. Returns the Run."""
    cfg = config if isinstance(config, EvalConfig) else EvalConfig.from_dict(config)
    weights = check_eval(cfg, launcher.store.runs_dir)
    name = name or f"eval {cfg.model} {cfg.label or weights.checkpoint}"
    return launcher.submit(name, {"entry": EVAL_ENTRY, **cfg.to_dict()}, devices, cfg.total_samples)


# ------------------------------------------------------------------------------------------ embeddings


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


@dataclass
class EmbeddingReport:
    shift: object  # core.eval.embeddings.EmbeddingShift
    results: dict  # what results.json holds
    figures: dict[str, Path]  # figure name -> HTML file
    class_names: dict[str, str]  # label key -> class name


def save_figures(shift, folder: str | Path) -> dict[str, Path]:
    """HTML (and PNG when kaleido is installed) of every figure of an EmbeddingShift.

    Per projection: "<method>_scatter" (points and 2-D KDE contours), "<method>_kde" (1-D densities
    along each axis); then "distance_frechet", "distance_precision", "distance_recall" (bars,
    overall and per class). plotly.min.js is written once beside the HTML files (offline viewing).
    """
    from core.eval.embeddings import distance_figure, kde_figure, scatter_figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {}
    for method in shift.projections:
        figures[f"{method}_scatter"] = scatter_figure(shift, method)
        figures[f"{method}_kde"] = kde_figure(shift, method)
    for metric in ("frechet", "precision", "recall"):
        figures[f"distance_{metric}"] = distance_figure(shift, metric)
    try:
        import kaleido  # noqa: F401 - optional: static PNG export
        png = True
    except ImportError:
        png = False
    written = {}
    for name, fig in figures.items():
        path = folder / f"{name}.html"
        fig.write_html(path, include_plotlyjs="directory", full_html=True)
        written[name] = path
        if png:
            fig.write_image(folder / f"{name}.png")
    return written


def _distance_dict(d) -> dict:
    return {"frechet": d.frechet, "precision": d.precision, "recall": d.recall, "n_real": d.n_real, "n_model": d.n_model}


def embedding_shift(cfg: EmbeddingConfig, out_dir: str | Path, *, runs_dir: Optional[str | Path] = None,
                    progress: Optional[ProgressFn] = None, should_stop: Optional[Callable[[], bool]] = None,
                    log: Log = print) -> Optional[EmbeddingReport]:
    """Sample base and aligned (same seeds), take real images of the same classes, extract features,
    run `analyze_embedding_shift`, write embeddings.json, figures/ and results.json in `out_dir`.

    progress(done, total) counts the samples of both models (total = cfg.total_samples). Returns None
    when stopped (the samples drawn so far are kept) and on processes other than the main one.
    """
    from core.data.classes import class_names_for
    from core.eval.embeddings import FeatureSet, analyze_embedding_shift
    from core.eval.extractors import extract
    from core.models import registry

    out_dir = Path(out_dir)
    base = resolve_weights(cfg.base_weights, runs_dir)
    aligned = resolve_weights(cfg.aligned_weights, runs_dir)
    if base.path is None:
        registry.require_files(cfg.model)
    device = devmod.resolve(cfg.device)
    extractor = build_metric_extractor(cfg.extractor, cfg.extractor_path)
    classes = cfg.class_ids()
    size = cfg.image_size or registry.get_generator(cfg.model).image_size
    real_x, real_y = real_images(cfg.real, classes, cfg.per_class, size)
    n = cfg.per_class * len(classes)
    names = class_names_for(num_classes_of(cfg.model) or 0)
    log(f"[embeddings] {cfg.model}: base {base.checkpoint} vs aligned {aligned.checkpoint}, {len(classes)} classes x "
        f"{cfg.per_class}, {cfg.extractor} features")

    seeds = cfg.seeds()
    npzs: dict[str, list] = {"base": [], "aligned": []}
    labels: dict[str, list] = {"base": [], "aligned": []}
    for offset, (name, ref) in enumerate((("base", base), ("aligned", aligned))):
        for j, seed in enumerate(seeds):
            def report(done: int, total: int, at: int = (offset * len(seeds) + j) * n) -> None:
                if progress is not None:
                    progress(at + done, cfg.total_samples)

            sampled = run_sampling(replace(cfg.sampling_spec(ref.path), seed=seed), n, out_dir / name / f"seed-{seed}",
                                   device=cfg.device,
                                   progress=report if progress is not None else _sampling_progress(None, log, f"[embeddings] {name}"),
                                   should_stop=should_stop)
            if not sampled.complete:
                log(f"[embeddings] stopped while sampling {name}; run it again to continue")
                return None
            npzs[name].append(sampled.npz)
            labels[name].append(sampled.labels)
    if any(npz is None for group in npzs.values() for npz in group):  # not the main process: it only samples
        return None
    log("[embeddings] extracting features and projecting")
    extractor.to(device)
    per_seed = {name: [extract(extractor, npz).features.numpy() for npz in npzs[name]] for name in npzs}
    real_f = extract(extractor, real_x).features.numpy()
    from core.eval import verdict as V

    verdicts = V.compare_features(real_f, per_seed["base"], per_seed["aligned"], k=cfg.k)
    # maps and per-class numbers: all seeds pooled
    feats = {name: FeatureSet(np.concatenate(per_seed[name]), np.concatenate(labels[name])) for name in per_seed}
    real = FeatureSet(real_f, real_y)
    shift = analyze_embedding_shift(real, feats["base"], feats["aligned"], methods=cfg.projections, seed=cfg.seed,
                                    k=cfg.k, max_points_per_set=cfg.max_points_per_set)
    per_class_verdicts = {}
    for c in classes:
        rc = real_f[real_y == c]
        bs = [f[y == c] for f, y in zip(per_seed["base"], labels["base"])]
        As = [f[y == c] for f, y in zip(per_seed["aligned"], labels["aligned"])]
        if len(rc) > cfg.k and all(len(x) > cfg.k for x in bs + As):
            per_class_verdicts[str(c)] = V.compare_features(rc, bs, As, k=cfg.k, n_boot=100, metrics=("fd",))["fd"].to_dict()
    # overall numbers: mean over seeds, as Evaluate's (the pooled set's FD is lower by its smaller bias)
    for name in ("base", "aligned"):
        d = shift.overall[name]
        shift.overall[name] = replace(d, frechet=getattr(verdicts["fd"], name).mean,
                                      precision=getattr(verdicts["precision"], name).mean,
                                      recall=getattr(verdicts["recall"], name).mean, n_model=n)
    shift.to_json(out_dir / EMBEDDINGS_FILE)
    figures = save_figures(shift, out_dir / FIGURES_DIR)
    class_names = {str(c): names[c] for c in classes}
    results = {
        "format": EMBEDDINGS_FORMAT, "kind": "embeddings", "model": cfg.model,
        "base": asdict(base), "aligned": asdict(aligned), "config": cfg.to_dict(), "class_names": class_names,
        "seeds": seeds, "overall": {m: _distance_dict(d) for m, d in shift.overall.items()},
        "verdicts": {("fid" if m == "fd" else m): v.to_dict() for m, v in verdicts.items()},
        "per_class_verdicts": per_class_verdicts,
        "per_class": {lab: {m: _distance_dict(d) for m, d in row.items()} for lab, row in shift.per_label.items()},
        "skipped_classes": shift.skipped_labels, "counts": shift.counts,
        "embeddings_json": str(out_dir / EMBEDDINGS_FILE), "figures": {k: str(v) for k, v in figures.items()},
        "finished_at": time.time(),
    }
    _write_json(out_dir / RESULTS_FILE, results)
    return EmbeddingReport(shift, results, figures, class_names)


def shift_table(results: dict) -> str:
    """The numbers of an embedding-shift results dict as a text table, base vs aligned per class."""
    header = f"{'class':<24} {'FD base':>10} {'FD aligned':>10} {'P base':>7} {'P align':>7} {'R base':>7} {'R align':>7}"
    lines = [header, "-" * len(header)]

    def row(name: str, cells: dict) -> str:
        b, a = cells.get("base"), cells.get("aligned")
        return (f"{name[:24]:<24} {b['frechet']:>10.4g} {a['frechet']:>10.4g} {b['precision']:>7.3f} "
                f"{a['precision']:>7.3f} {b['recall']:>7.3f} {a['recall']:>7.3f}")

    for label, cells in results["per_class"].items():
        lines.append(row(f"{label} {results['class_names'].get(label, '')}".strip(), cells))
    lines.append(row("overall", results["overall"]))
    return "\n".join(lines)


def run_embeddings(config: dict, run_dir: Path, recorder, resume: bool) -> None:
    """Worker entry (config["entry"] == EMBEDDINGS_ENTRY): `embedding_shift` into the run folder."""
    cfg = EmbeddingConfig.from_dict(config)
    run_dir = Path(run_dir)
    log = _print_flush
    report = embedding_shift(cfg, run_dir, runs_dir=run_dir.parent,
                             progress=_logging_progress(log, "[embeddings] sampling", recorder.set_progress),
                             should_stop=recorder.should_stop, log=log)
    if report is not None:
        overall = report.results["overall"]
        recorder.log_metrics(cfg.total_samples, {f"{m}_{k}": overall[m][k] for m in overall
                                                 for k in ("frechet", "precision", "recall")})
        print(shift_table(report.results), flush=True)


def submit_embeddings(launcher, config: dict | EmbeddingConfig, devices: str = "cpu", name: Optional[str] = None):
    """Validate an embedding comparison and queue it as a background run. Returns the Run."""
    cfg = config if isinstance(config, EmbeddingConfig) else EmbeddingConfig.from_dict(config)
    runs_dir = launcher.store.runs_dir
    resolve_weights(cfg.base_weights, runs_dir)
    aligned = resolve_weights(cfg.aligned_weights, runs_dir)
    name = name or f"embeddings {cfg.model} {aligned.checkpoint}"
    return launcher.submit(name, {"entry": EMBEDDINGS_ENTRY, **cfg.to_dict()}, devices, cfg.total_samples)


# ------------------------------------------------------------------------------------------ GenEval

def export_geneval_samples(model: str, out_dir: str | Path, *, weights: Optional[str] = None,
                           prompts_file: Optional[str | Path] = None, images_per_prompt: int = 4,
                           cfg_scale: float = 5.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                           seed: int = 0, batch_size: int = 32, precision: str = "fp32", device: str = "auto",
                           runs_dir: Optional[str | Path] = None, progress: Optional[ProgressFn] = None,
                           should_stop: Optional[Callable[[], bool]] = None, sampler=None,
                           sampling_dir: Optional[str | Path] = None) -> Optional[Path]:
    """GenEval's image folder for a text-to-image model: `images_per_prompt` images of each prompt.

    The images are drawn as one sample set (resumable, shardable) in `sampling_dir` (default: the
    sibling folder "<out_dir>.sampling", since GenEval reads every sub-folder of out_dir as a
    prompt), image j of prompt p being sample p + j*P; then they are laid out as GenEval's
    evaluator reads them (out_dir/00000/metadata.jsonl, out_dir/00000/samples/0000.png, ...).
    Returns out_dir, or None when stopped or on a process other than the main one.
    """
    from core.eval.geneval import export_geneval, read_geneval_prompts
    from core.eval.reference import read_npz
    from core.models import registry

    if registry.get_generator(model).task != "t2i":
        raise ConfigError("model", f"{model} is class-conditional; GenEval needs a text-to-image preset")
    if isinstance(images_per_prompt, bool) or not isinstance(images_per_prompt, int) or images_per_prompt < 1:
        raise ConfigError("images_per_prompt", f"must be a positive integer, got {images_per_prompt!r}")
    rows = read_geneval_prompts(prompts_file or paths.ASSETS_DIR / "geneval" / "evaluation_metadata.jsonl")
    ref = resolve_weights(weights, runs_dir)
    spec = SamplingSpec(model=model, weights=ref.path, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, batch_size=batch_size, precision=precision,
                        prompts=tuple(r["prompt"] for r in rows))
    out_dir = Path(out_dir)
    sampling_dir = Path(sampling_dir) if sampling_dir is not None else out_dir.with_name(out_dir.name + ".sampling")
    count = len(rows)
    sampled = run_sampling(spec, count * images_per_prompt, sampling_dir, device=device, sampler=sampler,
                           progress=progress, should_stop=should_stop)
    if not sampled.complete or sampled.npz is None:
        return None
    pixels = read_npz(sampled.npz)  # [P * S, H, W, 3]
    index = {id(row): p for p, row in enumerate(rows)}
    export_geneval(out_dir, rows, lambda row: np.asarray(pixels[index[id(row)]::count]), images_per_prompt)
    return out_dir


# ------------------------------------------------------------------------------------------ summary

def _read_results(folder: Path) -> Optional[dict]:
    path = folder / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("format") == RESULTS_FORMAT else None


def evaluation_summary(runs_dir: Optional[str | Path] = None, folders: Sequence[str | Path] = ()) -> list[dict]:
    """Every finished evaluation, one row per (model, setting, checkpoint), newest result kept, with the
    base model's numbers under the same setting beside each checkpoint's.

    Sources: the finished runs of `runs_dir` (default core.paths.RUNS_DIR) whose results.json is an
    evaluation's, plus evaluation folders given in `folders` (the CLI's --out). Row keys: model,
    setting (dict), setting_key (str), checkpoint ("base" | "<run>@<step>" | path), run_id, step,
    label, metrics, base_metrics (None for the base row or when the base was not evaluated), delta
    (metrics - base_metrics), source (eval run id or folder), finished_at. Rows are grouped by model
    and setting, the base first, then by run and step.
    """
    from core.runs.store import DB_FILE, FINISHED, RunStore

    found: list[tuple[str, dict]] = []
    runs = Path(runs_dir) if runs_dir is not None else paths.RUNS_DIR
    if (runs / DB_FILE).is_file():
        for run in RunStore(runs).list_runs([FINISHED], newest_first=False):
            results = _read_results(run.run_dir)
            if results is not None:
                found.append((run.id, results))
    for folder in folders:
        results = _read_results(Path(folder))
        if results is None:
            raise DataError(f"{folder}: no evaluation {RESULTS_FILE} here")
        found.append((str(folder), results))
    latest: dict[tuple[str, str, str], tuple[str, dict]] = {}
    for source, r in sorted(found, key=lambda item: item[1].get("finished_at", 0.0)):
        key = (r["model"], json.dumps(r["setting"], sort_keys=True), r["checkpoint"])
        latest[key] = (source, r)
    rows = []
    for (model, setting_key, checkpoint), (source, r) in latest.items():
        base = latest.get((model, setting_key, "base"))
        base_metrics = base[1]["metrics"] if base is not None and checkpoint != "base" else None
        delta = ({k: v - base_metrics[k] for k, v in r["metrics"].items() if k in base_metrics}
                 if base_metrics is not None else None)
        verdicts = pair_verdicts(base[1], r) if base_metrics is not None else None
        rows.append({"model": model, "setting": r["setting"], "setting_key": setting_key, "checkpoint": checkpoint,
                     "run_id": r.get("run_id"), "step": r.get("step"), "label": r.get("label", ""),
                     "metrics": r["metrics"], "base_metrics": base_metrics, "delta": delta, "source": source,
                     "spread": _spread_of(r), "base_spread": _spread_of(base[1]) if base_metrics is not None else None,
                     "verdicts": verdicts, "finished_at": r.get("finished_at")})
    rows.sort(key=lambda row: (row["model"], row["setting_key"], row["checkpoint"] != "base",
                               row["run_id"] or "", row["step"] or 0, row["checkpoint"]))
    return rows


SUMMARY_METRICS = ("fid", "is_mean", "precision", "recall", "clip_score")
_VERDICTS: dict[tuple, dict] = {}  # (base result, checkpoint result) -> verdicts: a bootstrap is ~1 s per pair


def _spread_of(results: dict) -> dict:
    """{metric: {mean, std, values}} of a result; a result of one seed (older format) as one value."""
    if isinstance(results.get("spread"), dict):
        return results["spread"]
    return {k: {"mean": v, "std": 0.0, "values": [v]} for k, v in results["metrics"].items()}


def pair_verdicts(base: dict, checkpoint: dict) -> dict[str, dict]:
    """{metric: Verdict dict} of a checkpoint's evaluation against its base's under the same setting:
    FD / precision / recall from the stored features (paired bootstrap, `core.eval.verdict`), other
    metrics (IS, CLIP score, Inception FID through torch-fidelity) from their per-seed values."""
    from core.eval import verdict as V

    key = tuple((r.get("sampling_dir"), r.get("finished_at")) for r in (base, checkpoint))
    if key in _VERDICTS:
        return _VERDICTS[key]
    out: dict[str, dict] = {}
    bf, cf = base.get("features"), checkpoint.get("features")
    if bf and cf and len(bf["seeds"]) == len(cf["seeds"]) and all(
            Path(f).is_file() for f in [cf["reference"], *bf["seeds"], *cf["seeds"]]):
        wanted = [m for m in ("fd", "precision", "recall") if (m if m != "fd" else "fid") in checkpoint["metrics"]]
        found = V.compare_features(np.load(cf["reference"]), [np.load(f) for f in bf["seeds"]],
                                   [np.load(f) for f in cf["seeds"]], k=int(checkpoint["setting"].get("k", 3)),
                                   metrics=wanted)
        out.update({("fid" if m == "fd" else m): v.to_dict() for m, v in found.items()})
    base_spread, spread = _spread_of(base), _spread_of(checkpoint)
    for m in SUMMARY_METRICS:
        if m in out or m not in spread or m not in base_spread:
            continue
        if len(base_spread[m]["values"]) != len(spread[m]["values"]):
            continue
        out[m] = V.from_seed_values(m, base_spread[m]["values"], spread[m]["values"]).to_dict()
    _VERDICTS[key] = out
    return out


def summary_table(rows: Sequence[dict]) -> str:
    """Rows of `evaluation_summary` as text: one block per model and setting, each checkpoint's
    numbers with the base model's in brackets, then per metric the change, its interval and verdict."""
    if not rows:
        return "no finished evaluations"
    lines = []
    current = None
    for row in rows:
        if (row["model"], row["setting_key"]) != current:
            current = (row["model"], row["setting_key"])
            s = row["setting"]
            extractor = s.get("extractor")
            lines.append(f"\n{row['model']}: {s['num_samples']} samples, cfg {s['cfg_scale']}, seed {s['seed']}"
                         + (f", {extractor} features vs {s.get('reference')}" if extractor else ""))
            names = [m for m in SUMMARY_METRICS if m in row["metrics"]]
            lines.append(f"  {'checkpoint':<40} " + " ".join(f"{m:>20}" for m in names))
        cells = []
        for m in names:
            value = row["metrics"].get(m)
            base = (row["base_metrics"] or {}).get(m)
            text = "-" if value is None else f"{value:.4g}" + (f" ({base:.4g})" if base is not None else "")
            cells.append(f"{text:>20}")
        title = row["checkpoint"] + (f" [{row['label']}]" if row["label"] else "")
        lines.append(f"  {title[:40]:<40} " + " ".join(cells))
        for m, v in (row.get("verdicts") or {}).items():
            b, c = v["base"], v["aligned"]
            interval = "no interval (one seed)" if v["method"] == "none" else f"[{v['low']:+.4g}, {v['high']:+.4g}]"
            lines.append(f"    {m}: {b['mean']:.4g} ± {b['std']:.2g} -> {c['mean']:.4g} ± {c['std']:.2g} over "
                         f"{v['seeds']} seeds, change {v['delta']:+.4g}, 95% {interval} ({v['method']}): {v['verdict']}")
    return "\n".join(lines).lstrip("\n")
