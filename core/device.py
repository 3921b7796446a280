"""Device choice in one place."""
from __future__ import annotations

import torch

from core.errors import ConfigError


def resolve(device: str = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; otherwise "cpu", "cuda", "cuda:N" (validated)."""
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

    out = [dict(name="cpu", type="cpu", detail=f"{os.cpu_count()} cores, torch {torch.__version__}")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            out.append(dict(name=f"cuda:{i}", type="cuda",
                            detail=f"{p.name}, {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free"))
    return out
