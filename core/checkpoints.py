"""Checkpoints of a run: where they live, how one is written, how they are found, and how a user names
the weights in one.

Layout (the only place that knows it)::

    <runs dir>/<run id>/checkpoints/step-NNNNNN/   the state after optimizer step N
        model.pt | tokenizer.pt                    generator weights ({"model": state_dict}), or the
                                                   post-trained tokenizer of the decoder baseline
        optimizer.pt                               optimizer and scheduler state (for resume)
        trainer_state.json                         {"step": N, ...}: a folder counts once this holds N
    <runs dir>/<run id>/checkpoints/.tmp-step-NNNNNN-<pid>/, .old-...   what a cut-off `save` leaves

A checkpoint is written by `save` (a temporary folder renamed into place, so a crash never leaves a
half-written one), found by `list_checkpoints` / `find_last`, and its weights named by ONE grammar,
`resolve_weights`::

    None | "" | "base"          the preset's own weights (the base model)
    a file                      that weights file (its run and step, when it sits in a step folder)
    a checkpoint folder         its model.pt
    a run folder                its last checkpoint
    RUN[@STEP]                  a run id, or a fragment of exactly one, in the runs dir; STEP picks
                                another checkpoint than the last

The CLI, the UI's dropdowns, the evaluation jobs and the trainer all use these names; `ref_text`
writes the RUN@STEP form.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core import paths
from core.errors import CheckpointError, ConfigError, UserError

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.pt"
TOKENIZER_FILE = "tokenizer.pt"  # the decoder baseline's checkpoint holds this instead of model.pt
OPTIMIZER_FILE = "optimizer.pt"
STEP_DIR_RE = re.compile(r"step-(\d+)")
# the only folders a resume may delete: what `save` leaves when a write was cut off
PARTIAL_CHECKPOINT_RE = re.compile(r"\.(tmp|old)-step-\d+-\d+")
BASE = "base"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path  # the checkpoints/step-NNNNNN folder


def step_dir_name(step: int) -> str:
    """The folder name of the checkpoint of `step`: "step-000042"."""
    return f"step-{step:06d}"


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of `step` of a run goes."""
    return Path(run_dir) / CHECKPOINTS_DIR / step_dir_name(step)


# ------------------------------------------------------------------------------------------ listing

