"""The evaluation job: FID / IS / precision / recall / CLIP score of one model, as a library call
(`evaluate`) and as a background run (kind "eval" of core.runs.kinds: `check_job`, worker entry `run_eval`).

Background runs go through the run manager like training runs (a run folder, the worker, stop and
resume)::

    kinds.submit(launcher, "eval", EvalConfig(...), devices)   # core.runs.kinds

A run's progress is its number of samples on disk (`set_progress(done, total)`), so a stopped run
resumes where its samples end. Files of an evaluation folder (a run folder, or the CLI's --out)::

    results.json           numbers (mean and per seed) and what they were measured on (`RESULTS_FORMAT`)
    sampling/seed-<s>/     spec.json, samples/000000.png ..., samples.npz (core.eval.sampling), per seed
    features/              seed-<s>.npy and reference.npy: the features behind FD / precision / recall,
                           for the paired bootstrap of `core.eval.summary.pair_verdicts` (not with Inception)

Model weights are named in the grammar of `core.checkpoints.resolve_weights` (a file, a checkpoint
folder, a run folder, or RUN[@STEP]).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from core import device as devmod
from core import paths
from core.checkpoints import WeightsRef, resolve_weights
from core.errors import ConfigError, DataError, MissingWeightsError
from core.eval.clip_score import clip_score
from core.eval.configs import NO_FEATURES, EvalConfig, num_classes_of
from core.eval.inputs import build_metric_extractor, reference_input, shapes_split
from core.eval.job_io import RESULTS_FILE, Log, logging_progress, print_flush, sampling_progress, write_json
from core.eval.sampling import ProgressFn, run_sampling

SAMPLING_DIR = "sampling"  # one sub-folder per seed: sampling/seed-<s>/
FEATURES_DIR = "features"  # seed-<s>.npy and reference.npy (not for Inception: torch-fidelity keeps its own)
RESULTS_FORMAT = "vapi-eval/1"


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
    if "adherence" in cfg.metrics and not (preset.is_demo and preset.task == "t2i"):
        raise ConfigError("metrics", f"prompt adherence reads the demo evaluator, so it measures the demo T2I "
                                     f"(demo-t2i) only, not {cfg.model}; drop adherence (use clip for other models)")
    if any(m not in NO_FEATURES for m in cfg.metrics):
        if cfg.extractor == "inception":
            from core.eval.extractors import find_inception_weights

            find_inception_weights(cfg.extractor_path)
        elif cfg.extractor == "demo":
            path = Path(cfg.extractor_path) if cfg.extractor_path else paths.DEMO_DIR / "evaluator.safetensors"
            if not path.is_file():
                raise MissingWeightsError(f"{path}: demo evaluator weights not found; they ship with the repository "
                                          f"in {paths.DEMO_DIR} (restore them with git)")
    return weights


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
    needs_features = [m for m in cfg.metrics if m not in NO_FEATURES]
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
    report = sampling_progress(progress, log, "[eval] sampling")
    sampled_sets = []
    for j, seed in enumerate(seeds):
        def seed_progress(done: int, total: int, j: int = j) -> None:
            report(j * cfg.num_samples + done, cfg.total_samples)

        sampled = run_sampling(replace(spec, seed=seed), cfg.num_samples, out_dir / SAMPLING_DIR / f"seed-{seed}",
                               device=cfg.device, progress=seed_progress, should_stop=should_stop,
                               compile=cfg.compile)
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
    adherence_per_prompt: dict[str, dict] = {}
    if "adherence" in cfg.metrics:
        from core.demo.evaluator import load_evaluator

        ev = load_evaluator(paths.DEMO_DIR / "evaluator.safetensors").to(device)  # once, for every seed
        for j, sampled in enumerate(sampled_sets):
            values, per_prompt = prompt_adherence(ev, sampled.npz, [prompts[int(i)] for i in sampled.labels], device)
            per_seed[j].update(values)
            if j == 0:
                adherence_per_prompt = per_prompt
    from core.eval.verdict import spread

    spreads = {k: asdict(spread([row[k] for row in per_seed])) for k in per_seed[0]}
    metrics = {k: v["mean"] for k, v in spreads.items()}
    results = {
        "format": RESULTS_FORMAT, "kind": "eval", "label": cfg.label, "model": cfg.model,
        "weights": weights.path, "checkpoint": weights.checkpoint, "run_id": weights.run_id, "step": weights.step,
        "setting": cfg.setting(spec), "metrics": metrics, "spread": spreads, "seeds": seeds,
        "features": features, "clip_per_text": per_text, "adherence_per_prompt": adherence_per_prompt,
        "npz": str(sampled_sets[0].npz), "npz_per_seed": [str(x.npz) for x in sampled_sets],
        "sampling_dir": str(out_dir / SAMPLING_DIR),
        "timing": {"sampling_s": seconds, "metrics_s": time.perf_counter() - start,
                   "samples_per_s": cfg.total_samples / max(seconds, 1e-9)},
        "finished_at": time.time(),
    }
    write_json(out_dir / RESULTS_FILE, results)
    log("[eval] " + ", ".join(f"{k} {v['mean']:.4g} ± {v['std']:.2g}" for k, v in spreads.items())
        + f" (mean ± std over {len(seeds)} seeds)")
    return results


@torch.no_grad()
def prompt_adherence(ev, npz: str | Path, texts: Sequence[str], device) -> tuple[dict[str, float], dict[str, dict]]:
    """Prompt adherence of an .npz of demo samples against their prompts (core.demo.adherence): ({"adherence":
    overall, "adherence_<category>": ...}, {prompt: {"samples", "overall"}} of the first seed's samples)."""
    from core.demo import adherence
    from core.eval.extractors import images_from_uint8
    from core.eval.reference import read_npz

    pixels = torch.from_numpy(np.asarray(read_npz(npz, mmap=False))).permute(0, 3, 1, 2)  # [N, 3, H, W] uint8
    size = ev.config.image_size
    seen = []
    for lo in range(0, pixels.shape[0], 500):
        images = images_from_uint8(pixels[lo:lo + 500]).to(device)
        if images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        seen += adherence.predict(ev, images)
    found = adherence.score(seen, texts)
    values = {"adherence": found["overall"], **{f"adherence_{c}": v for c, v in found["per_category"].items()}}
    per_prompt: dict[str, dict] = {}
    for text in dict.fromkeys(texts):
        rows = [s for s, t in zip(seen, texts) if t == text]
        per_prompt[text] = {"samples": len(rows), "overall": adherence.score(rows, [text] * len(rows))["overall"]}
    return values, per_prompt


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


def run_eval(config: dict, run_dir: Path, recorder, resume: bool) -> None:
    """Worker entry (core.runs.kinds, kind "eval"): `evaluate` into the run folder.

    Progress is the number of samples on disk; the metrics are logged at step num_samples.
    Stopping leaves the samples; resuming continues them.
    """
    cfg = EvalConfig.from_dict(config)
    run_dir = Path(run_dir)
    if resume:
        print(f"[eval] resuming: keeping the samples in {run_dir / SAMPLING_DIR}", flush=True)
    log = print_flush
    results = evaluate(cfg, run_dir, runs_dir=run_dir.parent,
                       progress=logging_progress(log, "[eval] sampling", recorder.set_progress),
                       should_stop=recorder.should_stop, log=log)
    if results is not None:
        recorder.log_metrics(cfg.total_samples, {**results["metrics"],
                                               "samples_per_s": results["timing"]["samples_per_s"]})


def check_job(cfg: EvalConfig, runs_dir: Optional[str | Path] = None) -> str:
    """`check_eval` for a queued job (core.runs.kinds): returns the job's default name."""
    weights = check_eval(cfg, runs_dir)
    return f"eval {cfg.model} {cfg.label or weights.checkpoint}"
