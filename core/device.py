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


def devices_of(device: str, processes: int = 1) -> str:
    """The device set a run with config `device` holds: auto -> cuda:0 if there is a GPU, else cpu. With several
    processes on GPUs (one per GPU, as accelerate launches them): cuda:0..processes-1."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and processes > 1:
        return "cuda:" + ",".join(str(i) for i in range(processes))
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


# ---------------------------------------------------------------------------------------------- processes
def launched_world() -> int:
    """How many processes the launcher (torch.distributed.run / accelerate launch) started: $WORLD_SIZE, else 1."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def share_from_rank0(make, what: str = "setup"):
    """Under a multi-process launch: rank 0 calls `make()` and every rank returns its result (any picklable
    value); one process: `make()`. This starts the default process group (gloo on CPU; nccl for CUDA
    tensors + gloo for objects on GPU machines), which accelerate then uses as its own.

    If `make` raises on rank 0, the other ranks raise SystemExit with the exit code `make`'s error maps to
    (`core.errors.exit_code`), so no rank is left waiting for a run that will not start."""
    import torch
    import torch.distributed as dist

    if launched_world() <= 1:
        return make()
    ensure_process_group()
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", make())
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks were told
            error = e
            box[0] = ("error", _exit_code_of(e))
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise SystemExit(value)
    return value


def ensure_process_group() -> None:
    """Start the default process group of a launched process (torch.distributed.run / accelerate launch set its
    environment) unless it runs: gloo on a machine without CUDA, else nccl for CUDA tensors and gloo for CPU ones.
    accelerate then uses it as its own."""
    import os

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="cuda:nccl,cpu:gloo")
    else:
        dist.init_process_group(backend="gloo")


def _exit_code_of(error: BaseException) -> int:
    from core.errors import UserError

    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 2 if isinstance(error, UserError) else 1


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any process of the running process group (this process's flag without one).
    For decisions that must be the same on every rank: whether to run an extra forward (collective under FSDP)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
