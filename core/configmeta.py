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


def setting(default: Any = MISSING, *, help: str, group: str = "", choices: Iterable = (),
            default_factory: Any = MISSING, label: str = "") -> Any:
    """A dataclass field carrying its label (the field in words, for forms; empty: its name), help text, form
    group and allowed values (empty: any value)."""
    metadata = {"help": help, "group": group, "choices": tuple(choices), "label": label}
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


def from_dict(cls: type, d: Mapping[str, Any], what: str, ignore: Iterable[str] = ()) -> Any:
    """cls(**d), after checking that every key is a field: an unknown key is a ConfigError naming it and
    listing the fields. Keys in `ignore` (a run's "entry", a retired field) are dropped first."""
    skip = set(ignore)
    d = {k: v for k, v in d.items() if k not in skip}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(unknown[0], f"not a field of {what}; the fields are {', '.join(sorted(known))}")
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
        lines.append(f"  {spec.name} = {json.dumps(spec.default)}: {spec.help}{choices}")
    return "\n".join(lines)
