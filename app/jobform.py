"""Inputs of the job forms (Evaluate, Embeddings, Diagnostics) from their config dataclass (EvalConfig,
EmbeddingConfig, DiagnoseConfig): each input is its field's row of the field table (app.fields: kind, default,
help, label, bounds), declared once in the config; a tab passes only what the page does differently (its layout,
a demo-specific default, choices with labels, a lower bound)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable, Optional

from app import fields as F
from app import widgets


def job_helps(table: dict[str, F.Field], names: Iterable[str]) -> dict[str, str]:
    """{input: help} for the inputs among `names` that are fields of the table, plus what the job forms say about
    the extractor's path and the device picker."""
    out = {n: table[n].info + F.HINTS.get(table[n].kind, "") for n in names if n in table}
    if "extractor_path" in out:
        out["extractor_path"] += "; a path inside the checkpoints folder or the data roots"
    out["devices"] = "the job waits while another run uses one of its devices"
    return out


class FormInputs:
    """The inputs of one job form: `field(key, **overrides)` for a field of the table (kind, default and help from
    the field), `common(key)` the label, help and element id of an input that is not a field."""

    def __init__(self, table: dict[str, F.Field], elem_prefix: str, infos: dict[str, str]):
        self.table, self.prefix, self.infos = table, elem_prefix, infos

    def common(self, key: str) -> dict:
        return dict(label=key, info=self.infos[key], elem_id=f"{self.prefix}-{key}")

    def field(self, key: str, *, choices: Optional[list] = None, value: Any = None, **overrides) -> Any:
        """The field's widget; `choices` ([(label, value)] or [value]) make a free-text or list field a choice."""
        f = self.table[key]
        if choices is not None:
            values = tuple(c[1] if isinstance(c, tuple) else c for c in choices)
            kind = "multichoice" if f.kind in ("multichoice", "lines", "int_list", "float_list") else \
                f.kind if f.kind in ("choice", "radio") else "choice"
            f = replace(f, kind=kind, choices=values)
            overrides["choices"] = list(choices)
        if value is not None:
            overrides["value"] = F.show(f, value)
        return widgets.widget(f, f"{self.prefix}-{key}", info=self.infos.get(key), **overrides)
