"""Class-labelled image folders in the ImageNet layout: ``root/<class_dir>/<image files>``.

Class ids are the sorted class-folder names, as in torchvision's ImageFolder, so ImageNet's train
folder (synsets n01440764 ... n15075141) gives the standard 1000 ids of LlamaGen and
`assets/imagenet_classes.json`. Hidden entries (".DS_Store", ".ipynb_checkpoints") are skipped;
torchvision would count a hidden folder as a class and shift every id after it.

Also here, shared with `core.data.captions`:

- `subset_size` / `balanced_quota` / `stable_key`: deterministic subsets. A file's rank is a hash of
  (seed, its path relative to the root), so the same (listing, subset, seed) selects the same files
  whatever order the filesystem lists them in, and moving the folder changes nothing.
- `ImageFileDataset`: reading with bad-file handling. An unreadable file (truncated, corrupt, not an
  image) is logged, recorded in `bad_files()` and replaced by a deterministic substitute, so a
  resumed run and a token cache see the same item for the same index. Too many bad files raise
  DataError. Each DataLoader worker keeps its own record (it holds its own copy of the dataset).
- `StringTable`: paths and captions stored as one bytes buffer plus offsets. A Python list of a
  million strings in a forked DataLoader worker is copied page by page as reference counts are
  touched; two numpy arrays are not.
"""
from __future__ import annotations

import abc
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.data.files import list_files, not_regular
from core.data.sizes import check_num_classes, subset_size  # noqa: F401  (re-exported: callers import them from here)
from core.data.transforms import UNREADABLE_IMAGE_ERRORS, load_rgb, preprocess
from core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
MIN_BAD_TO_FAIL = 3  # bad files needed before the fraction is trusted (one corrupt file early on is not a trend)
_SYNSET = re.compile(r"n\d{8}")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


# ----------------------------------------------------------------------------- compact strings
class StringTable:
    """An immutable sequence of str kept as one uint8 buffer and int64 offsets (no per-item objects).

    Encoded as UTF-8 with surrogateescape, which round-trips any POSIX file name (os.fsencode's rule).
    """

    def __init__(self, items: Sequence[str]):
        encoded = [s.encode("utf-8", "surrogateescape") for s in items]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)  # [N + 1]
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)  # [total bytes]

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        lo, hi = self._offsets[i], self._offsets[i + 1]
        return self._buffer[lo:hi].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


