"""One field table for every form of the app (Launch, Evaluate, Embeddings, Diagnostics, Compare), Gradio-free.

A config field (core.configmeta.FieldSpec: type, Optional, choices, help, label) becomes a `Field`, whose kind
picks, from `KINDS`, the widget that shows it, how a value typed into that widget is parsed back, and how a
config value is shown in it. `app.widgets.widget(field)` builds the Gradio input; `parse(field, raw)` is the
only reader of a form value, and `number` / `numbers` the only readers of a number or a list of numbers typed
into a box: every error is a ConfigError naming the field.

An optional number (`image_size`: empty = native size) is a text box, not a number box: Gradio's number box
cannot be empty (6.31 shows and sends 0 for an empty one), so a form would submit 0 for "not set".
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field as dc_field, replace
from typing import Any, Optional

from core import configmeta
from core.errors import ConfigError

REQUIRED = object()  # Field.blank: an empty input is an error


# ----------------------------------------------------------------------------- the one number parser
def _empty(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def number(key: str, raw: Any, *, whole: bool = False, minimum: Optional[float] = None,
           maximum: Optional[float] = None, optional: bool = False) -> Optional[int | float]:
    """A number typed into a form: whole when asked, within [minimum, maximum]; None for an empty optional box.
    ConfigError(key) otherwise, saying what was expected."""
    what = "a whole number" if whole else "a number"
    if _empty(raw):
        if optional:
            return None
        # a browser number box sends nothing both when it is empty and when what was typed is not a number
        raise ConfigError(key, f"expected {what} (the box is empty or holds something that is not a number)")
    if isinstance(raw, bool):
        raise ConfigError(key, f"expected {what}, got {raw!r}")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected {what}, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {raw!r}")
    if whole and not value.is_integer():
        raise ConfigError(key, f"expected a whole number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be >= {minimum:g}, got {raw!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be <= {maximum:g}, got {raw!r}")
    return int(value) if whole else value


def numbers(key: str, raw: Any, *, whole: bool = False, minimum: Optional[float] = None,
            maximum: Optional[float] = None, required: bool = True, distinct: bool = False) -> list:
    """"0, 1, 2", "0 1 2" or "1; 1.5" (or a list) -> numbers, each checked as `number` does."""
    text = " ".join(str(x) for x in raw) if isinstance(raw, (list, tuple)) else str(raw or "")
    parts = [p for p in re.split(r"[\s,;]+", text) if p]
    if not parts:
        if required:
            raise ConfigError(key, f"give one or more {'whole numbers' if whole else 'numbers'}, e.g. 0, 1, 2")
        return []
    values = []
    for part in parts:
        try:
            values.append(number(key, part, whole=whole, minimum=minimum, maximum=maximum))
        except ConfigError as e:
            raise ConfigError(key, f"{str(e)[len(key) + 2:]} (in {text.strip()!r}; separate numbers by commas)") \
                from None
    if distinct and len(set(values)) != len(values):
        raise ConfigError(key, "each value once, please")
    return values


# ----------------------------------------------------------------------------- the field
@dataclass(frozen=True)
class Field:
    """One input of a form. `key` is the config key (or the form's own name for an input that is no field)."""

    key: str
    kind: str  # a key of KINDS
    help: str
    default: Any  # the config's default, as the config holds it
    label: str = ""  # the field in words (config metadata); "" = the key
    group: str = ""
    choices: tuple = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    blank: Any = REQUIRED  # what an empty input means (None for an optional field)

    @property
    def title(self) -> str:
        """"learning rate (learning_rate)": the words, the key beside them; the key alone without words."""
        return self.key if not self.label or self.label == self.key else f"{self.label} ({self.key})"

    @property
    def info(self) -> str:
        """The help as a form shows it: the config's None is an empty input there."""
        return self.help.replace("None:", "empty:").replace("None =", "empty =")

    @property
    def placeholder(self) -> str:
        """What an empty optional box means, from the help ("None: native size" -> "empty = native size")."""
        match = re.search(r"None(?::| =)\s*([^;.()]+)", self.help)
        return f"empty = {match[1].strip()}" if match else "empty"


# ----------------------------------------------------------------------------- kinds: widget, parse, show
def _bool(f: Field, raw: Any, ctx: dict) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f.key, f"expected true or false, got {raw!r}")
    return raw


