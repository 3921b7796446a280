"""Sample and reference batches in the ADM / LlamaGen ``.npz`` layout.

Layout (what openai/guided-diffusion's ``evaluations/evaluator.py`` and LlamaGen's
``sample_c2i_ddp.py`` read and write): an uncompressed ``np.savez`` archive whose ``arr_0`` holds the
images as uint8 [N, H, W, 3] (NHWC, RGB, 0..255); class-conditional samples from guided-diffusion's
``image_sample.py`` add the labels as ``arr_1`` [N]. ADM's reference batches also carry Inception
statistics (``mu``, ``sigma``, ...), which `read_npz` ignores.

Pixels come from model outputs in [-1, 1] as LlamaGen quantises them, ``clamp(127.5 x + 128, 0, 255)``
truncated to uint8 (round half up); the Inception extractor quantises the same way, so features of a
tensor equal features of its PNG.

Large batches (50k x 256² x 3 = 9.8 GB) are read as a memory map when the member is stored
uncompressed (``np.savez``), and written from PNG folders through a resumable on-disk buffer.
"""
from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import ConfigError, DataError

IMAGES_KEY = "arr_0"  # [N, H, W, 3] uint8
LABELS_KEY = "arr_1"  # [N] integer class ids (optional)
_PNG_NAME = re.compile(r"(\d+)\.png")
_ZIP_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field


def quantize(images):
    """[B,3,H,W] float tensor in [-1,1] -> [B,3,H,W] uint8 tensor, as LlamaGen saves its samples."""
    return torch.clamp(127.5 * images.float() + 128.0, 0, 255).to(torch.uint8)


def to_uint8_nhwc(images) -> np.ndarray:
    """Images -> uint8 [N,H,W,3] numpy.

    Accepts a float [N,3,H,W] torch tensor or numpy array in [-1,1] (quantised like LlamaGen), or a
    uint8 [N,H,W,3] array/tensor, passed through.
    """
    if torch.is_tensor(images):
        if images.dtype.is_floating_point:
            images = quantize(images.detach()).permute(0, 2, 3, 1)
        images = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray) and images.dtype.kind == "f":
        images = np.clip(127.5 * images.astype(np.float32) + 128.0, 0, 255).astype(np.uint8)
        if images.ndim == 4:
            images = images.transpose(0, 2, 3, 1)
    images = np.asarray(images)
    _check_nhwc(images, "images")
    return np.ascontiguousarray(images)


def _check_nhwc(images: np.ndarray, where: str) -> None:
    if images.dtype != np.uint8:
        raise DataError(f"{where}: expected uint8 pixels (0..255), got {images.dtype}; "
                        "float images in [-1, 1] must be [N,3,H,W]")
    if images.ndim != 4:
        raise DataError(f"{where}: expected rank 4 [N,H,W,3], got shape {tuple(images.shape)}")
    if images.shape[-1] != 3:
        hint = " (looks like NCHW: transpose to NHWC)" if images.shape[1] == 3 else ""
        raise DataError(f"{where}: expected 3 RGB channels last [N,H,W,3], got shape "
                        f"{tuple(images.shape)}{hint}")


def write_npz(path: str | Path, images, labels=None) -> Path:
    """Write images ([N,H,W,3] uint8, or [N,3,H,W] float in [-1,1]) and optional labels [N]."""
    path = Path(path)
    pixels = to_uint8_nhwc(images)
    arrays = {IMAGES_KEY: pixels}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(pixels),):
            raise DataError(f"{path}: labels must have shape [{len(pixels)}], got {labels.shape}")
        arrays[LABELS_KEY] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _stored_member_array(path: Path, member: str) -> np.ndarray | None:
    """Memory-map the .npy member `member` of the zip at `path` if it is stored uncompressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(_ZIP_LOCAL_HEADER)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + _ZIP_LOCAL_HEADER + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        if dtype.hasobject:
            return None
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def _open_member(path: Path, key: str, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: sample batch not found")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not an .npz archive ({e}); write it with np.savez(path, arr_0=images)") from e
    if f"{key}.npy" not in names:
        keys = sorted(n.removesuffix(".npy") for n in names)
        raise DataError(f"{path}: no '{key}' array (found {keys}); the ADM/LlamaGen layout stores "
                        "images as arr_0")
    array = _stored_member_array(path, f"{key}.npy") if mmap else None
    if array is None:
        with np.load(path, allow_pickle=False) as npz:
            array = npz[key]
    return array


def read_npz(path: str | Path, mmap: bool = True) -> np.ndarray:
    """Images of a sample/reference batch: uint8 [N,H,W,3], validated.

    mmap: memory-map ``arr_0`` when it is stored uncompressed (np.savez); a compressed archive
    (np.savez_compressed) is always read into memory.
    """
    path = Path(path)
    images = _open_member(path, IMAGES_KEY, mmap)
    _check_nhwc(images, str(path))
    return images


def read_npz_labels(path: str | Path) -> np.ndarray | None:
    """The labels ``arr_1`` [N] of a class-conditional batch, or None when the archive has none."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as npz:
        if LABELS_KEY not in npz.files:
            return None
        labels = npz[LABELS_KEY]
        n = read_npz(path).shape[0]
    if labels.shape != (n,):
        raise DataError(f"{path}: arr_1 (labels) must have shape [{n}], got {labels.shape}")
    return labels


