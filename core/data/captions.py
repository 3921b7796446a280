"""Image-caption folders: images anywhere under a root plus a JSONL file of captions.

One JSON object per line: ``{"image": "relative/path.jpg", "caption": "..."}``; the Hugging Face
imagefolder keys ``{"file_name": ..., "text": ...}`` (its metadata.jsonl) are accepted too. Image
paths are relative to the folder that holds the JSONL file (the HF rule); by default that file is
``captions.jsonl``, else ``metadata.jsonl``, at the root. An image may appear on several lines
(several captions per image, as in COCO); each line is one item.

Upstream LlamaGen's T2I loader returns a dummy sample for images whose short side is below the
target size; here every image is center-cropped as in C2I (small ones are upsampled), so no
item is silently blank.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from core.data.files import not_regular, open_regular
from core.data.imagefolder import (
    BadFileRecord, ImageFileDataset, StringTable, check_folder, check_fraction, check_image_size, check_seed,
    stable_key, subset_size,
)
from core.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_CAPTION_FILES = ("captions.jsonl", "metadata.jsonl")
IMAGE_KEYS = ("image", "file_name")  # ours, Hugging Face imagefolder's
CAPTION_KEYS = ("caption", "text")
_FORMAT = '{"image": "relative/path.jpg", "caption": "..."}'


def _find_captions_file(root: Path, captions_file: Optional[str | Path]) -> Path:
    if captions_file is not None:
        path = root / Path(captions_file).expanduser()  # an absolute captions_file stays absolute
        why = not_regular(path)
        if why is not None:
            raise DataError(f"captions file {path} {why}; set captions_file to a regular JSONL file with one "
                            f"{_FORMAT} per line")
        return path
    for name in DEFAULT_CAPTION_FILES:
        why = not_regular(root / name)
        if why is None:
            return root / name
        if why != "does not exist":  # there, but a FIFO, a folder, a loop: reading it would hang or fail
            raise DataError(f"captions file {root / name} {why}; replace it with a regular JSONL file with one "
                            f"{_FORMAT} per line")
    raise DataError(f"no captions file in {root}: expected {' or '.join(DEFAULT_CAPTION_FILES)} with one {_FORMAT} "
                    f"per line (paths relative to that file's folder), or set captions_file")


def _pick(record: dict, keys: tuple[str, ...]) -> Optional[object]:
    for key in keys:
        if key in record:
            return record[key]
    return None


def read_captions(path: Path) -> list[tuple[int, str, str]]:
    """(line number, image path as written, caption) for every non-blank line of a captions JSONL.

    Raises DataError naming the line for invalid JSON, a missing or non-string key, or an empty
    caption (empty captions are all listed at once, with their count)."""
    entries: list[tuple[int, str, str]] = []
    empty: list[int] = []
    with open_regular(path) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {line_no}: not UTF-8 text ({e}); save the file as UTF-8") from None
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line_no}: invalid JSON ({e.msg} at column {e.colno}); "
                                f"each line must be one object like {_FORMAT}") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object like {_FORMAT}, "
                                f"got {type(record).__name__}")
            image = _pick(record, IMAGE_KEYS)
            caption = _pick(record, CAPTION_KEYS)
            if not isinstance(image, str) or not image:
                raise DataError(f"{path}, line {line_no}: needs an image path under "
                                f"{' or '.join(map(repr, IMAGE_KEYS))} (a non-empty string); "
                                f"keys found: {', '.join(map(repr, record)) or 'none'}")
            if not isinstance(caption, str):
                raise DataError(f"{path}, line {line_no}: needs a caption string under "
                                f"{' or '.join(map(repr, CAPTION_KEYS))}; keys found: {', '.join(map(repr, record))}")
            if not caption.strip():
                empty.append(line_no)
                continue
            entries.append((line_no, image, caption))
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise DataError(f"{path}: {len(empty)} empty caption(s), at line(s) {shown}; "
                        f"write a caption or delete those lines")
    if not entries:
        raise DataError(f"{path} has no entries; expected one {_FORMAT} per line")
    return entries


class CaptionDataset(ImageFileDataset):
    """(image [3, H, W] float32 in [-1, 1], caption) for every line of the captions file.

    `subset`: None (all), a fraction in (0, 1] or a count > 1 of the lines, picked by a hash of
    (seed, image path, caption): deterministic whatever the line order. Items keep file order.
    Lines whose image file does not exist are dropped and counted (`missing_files()`); above
    `max_missing_fraction` of the lines checked, construction fails. An image unreadable when read
    is replaced by the next readable item (with that item's caption).
    """

    num_classes = None  # captioned: no class ids (check_num_classes says so)

    def __init__(self, root: str | Path, image_size: int, subset: Optional[float] = None, seed: int = 0,
                 captions_file: Optional[str | Path] = None, max_missing_fraction: float = 0.01,
                 max_bad_fraction: float = 0.01):
        self.root = check_folder(root)
        self.image_size = check_image_size(image_size)
        self.seed = check_seed(seed)
        max_missing_fraction = check_fraction(max_missing_fraction, "max_missing_fraction")
        max_bad_fraction = check_fraction(max_bad_fraction, "max_bad_fraction")
        self.captions_file = _find_captions_file(self.root, captions_file)
        entries = read_captions(self.captions_file)
        base = os.path.relpath(self.captions_file.parent, self.root)  # image paths are relative to the JSONL's folder
        n = subset_size(subset, len(entries))
        order = range(len(entries)) if n == len(entries) else sorted(
            range(len(entries)), key=lambda k: (stable_key(self.seed, f"{entries[k][1]}\n{entries[k][2]}"), k))
        kept: list[int] = []
        missing: list[int] = []
        for k in order:  # check existence in selection order: a subset stats only about n files
            if len(kept) == n:
                break
            (kept if (self.root / base / entries[k][1]).is_file() else missing).append(k)
        self._missing = [(entries[k][0], str(self.root / base / entries[k][1])) for k in missing]
        checked = len(kept) + len(missing)
        if missing and (len(missing) / checked > max_missing_fraction or not kept):
            shown = "; ".join(f"line {no}: {p}" for no, p in self._missing[:5])
            raise DataError(
                f"{len(missing)} of {checked} images listed in {self.captions_file} do not exist "
                f"({100 * len(missing) / checked:.1f}%, above max_missing_fraction={max_missing_fraction}): {shown}"
                f"{' ...' if len(missing) > 5 else ''}. Image paths are relative to {self.captions_file.parent}"
            )
        if missing:
            log.warning("%s: %d listed images do not exist and are skipped (e.g. %s)",
                        self.captions_file, len(missing), self._missing[0][1])
        if subset is not None and len(kept) < n:
            raise DataError(f"subset asks for {n} images but only {len(kept)} of those listed in {self.captions_file} "
                            f"exist; use a smaller subset")
        kept.sort()
        self._paths = StringTable([os.path.normpath(os.path.join(base, entries[k][1])) for k in kept])
        self._captions = StringTable([entries[k][2] for k in kept])
        self._lines = np.array([entries[k][0] for k in kept], dtype=np.int64)  # [N] line numbers in the JSONL
        self._bad = BadFileRecord(len(self._paths), max_bad_fraction, self.root)

    def caption(self, i: int) -> str:
        return self._captions[self._index(i)]

    def line(self, i: int) -> int:
        """Line number of item i in the captions file."""
        return int(self._lines[self._index(i)])

    def missing_files(self) -> list[tuple[int, Path]]:
        """(line number, path) of listed images that did not exist at construction."""
        return [(no, Path(p)) for no, p in self._missing]

    def _candidates(self, i: int) -> Iterator[int]:
        n = len(self._paths)
        return ((i + k) % n for k in range(n))

    def _item(self, j: int, image: torch.Tensor) -> tuple[torch.Tensor, str]:
        return image, self._captions[j]

    def _no_substitute(self, i: int) -> DataError:
        return DataError(f"every image listed in {self.captions_file} is unreadable (e.g. {self.path(i)})")
