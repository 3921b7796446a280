"""Base vs aligned with the same seeds: what the Compare tab computes, without Gradio.

The views themselves (free-running, teacher-forced, shared prefix; difference maps, judge scores,
per-class numbers) are `core.eval.alignment`'s; this module resolves the sources, loads the models
through the app's cache and writes the files the page shows.

A side is a *source*: a generator preset with its published (or embedded) weights, written
"preset:<name>", or a run checkpoint named in `core.checkpoints`' weights grammar, "<run id>@<step>". Both sides sample the same (condition,
seed) list; `core.models.generate.generate_images` makes row i depend only on (cond[i], seeds[i]),
so equal weights give equal images and any difference comes from the weights.

Loaded models come from the app's ModelCache; sampling holds the device's lock, so two users never
sample on one GPU at the same time.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from app import fields
from app.safety import confine_weights
from core import imaging
from core.checkpoints import ref_text, resolve_weights
from core.errors import ConfigError, MissingWeightsError, UserError
from core.runs.store import RunNotFoundError, RunStore

MAX_IMAGES = 64  # pairs per request: sampling runs inside the request
MAX_CLASS_SAMPLES = 500  # per class and seed for the per-class numbers (sampled inside the request)


@dataclass(frozen=True)
class Source:
    value: str  # "preset:<name>" | "<run id>@<step>" (core.checkpoints.ref_text)
    label: str
    preset: str  # generator preset
    generator_weights: Optional[Path]  # None: the preset's own weights
    tokenizer_weights: Optional[Path]  # a decoder-baseline checkpoint's tokenizer.pt


@dataclass(frozen=True)
class Pair:
    caption: str
    base: Path
    aligned: Path
    identical: bool


@dataclass(frozen=True)
class Comparison:
    pairs: list[Pair]
    zip_path: Path
    base: Source
    aligned: Source
    view: Any = None  # core.eval.alignment.ViewResult
    per_class: list = field(default_factory=list)  # core.eval.alignment.class_numbers rows
    folder: Optional[Path] = None
    notes: list = field(default_factory=list)  # what could not be shown, and why


def preset_value(name: str) -> str:
    return f"preset:{name}"


def run_value(run_id: str, step: int) -> str:
    return ref_text(run_id, step)


def source_choices(store: RunStore) -> list[tuple[str, str]]:
    """(label, value) of every generator preset and every run checkpoint, newest run first."""
    from core.models import registry

    out = [(f"preset · {g.name}", preset_value(g.name)) for g in registry.all_generators()]
    for run in store.list_runs():
        for ckpt in reversed(store.checkpoints(run.id)):
            out.append((f"run · {run.id} · step {ckpt.step}", run_value(run.id, ckpt.step)))
    return out


def latest_checkpoint(store: RunStore, run_id: str | None = None) -> Optional[tuple[str, int]]:
    """(run id, step) of the newest checkpoint of `run_id` (or of the newest run that has one)."""
    runs = [store.get(run_id)] if run_id else store.list_runs()
    for run in runs:
        ckpt = store.last_checkpoint(run.id)
        if ckpt is not None:
            return run.id, ckpt.step
    return None


def latest_checkpoint_value(store: RunStore, run_id: str | None = None) -> Optional[str]:
    """The source value of `latest_checkpoint`."""
    found = latest_checkpoint(store, run_id)
    return run_value(*found) if found is not None else None


def parse_source(value: str | None, store: RunStore, field: str) -> Source:
    """A source value -> Source; ConfigError(field) for anything that does not name one."""
    from core.models import registry

    text = (value or "").strip()
    if text.startswith("preset:"):
        name = text[len("preset:"):]
        try:
            registry.get_generator(name)
        except ConfigError as e:
            raise ConfigError(field, str(e)) from None
        return Source(text, f"preset {name}", name, None, None)
    text = confine_weights(text, store.runs_dir, [store.runs_dir], field)  # before any other file access
    weights = resolve_weights(text, store.runs_dir, field=field, tokenizer_ok=True)
    if weights.run_id is None or not Path(weights.path).is_relative_to(store.runs_dir.resolve()):
        raise ConfigError(field, f"{text!r}: pick a preset or a run checkpoint from the list")
    run_id, step = weights.run_id, weights.step
    try:
        store.get(run_id)
    except RunNotFoundError:
        raise ConfigError(field, f"run {run_id} does not exist (deleted?)") from None
    config = store.read_config(run_id)
    preset = config.get("model")
    if not isinstance(preset, str):
        raise ConfigError(field, f"run {run_id}: its config names no model preset")
    if weights.is_tokenizer:
        init = config.get("init_weights")
        return Source(weights.checkpoint, f"{run_id} step {step}", preset, Path(init) if init else None,
                      Path(weights.path))
    return Source(weights.checkpoint, f"{run_id} step {step}", preset, Path(weights.path), None)


def _file_key(path: Optional[Path]) -> tuple:
    if path is None:
        return ()
    try:
        st = path.stat()
    except FileNotFoundError:
        return (str(path), None)
    return (str(path), st.st_size, st.st_mtime_ns)


def _load(source: Source, device: str):
    from core.models import checkpoint, load

    gen, tok = load.load_pair(source.preset, source.generator_weights, device)
    if source.tokenizer_weights is not None:  # a decoder-baseline checkpoint: its tokenizer, the preset's generator
        checkpoint.load_vq(tok, source.tokenizer_weights)
    return gen.eval(), tok.eval()


def load_source(ctx, source: Source, device: str):
    """(generator, tokenizer) of a source on `device`, through the app's model cache."""
    from core.models import registry

    preset = registry.get_generator(source.preset)
    key = ("pair", source.preset, _file_key(source.generator_weights or preset.path),
           _file_key(source.tokenizer_weights), _file_key(registry.get_tokenizer(preset.tokenizer).path), device)
    return ctx.models.get(key, lambda: _load(source, device))


