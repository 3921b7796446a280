"""The caption data the authors' scripts read, detected from `data_path` (data=captions).

| format | data_path | where captions come from |
|---|---|---|
| jsonl | a folder with captions.jsonl or metadata.jsonl | core.data.captions (images beside it) |
| tsv | a `.tsv` file (or a folder holding one) | LAION-COCO lists: `<image path>\\t<caption>` per line |
| tar | a `.tar`, a folder of them, a brace pattern `shards/{00000..00127}.tar` or a glob | WebDataset-style shards: an image and a `.json` sidecar (caption / text / TEXT / alt / prompt, or meta.caption) or `.txt` per key |
| hf-disk | a `Dataset.save_to_disk` folder (dataset_info.json), a DatasetDict folder, or a folder of them | an image column and a caption column (through `datasets`) |
| parquet | a `.parquet` file or a folder of them (also one level down, e.g. data/) | the same columns (through pyarrow), e.g. FLUX-Reason-6M |
| llamagen-jsonl | a folder of `.jsonl` lists with `image_path` (LlamaGen's dataset/t2i.py) | `text` (a string, or LlamaGen's list [blip, llava, ...]: the first), or caption / prompt |

Every format gives the same dataset (`CaptionRecords`): (image [3, H, W] float32 in [-1, 1], caption), map-style.
Each item has a key that does not depend on how the data is cut into files (a shard's sample key, an image path,
an id column): the subset (the paper's 1%) is picked by a hash of (seed, key, caption), so the same subset comes
out of 2 shards or 128. Listing reads only names and captions (tar headers, sidecars, caption columns), never
model weights; `verify` decodes a spread sample. Items without a caption, or whose image file is missing, are
skipped and counted (`skipped`); above `max_missing_fraction` of the items checked, construction fails.
"""
from __future__ import annotations

import abc
import glob
import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.data.imagefolder import (
    IMAGE_EXTENSIONS, BadFileRecord, StringTable, check_fraction, check_image_size, check_seed, stable_key, subset_size,
)
from core.data.files import not_regular
from core.data.transforms import UNREADABLE_IMAGE_ERRORS, load_rgb, preprocess
from core.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "tsv", "tar", "hf-disk", "parquet", "llamagen-jsonl")
CAPTION_KEYS = ("caption", "text", "TEXT", "alt", "prompt")  # sidecar / column names, in order
IMAGE_COLUMNS = ("image", "jpg", "png", "jpeg", "webp", "img")
KEY_COLUMNS = ("key", "__key__", "id", "image_id", "url")  # an identity that survives re-sharding
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


# ----------------------------------------------------------------------------- detection
def expand_braces(pattern: str) -> list[str]:
    """`a/{000..002}.tar` -> a/000.tar, a/001.tar, a/002.tar (the width of the wider bound; several ranges
    multiply); `{a,b}` alternatives too. Without braces: the pattern itself."""
    m = _BRACE.search(pattern)
    if m:
        lo, hi = m.group(1), m.group(2)
        width = max(len(lo), len(hi))
        return [p for k in range(int(lo), int(hi) + 1)
                for p in expand_braces(pattern[:m.start()] + f"{k:0{width}d}" + pattern[m.end():])]
    m = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if m:
        return [p for alt in m.group(1).split(",") for p in expand_braces(pattern[:m.start()] + alt + pattern[m.end():])]
    return [pattern]


