"""Checkpoint reading and writing. A checkpoint file is untrusted input.

Reading: `torch.load(weights_only=True)` with only `argparse.Namespace` allow-listed (upstream
DDP checkpoints carry their training args as one), or safetensors. Accepted layouts, detected
from the content (no flag needed):
  - upstream DDP / ours: {"model": state_dict, "args": Namespace, "optimizer": ..., ...}
  - DeepSpeed: {"module": state_dict}; generic: {"state_dict": state_dict}
  - upstream FSDP (c2i XXL, 3B): the consolidated state dict itself
Loading is strict: missing or unexpected keys and shape mismatches are an error that lists them.
Before that, the architecture found in the file is compared with the model's (dims, layers,
vocab, condition type), so a wrong file gets "found GPT-XL, preset says GPT-XXL", not a key dump.

Writing is atomic (temp file + rename): a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from core.errors import CheckpointError, ConfigError
from core.data.files import not_regular

ALLOWED_GLOBALS = [argparse.Namespace]


def _safe_globals():
    ser = torch.serialization
    if hasattr(ser, "safe_globals"):
        return ser.safe_globals(ALLOWED_GLOBALS)
    ser.add_safe_globals(ALLOWED_GLOBALS)  # torch 2.4: process-wide allow list
    return contextlib.nullcontext()


def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint file -> (state_dict, extras). Extras: the other top-level entries
    (e.g. "args", "config", "steps") for .pt files, or the string metadata of a safetensors file."""
    path = Path(path)
    _require_regular(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    obj = load_object(path)
    return split_layout(obj, path)


def _require_regular(path: Path) -> None:
    """A CheckpointError naming what `path` is when it is not a regular file (a FIFO, a directory, ...)."""
    why = not_regular(path)
    if why == "does not exist":
        raise CheckpointError(f"checkpoint file not found: {path}")
    if why is not None:
        hint = " (e.g. its model.pt)" if why == "is a directory" else ""
        raise CheckpointError(f"{path} {why}, not a weights file; pass a .pt or .safetensors file{hint}")


def check_file(path: str | os.PathLike) -> None:
    """What `read_file` would refuse, found without reading the tensors: not a regular file (FIFO, directory,
    missing), empty, not a checkpoint (text), truncated, or a pickle with code. A .pt zip archive is loaded
    memory-mapped (weights_only), so its tensors are not read; a safetensors file's header only."""
    path = Path(path)
    _require_regular(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
        return
    load_object(path, mmap=True)


def check_weights(path: str | os.PathLike, field: str, *, folder: bool = False) -> None:
    """A weights path a config names (`field`, e.g. init_weights) checked as `check_file` does, as a ConfigError
    naming the field. `folder`: the model is a folder (Janus), which must exist as one."""
    if folder:
        if not Path(path).is_dir():
            raise ConfigError(field, f"{path} {not_regular(path) or 'is a file'}; pass the model's folder")
        return
    try:
        check_file(path)
    except CheckpointError as e:
        raise ConfigError(field, str(e)) from None


def load_object(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """torch.load of an untrusted .pt file (weights_only), every failure a CheckpointError that names the
    file and what to do: not a regular file, an empty file, a file that is no checkpoint at all (text, HTML
    from a failed download), a truncated one, or one that holds code (pickled objects other than tensors).
    `mmap`: map a zip archive's tensors instead of reading them (torch's pre-1.6 pickle format is read)."""
    path = Path(path)
    _require_regular(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); save or download it again")
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        with _safe_globals():
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle_error():
        if not _looks_like_checkpoint(path):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a "
                                  "pickle); pass a file written by torch.save, or a .safetensors file") from None
        found = _unsafe_globals(path)
        what = f" It contains {', '.join(found)}." if found else ""
        raise CheckpointError(
            f"{path} holds pickled objects that are not allowed (only tensors, plain containers and "
            f"argparse.Namespace are).{what} A checkpoint is untrusted input, so it is not unpickled. "
            f"If you produced this file yourself, re-save its state dict with torch.save or safetensors.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        if not _looks_like_checkpoint(path):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a "
                                  "pickle); pass a file written by torch.save, or a .safetensors file") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt download?): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; download or save it again") from None
    except Exception as e:  # what torch's legacy reader raises on arbitrary bytes (KeyError, IndexError, ...)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(e).__name__} while reading it); pass a "
                              "file written by torch.save, or a .safetensors file") from None


def _looks_like_checkpoint(path: Path) -> bool:
    """Whether the file starts like a torch.save file: a zip archive (even a truncated one), or a pickle
    (protocol 2+, torch's pre-1.6 format)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def pickle_error():
    import pickle

    return pickle.UnpicklingError


def _unsafe_globals(path: Path) -> list[str]:
    fn = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if fn is None:
        return []
    try:
        return [g for g in fn(str(path)) if g != "argparse.Namespace"]
    except Exception:
        return []


def split_layout(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (state dict or {{'model': state_dict}}), found {type(obj).__name__}")
    for key in ("model", "module", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            extras = {k: v for k, v in obj.items() if k != key}
            return _check_tensors(obj[key], path), extras
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise CheckpointError(
        f"{path}: unrecognised layout; top-level keys {sorted(obj)[:8]}. Expected a state dict, or a dict with "
        f"'model' (LlamaGen DDP), 'module' (DeepSpeed) or 'state_dict'.")


def _check_tensors(sd: dict, path: Path) -> dict[str, torch.Tensor]:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {bad[:5]}")
    return sd


# ----------------------------------------------------------------------------- architecture check
def describe_gpt_state(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture facts readable from a LlamaGen GPT state dict."""
    if "tok_embeddings.weight" not in sd:
        raise CheckpointError("not a LlamaGen GPT state dict (no 'tok_embeddings.weight')")
    vocab, dim = sd["tok_embeddings.weight"].shape
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))}
    info: dict[str, Any] = dict(dim=int(dim), n_layer=len(layers), vocab_size=int(vocab))
    if "cls_embedding.embedding_table.weight" in sd:
        info["model_type"] = "c2i"
        info["class_rows"] = int(sd["cls_embedding.embedding_table.weight"].shape[0])
    elif "cls_embedding.cap_proj.fc1.weight" in sd:
        info["model_type"] = "t2i"
        info["caption_dim"] = int(sd["cls_embedding.cap_proj.fc1.weight"].shape[1])
    return info


