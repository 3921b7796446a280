"""Base vs aligned, one view per request: the one compare path of the project.

`python -m core compare` (core/eval/compare_cli.py) and the Compare tab (app/comparison.py) both build a
`CompareRequest`, load the two models their own way (the CLI from files, the UI through its model cache, under its
device lease) and call `compare`, which checks the request's rules, draws the view (`core.eval.alignment`),
adds the per-class numbers when asked, and writes the PNGs and scores.json into the folder it is given.

Rules, each a ConfigError naming the field: the two models are of one kind (class- or text-conditional) and, for
classes, have the same classes; the teacher-forced view and the per-class numbers need class labels and held-out
real images; a text-to-image comparison needs prompts.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.errors import ConfigError

VIEW_WORDS = {"teacher-forced": "teacher-forced", "prefix": "shared-prefix", "free": "free-running"}
CLASS_SEEDS = (0, 1, 2)  # seeds of the per-class numbers: a verdict carries its spread
MIN_CLASS_SAMPLES = 4  # FD needs a covariance


@dataclass(frozen=True)
class CompareRequest:
    base_preset: str  # generator presets of the two sides (one kind of model)
    aligned_preset: str
    view: str = "teacher-forced"  # core.eval.alignment.VIEWS
    classes: Optional[Sequence] = None  # class ids or names (class-conditional)
    prompts: Optional[Sequence[str]] = None  # text-to-image
    seeds: Sequence[int] = (0, 1, 2, 3)
    sampling: dict = field(default_factory=lambda: dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0))
    prefix_rows: int = 2
    class_samples: int = 0  # > 0: per-class accuracy and FD of this many samples per class and seed
    real: Optional[str] = None  # held-out images: "shapes" (the demo's default) or an ImageNet-layout folder
    compile: str = "auto"  # the sampler's torch.compile switch (core.models.generate): the same samples either way

    def cache_key(self) -> tuple:
        """What the per-class numbers depend on besides the weights (not the view, the seeds or the prefix)."""
        return (self.base_preset, tuple(self.classes or ()), self.class_samples, self.real,
                tuple(sorted(self.sampling.items())))


@dataclass
class CompareResult:
    view: Any  # core.eval.alignment.ViewResult
    labels: list[str]  # one per condition: class names or prompts
    per_class: list = field(default_factory=list)  # core.eval.alignment.class_numbers rows
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    scores_path: Optional[Path] = None


def check(req: CompareRequest) -> str:
    """The rules that need no model loaded; returns the task ("c2i" | "t2i")."""
    from core.eval import alignment
    from core.models import registry

    b, a = registry.get_generator(req.base_preset), registry.get_generator(req.aligned_preset)
    if b.task != a.task:
        raise ConfigError("aligned", f"{a.name} is {a.task}, {b.name} is {b.task}: compare models of one kind")
    if req.view not in alignment.VIEWS:
        raise ConfigError("view", f"choose the {', the '.join(VIEW_WORDS[v] for v in alignment.VIEWS)} view")
    if not req.seeds:
        raise ConfigError("seeds", "give at least one seed")
    if req.class_samples and req.class_samples < MIN_CLASS_SAMPLES:
        raise ConfigError("class_samples", f"0 (off) or at least {MIN_CLASS_SAMPLES} (FD needs a covariance)")
    real = req.real or ("shapes" if b.is_demo else None)
    if b.task == "t2i":
        if req.view == "teacher-forced":
            raise ConfigError("view", f"{b.name} is text-conditional; the teacher-forced view needs held-out images "
                                      "of a class: use the shared-prefix or free-running view")
        if req.class_samples:
            raise ConfigError("class_samples", "per-class numbers are for class-conditional models; set 0 for prompts")
        if not [p for p in req.prompts or [] if str(p).strip()]:
            raise ConfigError("prompts", f"{b.name} is text-conditional: give at least one prompt")
    else:
        if req.prompts:
            raise ConfigError("prompts", f"{b.name} is class-conditional: give classes, not prompts")
        if req.view == "teacher-forced" and not real:
            raise ConfigError("view", f"the teacher-forced view needs held-out images of the classes; {b.name} has "
                                      "no embedded domain: give an ImageNet-layout folder as the real images")
        if req.class_samples and not real:
            raise ConfigError("class_samples", "per-class numbers need held-out real images of the classes")
    return b.task


def conditions(req: CompareRequest, task: str, base_policy, aligned_policy) -> tuple[list, list[str], list[str]]:
    """(conditions, their labels, the class names): class ids checked against both models, or the prompts."""
    if task == "t2i":
        prompts = [str(p).strip() for p in req.prompts or [] if str(p).strip()]
        return prompts, prompts, []
    from core.data.classes import class_names_for, resolve_classes

    if aligned_policy.config.num_classes != base_policy.config.num_classes:
        raise ConfigError("aligned", f"{req.aligned_preset} weights have {aligned_policy.config.num_classes} classes, "
                                     f"the base has {base_policy.config.num_classes}")
    names = class_names_for(base_policy.config.num_classes)
    items = list(req.classes or [])
    if not items:
        raise ConfigError("classes", "pick at least one class")
    ids = resolve_classes(items, names, field="classes")
    return ids, [names[i] for i in ids], list(names)


def compare(req: CompareRequest, policies: dict, tokenizer, device, out: str | Path, *,
            encode_prompts: Optional[Callable] = None, per_class_cache: Optional[dict] = None,
            weights: tuple = (), progress: Optional[Callable[[float, str], None]] = None) -> CompareResult:
    """One view of base vs aligned (`policies`: {"base": ..., "aligned": ...}, loaded by the caller) for every
    (condition, seed), written to `out`; with class_samples > 0 the per-class numbers too, looked up first in
    `per_class_cache` when the caller keeps one, under `weights` (what identifies the two models' files): they do
    not depend on the view, the seeds of the rows or the prefix. `progress(share, what)` hears each stage."""
    say = progress or (lambda share, what: None)
    from core.errors import CheckpointError, MissingWeightsError
    from core.eval import alignment
    from core.models import registry
    from core.models.generate import check_compile, check_sampling_args

    task = check(req)
    check_sampling_args(**req.sampling)
    sampler = dict(req.sampling, compile=check_compile(req.compile))  # what the sampler gets; `sampling` is recorded
    preset = registry.get_generator(req.base_preset)
    conds, labels, names = conditions(req, task, policies["base"], policies["aligned"])
    real = req.real or ("shapes" if preset.is_demo else None)
    judge, why = alignment.find_judge(req.base_preset, names, device)
    if judge is None and task == "t2i":
        why = "no judge for prompts without CLIP weights (the CLIP score needs them on disk)"
    say(0.1, f"{VIEW_WORDS[req.view]} view: {len(conds) * len(req.seeds)} pairs")
    view = alignment.run_view(req.view, policies, tokenizer, conds=conds, labels=labels, seeds=list(req.seeds),
                              task="t2i" if task == "t2i" else None, device=device, sampling=sampler,
                              prefix_rows=req.prefix_rows, real=real, image_size=preset.image_size, judge=judge,
                              judge_note=why, encode_prompts=encode_prompts)
    result = CompareResult(view, labels)
    if req.class_samples:
        key = (weights, str(device), req.cache_key())
        if per_class_cache is not None and key in per_class_cache:
            result.per_class = per_class_cache[key]
        else:
            say(0.5, f"per-class numbers: {req.class_samples} samples x {len(conds)} classes x {len(CLASS_SEEDS)} "
                     "seeds per model")
            from core.eval.inputs import build_metric_extractor

            try:
                extractor = build_metric_extractor("demo" if preset.is_demo else "inception", None, device)
            except (MissingWeightsError, CheckpointError) as e:
                result.notes.append(f"no per-class numbers: {str(e).splitlines()[0]}")
            else:
                result.per_class = alignment.class_numbers(policies, tokenizer, conds, names,
                                                           per_class=req.class_samples, seeds=CLASS_SEEDS, real=real,
                                                           extractor=extractor, image_size=preset.image_size,
                                                           sampling=sampler)
                if per_class_cache is not None:
                    per_class_cache[key] = result.per_class
    say(0.95, "writing the images")
    path = alignment.save_view(view, out)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"view": req.view, "conditions": labels, "seeds": list(req.seeds),
                                "sampling": req.sampling, **data, "per_class": result.per_class,
                                "notes": result.notes}, indent=2))
    result.scores_path = path
    return result