def _files(folder: Path, suffix: str, depth: int = 1) -> list[Path]:
    """Regular files ending in `suffix` in `folder` (and `depth - 1` levels below), hidden ones skipped, sorted;
    a link is followed only when it stays inside `folder` (core.data.files' rule)."""
    out = []
    inside = os.path.realpath(folder) + os.sep
    for level in range(depth):
        pattern = "/".join(["*"] * (level + 1)) + suffix
        out += [Path(p) for p in glob.glob(os.path.join(glob.escape(str(folder)), pattern))
                if not_regular(p) is None and os.path.realpath(p).startswith(inside)]
    return sorted(p for p in out if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()


def detect(data_path: str | Path) -> str:
    """The format of `data_path` (one of FORMATS), or a DataError saying what each format looks like."""
    text = str(data_path).strip()
    if "{" in text or any(c in text for c in "*?["):
        return "tar" if text.endswith(".tar") else "parquet" if text.endswith(".parquet") else _unknown(text)
    path = Path(text).expanduser()
    if path.is_file():
        for fmt, suffixes in (("tsv", (".tsv",)), ("tar", (".tar",)), ("parquet", (".parquet",))):
            if path.name.lower().endswith(suffixes):
                return fmt
        if path.name.lower().endswith((".tar.gz", ".tgz")):
            raise DataError(f"{path} is a compressed tar; reading items at random needs plain .tar shards: "
                            f"decompress it (gunzip) or write uncompressed shards")
        return _unknown(text)
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist; set data_path to an existing folder, file or pattern")
    if os.path.lexists(path / "captions.jsonl") or os.path.lexists(path / "metadata.jsonl"):  # its reader names a FIFO
        return "jsonl"
    if _is_saved_dataset(path) or any(_is_saved_dataset(d) for d in sorted(path.iterdir()) if d.is_dir()):
        return "hf-disk"
    if _files(path, ".tar"):
        return "tar"
    if _files(path, ".parquet", depth=2):
        return "parquet"
    if _files(path, ".tsv"):
        return "tsv"
    if _files(path, ".jsonl"):
        return "llamagen-jsonl"
    return _unknown(text)


def _unknown(text: str) -> str:
    raise DataError(
        f"{text}: no caption data found. data=captions reads a folder with captions.jsonl (images beside it), a .tsv "
        f"(<image path>\\t<caption>), .tar shards (a folder, a file, or a pattern like shards/{{00000..00127}}.tar) with "
        f"a .json caption per image, a Hugging Face save_to_disk folder, .parquet files, or a folder of LlamaGen "
        f".jsonl lists with image_path")


# ----------------------------------------------------------------------------- image sources
def _open_bytes(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class _Source(abc.ABC):
    @abc.abstractmethod
    def open(self, j: int) -> Image.Image:
        """Decode item j's image (raises one of UNREADABLE_IMAGE_ERRORS)."""

    @abc.abstractmethod
    def where(self, j: int) -> str:
        """Item j's image, for messages."""


class _FileSource(_Source):
    def __init__(self, root: Path, paths: list[str]):
        self.root, self.paths = root, StringTable(paths)

    def open(self, j: int) -> Image.Image:
        return load_rgb(self.root / self.paths[j])

    def where(self, j: int) -> str:
        return str(self.root / self.paths[j])


class _TarSource(_Source):
    def __init__(self, shards: list[str], shard: np.ndarray, member: list[str], offset: np.ndarray, size: np.ndarray):
        self.shards, self.shard, self.member = shards, shard, StringTable(member)
        self.offset, self.size = offset, size  # [N] int64 each: where the image's bytes are in its shard

    def open(self, j: int) -> Image.Image:
        with open(self.shards[self.shard[j]], "rb") as f:
            f.seek(int(self.offset[j]))
            data = f.read(int(self.size[j]))
        if len(data) != int(self.size[j]):
            raise EOFError(f"shard ends after {len(data)} of {int(self.size[j])} bytes")
        return _open_bytes(data)

    def where(self, j: int) -> str:
        return f"{self.shards[self.shard[j]]}:{self.member[j]}"


def _decode_value(value, base: Path) -> Image.Image:
    """An image cell: {"bytes", "path"} (datasets' Image feature), raw bytes, a path, or a PIL image."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            return _open_bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return _open_bytes(bytes(value))
    if isinstance(value, str) and value:
        return load_rgb(base / value)
    raise ValueError(f"no image in this cell ({type(value).__name__})")


class _ArrowSource(_Source):
    """Rows of a datasets.Dataset (memory-mapped; picklable for DataLoader workers)."""

    def __init__(self, dataset, rows: np.ndarray, column: str, base: Path):
        self.dataset, self.rows, self.column, self.base = dataset, rows, column, base

    def open(self, j: int) -> Image.Image:
        return _decode_value(self.dataset[int(self.rows[j])][self.column], self.base)

    def where(self, j: int) -> str:
        return f"{self.base} row {int(self.rows[j])}"


class _ParquetSource(_Source):
    """Rows of parquet files, read one row group at a time (the last one kept: nearby items are cheap)."""

    def __init__(self, files: list[str], file: np.ndarray, row: np.ndarray, column: str):
        self.files, self.file, self.row, self.column = files, file, row, column
        self._cache: Optional[tuple] = None

    def __getstate__(self):
        return {**self.__dict__, "_cache": None}

    def open(self, j: int) -> Image.Image:
        import pyarrow.parquet as pq

        f, row = int(self.file[j]), int(self.row[j])
        if self._cache is None or self._cache[0] != f:
            meta = pq.ParquetFile(self.files[f]).metadata
            starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            self._cache = (f, starts, None, None)
        _, starts, group, cells = self._cache
        g = int(np.searchsorted(starts, row, side="right") - 1)
        if group != g:
            cells = pq.ParquetFile(self.files[f]).read_row_group(g, columns=[self.column]).column(0).to_pylist()
            self._cache = (f, starts, g, cells)
        return _decode_value(cells[row - int(starts[g])], Path(self.files[f]).parent)

    def where(self, j: int) -> str:
        return f"{self.files[int(self.file[j])]} row {int(self.row[j])}"


# ----------------------------------------------------------------------------- the dataset
class CaptionRecords(Dataset):
    """(image [3, H, W] float32 in [-1, 1], caption) for every item of a caption dataset in any FORMATS but jsonl.

    Built by `open_captions`; `format`, `root`, `skipped` ({reason: [examples]} with `skipped_counts`) describe
    what was read. An image unreadable when read is replaced by the next readable item (with that item's caption).
    """

    num_classes = None  # captioned: no class ids

    def __init__(self, fmt: str, root: Path, image_size: int, keys: list[str], captions: list[str], source: _Source,
                 skipped: dict[str, list[str]], skipped_counts: dict[str, int], max_bad_fraction: float, total: int):
        self.format, self.root, self.image_size = fmt, root, image_size
        self._keys, self._captions, self._source = StringTable(keys), StringTable(captions), source
        self.skipped, self.skipped_counts, self.total = skipped, skipped_counts, total
        self._bad = BadFileRecord(len(self._keys), max_bad_fraction, root)

    def __len__(self) -> int:
        return len(self._keys)

    def _index(self, index: int) -> int:
        n = len(self._keys)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        return int(index) % n

    def caption(self, i: int) -> str:
        return self._captions[self._index(i)]

    def key(self, i: int) -> str:
        return self._keys[self._index(i)]

    def where(self, i: int) -> str:
        return self._source.where(self._index(i))

    def _read(self, j: int) -> Optional[Image.Image]:
        try:
            image = self._source.open(j)
        except UNREADABLE_IMAGE_ERRORS as e:
            self._bad.mark_bad(j, Path(self._source.where(j)), e)  # raises past max_bad_fraction
            return None
        self._bad.mark_ok(j)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        i = self._index(index)
        n = len(self._keys)
        for j in ((i + k) % n for k in range(n)):
            if self._bad.status[j] == 2:
                continue
            image = self._read(j)
            if image is not None:
                return preprocess(image, self.image_size), self._captions[j]
        raise DataError(f"every image of {self.root} is unreadable (e.g. {self._source.where(i)})")

    def bad_files(self) -> list[str]:
        return [p for p, _ in self._bad.bad]

    def verify(self, sample: Optional[int] = 256) -> dict:
        """Decode `sample` items spread evenly (all when None); same rule and return value as ImageFileDataset.verify."""
        n = len(self._keys)
        count = n if sample is None else min(sample, n)
        found = []
        for j in np.unique(np.linspace(0, n - 1, count).round().astype(np.int64)).tolist():
            if self._bad.status[j] == 2 or self._read(j) is None:
                found.append(self._source.where(j))
        return {"checked": count, "bad": found}


# ----------------------------------------------------------------------------- listing each format
def _caption_of(record: dict) -> Optional[str]:
    for k in CAPTION_KEYS:
        value = record.get(k)
        if isinstance(value, list) and value and isinstance(value[0], str):  # LlamaGen: text = [blip, llava, ...]
            value = value[0]
        if isinstance(value, str) and value.strip():
            return value.strip()
    meta = record.get("meta") or record.get("metadata")
    return _caption_of(meta) if isinstance(meta, dict) else None


class _Listing:
    """Items as found: key, caption, and the format's locator; skipped items by reason."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.captions: list[str] = []
        self.locs: list = []
        self.skipped: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, caption: Optional[str], loc, where: str) -> None:
        if caption is None:
            self.skip("no caption", where)
            return
        self.keys.append(key)
        self.captions.append(caption)
        self.locs.append(loc)

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.skipped.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(where)


def _list_tsv(path: Path) -> tuple[Path, _Listing]:
    tsv = path if path.is_file() else _files(path, ".tsv")
    if isinstance(tsv, list):
        if len(tsv) != 1:
            raise DataError(f"{path} holds {len(tsv)} .tsv files ({', '.join(p.name for p in tsv[:5])}); set data_path "
                            f"to the one to read")
        tsv = tsv[0]
    out = _Listing()
    with open(tsv, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not text.strip():
                continue
            image, sep, caption = text.partition("\t")
            if not sep:
                out.skip("not <image path>\\t<caption>", f"{tsv}, line {line_no}")
                continue
            out.add(image, caption.strip() or None, image, f"{tsv}, line {line_no}")
    return tsv.parent, out


def _list_llamagen(folder: Path) -> tuple[Path, _Listing]:
    out = _Listing()
    for lst in _files(folder, ".jsonl"):
        with open(lst, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError as e:
                    raise DataError(f"{lst}, line {line_no}: invalid JSON ({e}); each line of a LlamaGen list is one "
                                    f'object like {{"image_path": "...", "text": "..."}}') from None
                image = record.get("image_path") if isinstance(record, dict) else None
                if not isinstance(image, str) or not image:
                    raise DataError(f"{lst}, line {line_no}: needs \"image_path\" (LlamaGen's lists), keys found: "
                                    f"{', '.join(map(repr, record)) if isinstance(record, dict) else 'none'}")
                out.add(image, _caption_of(record), image, f"{lst}, line {line_no}")
    return folder, out


def _tar_shards(data_path: str) -> list[Path]:
    text = str(data_path).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        shards = _files(path, ".tar")
    elif path.is_file():
        shards = [path]
    else:
        names = [p for pattern in expand_braces(text) for p in (sorted(glob.glob(os.path.expanduser(pattern)))
                                                                 if any(c in pattern for c in "*?[") else [pattern])]
        missing = [n for n in names if not os.path.isfile(n)]
        if missing:
            raise DataError(f"{len(missing)} of the {len(names)} shards named by {text} do not exist "
                            f"(e.g. {missing[0]}); fix the pattern or fetch the shards")
        shards = [Path(n) for n in names]
    if not shards:
        raise DataError(f"no .tar shards found at {text}")
    return shards


def _list_tar(shards: list[Path]) -> _Listing:
    out = _Listing()
    for s, shard in enumerate(shards):
        images: dict[str, tarfile.TarInfo] = {}
        captions: dict[str, Optional[str]] = {}
        try:
            with tarfile.open(shard, mode="r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = os.path.splitext(m.name)
                    ext = ext.lower()
                    if ext in IMAGE_EXTENSIONS:
                        images[key] = m
                    elif ext == ".json" or (ext == ".txt" and key not in captions):  # a .json sidecar wins
                        data = tf.extractfile(m).read()
                        if ext == ".txt":
                            captions[key] = data.decode("utf-8", "replace").strip() or None
                        else:
                            try:
                                record = json.loads(data)
                            except ValueError:
                                out.skip("unreadable .json sidecar", f"{shard}:{m.name}")
                                continue
                            captions[key] = _caption_of(record) if isinstance(record, dict) else None
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"{shard} is not a readable tar ({e}); re-download it or leave it out of data_path") from None
        for key, m in images.items():
            where = f"{shard}:{m.name}"
            if key not in captions:
                out.skip("no caption sidecar", where)
                continue
            out.add(key, captions[key], (s, m.name, m.offset_data, m.size), where)
    return out


def _load_saved(folder: Path):
    from datasets import Dataset as HFDataset, DatasetDict, concatenate_datasets, load_from_disk

    parts = [folder] if _is_saved_dataset(folder) else [d for d in sorted(folder.iterdir())
                                                        if d.is_dir() and _is_saved_dataset(d)]
    loaded = []
    for d in parts:
        ds = load_from_disk(str(d))
        if isinstance(ds, DatasetDict):
            if "train" not in ds and len(ds) != 1:
                raise DataError(f"{d} is a DatasetDict with splits {', '.join(ds)} and no 'train'; point data_path at "
                                f"the split's folder")
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        assert isinstance(ds, HFDataset)
        loaded.append(ds)
    return loaded[0] if len(loaded) == 1 else concatenate_datasets(loaded)


def _pick_columns(names: list[str], where: str) -> tuple[str, str, Optional[str]]:
    image = next((c for c in IMAGE_COLUMNS if c in names), None)
    caption = next((c for c in CAPTION_KEYS if c in names), None)
    if image is None or caption is None:
        raise DataError(f"{where}: needs an image column ({' / '.join(IMAGE_COLUMNS)}) and a caption column "
                        f"({' / '.join(CAPTION_KEYS)}); columns found: {', '.join(names)}")
    return image, caption, next((c for c in KEY_COLUMNS if c in names), None)


def _list_rows(captions: list, keys: Optional[list], where_prefix: str, first_row: int = 0) -> _Listing:
    out = _Listing()
    for r, caption in enumerate(captions):
        text = caption.strip() if isinstance(caption, str) and caption.strip() else None
        key = str(keys[r]) if keys is not None else f"{text}"  # no id column: the caption (ties broken by position)
        out.add(key, text, first_row + r, f"{where_prefix} row {first_row + r}")
    return out


def _parquet_files(data_path: str) -> list[Path]:
    text = str(data_path).strip()
    path = Path(text).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = _files(path, ".parquet", depth=2)
    else:
        files = [Path(p) for pattern in expand_braces(text) for p in sorted(glob.glob(os.path.expanduser(pattern)))]
    if not files:
        raise DataError(f"no .parquet files found at {text}")
    return files


# ----------------------------------------------------------------------------- the factory
def open_captions(data_path: str | Path, image_size: int, subset: Optional[float] = None, seed: int = 0,
                  max_missing_fraction: float = 0.01, max_bad_fraction: float = 0.01, captions_file=None,
                  fmt: Optional[str] = None):
    """The caption dataset at `data_path` in whichever of FORMATS it is (`fmt` forces one)."""
    fmt = fmt or detect(data_path)
    if fmt == "jsonl":
        from core.data.captions import CaptionDataset

        return CaptionDataset(data_path, image_size, subset=subset, seed=seed, captions_file=captions_file,
                              max_missing_fraction=max_missing_fraction, max_bad_fraction=max_bad_fraction)
    if captions_file is not None:
        raise DataError(f"captions_file applies to a folder with a JSONL of captions, not to {fmt} data ({data_path})")
    image_size, seed = check_image_size(image_size), check_seed(seed)
    max_missing_fraction = check_fraction(max_missing_fraction, "max_missing_fraction")
    max_bad_fraction = check_fraction(max_bad_fraction, "max_bad_fraction")
    path = Path(str(data_path).strip()).expanduser()
    base: Optional[Path] = None  # file formats: image paths are relative to this folder
    if fmt == "tsv":
        base, listing = _list_tsv(path)
        root = base
    elif fmt == "llamagen-jsonl":
        base, listing = _list_llamagen(path)
        root = base
    elif fmt == "tar":
        shards = _tar_shards(str(data_path))
        listing, root = _list_tar(shards), shards[0].parent
    elif fmt == "hf-disk":
        dataset = _load_saved(path)
        image_col, caption_col, key_col = _pick_columns(dataset.column_names, str(path))
        from datasets import Image as HFImage

        if isinstance(dataset.features.get(image_col), HFImage):
            dataset = dataset.cast_column(image_col, HFImage(decode=False))  # bytes: decoded here, errors counted
        listing, root = _list_rows(list(dataset[caption_col]), list(dataset[key_col]) if key_col else None, str(path)), path
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        files = _parquet_files(str(data_path))
        listing, root = _Listing(), files[0].parent
        cols: Optional[tuple] = None
        for f, file in enumerate(files):
            names = pq.ParquetFile(file).schema_arrow.names
            cols = cols or _pick_columns(names, str(file))
            table = pq.read_table(file, columns=[c for c in (cols[1], cols[2]) if c])  # captions (and ids) only
            part = _list_rows(table.column(cols[1]).to_pylist(), table.column(cols[2]).to_pylist() if cols[2] else None,
                              str(file))
            listing.keys += part.keys
            listing.captions += part.captions
            listing.locs += [(f, r) for r in part.locs]
            for reason, n in part.counts.items():
                listing.counts[reason] = listing.counts.get(reason, 0) + n
                listing.skipped.setdefault(reason, []).extend(part.skipped[reason][:5])
    else:
        raise DataError(f"unknown caption format {fmt!r}; one of {', '.join(FORMATS)}")

    total = len(listing.keys)
    if total == 0:
        reasons = "; ".join(f"{n} {r} (e.g. {listing.skipped[r][0]})" for r, n in listing.counts.items())
        raise DataError(f"{data_path}: no captioned images found ({fmt})" + (f": {reasons}" if reasons else ""))
    n = subset_size(subset, total)
    order = range(total) if n == total else sorted(
        range(total), key=lambda k: (stable_key(seed, f"{listing.keys[k]}\n{listing.captions[k]}"), k))
    kept: list[int] = []
    missing: list[int] = []
    for k in order:  # file formats: check existence in selection order (a subset stats only about n files)
        if len(kept) == n:
            break
        exists = base is None or os.path.isfile(base / listing.locs[k])
        (kept if exists else missing).append(k)
    if missing:
        checked = len(kept) + len(missing)
        shown = "; ".join(str(base / listing.locs[k]) for k in missing[:5])
        if len(missing) / checked > max_missing_fraction or not kept:
            raise DataError(f"{len(missing)} of {checked} images listed in {data_path} do not exist "
                            f"({100 * len(missing) / checked:.1f}%, above max_missing_fraction={max_missing_fraction}): "
                            f"{shown}{' ...' if len(missing) > 5 else ''}. Image paths are relative to {base}")
        listing.counts["image file missing"] = len(missing)
        listing.skipped["image file missing"] = [str(base / listing.locs[k]) for k in missing[:5]]
        log.warning("%s: %d listed images do not exist and are skipped (e.g. %s)", data_path, len(missing), shown)
    if subset is not None and len(kept) < n:
        raise DataError(f"subset asks for {n} images but only {len(kept)} of those listed in {data_path} exist; "
                        f"use a smaller subset")
    kept.sort()
    locs = [listing.locs[k] for k in kept]
    if fmt in ("tsv", "llamagen-jsonl"):
        source: _Source = _FileSource(base, [os.path.normpath(p) for p in locs])
    elif fmt == "tar":
        source = _TarSource([str(s) for s in shards], np.array([l[0] for l in locs], dtype=np.int32),
                            [l[1] for l in locs], np.array([l[2] for l in locs], dtype=np.int64),
                            np.array([l[3] for l in locs], dtype=np.int64))
    elif fmt == "hf-disk":
        source = _ArrowSource(dataset, np.array(locs, dtype=np.int64), image_col, path)
    else:
        source = _ParquetSource([str(f) for f in files], np.array([l[0] for l in locs], dtype=np.int32),
                                np.array([l[1] for l in locs], dtype=np.int64), cols[0])
    return CaptionRecords(fmt, root, image_size, [listing.keys[k] for k in kept], [listing.captions[k] for k in kept],
                          source, listing.skipped, listing.counts, max_bad_fraction, total)
