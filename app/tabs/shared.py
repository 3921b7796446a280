"""What the job tabs (Evaluate, Embeddings) share: the feature extractors and the checks of their
weights, device picks and classes read from the inputs, an error shown under the input
it belongs to, progress bars, and the help texts both forms give the same field.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from app import form
from app.safety import confine
from app.views import as_text
from core import paths
from core.errors import CheckpointError, ConfigError, MissingWeightsError, UserError
from core.eval.summary import SPACES

EXTRACTORS = ("demo", "inception", "clip", "dinov2")
HUB_MODELS = ("clip", "dinov2")  # extractors loaded through transformers: a folder or a hub id
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def class_items(raw: Any) -> list:
    """A classes dropdown's value as a list (ids from the list, or names typed in)."""
    if raw is None:
        return []
    items = [raw] if isinstance(raw, (str, int)) else list(raw)
    return [x for x in items if str(x).strip()]


def extractor_roots(app) -> list[Path]:
    """Where an extractor's weights may be named from: the checkpoint folders and the data roots."""
    return [Path(paths.CHECKPOINTS_DIR).resolve(), Path(paths.DEMO_DIR).resolve(), *app.data_roots]


def extractor_path_of(app, extractor: str, text: Optional[str], field: str = "extractor_path") -> Optional[str]:
    """The extractor weights a user named: None (the default location), a hub id (CLIP / DINOv2),
    or a file (Inception, demo) or folder (CLIP / DINOv2) confined to `extractor_roots`."""
    raw = (text or "").strip()
    if not raw:
        return None
    roots = extractor_roots(app)
    hub = extractor in HUB_MODELS
    if hub and HUB_ID.fullmatch(raw) and ".." not in Path(raw).parts and not any((root / raw).exists() for root in roots):
        return raw  # a hub id: looked up in the Hugging Face cache
    return str(confine(raw, roots, field, kind="dir" if hub else "file"))


def check_hub_model(name_or_path: str, what: str) -> None:
    """MissingWeightsError unless a transformers model is on disk (a folder with config.json, or in the
    Hugging Face cache) or the hub can be reached to download it."""
    path = Path(name_or_path)
    if path.is_absolute():
        if not (path / "config.json").is_file():
            raise MissingWeightsError(f"{path}: no {what} here (needs config.json and the weights); on a machine "
                                      f"with internet run `hf download <hub id> --local-dir {path}`")
        return
    from huggingface_hub import constants, try_to_load_from_cache

    from core.models import registry

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return
    if not constants.HF_HUB_OFFLINE and registry.hub_reachable():
        return  # the job downloads it into the cache
    why = "offline mode is on" if constants.HF_HUB_OFFLINE else "huggingface.co cannot be reached"
    raise MissingWeightsError(f"{what} '{name_or_path}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                              f"and {why}. On a machine with internet run `hf download {name_or_path}` (or "
                              f"`hf download {name_or_path} --local-dir DIR` and give DIR here)")


def check_extractor(extractor: str, path: Optional[str], field: str = "extractor") -> None:
    """ConfigError(field) when the extractor's weights are not on disk. Cheap: only the small demo
    evaluator is loaded; Inception's file is looked up; CLIP / DINOv2 are looked up in the cache."""
    from core.eval import extractors as X
    from core.eval.inputs import build_metric_extractor

    if extractor not in EXTRACTORS:
        raise ConfigError(field, f"unknown extractor {extractor!r}; choose one of {', '.join(EXTRACTORS)}")
    try:
        if extractor == "inception":
            X.find_inception_weights(path)
        elif extractor == "demo":
            build_metric_extractor("demo", path)
        else:
            default = X.DEFAULT_CLIP if extractor == "clip" else X.DEFAULT_DINOV2
            check_hub_model(path or default, f"{SPACES[extractor]} model")
    except (MissingWeightsError, CheckpointError) as e:
        raise ConfigError(field, str(e)) from None


def parse_device_set(selected) -> tuple[str, str]:
    """The device picker -> (device set for the launcher, the job config's device)."""
    device_set, kind = form.parse_devices(selected)
    return device_set, ("cpu" if kind == "cpu" else "auto")  # auto: the GPUs the launcher makes visible


def default_devices() -> list[str]:
    import torch

    return ["cuda:0"] if torch.cuda.is_available() else ["cpu"]


def message(error: ConfigError) -> str:
    """A ConfigError's text without its "field: " prefix."""
    return str(error)[len(error.field) + 2:]


def renamed(error: ConfigError, aliases: dict[str, str]) -> ConfigError:
    """The same error under the input its core field belongs to."""
    return ConfigError(aliases.get(error.field, error.field), message(error))


def error_target(error: ConfigError, keys: Sequence[str], aliases: dict[str, str]) -> Optional[str]:
    """The input an error belongs to (None: no single input)."""
    field = aliases.get(error.field, error.field)
    return field if field in keys else None


def error_text(error: UserError, target: Optional[str], what: str = "Not launched") -> str:
    if isinstance(error, ConfigError):
        return f"✗ **{what}** — `{target or error.field}`: {as_text(message(error))}"
    return f"✗ **{what}** — {as_text(error)}"


def field_updates(keys: Sequence[str], infos: dict[str, str], target: Optional[str], message: str,
                  previous: Optional[str]) -> list:
    """Updates for every input: the error under `target`, the previous error's input back to its help."""
    out = []
    for key in keys:
        if key == target:
            out.append(gr.update(info=f"⚠ {message}", elem_classes=["field-error"]))
        elif key == previous:
            out.append(gr.update(info=infos.get(key, ""), elem_classes=[]))
        else:
            out.append(gr.skip())
    return out


def signature(keys: Sequence[str], extra: Sequence[str] = ()) -> inspect.Signature:
    """A handler signature naming its API parameters after the inputs."""
    return inspect.Signature([inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in [*keys, *extra]])


def progress_bar(done: int, total: int, width: int = 20, unit: str = "samples", markdown: bool = True) -> str:
    """"██░░ 3/6 phases (50%)": in Markdown the bar is code (one width per block); plain text (a dropdown's label)
    shows no backticks."""
    share = done / total if total else 0.0
    filled = int(round(share * width))
    bar = f"{'█' * filled}{'░' * (width - filled)}"
    return f"{f'`{bar}`' if markdown else bar} {done}/{total} {unit} ({share:.0%})"


def roots_text(app) -> str:
    return ", ".join(str(r) for r in app.data_roots) or "(none: start the app with --data-root)"


def refused(error: UserError, keys: Sequence[str], infos: dict[str, str], aliases: dict[str, str], state: dict) -> tuple:
    """What a job form's launch returns when its input is refused: the status text, an update per input (a
    ConfigError's message under the input it names) and the page's view with that input flagged."""
    target = error_target(error, keys, aliases) if isinstance(error, ConfigError) else None
    text = message(error) if isinstance(error, ConfigError) else ""
    updates = field_updates(keys, infos, target, text, state["flagged"])
    return (error_text(error, target), *updates, {**state, "flagged": target})

