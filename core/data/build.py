"""The trainer's data: one factory over the three kinds of dataset.

Every dataset built here is map-style, picklable and yields (image [3, H, W] float32 in [-1, 1],
condition), the condition being a class id (int) or a caption (str); `num_classes` is the number of
class ids, or None for captioned data. Errors name the VapiConfig field behind the argument
(`data`, `data_path`, `data_subset`, `seed`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from torch.utils.data import Dataset

from core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

KINDS = ("imagefolder", "captions", "shapes")
# VapiConfig field behind each argument of build_dataset (for error messages).
FIELDS = {"kind": "data", "path": "data_path", "subset": "data_subset", "seed": "seed"}
OPTIONS: dict[str, tuple[str, ...]] = {  # extra keyword arguments each kind accepts
    "imagefolder": ("max_bad_fraction",),
    "captions": ("captions_file", "max_missing_fraction", "max_bad_fraction"),
    "shapes": ("with_captions",),
}


class ShapesTrainingSet(Dataset):
    """The procedural shapes domain as training data: `length` scenes of `split` from `start`,
    as (image, class id), or (image, caption) with `with_captions`. With captions, scenes whose
    combination of attributes is held out for prompt adherence (core.demo.prompts) are skipped: the
    `length` items are the first `length` other scenes from `start`."""

    def __init__(self, split: str, start: int, length: int, image_size: int, with_captions: bool = False):
        from core.demo.shapes import NUM_CLASSES, ShapesDataset

        self._scenes = ShapesDataset(split, start=start, length=length, image_size=image_size,
                                     with_captions=with_captions)
        self.with_captions = with_captions
        self.num_classes: Optional[int] = None if with_captions else NUM_CLASSES
        self._indices = None
        if with_captions:
            from core.demo.prompts import training_indices

            self._indices = training_indices(split, start, length) - start  # offsets into ShapesDataset's window
            self._scenes = ShapesDataset(split, start=start, length=int(self._indices[-1]) + 1, image_size=image_size,
                                         with_captions=True)

    def __len__(self) -> int:
        return len(self._scenes) if self._indices is None else len(self._indices)

    def __getitem__(self, i: int) -> tuple:
        if self._indices is None:
            return self._scenes[i]
        if not -len(self._indices) <= i < len(self._indices):
            raise IndexError(f"index {i} out of range for a dataset of length {len(self._indices)}")
        item = self._scenes[int(self._indices[i])]
        return item[0], item[2]


def _renamed(e: ConfigError) -> ConfigError:
    """The same error under the config's field name (subset -> data_subset)."""
    message = str(e)[len(e.field) + 2:]
    return ConfigError(FIELDS.get(e.field, e.field), message)


def _build_shapes(path: Optional[str | Path], image_size: int, subset: Optional[float], seed: int,
                  with_captions: bool = False) -> ShapesTrainingSet:
    """`path` names the split (empty = "train"); `subset` is a scene count, or a fraction of
    ShapesDataset's default length (None = all of it); `seed` picks the window of scenes
    seed*length ... seed*length + length - 1 (a multiple of 10 scenes is exactly class-balanced)."""
    from core.data.sizes import subset_size
    from core.demo import shapes

    split = str(path) if path else "train"
    if split not in shapes.SPLITS:
        raise ConfigError(FIELDS["path"], f"for data='shapes' it names the split: one of {', '.join(shapes.SPLITS)} "
                                          f"(empty = train), got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(FIELDS["seed"], f"must be an integer >= 0 for data='shapes' (it picks the window of scenes), "
                                          f"got {seed!r}")
    if not isinstance(with_captions, bool):
        raise ConfigError("with_captions", f"must be true or false, got {with_captions!r}")
    if not isinstance(subset, bool) and isinstance(subset, (int, float)) and subset > 1:
        if not float(subset).is_integer():
            raise ConfigError(FIELDS["subset"], f"above 1 it is an image count and must be whole, got {subset!r}")
        length = int(subset)  # the domain is unbounded: any count is available
    else:
        try:
            length = subset_size(subset, shapes.ShapesDataset(split, image_size=image_size).length)
        except ConfigError as e:
            raise _renamed(e) from None
    return ShapesTrainingSet(split, seed * length, length, image_size, with_captions)


CHECK_SAMPLE = 64  # images decoded before a run starts (spread over the dataset)


def check_readable(dataset: Dataset, where: Optional[str | Path]) -> None:
    """Decode a sample of an image dataset before any heavy work: too many unreadable files (the
    dataset's own rule), or none readable at all, is a DataError naming the folder and a file."""
    verify = getattr(dataset, "verify", None)
    if verify is None:
        return
    found = verify(sample=CHECK_SAMPLE)
    if found["bad"] and len(found["bad"]) == found["checked"]:
        raise DataError(f"{where}: none of the {found['checked']} images checked can be read as an image "
                        f"(e.g. {found['bad'][0]}); point data_path at a folder of JPEG/PNG images")
    if found["bad"]:  # below the dataset's threshold: the run replaces them; say so once
        log.warning("%s: %d of %d images checked are unreadable and will be replaced by others (e.g. %s)",
                    where, len(found["bad"]), found["checked"], found["bad"][0])


def build_dataset(kind: str, path: Optional[str | Path], image_size: int, subset: Optional[float] = None,
                  seed: int = 0, num_classes: Optional[int] = None, **kw) -> Dataset:
    """The training dataset of a run.

    kind "imagefolder": `path` is root/<class>/<image> (ImageNet train); options: max_bad_fraction.
    kind "captions": `path` is caption data in any of core.data.caption_formats.FORMATS (a folder of images
    plus captions.jsonl, a TSV, tar shards, a saved HF dataset, parquet, LlamaGen lists); options: captions_file,
    max_missing_fraction, max_bad_fraction. kind "shapes": `path` names the split (empty = train);
    options: with_captions. `subset`: None, a fraction in (0, 1] or a count > 1. With
    `num_classes` (a class-conditional model), the dataset's classes are checked against it.
    """
    from core.data.sizes import check_num_classes

    if kind not in KINDS:
        raise ConfigError(FIELDS["kind"], f"unknown kind of data {kind!r}; use one of {', '.join(KINDS)}")
    unknown = sorted(set(kw) - set(OPTIONS[kind]))
    if unknown:
        raise ConfigError(unknown[0], f"not an option of data={kind!r}; its options are {', '.join(OPTIONS[kind])}")
    if kind == "shapes":
        dataset: Dataset = _build_shapes(path, image_size, subset, seed, **kw)
    else:
        if path is None or not str(path).strip():
            layout = ("a folder with root/<class>/<image>" if kind == "imagefolder" else
                      "a folder with images plus captions.jsonl, a .tsv, .tar shards (or a {00000..00127}.tar pattern), "
                      "a saved Hugging Face dataset, .parquet files or LlamaGen .jsonl lists")
            raise ConfigError(FIELDS["path"], f"is required for data={kind!r}: {layout}")
        try:
            if kind == "imagefolder":
                from core.data.imagefolder import ImageFolderDataset

                dataset = ImageFolderDataset(path, image_size, subset=subset, seed=seed, **kw)
            else:  # any caption format (core.data.caption_formats detects it from the path)
                from core.data.caption_formats import open_captions

                dataset = open_captions(path, image_size, subset=subset, seed=seed, **kw)
        except ConfigError as e:
            raise _renamed(e) from None
    if num_classes is not None:
        check_num_classes(dataset, num_classes)
    return dataset
