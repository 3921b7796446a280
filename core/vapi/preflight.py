"""`preflight(cfg)`: every input check of a run that needs no big allocation, before any heavy work.

The trainer calls it first; the Launch form calls it to validate without building a trainer. It reads the
preset, lists (and spot-checks) the data, and checks that every weights file the run will read is there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from core.vapi import rewards
from core.vapi.config import VapiConfig, check_preview, check_sequence


@dataclass
class Checked:
    preset: Any  # core.models.registry.GeneratorPreset
    dataset: Any  # the run's dataset (core.data.build.build_dataset), listed and spot-checked


def preflight(cfg: VapiConfig) -> Checked:
    """Check a run's inputs; raise the error that names the field or file (and the fix) at the first problem."""
    from core.data.build import build_dataset, check_readable
    from core.models import registry
    from core.models.checkpoint import check_weights

    if cfg.device != "auto":
        from core import device as devmod

        devmod.resolve(cfg.device)  # cuda on a machine without CUDA: an error now, not in the worker
    preset = registry.get_generator(cfg.model)
    if preset.task == "c2i" and cfg.data == "captions":
        raise ConfigError("data", f"{cfg.model} is class-conditional: use data=imagefolder or shapes, not captions")
    if preset.task == "t2i" and cfg.data not in ("captions", "shapes"):
        raise ConfigError("data", f"{cfg.model} is text-conditional: use data=captions")
    if preset.task == "t2i" and cfg.data == "shapes" and preset.size != "demo":
        raise ConfigError("data", f"{cfg.model} is text-conditional: use data=captions (shapes captions fit demo-t2i only)")
    if cfg.data == "shapes" and preset.size != "demo":
        raise ConfigError("data", "the shapes domain only fits the demo models (model=demo-c2i or demo-t2i)")
    check_preview(cfg, int(preset.overrides.get("num_classes", 1000)) if preset.task == "c2i" else None)
    check_sequence(cfg, preset.num_tokens)
    # lists (and spot-checks) the data before any weights are read; shapes for a T2I model: with captions
    options = {"with_captions": True} if cfg.data == "shapes" and preset.task == "t2i" else {}
    dataset = build_dataset(cfg.data, cfg.data_path, image_size=preset.image_size, subset=cfg.data_subset, seed=cfg.seed,
                            **options)
    check_readable(dataset, cfg.data_path)
    if cfg.init_weights is None:
        registry.require_files(cfg.model)
    else:
        check_weights(cfg.init_weights, "init_weights", folder=preset.folder)
        tok = registry.get_tokenizer(preset.tokenizer)
        if not tok.present:
            raise registry.MissingWeightsError(f"missing tokenizer {tok.path} — {registry.download_hint(tok.filename, tok.repo_id)}")
    rewards.check_available(cfg.reward_weights)
    return Checked(preset=preset, dataset=dataset)