def check_gpt_architecture(model: nn.Module, sd: dict[str, torch.Tensor], path: Path | str, expected: str = "") -> None:
    from core.models.llamagen import GPT_SIZES, size_name

    cfg = model.config
    try:
        found = describe_gpt_state(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}; pass a LlamaGen GPT checkpoint (a run's model.pt, or an "
                              "upstream c2i/t2i .pt) for the generator") from None

    def name(dim, n_layer):
        for n, (nl, _, d) in GPT_SIZES.items():
            if (nl, d) == (n_layer, dim):
                return n
        return "an unnamed size"

    want = expected or size_name(cfg)
    if "(dim " not in want:
        want = f"{want} (dim {cfg.dim} x {cfg.n_layer} layers)"
    if (found["dim"], found["n_layer"]) != (cfg.dim, cfg.n_layer):
        raise CheckpointError(
            f"{path}: found dim {found['dim']} x {found['n_layer']} layers = {name(found['dim'], found['n_layer'])}, "
            f"preset says {want}. Pick the preset that matches the file.")
    if found.get("model_type") != cfg.model_type:
        raise CheckpointError(f"{path}: found a {found.get('model_type', 'unknown')} model, preset says {cfg.model_type}")
    if found["vocab_size"] != cfg.vocab_size:
        raise CheckpointError(f"{path}: found codebook/vocab size {found['vocab_size']}, preset says {cfg.vocab_size}")
    if cfg.model_type == "c2i":
        rows = cfg.num_classes + int(cfg.class_dropout_prob > 0)
        if found["class_rows"] != rows:
            raise CheckpointError(f"{path}: found {found['class_rows']} class-embedding rows, preset expects {rows} "
                                  f"({cfg.num_classes} classes{' + the null class' if rows > cfg.num_classes else ''})")


def check_vq_architecture(model: nn.Module, sd: dict[str, torch.Tensor], path: Path | str) -> None:
    key = "quantize.embedding.weight"
    if key not in sd:
        raise CheckpointError(f"{path}: not a VQ tokenizer state dict (no '{key}')")
    n, e = sd[key].shape
    cfg = model.config
    if (n, e) != (cfg.codebook_size, cfg.codebook_embed_dim):
        raise CheckpointError(f"{path}: found a codebook of {n} x {e}, preset expects {cfg.codebook_size} x {cfg.codebook_embed_dim}")
    levels = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))}
    if len(levels) != len(cfg.encoder_ch_mult):
        raise CheckpointError(f"{path}: found {len(levels)} encoder levels (downsample {2 ** (len(levels) - 1)}), "
                              f"preset expects {len(cfg.encoder_ch_mult)} (downsample {cfg.downsample})")


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path | str) -> None:
    """load_state_dict(strict=True) with an error that lists what is missing, unexpected or misshapen."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:8])}{more}")
        raise CheckpointError(f"{path} does not match the model: " + "; ".join(parts))
    check_values(own, sd, path)
    model.load_state_dict(sd, strict=True)


def check_values(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], path: Path | str) -> None:
    """Weights of the right kind: where the model holds floating-point tensors the file must too (fp16
    and bf16 are upcast on load; an integer or bool tensor there is not a weight), and every value finite."""
    for key, target in own.items():
        value = sd[key]
        if target.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{path}: {key} is {str(value.dtype).removeprefix('torch.')}, the model needs "
                                  "floating-point weights; this is not a weights file of this model")
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: {key} holds {bad} of {value.numel()} non-finite values (NaN/inf); "
                                  "the checkpoint is broken (a diverged run?): use an earlier one")


def load_gpt(model: nn.Module, path: str | os.PathLike, expected: str = "") -> dict[str, Any]:
    """Load a LlamaGen GPT checkpoint (any accepted layout) into `model`. Returns the file's extras."""
    sd, extras = read_file(path)
    check_gpt_architecture(model, sd, path, expected)
    load_strict(model, sd, path)
    return extras


def load_vq(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    sd, extras = read_file(path)
    check_vq_architecture(model, sd, path)
    load_strict(model, sd, path)
    return extras


# ----------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike, write_fn) -> Path:
    """Call write_fn(tmp_path) then rename onto `path`; the temp file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _cpu_state(model_or_sd) -> dict[str, torch.Tensor]:
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_upstream(model_or_sd, path: str | os.PathLike, config: Optional[dict] = None) -> Path:
    """Save in the upstream layout {"model": state_dict} (+ "config": resolved config as JSON text),
    so LlamaGen's own sampling scripts (`checkpoint["model"]`) accept the file."""
    payload: dict[str, Any] = {"model": _cpu_state(model_or_sd)}
    if config is not None:
        payload["config"] = json.dumps(config, sort_keys=True)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def save_safetensors(model_or_sd, path: str | os.PathLike, metadata: Optional[dict[str, str]] = None) -> Path:
    from safetensors.torch import save_file

    sd = _cpu_state(model_or_sd)
    # safetensors refuses tensors sharing memory; state dicts here have none, but clone defensively
    sd = {k: v.clone() for k, v in sd.items()}
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
