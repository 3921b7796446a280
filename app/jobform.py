"""Inputs of the job forms (Evaluate, Embeddings) generated from their config dataclass (EvalConfig,
EmbeddingConfig): each input's kind, default value and help text are the field's metadata
(core.configmeta), declared once in core/eval/configs.py; a tab passes only what the page does
differently (its layout, a demo-specific default, choices with labels)."""
from __future__ import annotations

from typing import Any, Iterable

import gradio as gr

from core import configmeta


def form_help(spec: configmeta.FieldSpec) -> str:
    """A field's help as the form shows it: the config's None is an empty input there."""
    return spec.help.replace("None:", "empty:")


def helps(cls: type, names: Iterable[str]) -> dict[str, str]:
    """{input: help} for the inputs among `names` that are fields of `cls`."""
    by_name = {s.name: s for s in configmeta.specs(cls)}
    return {n: form_help(by_name[n]) for n in names if n in by_name}


def form_value(spec: configmeta.FieldSpec) -> Any:
    """A field's default as its input holds it (an empty text box for None text)."""
    if spec.type is list:
        return list(spec.default or [])
    if spec.type is str and spec.default is None:
        return ""
    return spec.default


def field_input(cls: type, name: str, elem_prefix: str, info: str | None = None, **overrides) -> Any:
    """The Gradio input of one config field: a checkbox group for a list with choices, a dropdown for other
    choices, a number box for int / float (whole steps for int), a checkbox for bool, else a text box.
    `overrides` (value, choices, scale, ...) replace what the field gives."""
    spec = configmeta.spec_of(cls, name)
    kw: dict[str, Any] = dict(label=name, info=form_help(spec) if info is None else info,
                              elem_id=f"{elem_prefix}-{name}", value=form_value(spec))
    choices = list(overrides.pop("choices", spec.choices))
    kw.update(overrides)
    if spec.type is list and choices:
        return gr.CheckboxGroup(choices=choices, **kw)
    if choices:
        return gr.Dropdown(choices=choices, **kw)
    if spec.type is int:
        return gr.Number(**{"step": 1, **kw})
    if spec.type is float:
        return gr.Number(**kw)
    if spec.type is bool:
        return gr.Checkbox(**kw)
    return gr.Textbox(**kw)


def job_helps(cls: type, names: Iterable[str]) -> dict[str, str]:
    """`helps`, plus what both job forms say about the extractor's path and the device picker."""
    out = helps(cls, names)
    if "extractor_path" in out:
        out["extractor_path"] += "; a path inside the checkpoints folder or the data roots"
    out["devices"] = "the job waits while another run uses one of its devices"
    return out


class FormInputs:
    """The inputs of one job form: `field(key, **overrides)` for a field of `cls` (kind, default and help from
    the field), `common(key)` the label, help and element id of an input that is not a field."""

    def __init__(self, cls: type, elem_prefix: str, infos: dict[str, str]):
        self.cls, self.prefix, self.infos = cls, elem_prefix, infos

    def common(self, key: str) -> dict:
        return dict(label=key, info=self.infos[key], elem_id=f"{self.prefix}-{key}")

    def field(self, key: str, **overrides) -> Any:
        return field_input(self.cls, key, self.prefix, info=self.infos[key], **overrides)