def list_checkpoints(run_dir: str | os.PathLike) -> list[Checkpoint]:
    """Complete checkpoints of a run folder, by step. A folder counts once trainer_state.json in it
    holds an integer "step"; temporary (dot-prefixed) and unreadable folders are skipped."""
    found = []
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return found
    for child in root.iterdir():
        if not (child.is_dir() and STEP_DIR_RE.fullmatch(child.name)):
            continue
        try:
            step = json.loads((child / TRAINER_STATE_FILE).read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(step, int) and not isinstance(step, bool):
            found.append(Checkpoint(step=step, path=child))
    return sorted(found, key=lambda c: c.step)


def find_last(run_dir: str | os.PathLike) -> Checkpoint | None:
    """The newest complete checkpoint of a run folder (None: none yet): the one a resume starts from."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def check_states(run_dir: str | os.PathLike) -> None:
    """CheckpointError (naming the file and the fix) when a step folder's trainer_state.json is
    unreadable or names another step than its folder: a resume would silently skip that checkpoint.
    Folders without the file are incomplete writes, never counted, and pass."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir() or root.is_symlink():
        return
    for child in sorted(root.iterdir()):
        m = STEP_DIR_RE.fullmatch(child.name)
        if not (child.is_dir() and m):
            continue
        state = child / TRAINER_STATE_FILE
        try:
            step = json.loads(state.read_text()).get("step")
        except FileNotFoundError:
            continue  # an incomplete folder: never counted as a checkpoint
        except (OSError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{state}: not a JSON object with an integer \"step\" ({e}); fix it or "
                                  f"delete {child} to resume from the checkpoint before it") from None
        if isinstance(step, bool) or not isinstance(step, int) or step != int(m[1]):
            raise CheckpointError(f"{state}: \"step\" is {step!r}, expected the integer {int(m[1])} of its "
                                  f"folder; fix it or delete {child} to resume from the checkpoint before it")


# ------------------------------------------------------------------------------------------ saving

class DiskFullError(UserError):
    """A checkpoint could not be written: the file system of the run folder is full."""


DISK_FULL_FREE_BYTES = 8 * 2**20  # a write that failed with less free space than this ran out of space


def _disk_full(error: BaseException, free: int | None) -> bool:
    """ENOSPC / EDQUOT anywhere in the exception chain, or a write error (torch's zip writer says
    "unexpected pos" or "file write failed") with (almost) no free space left."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return isinstance(error, (OSError, RuntimeError)) and free is not None and free < DISK_FULL_FREE_BYTES


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f}" if n >= 2**20 else f"{n / 2**20:.2f}"


def describe_filesystem(path: Path) -> str:
    """The device holding `path` and where it is mounted, e.g. "/dev/sda1 (mounted at /data)"."""
    mount = Path(os.path.abspath(path))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    device = None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].replace("\\040", " ") == str(mount):
                device = parts[0]  # the last line for a mount point wins (over-mounts)
    except OSError:
        pass
    return f"{device} (mounted at {mount})" if device else str(mount)


def _write_state(folder: Path, step: int) -> None:
    """trainer_state.json as {"step": step} unless the caller wrote its own, which must hold `step`."""
    state_path = folder / TRAINER_STATE_FILE
    if state_path.exists():
        written = json.loads(state_path.read_text()).get("step")
        if written != step:
            raise ValueError(f"{state_path}: step {written!r} differs from the checkpoint step {step}")
    else:
        state_path.write_text(json.dumps({"step": step}) + "\n")


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`, replacing an older folder of the same step."""
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


@contextmanager
def save(run_dir: str | os.PathLike, step: int) -> Iterator[Path]:
    """Yield an empty temporary folder; write the checkpoint files into it. On a clean exit it is
    renamed to checkpoints/step-NNNNNN (replacing an older one of the same step); on an exception it
    is removed, and a full disk becomes a DiskFullError that says so (earlier checkpoints stay).
    trainer_state.json is written as {"step": step} unless the caller wrote its own, which must then
    hold the same "step". Call it on one process only."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _write_state(tmp, step)
        _move_into_place(tmp, final)
    except BaseException as e:
        written = _folder_bytes(tmp)
        free = _free_bytes(root)
        shutil.rmtree(tmp, ignore_errors=True)  # frees what the cut-off write took
        if _disk_full(e, free):
            last = find_last(run_dir)
            needed = max(written, _folder_bytes(last.path) if last is not None else 0)
            kept = f"the last good checkpoint {last.path.name} is kept" if last else "no earlier checkpoint"
            raise DiskFullError(
                f"no space left on {describe_filesystem(root)} (needed ~{_mb(needed)} MB for a "
                f"checkpoint, {_mb(free)} MB free): free some space, then resume the run; {kept}") from e
        raise


def remove_partial(run_dir: str | os.PathLike) -> None:
    """Delete what a cut-off `save` left in a run folder (never through a symlink). Call only while
    no process writes checkpoints there."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if root.is_dir() and not root.is_symlink():
        for child in root.iterdir():
            if PARTIAL_CHECKPOINT_RE.fullmatch(child.name) and child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)


# ------------------------------------------------------------------------------------------ naming

@dataclass(frozen=True)
class WeightsRef:
    """Generator weights, resolved: a file, or None for the preset's own (the base model)."""

    path: Optional[str] = None
    run_id: Optional[str] = None  # set when the file is a run's checkpoint
    step: Optional[int] = None

    @property
    def checkpoint(self) -> str:
        """"base", "<run id>@<step>", or the file path: the key summaries group by, and a text that
        `resolve_weights` turns back into this value."""
        if self.path is None:
            return BASE
        if self.run_id is not None:
            return ref_text(self.run_id, self.step)
        return self.path

    @property
    def is_tokenizer(self) -> bool:
        """True for a decoder-baseline checkpoint: the file is a post-trained tokenizer."""
        return self.path is not None and Path(self.path).name == TOKENIZER_FILE


def ref_text(run_id: str, step: int) -> str:
    """The name of a run's checkpoint in the weights grammar: "<run id>@<step>"."""
    return f"{run_id}@{int(step)}"


