"""The Gradio input of a form field (app.fields): the component its kind names, labelled with the field's words
and key, its help under it, its value shown as the kind shows it. The one place a form input is made."""
from __future__ import annotations

from typing import Any

import gradio as gr

from app import fields as F

_NO_VALUE = object()


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
    kw.update(overrides)
    return getattr(gr, kind.widget)(**kw)
