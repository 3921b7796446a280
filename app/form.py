"""The Launch form's model, without Gradio: which fields it shows, their help and group, and the way
from the form's values back to a validated run (a preset plus the fields that differ from it), the
equivalent `python -m core train` command, and the form field an input error belongs to.

Every VapiConfig field is on the form except `device`, which follows from the device picker, and
`reward_weights`, shown as one weight per registered reward. Label, help text (meaning and paper source),
group and choices are each field's metadata in core/vapi/config.py, read through core.configmeta; each
field's widget, parsing and display are its kind's (app.fields).
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from app import fields as F
from core import configmeta
from core.errors import ConfigError, DataError
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
# Kinds the config's types do not give: the model dropdown, the data radio, class ids, seeds
KINDS = {"model": "model", "data": "radio", "preview_classes": "classes", "preview_prompts": "lines",
         "preview_seeds": "int_list"}
HIDDEN = frozenset({"device"})  # set from the device picker
MAX_NAME = 80
EXTRA_KEYS = ("preset", "name", "devices")  # form inputs that are not config fields


def _build_fields() -> list[F.Field]:
    from core.vapi.rewards import REWARDS

    out = []
    for spec in configmeta.specs(C.VapiConfig):
        if spec.name in HIDDEN:
            continue
        if spec.name == "reward_weights":
            order = list(spec.default) + sorted(set(REWARDS) - set(spec.default))
            for reward in order:
                out.append(F.Field(f"reward_weights.{reward}", "float", f"weight w of -d_{reward} in the reward "
                                   f"(0 = off); {spec.help}", float(spec.default.get(reward, 0.0)),
                                   label=f"weight of {reward}", group=spec.group, blank=0.0))
            continue
        out.append(F.from_spec(spec, KINDS.get(spec.name)))
    return out


def label_of(key: str) -> str:
    """"learning rate (learning_rate)": the field in words (its config label), its config key beside it."""
    return BY_NAME[key].title


FIELDS: list[F.Field] = _build_fields()
FIELD_NAMES: list[str] = [f.key for f in FIELDS]
BY_NAME: dict[str, F.Field] = {f.key: f for f in FIELDS}


def fields_in(group: str) -> list[F.Field]:
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
    return F.show(BY_NAME[name], value)


def preset_form_values(preset: str) -> dict[str, Any]:
    """Form values of every field for a run preset."""
    cfg = C.preset_values(preset)  # a paper preset is not a valid run until a data folder is given
    out = {}
    for f in FIELDS:
        if f.key.startswith("reward_weights."):
            out[f.key] = float(cfg["reward_weights"].get(f.key.split(".", 1)[1], 0.0))
        else:
            out[f.key] = to_form(f.key, cfg[f.key])
    return out


def from_form(name: str, raw: Any, model: str | None = None) -> Any:
    """A form input's value as the config wants it (app.fields.parse); ConfigError(name) when it cannot be read."""
    return F.parse(BY_NAME[name], raw, model=model, class_names=class_names_of(model) if model else ())


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
    warnings: list[str] = field(default_factory=list)  # preflight's (the estimate's), set by a full check
    data_summary: str = ""  # what preflight listed: the caption format found and the item count (a full check)

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
        value = from_form(f.key, values.get(f.key), model=model)
        if f.key.startswith("reward_weights."):
            if value != 0:
                weights[f.key.split(".", 1)[1]] = value
        else:
            parsed[f.key] = value
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
    if plan.cfg.data == "imagefolder":
        changes["data_path"] = str(confine(plan.cfg.data_path, data_roots, "data_path", kind="dir"))
    elif plan.cfg.data == "captions":  # a folder, a .tsv / .tar / .parquet file, or a shard pattern in a folder
        head, _, tail = str(plan.cfg.data_path or "").strip().rpartition("/")
        if any(c in tail for c in "{*?[") and head:
            from core.data.caption_formats import expand_braces

            if any(name in (".", "..") for name in expand_braces(tail)):  # the pattern's names stay in its folder
                raise ConfigError("data_path", f"{tail!r}: a shard pattern may not name '.' or '..'")
            changes["data_path"] = str(confine(head, data_roots, "data_path", kind="dir") / tail)
        else:
            changes["data_path"] = str(confine(plan.cfg.data_path, data_roots, "data_path", kind="any"))
    if plan.cfg.init_weights is not None:
        changes["init_weights"] = str(confine(plan.cfg.init_weights, weight_roots, "init_weights", kind="file"))
    if not changes:
        return plan
    overrides = {**plan.overrides, **changes}
    return LaunchPlan(plan.preset, plan.name, plan.devices, overrides, C.resolve(plan.preset, overrides))


