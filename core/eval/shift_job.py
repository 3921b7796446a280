"""The embedding-shift job: base vs aligned samples of the same classes and seeds against real images,
in one feature space (maps, KDEs, distances, verdicts), as a library call (`embedding_shift`) and as
a background run (kind "embeddings" of core.runs.kinds: `check_job`, worker entry `run_embeddings`). Files of its folder::

    results.json           overall and per-class numbers, the files below
    embeddings.json        the whole `EmbeddingShift` (maps, KDEs), for EmbeddingShift.from_json
    figures/*.html         plotly figures (plotly.min.js once beside them); PNGs too with kaleido
    base/, aligned/        the two sample folders
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from core import device as devmod
from core.checkpoints import resolve_weights
from core.eval.configs import EmbeddingConfig, num_classes_of
from core.eval.inputs import build_metric_extractor, real_images, shapes_split
from core.eval.job_io import RESULTS_FILE, Log, logging_progress, print_flush, sampling_progress, write_json
from core.eval.sampling import ProgressFn, run_sampling

FIGURES_DIR = "figures"
EMBEDDINGS_FILE = "embeddings.json"
EMBEDDINGS_FORMAT = "vapi-embeddings/1"


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
    png = importlib.util.find_spec("kaleido") is not None  # optional: static PNG export
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
    n = cfg.samples_per_seed
    if cfg.text_conditional:  # demo-t2i: real = the reference scenes, prompted with their captions; groups by color_by
        from core.demo.shapes import images_tensor

        names = cfg.group_names()
        prompt_groups = np.asarray([cfg.group_of_prompt(p) for p in cfg.prompt_set()])  # sample label -> group
        real_x = images_tensor(shapes_split(cfg.real, "real"), range(n), size)[0]
        real_y = prompt_groups  # scene i is prompted with its own caption
        log(f"[embeddings] {cfg.model}: base {base.checkpoint} vs aligned {aligned.checkpoint}, {n} captions of real "
            f"scenes, grouped by {cfg.color_by}, {cfg.extractor} features")
    else:
        prompt_groups = None
        real_x, real_y = real_images(cfg.real, classes, cfg.per_class, size)
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
                                   progress=report if progress is not None else sampling_progress(None, log, f"[embeddings] {name}"),
                                   should_stop=should_stop)
            if not sampled.complete:
                log(f"[embeddings] stopped while sampling {name}; run it again to continue")
                return None
            npzs[name].append(sampled.npz)
            labels[name].append(sampled.labels if prompt_groups is None else prompt_groups[np.asarray(sampled.labels)])
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
    write_json(out_dir / RESULTS_FILE, results)
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
    """Worker entry (core.runs.kinds, kind "embeddings"): `embedding_shift` into the run folder."""
    cfg = EmbeddingConfig.from_dict(config)
    run_dir = Path(run_dir)
    log = print_flush
    report = embedding_shift(cfg, run_dir, runs_dir=run_dir.parent,
                             progress=logging_progress(log, "[embeddings] sampling", recorder.set_progress),
                             should_stop=recorder.should_stop, log=log)
    if report is not None:
        overall = report.results["overall"]
        recorder.log_metrics(cfg.total_samples, {f"{m}_{k}": overall[m][k] for m in overall
                                                 for k in ("frechet", "precision", "recall")})
        print(shift_table(report.results), flush=True)


def check_job(cfg: EmbeddingConfig, runs_dir: Optional[str | Path] = None) -> str:
    """The weights of an embedding comparison, checked before it is queued (core.runs.kinds, kind
    "embeddings"); returns the job's default name."""
    resolve_weights(cfg.base_weights, runs_dir)
    aligned = resolve_weights(cfg.aligned_weights, runs_dir)
    return f"embeddings {cfg.model} {aligned.checkpoint}"