def _weights_file(folder: Path, field: str, tokenizer_ok: bool) -> Path:
    model = folder / MODEL_FILE
    if model.is_file():
        return model
    if (folder / TOKENIZER_FILE).is_file():
        if tokenizer_ok:
            return folder / TOKENIZER_FILE
        raise ConfigError(field, f"{folder} holds a post-trained tokenizer (decoder baseline), not generator "
                                 "weights; evaluating tokenizer checkpoints is not supported")
    raise ConfigError(field, f"{folder}: no {MODEL_FILE} in this checkpoint folder")


def _from_file(path: Path) -> WeightsRef:
    """A weights file; when it sits in <run>/checkpoints/step-N/, its run and step too."""
    path = path.resolve()
    step_dir = path.parent
    m = STEP_DIR_RE.fullmatch(step_dir.name)
    if m and step_dir.parent.name == CHECKPOINTS_DIR:
        try:
            step = int(json.loads((step_dir / TRAINER_STATE_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            step = int(m.group(1))
        return WeightsRef(str(path), step_dir.parent.parent.name, step)
    return WeightsRef(str(path))


def find_run_dir(runs_dir: str | os.PathLike, ref: str, field: str = "weights") -> Path:
    """The run folder in `runs_dir` named by a run id, or by a fragment contained in exactly one id
    (a run's folder name is its id). ConfigError(field) when none or several match."""
    runs = Path(runs_dir)
    if not runs.is_dir():
        raise ConfigError(field, f"{ref!r} is not a file or folder, and there is no run store in {runs} to "
                                 "look it up as a run id")
    exact = runs / ref
    if ref and not ref.startswith(".") and exact.is_dir():
        return exact
    found = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".") and ref and ref in p.name)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(field, f"{ref!r} is not a file or folder, nor a run: no run id in {runs} contains it "
                                 "(the run does not exist, or was deleted); `python -m core runs list` shows the ids")
    ids = ", ".join(p.name for p in found[:5])
    raise ConfigError(field, f"{ref!r} matches {len(found)} runs ({ids}); give more of the id")


def resolve_weights(ref: Optional[str | os.PathLike], runs_dir: Optional[str | os.PathLike] = None, *,
                    field: str = "weights", tokenizer_ok: bool = False) -> WeightsRef:
    """Parse a weights reference (the grammar in the module docstring) into a WeightsRef.

    Run ids are looked up in `runs_dir` (default `core.paths.RUNS_DIR`). A checkpoint holding a
    post-trained tokenizer is an error unless `tokenizer_ok`. Errors are ConfigError(field) saying
    what was not found and what exists instead.
    """
    if ref is None or str(ref).strip() in ("", BASE):
        return WeightsRef()
    text = str(ref).strip()
    path = Path(text).expanduser()
    if path.is_file():
        return _from_file(path)
    if path.is_dir():
        if (path / CHECKPOINTS_DIR).is_dir():
            last = find_last(path)
            if last is None:
                raise ConfigError(field, f"run folder {path} has no complete checkpoint yet")
            return _from_file(_weights_file(last.path, field, tokenizer_ok))
        return _from_file(_weights_file(path, field, tokenizer_ok))
    run_ref, at, step_text = text.partition("@")
    if at and not step_text.isdigit():
        raise ConfigError(field, f"{text!r}: the part after @ must be a step number (RUN@STEP, e.g. {run_ref}@100)")
    run_dir = find_run_dir(runs_dir if runs_dir is not None else paths.RUNS_DIR, run_ref, field)
    found = list_checkpoints(run_dir)
    if not found:
        raise ConfigError(field, f"run {run_dir.name} has no complete checkpoint yet")
    if not at:
        return _from_file(_weights_file(found[-1].path, field, tokenizer_ok))
    match = [c for c in found if c.step == int(step_text)]
    if not match:
        raise ConfigError(field, f"run {run_dir.name} has no checkpoint at step {step_text}; it has steps "
                                 f"{', '.join(str(c.step) for c in found)}")
    return _from_file(_weights_file(match[0].path, field, tokenizer_ok))


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (manifests, weight checks, sample fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
