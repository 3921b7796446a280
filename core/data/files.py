"""Listing and opening the files of a data folder without hanging and without leaving it.

The one place where data readers (image folders, caption files, their images) touch the filesystem:

- `not_regular(path)`: why a path is no regular file (a FIFO, a socket, a device, a directory, a
  symlink loop, missing), as a phrase for an error, or None.
- `open_regular(path)`: open for reading only if it is a regular file, decided on the opened descriptor
  (O_NONBLOCK: opening a FIFO does not wait for a writer), so nothing can swap the file in between.
- `list_files(root, keep)`: the regular files under `root` whose names `keep` accepts. A symlink is
  followed only when its target lies inside `root` (a link out of the root is skipped, as a path typed
  outside it would be refused); every directory is entered once (a symlink loop ends the descent);
  FIFOs, sockets and devices are skipped without being opened; the walk stops with a DataError after
  `timeout_s` (a network mount that stalls, a folder of millions of files given by mistake).
"""
from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from core.errors import DataError

LIST_TIMEOUT_S = 600.0  # listing one data folder; ImageNet's train folder (1.28M files) lists in ~10-60 s


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "is a socket"
    return "is a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "is not a regular file"


def not_regular(path: str | os.PathLike) -> str | None:
    """Why `path` (symlinks followed) is not a regular file that can be opened and read to its end, as a phrase
    ("is a FIFO (named pipe)"); None when it is one. A FIFO, socket or device would block or never end a read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop"
        if os.path.islink(path):
            return f"is a symlink to {os.readlink(path)}, which does not exist"
        return "does not exist" if e.errno == errno.ENOENT else f"cannot be read ({e.strerror})"
    return _kind(mode)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`open(path, "rb")` for a regular file; any other kind raises OSError naming it, without blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        why = _kind(os.fstat(fd).st_mode)
        if why is not None:
            raise OSError(errno.EINVAL, f"{path} {why}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass
class Listing:
    """What `list_files` found: `files` and the `folders` it entered, relative to the root and sorted; what it
    left out and why."""

    files: list[str]
    folders: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the root, why), first 100

    def note(self) -> str:
        """" (N entries skipped, e.g. PATH WHY)" for an error message, or ""."""
        if not self.skipped:
            return ""
        path, why = self.skipped[0]
        return f" ({len(self.skipped)}{'+' if len(self.skipped) >= 100 else ''} entries skipped, e.g. {path} {why})"


def list_files(root: str | os.PathLike, keep: Callable[[str], bool], *, timeout_s: float = LIST_TIMEOUT_S,
               hidden: bool = False) -> Listing:
    """The regular files under `root` (recursively) whose names `keep` accepts, as sorted paths relative to
    `root`. Hidden entries (".x") are left out unless `hidden`. See the module docstring for links and loops."""
    root = Path(root)
    real_root = os.path.realpath(root)
    deadline = time.monotonic() + timeout_s
    files: list[str] = []
    folders: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()

    def skip(rel: str, why: str) -> None:
        if len(skipped) < 100:
            skipped.append((rel, why))

    def inside(path: str) -> bool:
        target = os.path.realpath(path)
        return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)

    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else str(root)
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                skip(rel_dir, "is a symlink back into a folder already listed (a loop)")
                continue
            seen.add((st.st_dev, st.st_ino))
            if rel_dir:
                folders.append(rel_dir)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            skip(rel_dir or ".", f"cannot be listed ({e.strerror})")
            continue
        for entry in entries:
            if time.monotonic() > deadline:
                raise DataError(f"listing {root} took over {timeout_s:g} s ({len(files)} files so far, in {folder}); "
                                f"is it on a stalled network mount, or the wrong folder? Point data_path at a "
                                f"local folder of images")
            if not hidden and entry.name.startswith("."):
                continue
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            try:
                link = entry.is_symlink()
                if link and not inside(entry.path):
                    skip(rel, f"is a symlink to {os.readlink(entry.path)}, outside {root}")
                    continue
                mode = entry.stat(follow_symlinks=True).st_mode
            except OSError as e:
                skip(rel, "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be read ({e.strerror})")
                continue
            if stat.S_ISDIR(mode):
                stack.append(rel)
            elif not keep(entry.name):
                continue
            elif stat.S_ISREG(mode):
                files.append(rel)
            else:
                skip(rel, _kind(mode) or "")
    return Listing(sorted(files), sorted(folders), skipped)
