"""The Launch form's model, without Gradio: which fields it shows, their help and group, and the way
from the form's values back to a validated run (a preset plus the fields that differ from it), the
equivalent `python -m core train` command, and the form field an input error belongs to.

Every VapiConfig field is on the form except `device`, which follows from the device picker, and
`reward_weights`, shown as one weight per registered reward. Help text (meaning and paper source),
group and choices are each field's metadata in core/vapi/config.py, read through core.configmeta.
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from core import configmeta
from core.errors import ConfigError, DataError, MissingWeightsError, UserError
from core.vapi import config as C

GROUPS = ("model", "data", "rollout", "reward", "objective", "optimisation", "checkpoints")
GROUP_TITLES = {
    "model": "Model and method",
    "data": "Data",
    "rollout": "Rollout (teacher-forced sampling)",
    "reward": "Reward (Eq. 10)",
    "objective": "Objective (Eq. 11)",
    "optimisation": "Optimisation",
    "checkpoints": "Checkpoints, metrics and previews",
}
_KIND_BY_NAME = {"preview_classes": "classes", "preview_prompts": "lines", "preview_seeds": "int_list",
                 "report_to": "multichoice", "model": "model"}
_KIND_BY_TYPE = {(bool, False): "bool", (int, False): "int", (float, False): "float", (float, True): "optional_float",
                 (str, False): "text", (str, True): "optional_text"}  # (type, Optional) -> input kind
HIDDEN = frozenset({"device"})  # set from the device picker
MAX_NAME = 80
EXTRA_KEYS = ("preset", "name", "devices")  # form inputs that are not config fields


@dataclass(frozen=True)
class FormField:
    """One input of the form. `name` is the config key ("reward_weights.<reward>" for a weight)."""

    name: str
    group: str
    kind: str  # model | choice | multichoice | bool | int | float | optional_float | optional_text | int_list | lines | classes
    help: str
    default: Any  # VapiConfig's default, as the config holds it
    choices: tuple = ()


def _build_fields() -> list[FormField]:
    from core.vapi.rewards import REWARDS

    out = []
    for spec in configmeta.specs(C.VapiConfig):
        if spec.name in HIDDEN:
            continue
        if spec.name == "reward_weights":
            order = list(spec.default) + sorted(set(REWARDS) - set(spec.default))
            for reward in order:
                out.append(FormField(f"reward_weights.{reward}", spec.group, "float",
                                     f"weight w of -d_{reward} in the reward (0 = off); {spec.help}",
                                     float(spec.default.get(reward, 0.0))))
            continue
        if spec.name in _KIND_BY_NAME:
            kind = _KIND_BY_NAME[spec.name]
        elif spec.choices:
            kind = "choice"
        elif (spec.type, spec.optional) in _KIND_BY_TYPE:
            kind = _KIND_BY_TYPE[spec.type, spec.optional]
        else:
            raise TypeError(f"VapiConfig.{spec.name}: no form input for type {spec.type!r}; add it to app/form.py")
        out.append(FormField(spec.name, spec.group, kind, spec.help, spec.default, spec.choices))
    return out


# Field labels in words; the config key is shown beside them (`label_of`). Keys not listed read as their words.
WORDS = {
    "model": "generator", "method": "method", "init_weights": "starting weights", "data": "data source",
    "data_path": "data folder", "data_subset": "images used", "image_size": "image size (px)",
    "num_generations": "samples per image G", "temperature": "sampling temperature τ", "xi": "context noise ξ",
    "xi_schedule": "ξ schedule", "xi_end": "final ξ", "cond_drop_prob": "condition dropout",
    "reward_chunk_size": "decode chunk size", "rollout_mode": "rollout model mode",
    "beta": "prior weight β", "prior": "prior", "epsilon": "PPO clip ε", "advantage_clip": "advantage clip A_max",
    "policy_coef": "policy loss weight", "num_iterations": "PPO iterations per rollout",
    "learning_rate": "learning rate", "weight_decay": "weight decay", "adam_beta1": "Adam β1",
    "adam_beta2": "Adam β2", "adam_epsilon": "Adam ε", "max_grad_norm": "max gradient norm",
    "global_batch_size": "images per step", "per_device_train_batch_size": "images per device and micro-step",
    "max_steps": "training steps", "warmup_steps": "warm-up steps", "lr_scheduler": "learning-rate schedule",
    "mixed_precision": "precision", "seed": "seed", "save_steps": "checkpoint every N steps",
    "save_total_limit": "checkpoints kept", "logging_steps": "log every N steps",
    "preview_steps": "preview every N steps",
    "cache_tokens": "cache the x* tokens", "preview_classes": "preview classes",
    "preview_prompts": "preview prompts", "preview_seeds": "preview seeds", "kl_probe_size": "KL probe size",
    "report_to": "also report to", "gradient_checkpointing": "gradient checkpointing",
}


def label_of(key: str) -> str:
    """"learning rate (learning_rate)": the field in words, its config key beside it."""
    if key.startswith("reward_weights."):
        return f"weight of {key.split('.', 1)[1]} ({key})"
    words = WORDS.get(key, key.replace("_", " "))
    return words if words == key else f"{words} ({key})"


FIELDS: list[FormField] = _build_fields()
FIELD_NAMES: list[str] = [f.name for f in FIELDS]
BY_NAME: dict[str, FormField] = {f.name: f for f in FIELDS}


def fields_in(group: str) -> list[FormField]:
    return [f for f in FIELDS if f.group == group]


# ----------------------------------------------------------------------------- models and classes
def model_names() -> list[str]:
    """Generator presets of the registry, plus any model a run preset names (so a preset can always be
    shown, and a missing family is reported by the check, not by the dropdown)."""
    from core.models import registry

    names = [g.name for g in registry.all_generators()]
    for preset in C.preset_names():
        model = C.preset(preset).get("model")
        if model and model not in names:
            names.append(model)
    return names


def model_task(model: str) -> str | None:
    """"c2i" or "t2i" for a registered generator preset, None for an unknown one."""
    from core.models import registry

    try:
        return registry.get_generator(model).task
    except ConfigError:
        return None


def class_names_of(model: str) -> tuple[str, ...]:
    """Class names of a class-conditional preset (the demo's 10 or ImageNet's 1000); () otherwise."""
    from core.data.classes import class_names_for
    from core.models import registry

    try:
        preset = registry.get_generator(model)
    except ConfigError:
        return ()
    if preset.task != "c2i":
        return ()
    return class_names_for(int(preset.overrides.get("num_classes", 1000)))


def class_choices(model: str) -> list[tuple[str, int]]:
    return [(f"{name} ({i})", i) for i, name in enumerate(class_names_of(model))]


# ----------------------------------------------------------------------------- values
def to_form(name: str, value: Any) -> Any:
    """A config value as its form input shows it."""
    kind = BY_NAME[name].kind
    if kind == "int_list":
        return ", ".join(str(v) for v in value or [])
    if kind == "lines":
        return "\n".join(value or [])
    if kind in ("classes", "multichoice"):
        return list(value or [])
    if kind == "optional_text":
        return value or ""
    return value


def preset_form_values(preset: str) -> dict[str, Any]:
    """Form values of every field for a run preset."""
    cfg = C.preset_values(preset)  # a paper preset is not a valid run until a data folder is given
    out = {}
    for f in FIELDS:
        if f.name.startswith("reward_weights."):
            out[f.name] = float(cfg["reward_weights"].get(f.name.split(".", 1)[1], 0.0))
        else:
            out[f.name] = to_form(f.name, cfg[f.name])
    return out


def _number(name: str, raw: Any, whole: bool) -> int | float:
    what = "a whole number" if whole else "a number"
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        # a browser number box sends nothing both when it is empty and when what was typed is not a number
        raise ConfigError(name, f"expected {what} (the box is empty or holds something that is not a number)")
    if isinstance(raw, bool):
        raise ConfigError(name, f"expected {what}, got {raw!r}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(name, f"expected {what}, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(name, f"expected a finite number, got {raw!r}")
    if whole:
        if not value.is_integer():
            raise ConfigError(name, f"expected a whole number, got {raw!r}")
        return int(value)
    return value


def from_form(name: str, raw: Any, model: str | None = None) -> Any:
    """A form input's value as the config wants it; ConfigError(name) when it cannot be read."""
    f = BY_NAME[name]
    kind = f.kind
    if kind == "bool":
        if not isinstance(raw, bool):
            raise ConfigError(name, f"expected true or false, got {raw!r}")
        return raw
    if kind == "int":
        return _number(name, raw, whole=True)
    if kind == "float":
        if name.startswith("reward_weights.") and (raw is None or raw == ""):
            return 0.0
        return _number(name, raw, whole=False)
    if kind == "optional_float":
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        value = _number(name, raw, whole=False)
        return int(value) if value > 1 and float(value).is_integer() else value
    if kind in ("choice", "model", "text"):
        if not isinstance(raw, str) or not raw.strip():
            choices = f"; one of {', '.join(f.choices)}" if f.choices else ""
            raise ConfigError(name, f"required{choices}")
        return raw.strip()
    if kind == "optional_text":
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise ConfigError(name, f"expected text, got {raw!r}")
        return raw.strip() or None
    if kind == "multichoice":
        items = [] if raw is None else ([raw] if isinstance(raw, str) else list(raw))
        bad = [x for x in items if x not in f.choices]
        if bad:
            raise ConfigError(name, f"unknown {', '.join(map(str, bad))}; choose from {', '.join(f.choices)}")
        return items
    if kind == "int_list":
        text = ",".join(str(x) for x in raw) if isinstance(raw, (list, tuple)) else str(raw or "")
        items = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
        try:
            values = [int(t) for t in items]
        except ValueError:
            raise ConfigError(name, f"expected whole numbers separated by commas, got {text!r}") from None
        return values
    if kind == "lines":
        items = raw if isinstance(raw, (list, tuple)) else str(raw or "").splitlines()
        lines = [str(t).strip() for t in items if str(t).strip()]
        return lines or None
    if kind == "classes":
        items = [] if raw is None else ([raw] if isinstance(raw, (str, int)) else list(raw))
        if not items:
            return None
        names = class_names_of(model) if model else ()
        if not names:
            raise ConfigError(name, f"{model} has no classes (it is text-conditional: use preview_prompts)")
        from core.data.classes import resolve_classes

        return resolve_classes(items, names, field=name)
    raise TypeError(f"unknown form kind {kind!r}")


