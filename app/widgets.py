"""The Gradio input of a form field (app.fields): the component its kind names, labelled with the field's words
and key, its help under it, its value shown as the kind shows it. The one place a form input is made."""
from __future__ import annotations

import math
from typing import Any

import gradio as gr

from app import fields as F

_NO_VALUE = object()


def float_step(default: Any) -> float:
    """The arrows' step of a float box: the default's order of magnitude (a learning rate of 1e-6 steps by 1e-6,
    not by 1, which turned 1e-05 into 1), 0.01 for a default of 0."""
    value = abs(float(default or 0.0))
    return 10.0 ** math.floor(math.log10(value)) if value > 0 else 0.01


def widget(field: F.Field, elem_id: str, *, value: Any = _NO_VALUE, info: str | None = None, **overrides) -> Any:
    """The input of `field` (value: a config value, shown through the kind; default: the field's default).
    `overrides` (choices, scale, visible, label, ...) are passed to the component as they are."""
    kind = F.KINDS[field.kind]
    shown = F.show(field, field.default if value is _NO_VALUE else value)
    info = field.info + F.HINTS.get(field.kind, "") if info is None else info
    kw: dict[str, Any] = dict(label=field.title, info=info, elem_id=elem_id, value=shown, **kind.options)
    if field.choices and kind.widget in ("Dropdown", "Radio", "CheckboxGroup"):
        kw["choices"] = list(field.choices)
    if kind.widget == "Textbox" and field.blank is None and field.kind.startswith("optional_"):
        kw["placeholder"] = field.placeholder
    if field.kind == "float":
        kw["step"] = float_step(field.default)
    kw.update(overrides)
    return getattr(gr, kind.widget)(**kw)