def parse_seeds(text: str | Sequence[int] | None, field: str = "seeds") -> list[int]:
    """Seeds typed as "0, 1, 2, 3" (or spaces): each once, from 0 to 2^63 - 1."""
    return fields.numbers(field, text, whole=True, minimum=0, maximum=2**63 - 1, distinct=True)


def _checked_load(ctx, source: Source, device: str, field: str):
    """load_source, with a missing or unreadable weights file reported against `field`."""
    from core.errors import CheckpointError

    try:
        return load_source(ctx, source, device)
    except (MissingWeightsError, CheckpointError) as e:
        raise ConfigError(field, str(e)) from None


def _encode_prompts(ctx, policy, prompts: list[str], device: str, text_encoder: str):
    from core.models.load import condition_encoder
    from core.models.text import caption_encoder

    try:
        encode = condition_encoder(policy, "t2i", device, make_t5=lambda: ctx.models.get(
            ("text", text_encoder, device), lambda: caption_encoder(text_encoder, device)))
    except (MissingWeightsError, UserError) as e:
        raise ConfigError("prompts", str(e)) from None
    return encode(prompts)


def compare(ctx, base_value: str, aligned_value: str, *, classes=None, prompts=None, seeds="0, 1, 2, 3",
            cfg_scale: float = 1.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            device: str = "cpu", view: str = "free", prefix_rows=2, class_samples=0,
            real: Optional[str] = None, compile: str = "auto", progress=None) -> Comparison:
    """The form's values -> core.eval.compare.compare, under the device's lease, into a scratch folder, with a zip
    of the PNGs and scores.json; the models come from the app's cache, the per-class numbers from its cache when
    the same models, classes and sampling were measured before."""
    from core import device as devmod
    from core.eval import compare as C
    from core.models import registry
    from core.runs.threads import cpu_share

    base = parse_source(base_value, ctx.store, "base")
    aligned = parse_source(aligned_value, ctx.store, "aligned")
    task = registry.get_generator(base.preset).task
    items = [] if classes is None else ([classes] if isinstance(classes, (str, int)) else list(classes))
    lines = prompts if isinstance(prompts, (list, tuple)) else str(prompts or "").splitlines()
    request = C.CompareRequest(
        base.preset, aligned.preset, view=view, classes=items if task == "c2i" else None,
        prompts=[p for p in lines if p and p.strip()] if task == "t2i" else None, seeds=parse_seeds(seeds),
        sampling=dict(cfg_scale=fields.number("cfg_scale", cfg_scale),
                      temperature=fields.number("temperature", temperature),
                      top_k=fields.number("top_k", top_k, whole=True), top_p=fields.number("top_p", top_p)),
        prefix_rows=fields.number("prefix_rows", prefix_rows, whole=True, minimum=0, maximum=64),
        class_samples=fields.number("class_samples", class_samples or 0, whole=True, minimum=0,
                                    maximum=MAX_CLASS_SAMPLES), real=real, compile=compile)
    C.check(request)  # before any model is loaded
    conditions = len(request.prompts or request.classes or [])
    if conditions * len(request.seeds) > MAX_IMAGES:
        raise ConfigError("seeds", f"{conditions} conditions x {len(request.seeds)} seeds = "
                                   f"{conditions * len(request.seeds)} pairs; at most {MAX_IMAGES} per request")
    dev = str(devmod.resolve(device or "cpu"))
    if dev == "cuda":
        dev = "cuda:0"
    say = progress or (lambda share, what: None)
    say(0.02, "loading the two models")
    base_policy, tok = _checked_load(ctx, base, dev, "base")
    aligned_policy, _ = _checked_load(ctx, aligned, dev, "aligned")
    folder = ctx.new_scratch("compare-")
    say(0.05, f"waiting for {dev}")
    weights = tuple((s.value, _file_key(s.generator_weights), _file_key(s.tokenizer_weights)) for s in (base, aligned))
    with ctx.device_locks(dev), cpu_share(ctx.store, dev):  # beside a CPU run: half the cores, leased
        result = C.compare(request, {"base": base_policy, "aligned": aligned_policy}, tok, dev, folder,
                           encode_prompts=lambda p: _encode_prompts(ctx, base_policy, p, dev,
                                                                    registry.get_generator(base.preset).text_encoder),
                           per_class_cache=ctx.per_class_cache, weights=weights, progress=say)
    scores = json.loads(result.scores_path.read_text())
    manifest = {"base": base.value, "aligned": aligned.value, "device": dev, **scores}
    result.scores_path.write_text(json.dumps(manifest, indent=2))
    pairs = []
    for i, row in enumerate(result.view.rows):
        pairs.append(Pair(f"{row.caption}{' · identical' if row.scores['identical'] else ''}",
                          folder / f"{i:03d}_base.png", folder / f"{i:03d}_aligned.png", row.scores["identical"]))
    zip_path = folder / "pairs.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, row in enumerate(result.view.rows):
            for panel in row.panels:
                zf.write(folder / f"{i:03d}_{panel}.png", f"{panel}/{i:03d}_{imaging.slug(row.condition)}_seed{row.seed}.png")
        zf.writestr("manifest.json", json.dumps(manifest, indent=2))
    return Comparison(pairs, zip_path, base, aligned, result.view, result.per_class, folder, result.notes)