# ----------------------------------------------------------------------------- subsets
def stable_key(seed: int, text: str) -> int:
    """A 64-bit rank for `text` under `seed`, equal in every process and on every machine."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def balanced_quota(sizes: Sequence[int], n: int, tie_keys: Sequence[int]) -> list[int]:
    """Spread `n` picks over groups of the given sizes as evenly as the sizes allow.

    With k = n / len(sizes), every group gets floor(k) or ceil(k) unless it is smaller than that;
    a small group gives all it has and the shortfall is spread over the others the same way. The
    extra +1 picks go to the groups with the smallest `tie_keys`. Requires n <= sum(sizes).
    """
    quota = [0] * len(sizes)
    order = sorted(range(len(sizes)), key=lambda g: (sizes[g], tie_keys[g]))
    left = n
    for pos, g in enumerate(order):
        if sizes[g] > left // (len(sizes) - pos):  # this group and every larger one can give ceil
            rest = sorted(order[pos:], key=lambda h: tie_keys[h])
            base, extra = divmod(left, len(rest))
            for rank, h in enumerate(rest):
                quota[h] = base + (rank < extra)
            return quota
        quota[g] = sizes[g]
        left -= sizes[g]
    return quota


# ----------------------------------------------------------------------------- bad-file record
class BadFileRecord:
    """Per-item read status (0 unseen, 1 read fine, 2 unreadable) and the threshold rule."""

    def __init__(self, n: int, max_bad_fraction: float, where: Path):
        self.status = np.zeros(n, dtype=np.uint8)  # [N]
        self.seen = 0
        self.bad: list[tuple[str, str]] = []  # (path, reason), in the order found
        self.max_bad_fraction = max_bad_fraction
        self.where = where

    def mark_ok(self, i: int) -> None:
        if self.status[i] == 0:
            self.seen += 1
            self.status[i] = 1

    def mark_bad(self, i: int, path: Path, error: BaseException, *, quiet: bool = False) -> None:
        """Record file i as unreadable; log it unless `quiet` (a check whose error will list the files)."""
        if self.status[i] == 2:
            return
        if self.status[i] == 0:
            self.seen += 1
        self.status[i] = 2
        reason = f"{type(error).__name__}: {error}"
        self.bad.append((str(path), reason))
        if not quiet:
            log.warning("unreadable image skipped (%d so far): %s (%s)", len(self.bad), path, reason)
        self.check()

    def too_many(self) -> bool:
        n_bad = len(self.bad)
        if n_bad == 0 or n_bad / self.seen <= self.max_bad_fraction:
            return False
        return n_bad >= MIN_BAD_TO_FAIL or self.max_bad_fraction == 0

    def check(self) -> None:
        if self.too_many():
            listed = "; ".join(f"{p} ({r})" for p, r in self.bad[:5])
            more = f"; and {len(self.bad) - 5} more" if len(self.bad) > 5 else ""
            raise DataError(
                f"{len(self.bad)} of {self.seen} images read from {self.where} are unreadable "
                f"({100 * len(self.bad) / self.seen:.1f}%, above max_bad_fraction={self.max_bad_fraction}): "
                f"{listed}{more}. Re-extract or delete these files, or raise max_bad_fraction"
            )


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ConfigError("image_size", f"must be a positive integer (the model's resolution), got {image_size!r}")
    return int(image_size)


def check_fraction(value: float, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(field, f"must be a number in [0, 1), got {value!r}")
    return float(value)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError("seed", f"must be an integer, got {seed!r}")
    return int(seed)


def check_folder(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data folder {path} does not exist; set data_path to an existing folder")
    if not path.is_dir():
        raise DataError(f"data folder {path} {not_regular(path) or 'is a file'}, not a folder; "
                        f"set data_path to the folder that holds the images")
    return path


# ----------------------------------------------------------------------------- base dataset
class ImageFileDataset(Dataset, abc.ABC):
    """Map-style dataset over image files under `root`, preprocessed with LlamaGen's center crop.

    Subclasses set `root`, `image_size`, `_paths` (a StringTable of paths relative to `root`) and
    `_bad` (a BadFileRecord), and define which files may stand in for an unreadable one.
    """

    root: Path
    image_size: int
    _paths: StringTable
    _bad: BadFileRecord

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> Path:
        return self.root / self._paths[self._index(i)]

    def _index(self, index: int) -> int:
        n = len(self._paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        return int(index) % n

    @abc.abstractmethod
    def _candidates(self, i: int) -> Iterator[int]:
        """File indices to try for item i: i itself first, then its substitutes in order."""

    @abc.abstractmethod
    def _item(self, j: int, image: torch.Tensor) -> tuple:
        """The returned tuple when file j was read as `image`."""

    @abc.abstractmethod
    def _no_substitute(self, i: int) -> DataError:
        """The error when item i and all its substitutes are unreadable."""

    def __getitem__(self, index: int) -> tuple:
        i = self._index(index)
        for j in self._candidates(i):
            if self._bad.status[j] == 2:
                continue
            path = self.root / self._paths[j]
            try:
                image = load_rgb(path)
            except UNREADABLE_IMAGE_ERRORS as e:
                self._bad.mark_bad(j, path, e)
                continue
            self._bad.mark_ok(j)
            return self._item(j, preprocess(image, self.image_size))
        raise self._no_substitute(i)

    def bad_files(self) -> list[Path]:
        """Files found unreadable so far by this process (in the order found)."""
        return [Path(p) for p, _ in self._bad.bad]

    def verify(self, sample: Optional[int] = 256) -> dict:
        """Decode `sample` files spread evenly over the dataset (all of them when None or larger
        than the dataset), recording unreadable ones; raise DataError under the same rule as reading
        (above max_bad_fraction and at least MIN_BAD_TO_FAIL files, or any file when it is 0).
        Run it before any GPU work. Returns {"checked": n, "bad": [paths]}."""
        n = len(self._paths)
        if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
            raise ConfigError("sample", f"must be a positive integer or None (all files), got {sample!r}")
        count = n if sample is None else min(sample, n)
        picks = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
        found = []
        for j in picks.tolist():
            path = self.root / self._paths[j]
            if self._bad.status[j] == 2:
                found.append(path)
                continue
            try:
                load_rgb(path)
            except UNREADABLE_IMAGE_ERRORS as e:
                found.append(path)
                self._bad.mark_bad(j, path, e, quiet=True)  # raises once the threshold is passed, listing them
                continue
            self._bad.mark_ok(j)
        return {"checked": len(picks), "bad": found}


# ----------------------------------------------------------------------------- ImageNet layout
def _list_layout(root: Path) -> tuple[list[str], list[list[str]]]:
    """(class folder names sorted, image paths per class relative to root) with layout errors. Listed by
    `core.data.files.list_files`: regular files only, no links out of the root, no loops, bounded in time."""
    listing = list_files(root, is_image_file)
    class_dirs = [d for d in listing.folders if os.sep not in d]
    loose = [f for f in listing.files if os.sep not in f]
    by_class: dict[str, list[str]] = {d: [] for d in class_dirs}
    for f in listing.files:
        if os.sep in f:
            by_class[f.split(os.sep, 1)[0]].append(f)
    if not class_dirs:
        if loose:
            raise DataError(
                f"{root} holds {len(loose)} images directly (e.g. {loose[0]}) and no class folders; expected "
                f"root/<class>/<image>: put each class's images in its own sub-folder (ImageNet's train folder has one "
                f"n0... folder per class), or use data=captions for unlabelled images with captions"
            )
        raise DataError(f"data folder {root} is empty{listing.note()}; expected root/<class>/<image> with one "
                        f"sub-folder per class")
    if loose:
        log.warning("%s: %d image files directly in the root are ignored (only root/<class>/<image> is read)",
                    root, len(loose))
    files = [by_class[d] for d in class_dirs]
    empty = [d for d, f in zip(class_dirs, files) if not f]
    if len(empty) == len(class_dirs):
        raise DataError(
            f"none of the {len(class_dirs)} class folders in {root} holds images ({', '.join(IMAGE_EXTENSIONS)}) "
            f"that are regular files{listing.note()}; expected root/<class>/<image>"
        )
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise DataError(
            f"{len(empty)} of {len(class_dirs)} class folders in {root} hold no images: {shown}. Every sub-folder "
            f"is a class and shifts the ids of the classes after it: add images to them or remove them"
        )
    return class_dirs, files


class ImageFolderDataset(ImageFileDataset):
    """(image [3, H, W] float32 in [-1, 1], class id) for every image of `root/<class>/<image>`.

    `subset`: None (all), a fraction in (0, 1] or an image count > 1; class-balanced (each class
    gets floor(k) or ceil(k) images, k = count / classes, when it has that many) and deterministic
    in (listing, subset, seed). Items are ordered by class id, then path. An unreadable file is
    replaced by the next readable one of the same class (wrapping around).
    """

    def __init__(self, root: str | Path, image_size: int, subset: Optional[float] = None, seed: int = 0,
                 max_bad_fraction: float = 0.01):
        self.root = check_folder(root)
        self.image_size = check_image_size(image_size)
        self.seed = check_seed(seed)
        max_bad_fraction = check_fraction(max_bad_fraction, "max_bad_fraction")
        class_dirs, files = _list_layout(self.root)
        self.classes = tuple(class_dirs)
        total = sum(len(f) for f in files)
        n = subset_size(subset, total)
        if n < total:
            sizes = [len(f) for f in files]
            quota = balanced_quota(sizes, n, [stable_key(self.seed, "class\x00" + c) for c in class_dirs])
            files = [sorted(sorted(f, key=lambda p: (stable_key(self.seed, p), p))[:q]) for f, q in zip(files, quota)]
        counts = np.array([len(f) for f in files], dtype=np.int64)  # [C]
        self._class_start = np.concatenate([[0], np.cumsum(counts)])  # [C + 1]
        self._labels = np.repeat(np.arange(len(files), dtype=np.int64), counts)  # [N]
        self._paths = StringTable([p for f in files for p in f])
        self._bad = BadFileRecord(len(self._paths), max_bad_fraction, self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def labels(self) -> np.ndarray:
        """Class id of every item [N] int64 (read-only)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    def class_counts(self) -> np.ndarray:
        """Images per class [C] in this (sub)set."""
        return np.diff(self._class_start)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Readable names: ImageNet's for the 1000 synset folders, the folder names otherwise."""
        if len(self.classes) == 1000 and all(_SYNSET.fullmatch(c) for c in self.classes):
            from core.data.classes import imagenet_class_names

            return imagenet_class_names()
        return self.classes

    def label(self, i: int) -> int:
        return int(self._labels[self._index(i)])

    def _candidates(self, i: int) -> Iterator[int]:
        c = int(self._labels[i])
        lo, hi = int(self._class_start[c]), int(self._class_start[c + 1])
        return (lo + (i - lo + k) % (hi - lo) for k in range(hi - lo))

    def _item(self, j: int, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        return image, int(self._labels[j])

    def _no_substitute(self, i: int) -> DataError:
        c = int(self._labels[i])
        return DataError(f"every image of class {self.classes[c]!r} (id {c}) in {self.root} is unreadable; "
                         f"e.g. {self.path(i)}. Re-extract that class folder")