def _num(whole: bool) -> Callable:
    def parse(f: Field, raw: Any, ctx: dict):
        if _empty(raw) and f.blank is not REQUIRED:
            return f.blank
        return number(f.key, raw, whole=whole, minimum=f.minimum, maximum=f.maximum)
    return parse


def _optional_float(f: Field, raw: Any, ctx: dict):
    value = _num(False)(f, raw, ctx)
    # a fraction <= 1 or a count > 1 (data_subset): a whole number above 1 is a count
    return int(value) if value is not None and value > 1 and float(value).is_integer() else value


def _text(f: Field, raw: Any, ctx: dict) -> Optional[str]:
    if _empty(raw):
        if f.blank is not REQUIRED:
            return f.blank
        choices = f"; one of {', '.join(map(str, f.choices))}" if f.choices else ""
        raise ConfigError(f.key, f"required{choices}")
    if not isinstance(raw, str):
        raise ConfigError(f.key, f"expected text, got {raw!r}")
    return raw.strip()


def _choice(f: Field, raw: Any, ctx: dict) -> str:
    value = _text(f, raw, ctx)
    if f.choices and value not in f.choices:
        raise ConfigError(f.key, f"unknown {value!r}; one of {', '.join(map(str, f.choices))}")
    return value


def _items(raw: Any) -> list:
    return [] if raw is None else ([raw] if isinstance(raw, (str, int)) else list(raw))


def _multichoice(f: Field, raw: Any, ctx: dict) -> list:
    items = _items(raw)
    bad = [x for x in items if f.choices and x not in f.choices]
    if bad:
        raise ConfigError(f.key, f"unknown {', '.join(map(str, bad))}; choose from {', '.join(map(str, f.choices))}")
    return items


def _list(whole: bool) -> Callable:
    def parse(f: Field, raw: Any, ctx: dict) -> list:
        return numbers(f.key, raw, whole=whole, minimum=f.minimum, maximum=f.maximum,
                       required=f.blank is REQUIRED)
    return parse


def _lines(f: Field, raw: Any, ctx: dict) -> Optional[list]:
    items = raw if isinstance(raw, (list, tuple)) else str(raw or "").splitlines()
    lines = [str(t).strip() for t in items if str(t).strip()]
    if not lines and f.blank is REQUIRED:
        raise ConfigError(f.key, "give at least one line")
    return lines or f.blank


def _classes(f: Field, raw: Any, ctx: dict) -> Optional[list]:
    """Class ids or names -> ids, against ctx["class_names"] (the model's classes)."""
    items = [x for x in _items(raw) if str(x).strip()]
    if not items:
        if f.blank is REQUIRED:
            raise ConfigError(f.key, "pick at least one class")
        return f.blank
    names = ctx.get("class_names") or ()
    if not names:
        raise ConfigError(f.key, f"{ctx.get('model') or 'this model'} has no classes (it is text-conditional)")
    from core.data.classes import resolve_classes

    return resolve_classes(items, names, field=f.key)


def _same(f: Field, value: Any) -> Any:
    return value


def _as_list(f: Field, value: Any) -> list:
    return list(value or [])


def _number_text(f: Field, value: Any) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _joined(sep: str) -> Callable:
    def show(f: Field, value: Any) -> str:
        return sep.join(_number_text(f, v) if not isinstance(v, str) else v for v in value or [])
    return show


