"""What a sweep is (`SweepConfig`) and its variants (`expand`).

A sweep starts from a run preset plus `overrides` (the CLI's `--set`, applied to every variant) and
varies fields (`vary`: field -> values). `mode` "grid" trains every combination; "one-at-a-time" changes
one field at a time from the preset. The preset itself is always a row ("preset"): verdicts are read
against it and against the base model. Every variant's run config is resolved and validated through
`VapiConfig.from_dict` by `expand`, before anything is queued: a bad value is a ConfigError naming the
field and the variant.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from core import configmeta
from core.configmeta import setting
from core.errors import ConfigError
from core.vapi.config import DEFAULT_PRESET

MODES = ("grid", "one-at-a-time")
EVALS = ("demo", "fid", "adherence")
PRESET_VARIANT = "preset"
MAX_VARIANTS = 64  # more is a typo in a grid (5 fields x 3 values = 243 runs), not an overnight queue


@dataclass
class SweepConfig:
    """One sweep: what to train and how each variant is measured."""

    preset: str = setting(DEFAULT_PRESET, help="the run preset every variant starts from (python -m core train --preset)")
    overrides: dict = setting(default_factory=dict, help="fields set in every variant (the CLI's --set k=v)")
    vary: dict = setting(default_factory=dict, help="field -> list of values to try (the CLI's --vary FIELD=V1,V2)")
    mode: str = setting("grid", choices=MODES, help="grid: every combination; one-at-a-time: one field changed from the preset per run")
    eval: str = setting("demo", choices=EVALS, help="demo: demo-FID, class accuracy, diversity (demo models); fid: FID/precision/recall against `reference`; adherence: prompt adherence per category (demo-t2i)")
    num_samples: int = setting(1000, help="samples per sampling seed for each evaluation")
    num_seeds: int = setting(3, help="sampling seeds 0..S-1 (unless `seeds`): numbers are mean ± std over them, verdicts paired by seed")
    seeds: Optional[list[int]] = setting(None, help="the sampling seeds themselves (instead of 0..num_seeds-1)")
    reference: Optional[str] = setting(None, help="eval fid: the real images (an .npz, an image folder, or shapes[:split]); demo models: shapes:reference")
    extractor: Optional[str] = setting(None, help="eval fid: feature extractor (inception, dinov2, clip, demo); demo models: demo")

    def __post_init__(self):
        for name in ("preset", "mode", "eval"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(name, f"expected text, got {getattr(self, name)!r}")
        if self.mode not in MODES:
            raise ConfigError("mode", f"{self.mode!r}; expected one of {', '.join(MODES)}")
        if self.eval not in EVALS:
            raise ConfigError("eval", f"{self.eval!r}; expected one of {', '.join(EVALS)}")
        if not isinstance(self.overrides, dict):
            raise ConfigError("overrides", f"expected a mapping of field -> value, got {self.overrides!r}")
        if not isinstance(self.vary, dict) or not self.vary:
            raise ConfigError("vary", "give at least one field to vary, e.g. --vary learning_rate=1e-5,3e-5")
        for name, values in self.vary.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"vary {name}", f"expected a non-empty list of values, got {values!r}")
            if name in self.overrides or name.split(".", 1)[0] in self.overrides:
                raise ConfigError(f"vary {name}", "is also set with --set; vary it or set it, not both")
        for name in ("num_samples", "num_seeds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(name, f"{v!r}; expected a positive integer")
        if self.num_samples > 1_000_000:
            raise ConfigError("num_samples", f"{self.num_samples:g} is more than an evaluation draws (at most 1,000,000)")
        if self.seeds is not None:
            if (not isinstance(self.seeds, list) or not self.seeds
                    or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds)):
                raise ConfigError("seeds", f"{self.seeds!r}; expected a list of non-negative integers")
            if len(set(self.seeds)) != len(self.seeds):
                raise ConfigError("seeds", f"{self.seeds}: each seed once")

    def sampling_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else list(range(self.num_seeds))

    @property
    def total_steps(self) -> int:
        """The sweep's progress units: the base model's evaluation and each run (the preset and its variants)."""
        return len(expand(self)) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        return configmeta.from_dict(cls, d, "a sweep config", ignore=("entry",))


@dataclass(frozen=True)
class Variant:
    name: str  # "preset", or "field=value[, field=value]"
    changes: dict  # the varied fields' values (empty for the preset)
    config: dict = field(repr=False)  # the resolved, validated run config (VapiConfig.to_dict())

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-")[:60] or "variant"


def _value_text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def variant_name(changes: dict) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in changes.items()) or PRESET_VARIANT


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"none": None, "null": None, "true": True, "false": False}.get(text.lower(), text)


def parse_vary(items: list[str]) -> dict[str, list]:
    """["learning_rate=1e-5,3e-5", 'reward_weights={"mse":1},{"mse":1,"encoder":10}'] -> {field: [values]}.
    Values parse as JSON where the comma-separated list does (numbers, true/false, objects), else as text."""
    out: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--vary", f"expected FIELD=V1,V2,..., got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        if not key or not raw:
            raise ConfigError("--vary", f"expected FIELD=V1,V2,..., got {item!r}")
        if key in out:
            raise ConfigError(f"vary {key}", "given twice; list all its values in one --vary")
        try:
            values = json.loads(f"[{raw}]")
        except json.JSONDecodeError:  # text values: lr=1e-5,fast or prior=ce,kl
            values = [_scalar(v.strip()) for v in raw.split(",")]
        out[key] = values
    return out


def _changes(cfg: SweepConfig) -> list[dict]:
    fields = list(cfg.vary)
    if cfg.mode == "grid":
        return [dict(zip(fields, combo)) for combo in itertools.product(*(cfg.vary[f] for f in fields))]
    return [{f: v} for f in fields for v in cfg.vary[f]]


def expand(cfg: SweepConfig) -> list[Variant]:
    """The preset first, then every variant of `cfg`, each resolved and validated (a variant equal to the
    preset, or to an earlier one, is dropped). ConfigError names the field and the variant."""
    from core.vapi import config as C

    try:
        preset = C.resolve(cfg.preset, cfg.overrides).to_dict()
    except ConfigError as e:
        where = "preset" if e.field == "preset" else f"{e.field} (--set, in every variant)"
        raise ConfigError(where, str(e).split(": ", 1)[-1]) from None
    variants = [Variant(PRESET_VARIANT, {}, preset)]
    seen = {json.dumps(preset, sort_keys=True)}
    for changes in _changes(cfg):
        name = variant_name(changes)
        try:
            resolved = C.resolve(cfg.preset, {**cfg.overrides, **changes}).to_dict()
        except ConfigError as e:
            raise ConfigError(e.field, f"variant {name!r}: {str(e).split(': ', 1)[-1]}") from None
        key = json.dumps(resolved, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        variants.append(Variant(name, changes, resolved))
    if len(variants) == 1:
        raise ConfigError("vary", "every value equals the preset's; nothing to compare")
    if len(variants) - 1 > MAX_VARIANTS:
        raise ConfigError("vary", f"{len(variants) - 1} variants; at most {MAX_VARIANTS} per sweep "
                                  "(use --one-at-a-time, or fewer values)")
    return variants
