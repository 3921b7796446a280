"""Device choice in one place: resolving a config's `device` to a torch device, and device sets.

A device set is what a run holds on the queue: "cpu", or GPU indices written "cuda:0,1" (also read:
"cuda" = "cuda:0", "cuda:1,0", "cuda:0,cuda:1", any case and spacing). `parse_devices` is the one
parser; the run store, the launcher, the train CLI and the UI's device pickers all go through it.
torch is imported only by the functions that ask it about this machine.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    import torch

_HINT = "expected 'cpu', 'cuda:0' or a GPU list like 'cuda:0,1'"


def resolve(device: str = "auto") -> "torch.device":
    """"auto" -> cuda if available else cpu; otherwise "cpu", "cuda", "cuda:N" (validated)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError as e:
        raise ConfigError("device", f"{device!r} is not a device (use auto, cpu, cuda or cuda:N)") from e
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{device} requested but CUDA is not available on this machine; "
                                        "use device=cpu (or auto)")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ConfigError("device", f"{device} requested but only {torch.cuda.device_count()} GPU(s) are visible; "
                                        f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return d


def report() -> list[dict]:
    """One entry per device: name, type, total memory (GiB) where known."""
    import os

    import torch

    out = [dict(name="cpu", type="cpu", detail=f"{os.cpu_count()} cores, torch {torch.__version__}")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            out.append(dict(name=f"cuda:{i}", type="cuda",
                            detail=f"{p.name}, {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free"))
    return out


# ---------------------------------------------------------------------------------------------- device sets
def parse_devices(devices: str, field: str = "devices") -> tuple[str, ...]:
    """'cpu' -> ('cpu',); 'cuda' -> ('cuda:0',); 'cuda:1,0' or 'cuda:0,cuda:1' -> ('cuda:0', 'cuda:1').
    ConfigError(field) for anything else."""
    if not isinstance(devices, str) or not devices.strip():
        raise ConfigError(field, f"empty device set; {_HINT}")
    text = devices.strip().lower()
    if text == "cpu":
        return ("cpu",)
    if text == "cuda":
        return ("cuda:0",)
    if not text.startswith("cuda:"):
        raise ConfigError(field, f"{devices!r} is not a device set; {_HINT}")
    ids = set()
    for item in text[len("cuda:"):].split(","):
        item = item.strip().removeprefix("cuda:")
        if not item.isdigit():
            raise ConfigError(field, f"{devices!r}: {item!r} is not a GPU index; {_HINT}")
        ids.add(int(item))
    return tuple(f"cuda:{i}" for i in sorted(ids))


def normalize_devices(devices: str, field: str = "devices") -> str:
    """Canonical text of a device set: 'cpu' or 'cuda:0,1'."""
    parts = parse_devices(devices, field)
    if parts == ("cpu",):
        return "cpu"
    return "cuda:" + ",".join(p.removeprefix("cuda:") for p in parts)


def gpu_ids(devices: str) -> list[int]:
    """GPU indices of a device set; [] for 'cpu'."""
    return [int(p.removeprefix("cuda:")) for p in parse_devices(devices) if p != "cpu"]


def devices_conflict(a: str, b: str) -> bool:
    """Whether two device sets share a device."""
    return bool(set(parse_devices(a)) & set(parse_devices(b)))


def picked_devices(selected: Sequence[str] | str | None, field: str = "devices") -> str:
    """A device picker's selection (["cpu"] or ["cuda:0", "cuda:2"]) -> its canonical device set."""
    items = [selected] if isinstance(selected, str) else list(selected or [])
    items = [str(x).strip() for x in items if str(x).strip()]
    if not items:
        raise ConfigError(field, "pick cpu or at least one GPU")
    if "cpu" in items:
        if len(items) > 1:
            raise ConfigError(field, "cpu cannot be combined with GPUs; pick cpu alone or GPUs only")
        return "cpu"
    for item in items:
        if not item.startswith("cuda:") or not item[5:].isdigit():
            raise ConfigError(field, f"{item!r} is not a device; pick from the list")
    return normalize_devices(",".join(items), field)


def devices_of(device: str) -> str:
    """The device set a single-process run with config `device` holds: auto -> cuda:0 if there is a GPU, else cpu."""
    if device == "auto":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "cuda:0" if device == "cuda" else device


def check_visible(devices: str, field: str = "--devices") -> str:
    """A valid device set whose GPUs exist on this machine, canonical; ConfigError(field) otherwise."""
    devices = normalize_devices(devices, field)
    ids = gpu_ids(devices)
    if ids:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(field, f"{devices}: this machine has no CUDA GPU; use --devices cpu")
        if max(ids) >= n:
            raise ConfigError(field, f"{devices}: only {n} GPU(s) are visible; use cuda:0..cuda:{n - 1}")
    return devices