def parse_devices(selected: Sequence[str] | str | None) -> tuple[str, str]:
    """The device picker's selection -> (device set for the launcher, the config's device field)."""
    from core.device import picked_devices

    devices = picked_devices(selected)
    return devices, ("cpu" if devices == "cpu" else "cuda")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return a == b


@dataclass
class LaunchPlan:
    """A checked launch: what `core.runs.kinds.submit` gets, and the same run as a CLI command."""

    preset: str
    name: str
    devices: str
    overrides: dict[str, Any]
    cfg: C.VapiConfig

    def config(self) -> dict[str, Any]:
        """The run's config.json."""
        from core.runs import kinds

        return kinds.record(kinds.TRAIN, self.cfg)

    @property
    def cli(self) -> str:
        return cli_command(self.preset, self.overrides, self.devices, self.name)


def _cli_value(value: Any) -> str:
    """A --set value that core.vapi.config.parse_overrides reads back as `value`."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            if value.lower() not in ("none", "null", "true", "false"):
                return value
        return json.dumps(value)
    return json.dumps(value)


def cli_command(preset: str, overrides: dict[str, Any], devices: str, name: str) -> str:
    """`python -m core train --preset P --set k=v ...` for the same run (only fields that differ from P)."""
    from core.device import gpu_ids

    args = ["python", "-m", "core", "train", "--preset", preset]
    if name and name != preset:
        args += ["--name", name]
    ids = gpu_ids(devices)
    if ids:
        args += ["--devices", devices]
    lines = [shlex.join(args)]
    lines += [shlex.join(["--set", f"{key}={_cli_value(overrides[key])}"]) for key in sorted(overrides)]
    command = " \\\n    ".join(lines)
    if ids:
        command = f"CUDA_VISIBLE_DEVICES={','.join(map(str, ids))} " + command
    if len(ids) > 1:
        command = ("# the UI runs this on several GPUs through `accelerate launch`; the train command runs one\n"
                   "# process, so from a terminal it uses the first of these GPUs\n" + command)
    return command


def build_plan(preset: str, values: dict[str, Any], devices: Sequence[str] | str | None, name: str | None) -> LaunchPlan:
    """Form values -> a LaunchPlan whose config passed VapiConfig's own checks (no files are read).
    Raises ConfigError naming the form field (a config key, or "preset", "name", "devices")."""
    if not isinstance(preset, str) or preset not in C.preset_names():
        raise ConfigError("preset", f"unknown preset {preset!r}; one of {', '.join(C.preset_names())}")
    run_name = (name or "").strip() or preset
    if len(run_name) > MAX_NAME:
        raise ConfigError("name", f"{len(run_name)} characters; keep it under {MAX_NAME}")
    device_set, device_field = parse_devices(devices)
    model = from_form("model", values.get("model"))
    parsed: dict[str, Any] = {}
    weights: dict[str, float] = {}
    for f in FIELDS:
        value = from_form(f.name, values.get(f.name), model=model)
        if f.name.startswith("reward_weights."):
            if value != 0:
                weights[f.name.split(".", 1)[1]] = value
        else:
            parsed[f.name] = value
    parsed["reward_weights"] = weights
    parsed["device"] = device_field
    base = C.preset_values(preset)
    overrides = {k: v for k, v in parsed.items() if not _same(base[k], v)}
    cfg = C.resolve(preset, overrides)
    return LaunchPlan(preset=preset, name=run_name, devices=device_set, overrides=overrides, cfg=cfg)


def confine_paths(plan: LaunchPlan, data_roots: Sequence[Path], weight_roots: Sequence[Path]) -> LaunchPlan:
    """Check the plan's paths against the roots and write them back resolved (absolute, no symlinks)."""
    from app.safety import confine

    changes = {}
    if plan.cfg.data in ("imagefolder", "captions"):
        changes["data_path"] = str(confine(plan.cfg.data_path, data_roots, "data_path", kind="dir"))
    if plan.cfg.init_weights is not None:
        changes["init_weights"] = str(confine(plan.cfg.init_weights, weight_roots, "init_weights", kind="file"))
    if not changes:
        return plan
    overrides = {**plan.overrides, **changes}
    return LaunchPlan(plan.preset, plan.name, plan.devices, overrides, C.resolve(plan.preset, overrides))