def list_png_samples(folder: str | Path, num: int | None = None) -> list[Path]:
    """The PNGs of a sample folder named by index (``000000.png``, ``000001.png``, ...), in order.

    All of 0..num-1 must be there (num defaults to how many indexed PNGs the folder holds).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: sample folder not found")
    by_index = {}
    for p in folder.iterdir():
        m = _PNG_NAME.fullmatch(p.name)
        if m:
            by_index[int(m.group(1))] = p
    if not by_index:
        raise DataError(f"{folder}: no indexed PNG samples (expected 000000.png, 000001.png, ...)")
    num = len(by_index) if num is None else num
    if num < 1:
        raise ConfigError("num", f"must be >= 1, got {num}")
    missing = [i for i in range(num) if i not in by_index]
    if missing:
        raise DataError(f"{folder}: {len(missing)} of {num} samples missing, first {missing[0]:06d}.png")
    return [by_index[i] for i in range(num)]


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "RGB":
            raise DataError(f"{path}: image mode {im.mode}, expected RGB; convert the samples to RGB")
        return np.asarray(im, dtype=np.uint8)


def pngs_to_npz(folder: str | Path, out: str | Path, num: int | None = None,
                labels=None, flush_every: int = 1000) -> Path:
    """Pack a folder of ``000000.png ...`` into `out` in the ADM/LlamaGen layout; resumable.

    Pixels are copied into ``<out>.partial.npy`` (a memory map, so RAM stays flat for 50k images) and
    progress is recorded in ``<out>.partial.json`` every `flush_every` images; a call interrupted
    part-way continues from the last record. The archive is written only when all images are in.
    """
    folder, out = Path(folder), Path(out)
    paths = list_png_samples(folder, num)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(paths),):
            raise DataError(f"{out}: labels must have shape [{len(paths)}], got {labels.shape}")
    first = _read_png(paths[0])
    shape = (len(paths), *first.shape)
    buf_path = out.with_name(out.name + ".partial.npy")
    state_path = out.with_name(out.name + ".partial.json")
    state = {"folder": str(folder.resolve()), "shape": list(shape), "done": 0}
    if state_path.is_file() and buf_path.is_file():
        saved = json.loads(state_path.read_text())
        if saved["folder"] == state["folder"] and saved["shape"] == state["shape"]:
            state = saved
    out.parent.mkdir(parents=True, exist_ok=True)
    if state["done"] == 0:
        buf = np.lib.format.open_memmap(buf_path, mode="w+", dtype=np.uint8, shape=shape)
    else:
        buf = np.lib.format.open_memmap(buf_path, mode="r+")

    for i in range(state["done"], len(paths)):
        img = first if i == 0 else _read_png(paths[i])
        if img.shape != first.shape:
            raise DataError(f"{paths[i]}: size {img.shape} differs from {paths[0].name}'s {first.shape}; "
                            "all samples of one batch must have the same size")
        buf[i] = img
        if (i + 1) % flush_every == 0 or i + 1 == len(paths):
            buf.flush()
            state["done"] = i + 1
            tmp = state_path.with_name(state_path.name + ".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, state_path)
    del buf

    tmp_out = out.with_name(out.name + ".tmp.npz")
    with zipfile.ZipFile(tmp_out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.write(buf_path, arcname=f"{IMAGES_KEY}.npy")
        if labels is not None:
            with zf.open(f"{LABELS_KEY}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, labels, allow_pickle=False)
    os.replace(tmp_out, out)
    buf_path.unlink()
    state_path.unlink()
    return out


class NpzImageDataset(Dataset):
    """A ``.npz`` batch as a map-style dataset of uint8 [3,H,W] tensors (what torch-fidelity reads)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.images = read_npz(self.path)  # [N,H,W,3] uint8, memory-mapped when stored

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1).contiguous()  # [3,H,W]
