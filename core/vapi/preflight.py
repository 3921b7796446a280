"""`preflight(cfg)`: every input check of a run that needs no big allocation, before any heavy work.

The trainer calls it first; the Launch form calls it to validate without building a trainer. It reads the
preset, lists (and spot-checks) the data, and checks that every weights file the run will read is there
(generator, tokenizer, text encoder, LPIPS backbone).

It collects every problem rather than stopping at the first: a fresh machine usually lacks several things
(the data, the weights, the LPIPS backbone), and each is said once, with its fix, in one report. One problem
is raised as itself (a ConfigError, DataError or MissingWeightsError); several as a PreflightError listing
them all, each tied to the config field it belongs to (`Problem.field`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from core.errors import ConfigError, MissingWeightsError, UserError
from core.vapi import rewards
from core.vapi.config import VapiConfig, check_preview, check_sequence


@dataclass(frozen=True)
class Problem:
    field: str  # the config field it belongs to ("model", "data_path", "reward_weights.lpips", "device", ...)
    error: UserError  # the error as its check raised it (its message names the file or field and the fix)

    @property
    def message(self) -> str:
        text = str(self.error)
        if isinstance(self.error, ConfigError):  # "field: message" -> message
            text = text[len(self.error.field) + 2:]
        return text


class PreflightError(UserError):
    """Several problems at once (a single one is raised as itself)."""

    def __init__(self, problems: list[Problem], footer: str = ""):
        self.problems, self.footer = problems, footer
        lines = [f"{len(problems)} problems stop this run (fix them all, then start again):"]
        for p in problems:
            body = p.message.replace("\n", "\n      ")
            lines.append(f"  - {p.field}: {body}")
        super().__init__("\n".join(lines + ([footer] if footer else [])))


@dataclass
class Checked:
    generator_preset: Any  # core.models.registry.GeneratorPreset (cfg.model), not the run preset
    dataset: Any  # the run's dataset (core.data.build.build_dataset), listed and spot-checked
    warnings: list[str] = field(default_factory=list)  # not blockers (e.g. a paper-size model on the CPU)


def problems_of(error: UserError, default_field: str) -> list[Problem]:
    """A caught error as problems: a PreflightError's own list, a ConfigError under its field, anything else
    under `default_field`."""
    if isinstance(error, PreflightError):
        return list(error.problems)
    return [Problem(error.field if isinstance(error, ConfigError) else default_field, error)]


class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def check(self, default_field: str, fn: Callable[[], Any]) -> Optional[Any]:
        """fn()'s value, or None after recording its UserError under its field (or `default_field`)."""
        try:
            return fn()
        except UserError as e:
            self.problems += problems_of(e, default_field)
            return None


def _check_data_kind(cfg: VapiConfig, preset) -> None:
    if preset.task == "c2i" and cfg.data == "captions":
        raise ConfigError("data", f"{cfg.model} is class-conditional: use data=imagefolder or shapes, not captions")
    if preset.task == "t2i" and cfg.data not in ("captions", "shapes"):
        raise ConfigError("data", f"{cfg.model} is text-conditional: use data=captions")
    if preset.task == "t2i" and cfg.data == "shapes" and not preset.demo_sized:
        raise ConfigError("data", f"{cfg.model} is text-conditional: use data=captions (shapes captions fit demo-t2i only)")
    if cfg.data == "shapes" and not preset.demo_sized:
        raise ConfigError("data", "the shapes domain only fits the demo models (model=demo-c2i or demo-t2i)")


def _build_data(cfg: VapiConfig, preset):
    """List (and spot-check) the data before any weights are read; shapes for a T2I model: with captions."""
    from core.data.build import build_dataset, check_readable

    options = {"with_captions": True} if cfg.data == "shapes" and preset.task == "t2i" else {}
    dataset = build_dataset(cfg.data, cfg.data_path, image_size=preset.image_size, subset=cfg.data_subset, seed=cfg.seed,
                            **options)
    check_readable(dataset, cfg.data_path)
    return dataset


def _check_weights(cfg: VapiConfig, preset) -> list[Problem]:
    """One problem per missing file (generator, tokenizer, text encoder), each with its download command."""
    from core.models import registry

    files = registry.files_of(cfg.model)
    out = []
    if cfg.init_weights is not None:
        from core.models.checkpoint import check_weights

        try:  # what the file is (FIFO, directory, text, truncated, pickle with code), nothing unpickled
            check_weights(cfg.init_weights, "init_weights", folder=preset.folder)
        except UserError as e:
            out += problems_of(e, "init_weights")
        files = [f for f in files if f.role != "generator"]
    for f in files:
        if not f.present:
            out.append(Problem("model", MissingWeightsError(f"missing weights: {f.line()}")))
    return out


def _check_rewards(cfg: VapiConfig) -> list[Problem]:
    out = []
    for name, weight in cfg.reward_weights.items():
        if weight > 0 and name in rewards.LPIPS_NETS:
            try:
                rewards.check_backbone(rewards.LPIPS_NETS[name])
            except MissingWeightsError as e:
                out.append(Problem(f"reward_weights.{name}", e))
    return out


def collect(cfg: VapiConfig) -> tuple[Optional[Checked], list[Problem]]:
    """Every problem of a run's inputs, each under its config field; the checked inputs when there are none."""
    from core.models import registry

    found = _Collector()
    if cfg.device != "auto":
        from core import device as devmod

        found.check("device", lambda: devmod.resolve(cfg.device))  # cuda without CUDA: said now, not in the worker
    preset = found.check("model", lambda: registry.get_generator(cfg.model))
    dataset = None
    if preset is not None:
        before = len(found.problems)
        found.check("data", lambda: _check_data_kind(cfg, preset))
        kind_ok = len(found.problems) == before
        num_classes = int(preset.overrides.get("num_classes", 1000)) if preset.task == "c2i" else None
        found.check("config", lambda: check_preview(cfg, num_classes))
        found.check("config", lambda: check_sequence(cfg, preset.num_tokens))
        if kind_ok:
            dataset = found.check("data_path", lambda: _build_data(cfg, preset))
        found.problems += _check_weights(cfg, preset)
    found.problems += _check_rewards(cfg)
    if found.problems:
        return None, found.problems
    from core.vapi.estimate import quick_warnings

    return Checked(generator_preset=preset, dataset=dataset, warnings=quick_warnings(cfg)), []


def preflight(cfg: VapiConfig) -> Checked:
    """Check a run's inputs, all of them; raise the one problem found, or a PreflightError listing every one."""
    checked, problems = collect(cfg)
    if len(problems) == 1:
        raise problems[0].error
    if problems:
        weights = [p for p in problems if isinstance(p.error, MissingWeightsError)]
        footer = (f"Every missing weights file at once: `python -m core download --preset {cfg.model}`"
                  if len(weights) > 1 else "")
        raise PreflightError(problems, footer)
    return checked