def preflight(plan: LaunchPlan) -> None:
    """The trainer's input checks (model files, LPIPS weights, data folder) with each error tied to a
    form field: ConfigError keeps its field, a data problem is data_path, a missing LPIPS backbone is
    its reward weight, other missing weights are the model's."""
    from core.vapi import rewards
    from core.vapi.preflight import preflight as preflight_run

    cfg = plan.cfg
    for reward, weight in cfg.reward_weights.items():
        if weight > 0 and reward in rewards.LPIPS_NETS:
            try:
                rewards.check_backbone(rewards.LPIPS_NETS[reward])
            except MissingWeightsError as e:
                raise ConfigError(f"reward_weights.{reward}", str(e)) from None
    try:
        preflight_run(cfg)
    except ConfigError:
        raise
    except DataError as e:
        raise ConfigError("data_path", str(e)) from None
    except MissingWeightsError as e:  # the preset's generator or tokenizer file
        raise ConfigError("model", str(e)) from None
    except UserError as e:
        raise ConfigError("config", str(e)) from None


_ALIASES = {"tokenizer": "model", "device": "devices", "total_steps": "max_steps", "split": "data_path"}


def form_field_of(error_field: str) -> Optional[str]:
    """The form input an error's field names (None: no single input; show it with the form)."""
    if error_field in BY_NAME or error_field in EXTRA_KEYS:
        return error_field
    if error_field == "reward_weights" or error_field.startswith("reward_weights."):
        return next(f.name for f in FIELDS if f.name.startswith("reward_weights."))
    return _ALIASES.get(error_field)