PREFLIGHT_TIMEOUT_S = 120.0  # the launch handler runs one at a time: a check that takes longer gives up waiting


def preflight(plan: LaunchPlan, timeout_s: float | None = None) -> list[str]:
    """`checked_inputs` in a thread, waited on at most `timeout_s` (PREFLIGHT_TIMEOUT_S): a read that hangs
    (a stalled network mount) answers with an error instead of holding the one-at-a-time launch handler. The
    thread holds no lock and no device; it ends when its read does. Returns the estimate's warnings."""
    import threading

    box: list[tuple[list[str] | None, BaseException | None]] = []

    def run() -> None:
        try:
            box.append((checked_inputs(plan), None))
        except BaseException as e:  # noqa: BLE001 - re-raised in the handler's thread
            box.append((None, e))

    thread = threading.Thread(target=run, name="launch-preflight", daemon=True)
    thread.start()
    limit = PREFLIGHT_TIMEOUT_S if timeout_s is None else timeout_s
    thread.join(limit)
    if not box:
        raise ConfigError("data_path", f"checking the inputs took over {limit:g} s (a data folder on a stalled "
                                        "network mount?); nothing was launched. Point data_path at a local folder")
    warnings, error = box[0]
    if error is not None:
        raise error
    return warnings


class FormProblems(ConfigError):
    """Several input problems, each under its form field (`problems`: [(field, message)]); `field` is the first's."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(problems[0][0], f"{len(problems)} problems: "
                         + " · ".join(f"`{f}`: {m}" for f, m in problems))


def _form_problem(p) -> tuple[str, str]:
    """A core.vapi.preflight.Problem -> (the form field it belongs to, its message)."""
    error = p.error
    if isinstance(error, DataError) and p.field in ("data", "config"):
        return "data_path", p.message
    return p.field, p.message


def checked_inputs(plan: LaunchPlan) -> list[str]:
    """The trainer's input checks (model files, text encoder, LPIPS weights, data) with every problem tied to a form
    field: ConfigError keeps its field, a data problem is data_path, a missing LPIPS backbone is its reward weight,
    other missing weights are the model's. One problem raises ConfigError; several raise FormProblems. Returns the
    estimate's warnings (e.g. a paper-size model on the CPU, with its ETA)."""
    from core.vapi.preflight import collect

    checked, problems = collect(plan.cfg)
    if len(problems) == 1:
        raise ConfigError(*_form_problem(problems[0])) from None
    if problems:
        raise FormProblems([_form_problem(p) for p in problems])
    plan.data_summary = _data_summary(plan.cfg, checked.dataset)
    return checked.warnings


def _data_summary(cfg: C.VapiConfig, dataset) -> str:
    if dataset is None:
        return ""
    fmt = getattr(dataset, "format", "jsonl") if cfg.data == "captions" else cfg.data
    skipped = sum(getattr(dataset, "skipped_counts", {}).values())
    caption = getattr(dataset, "caption", None)
    examples = ", ".join(repr(caption(i)) for i in range(min(2, len(dataset)))) if callable(caption) else ""
    return (f"{fmt}, {len(dataset):,} items" + (f" ({skipped:,} left out: no caption or no image)" if skipped else "")
            + (f", e.g. {examples}" if examples else ""))


_ALIASES = {"tokenizer": "model", "device": "devices", "total_steps": "max_steps", "split": "data_path"}


def form_field_of(error_field: str) -> Optional[str]:
    """The form input an error's field names (None: no single input; show it with the form)."""
    if error_field in BY_NAME or error_field in EXTRA_KEYS:
        return error_field
    if error_field == "reward_weights" or error_field.startswith("reward_weights."):
        return next(f.key for f in FIELDS if f.key.startswith("reward_weights."))
    return _ALIASES.get(error_field)