@dataclass(frozen=True)
class Kind:
    widget: str  # the Gradio component (app.widgets builds it)
    options: dict = dc_field(default_factory=dict)  # its fixed keywords
    parse: Callable[[Field, Any, dict], Any] = _text  # widget value -> config value
    show: Callable[[Field, Any], Any] = _same  # config value -> widget value


KINDS: dict[str, Kind] = {
    "bool": Kind("Checkbox", {}, _bool),
    # no precision=0 on whole numbers: Gradio would round 2.5 silently; the parser rejects it by name
    "int": Kind("Number", {"step": 1}, _num(True)),
    "float": Kind("Number", {}, _num(False)),
    "optional_int": Kind("Textbox", {"max_lines": 1}, _num(True), _number_text),
    "optional_float": Kind("Textbox", {"max_lines": 1}, _optional_float, _number_text),
    "text": Kind("Textbox", {"max_lines": 1}, _text, lambda f, v: v or ""),
    "choice": Kind("Dropdown", {}, _choice),
    "radio": Kind("Radio", {}, _choice),
    "model": Kind("Dropdown", {"filterable": True}, _text),  # any name: the check reports an unknown family
    "multichoice": Kind("CheckboxGroup", {}, _multichoice, _as_list),
    "classes": Kind("Dropdown", {"multiselect": True, "filterable": True}, _classes, _as_list),
    "int_list": Kind("Textbox", {"max_lines": 1}, _list(True), _joined(", ")),
    "float_list": Kind("Textbox", {"max_lines": 1}, _list(False), _joined(", ")),
    "lines": Kind("Textbox", {"lines": 2}, _lines, _joined("\n")),
}
HINTS = {"int_list": "; comma-separated", "float_list": "; comma-separated", "lines": "; one per line"}


def kind_of(spec: configmeta.FieldSpec) -> str:
    """The kind a config field's type gives (a form may name another, e.g. "classes" for a list of class ids)."""
    if spec.type is list:
        if spec.choices:
            return "multichoice"
        return {int: "int_list", float: "float_list"}.get(spec.item, "lines")
    if spec.choices:
        return "choice"
    if spec.type is bool:
        return "bool"
    if spec.type in (int, float):
        return ("optional_" if spec.optional else "") + ("int" if spec.type is int else "float")
    if spec.type is str:
        return "text"
    raise TypeError(f"{spec.name}: no form input for type {spec.type!r}; add a kind to app/fields.py")


def from_spec(spec: configmeta.FieldSpec, kind: Optional[str] = None, **overrides) -> Field:
    """The Field of a config field; `overrides` (minimum, choices, default, ...) replace what the field gives."""
    kind = kind or kind_of(spec)
    optional = spec.optional or (spec.type is str and spec.default == "" and kind == "text")
    f = Field(key=spec.name, kind=kind, help=spec.help, default=spec.default, label=spec.label, group=spec.group,
              choices=spec.choices, blank=(None if spec.optional else "" if optional else REQUIRED))
    return replace(f, **overrides) if overrides else f


def table(cls: type, kinds: Optional[dict[str, str]] = None, **per_field: dict) -> dict[str, Field]:
    """{key: Field} of every field of a config class; `kinds` renames some kinds, `per_field[key]` overrides."""
    kinds = kinds or {}
    return {s.name: from_spec(s, kinds.get(s.name), **per_field.get(s.name, {})) for s in configmeta.specs(cls)}


def parse(f: Field, raw: Any, **ctx) -> Any:
    """A widget's value as the config wants it; ConfigError(f.key) when it cannot be read. `ctx`: what a kind
    needs besides the value (class_names and model for "classes")."""
    return KINDS[f.kind].parse(f, raw, ctx)


def show(f: Field, value: Any) -> Any:
    """A config value as the field's widget holds it."""
    return KINDS[f.kind].show(f, value)


def parse_all(fields: Sequence[Field], values: dict, **ctx) -> dict[str, Any]:
    """{key: parsed value} of several fields, the first error raised."""
    return {f.key: parse(f, values.get(f.key), **ctx) for f in fields}
