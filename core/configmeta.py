"""Config metadata as data, and what is generated from it.

A config dataclass (VapiConfig, EvalConfig, EmbeddingConfig) declares each field with `setting(...)`:
a `dataclasses.field` whose metadata holds the help text (meaning and paper source), the form group
and the allowed values, as TRL's configs do with `field(metadata={"help": ...})`. This module owns
reading that metadata back (a field's label, its words for forms, sits beside its help): `specs` (one FieldSpec per field, for forms), `add_arguments` /
`values_from_args` (argparse options for a CLI) and `from_dict` (a checked constructor from a
config.json). Standard library only, so any config module can import it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Optional

from core.errors import ConfigError


MAX_JOB_STEPS = 1_000_000  # a run's steps or a job's samples: beyond this it is a typo (num_samples=1e12), not a job


def setting(default: Any = MISSING, *, help: str, group: str = "", choices: Iterable = (),
            default_factory: Any = MISSING, minimum: Any = None, maximum: Any = None, why: str = "",
            label: str = "") -> Any:
    """A dataclass field carrying its label (the field in words, for forms; empty: its name), help text, form
    group, allowed values (empty: any value) and bounds (None: unbounded on that side) with the reason for them
    (`why`), which `from_dict` checks: a number's value, or a list field's length (`maximum` items)."""
    metadata = {"help": help, "group": group, "choices": tuple(choices), "minimum": minimum, "maximum": maximum,
                "why": why, "label": label}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


@dataclass(frozen=True)
class FieldSpec:
    """One config field as a form or CLI needs it."""

    name: str
    type: type  # bool | int | float | str | list | dict (the type inside Optional[...])
    item: Optional[type]  # a list's element type (list[str] -> str); None: not a list, or any element
    optional: bool  # Optional[...]: None is a value
    default: Any  # a fresh copy for list / dict defaults
    help: str
    group: str
    choices: tuple
    minimum: Any = None  # a number's bounds (None: none on that side), checked by `from_dict` ...
    maximum: Any = None
    why: str = ""  # ... and the reason for them, which the error repeats
    label: str = ""  # the field in words ("learning rate"); "" = its name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _unwrap(hint: Any) -> tuple[type, Optional[type], bool]:
    """(type, list element type, optional) of an annotation such as Optional[list[str]]."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    inner = typing.get_args(hint)
    item = inner[0] if origin is list and inner and isinstance(inner[0], type) else None
    return origin, item, optional


def specs(cls: type) -> list[FieldSpec]:
    """Every field of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, item, optional = _unwrap(hints[f.name])
        out.append(FieldSpec(f.name, kind, item, optional, _default_of(f), f.metadata.get("help", ""),
                             f.metadata.get("group", ""), tuple(f.metadata.get("choices", ())),
                             f.metadata.get("minimum"), f.metadata.get("maximum"), f.metadata.get("why", ""),
                             f.metadata.get("label", "")))
    return out


def spec_of(cls: type, name: str) -> FieldSpec:
    """One field's spec; KeyError naming the class when it has no such field."""
    for s in specs(cls):
        if s.name == name:
            return s
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def defaults(cls: type) -> dict[str, Any]:
    """Every field's default, without constructing (and so validating) the config."""
    return {s.name: s.default for s in specs(cls)}


def _shown(value: Any) -> str:
    """A number as an error shows it: 2000000 -> "2,000,000", 1e20 -> "1e+20"."""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, (int, float)) else repr(value)


def check_bounds(cls: type, d: Mapping[str, Any]) -> None:
    """Every number in `d` within its field's bounds, and every list field within its maximum length (ConfigError
    naming the field, the bound and why). A value that is not a finite number or a list is left to the config's
    own type check, which names it as such."""
    for spec in specs(cls):
        value = d.get(spec.name)
        if spec.type is list and isinstance(value, list) and spec.maximum is not None and len(value) > spec.maximum:
            raise ConfigError(spec.name, f"{len(value):,} items, above the maximum {_shown(spec.maximum)}"
                                         f"{f' ({spec.why})' if spec.why else ''}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            continue
        reason = f" ({spec.why})" if spec.why else ""
        if spec.minimum is not None and value < spec.minimum:
            raise ConfigError(spec.name, f"{_shown(value)} is below the minimum {_shown(spec.minimum)}{reason}")
        if spec.maximum is not None and value > spec.maximum:
            raise ConfigError(spec.name, f"{_shown(value)} is above the maximum {_shown(spec.maximum)}{reason}")


def from_dict(cls: type, d: Mapping[str, Any], what: str, ignore: Iterable[str] = ()) -> Any:
    """cls(**d), after checking that every key is a field (an unknown key is a ConfigError naming it and
    listing the fields) and every number within its field's bounds (`check_bounds`), before the config's own
    checks and before any caller allocates or creates anything from it. Keys in `ignore` (a run's "entry", a
    retired field) are dropped first."""
    skip = set(ignore)
    d = {k: v for k, v in d.items() if k not in skip}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(unknown[0], f"not a field of {what}; the fields are {', '.join(sorted(known))}")
    check_bounds(cls, d)
    return cls(**d)


def _argument(spec: FieldSpec, default: Any, required: bool) -> dict[str, Any]:
    """add_argument's keywords for one field (argparse reads "%" in a help text as a format)."""
    text = spec.help.replace("%", "%%")
    kw: dict[str, Any] = dict(dest=spec.name, help=text)
    if required:
        kw["required"] = True
    else:
        kw["default"] = default
        if default not in (None, "", [], {}):
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            kw["help"] = f"{text} (default: {shown})"
    if spec.type is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif spec.type is list:
        kw.update(nargs="+", type=spec.item or str)
    elif spec.type is dict:
        kw["type"] = json.loads
    else:
        kw["type"] = spec.type
    if spec.choices:
        kw["choices"] = spec.choices
    return kw


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, names: Iterable[str], *,
                  flags: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None,
                  required: Iterable[str] = ()) -> None:
    """One option per named field of `cls`: type, default, choices and help from the field. `flags` renames
    an option ({"prompts_file": "--prompts"}), `defaults` gives a command its own default, a field in
    `required` has none. The parsed value lands under the field's name (`values_from_args`)."""
    by_name = {s.name: s for s in specs(cls)}
    flags, defaults, required = dict(flags or {}), dict(defaults or {}), set(required)
    for name in names:
        spec = by_name[name]
        kw = _argument(spec, defaults.get(name, spec.default), name in required)
        parser.add_argument(flags.get(name, spec.flag), **kw)


def values_from_args(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """{field: parsed value} of the options `add_arguments` added."""
    return {name: getattr(args, name) for name in names}


def describe(cls: type, skip: Iterable[str] = ()) -> str:
    """Every field as "name = default: help", under its group: the field list a `--set KEY=VALUE` CLI shows."""
    lines: list[str] = []
    group = None
    for spec in specs(cls):
        if spec.name in set(skip):
            continue
        if spec.group != group:
            group = spec.group
            lines.append(f"{group or 'other'}:")
        choices = f" (one of {', '.join(spec.choices)})" if spec.choices else ""
        if spec.maximum is not None:
            choices += f" (at most {_shown(spec.maximum)}{' items' if spec.type is list else ''})"
        lines.append(f"  {spec.name} = {json.dumps(spec.default)}: {spec.help}{choices}")
    return "\n".join(lines)
