"""Device claims per machine: one lock file per device in a machine-wide state folder.

The run index knows the runs of one runs dir; two runs dirs (or two users) on one machine would both put
a run on the same GPU. So the process that runs a job holds an flock on `<state>/devices/<device>.lock`
for each of its devices (`hold`) for as long as it runs; the kernel releases it when the process ends,
however it ends (kill -9 included). The queue and `train --wait` look at the same locks (`holder`).

    $VAPI_STATE_DIR/devices/cpu.lock, cuda-0.lock, ...     (default /tmp/vapi-workbench/devices, shared by
                                                             every user: mode 1777; files 0666)

Each lock file holds one line naming its current holder: "<pid> <run folder>", to say who to wait for.
"""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from core.device import parse_devices

STATE_ENV = "VAPI_STATE_DIR"
DEFAULT_STATE_DIR = Path("/tmp/vapi-workbench")
WAIT_POLL_S = 0.5

_held: dict[str, int] = {}  # device -> fd of its lock, held by this process


class DeviceHeldError(Exception):
    """A device is held by another process of this machine (`.holder`: {"pid", "run_dir"})."""

    def __init__(self, device: str, holder: dict):
        self.device, self.holder = device, holder
        super().__init__(f"device {device} is used by run {holder.get('run_dir') or '?'} (process {holder.get('pid')})")


def state_dir() -> Path:
    """The machine-wide folder of device locks ($VAPI_STATE_DIR, else /tmp/vapi-workbench; when that cannot
    be made or written, a folder of this user: then only this user's runs see each other)."""
    root = os.environ.get(STATE_ENV)
    candidates = [Path(root)] if root else [DEFAULT_STATE_DIR, Path.home() / ".cache" / "vapi-workbench"]
    for base in candidates:
        folder = base / "devices"
        try:
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                if not root and base == DEFAULT_STATE_DIR:
                    os.chmod(base, 0o1777)
                    os.chmod(folder, 0o1777)
            if os.access(folder, os.W_OK | os.X_OK):
                return folder
        except OSError:
            continue
    raise OSError(f"no writable folder for device locks (set ${STATE_ENV})")


def _lock_path(device: str) -> Path:
    return state_dir() / f"{device.replace(':', '-')}.lock"


def _open(device: str) -> int:
    path = _lock_path(device)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass  # another user's file: still lockable
    return fd


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return {}
    pid, _, run_dir = text.partition(" ")
    return {"pid": int(pid) if pid.isdigit() else None, "run_dir": run_dir or None}


def holder(device: str) -> dict | None:
    """Who holds `device` now ({"pid", "run_dir"}), None when it is free or held by this process."""
    if device in _held:
        return None
    fd = _open(device)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        return None
    finally:
        os.close(fd)  # releases the probe's shared lock


def held_elsewhere(devices: str) -> tuple[str, dict] | None:
    """(device, holder) of the first of `devices` held by another process of this machine, else None."""
    for device in parse_devices(devices):
        who = holder(device)
        if who is not None:
            return device, who
    return None


def hold(devices: str, run_dir: Path, *, wait: bool = False, should_stop: Callable[[], bool] | None = None,
         on_wait: Callable[[DeviceHeldError], None] | None = None) -> bool:
    """Hold every device of `devices` for this process (already held ones are kept). Busy: raise
    DeviceHeldError (nothing newly taken is kept), or with `wait` poll until free (`on_wait` told once)
    or `should_stop()` (then False)."""
    said = False
    while True:
        taken = []
        try:
            for device in parse_devices(devices):
                if device in _held:
                    continue
                fd = _open(device)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    who = _read_holder(fd)
                    os.close(fd)
                    raise DeviceHeldError(device, who) from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {run_dir}\n".encode(), 0)
                _held[device] = fd
                taken.append(device)
            return True
        except DeviceHeldError as e:
            for device in taken:
                os.close(_held.pop(device))
            if not wait:
                raise
            if not said and on_wait is not None:
                on_wait(e)
                said = True
            if should_stop is not None and should_stop():
                return False
            time.sleep(WAIT_POLL_S)


def release(devices: str | None = None) -> None:
    """Let go of `devices` (default: every device this process holds)."""
    for device in list(_held) if devices is None else parse_devices(devices):
        fd = _held.pop(device, None)
        if fd is not None:
            os.close(fd)
