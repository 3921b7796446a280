"""Training data: LlamaGen's preprocessing, ImageNet-layout folders, caption folders, the factory."""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from torchvision import transforms as tvt
from torchvision.datasets import ImageFolder

from core.data import imagefolder
from core.data.build import build_dataset
from core.data.captions import CaptionDataset
from core.data.imagefolder import (
    ImageFolderDataset, StringTable, balanced_quota, check_num_classes, stable_key, subset_size,
)
from core.data.transforms import center_crop_arr, preprocess, to_tensor
from core.errors import ConfigError, DataError

CLASS_COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "eel": (40, 40, 200), "fox": (220, 220, 20)}


def solid(color, size=(12, 10)) -> Image.Image:
    return Image.new("RGB", size, color)


def write_png(path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def jpeg_bytes(seed: int = 0, size=(24, 24)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_folder(root, sizes: dict[str, int]) -> None:
    """root/<class>/img_<k>.png, each image a solid colour of its class with k in the red channel's
    low bits, so items are told apart; classes are written in reverse order."""
    for name in reversed(list(sizes)):
        r, g, b = CLASS_COLORS.get(name, (128, 128, 128))
        for k in range(sizes[name]):
            write_png(root / name / f"img_{k:03d}.png", solid((r - k % 8, g, b)))


def expected_tensor(color) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32).div(255).sub(0.5).div(0.5)


# ----------------------------------------------------------------------------- transforms
def test_center_crop_hand_computed():
    # 8x4 image, target 2: the short side 4 >= 2*2, so one BOX halving to 4x2 (each output pixel the
    # mean of a 2x2 block), the BICUBIC step is then 1:1, and the crop takes columns 1..2.
    a = np.zeros((4, 8, 3), np.uint8)
    for r in range(2):
        for c in range(4):
            v = 10 + 40 * r + 50 * c
            for ch in range(3):
                a[2 * r: 2 * r + 2, 2 * c: 2 * c + 2, ch] = np.array([[v, v + 2], [v + 4, v + 6]]) + ch
    out = np.asarray(center_crop_arr(Image.fromarray(a), 2))
    block_means = np.array([[13 + 50, 13 + 100], [53 + 50, 53 + 100]])  # v + 3 for c = 1, 2
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], block_means + ch)
    t = to_tensor(Image.fromarray(out))
    assert t.shape == (3, 2, 2) and t.dtype == torch.float32
    torch.testing.assert_close(t[0], torch.tensor(block_means / 127.5 - 1, dtype=torch.float32), atol=1e-6, rtol=0)


def test_center_crop_geometry_rounds_long_side_and_floors_offset():
    # 10x7 to 4: no halving (7 < 8); scale 4/7 gives 10 * 4/7 = 5.71 -> 6 columns; crop offset (6-4)//2 = 1.
    arr = np.random.default_rng(0).integers(0, 256, (7, 10, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    resized = np.asarray(image.resize((6, 4), resample=Image.BICUBIC))
    np.testing.assert_array_equal(np.asarray(center_crop_arr(image, 4)), resized[:, 1:5])
    # 40x24 to 5: halve twice (24 >= 10, 12 >= 10) to 10x6, then 6 -> 5 (10 -> round(8.33) = 8), columns 1..5
    arr = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    image = Image.fromarray(arr)
    halved = image.resize((20, 12), Image.BOX).resize((10, 6), Image.BOX)
    expected = np.asarray(halved.resize((8, 5), Image.BICUBIC))[:, 1:6]
    np.testing.assert_array_equal(np.asarray(center_crop_arr(image, 5)), expected)
    # already 4 wide and 7 tall to 4: no resampling; (7-4)//2 = 1 rounds the offset down: rows 1..4
    arr = np.random.default_rng(2).integers(0, 256, (7, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(center_crop_arr(Image.fromarray(arr), 4)), arr[1:5])


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_preprocess_equals_the_reference_torchvision_pipeline(mode):
    # VA-Pi's train_c2i_grpo.py / train_t2i_grpo.py: convert RGB, center_crop_arr, ToTensor, Normalize(0.5, 0.5)
    reference = tvt.Compose([
        tvt.Lambda(lambda im: im.convert("RGB")),
        tvt.Lambda(lambda im: center_crop_arr(im, 16)),
        tvt.ToTensor(),
        tvt.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    ])
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = np.random.default_rng(2).integers(0, 256, (37, 53, channels), dtype=np.uint8)
    image = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    ours = preprocess(image, 16)
    assert ours.shape == (3, 16, 16)
    assert torch.equal(ours, reference(image))
    assert ours.min() >= -1 and ours.max() <= 1


# ----------------------------------------------------------------------------- helpers
def test_string_table_round_trips_and_pickles():
    items = ["n01440764/a.JPEG", "", "ünïcødé/ö.png", "x" * 300, os.fsdecode(b"bad\xffname.jpg")]
    table = pickle.loads(pickle.dumps(StringTable(items)))
    assert len(table) == len(items) and list(table) == items


def test_subset_size_rules():
    assert subset_size(None, 50) == 50
    assert subset_size(0.01, 1_281_167) == 12_812  # the paper's 1% of ImageNet-1k train, 12.8K
    assert subset_size(1.0, 50) == 50 and subset_size(1, 50) == 50  # <= 1 is a fraction
    assert subset_size(20, 50) == 20 and subset_size(20.0, 50) == 20
    for bad in (0, -1, 0.001, 2.5, 51, float("nan"), True, "1%"):
        with pytest.raises(ConfigError) as e:
            subset_size(bad, 50)
        assert e.value.field == "subset"


def test_balanced_quota():
    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.randint(1, 30) for _ in range(rng.randint(1, 12))]
        n = rng.randint(1, sum(sizes))
        keys = [rng.getrandbits(64) for _ in sizes]
        quota = balanced_quota(sizes, n, keys)
        assert sum(quota) == n and all(0 <= q <= s for q, s in zip(quota, sizes))
        k = n / len(sizes)
        if min(sizes) >= math.ceil(k):
            assert set(quota) <= {math.floor(k), math.ceil(k)}
        # water-filling: a group below the largest quota gave everything it had
        assert all(q == s for q, s in zip(quota, sizes) if q < max(quota) - 1)
    # a small class gives all it has; the others share the rest as floor/ceil
    assert balanced_quota([10, 10, 10, 3], 17, [3, 2, 1, 0]) == [4, 5, 5, 3]


def test_stable_key_is_pinned():
    # blake2b of "seed\0path", not Python's salted hash(): equal in every process and release. A change
    # here silently changes every run's subset, so the values are pinned.
    assert stable_key(7, "n01440764/x.JPEG") == 3986030564136372495
    assert stable_key(0, "cat/img_000.png") == 9460435218930109974
    assert stable_key(1, "cat/img_000.png") != stable_key(0, "cat/img_000.png")


# ----------------------------------------------------------------------------- ImageFolder
def test_imagefolder_matches_torchvision_ids_and_order(tmp_path):
    make_folder(tmp_path, {"eel": 2, "cat": 3, "dog": 4})
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, image_size=8)
    ref = ImageFolder(tmp_path)
    assert ds.classes == tuple(ref.classes) == ("cat", "dog", "eel")
    assert ds.class_to_idx == ref.class_to_idx
    assert [(str(ds.path(i)), ds.label(i)) for i in range(len(ds))] == ref.samples
    assert len(ds) == 9 and ds.num_classes == 3 and ds.class_counts().tolist() == [3, 4, 2]
    image, label = ds[4]  # dog, img_001
    assert label == 1 and isinstance(label, int)
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    r, g, b = CLASS_COLORS["dog"]
    torch.testing.assert_close(image, expected_tensor((r - 1, g, b))[:, None, None].expand(3, 8, 8))
    assert ds[-1][1] == 2
    with pytest.raises(IndexError):
        ds[9]


def test_imagefolder_skips_hidden_entries(tmp_path):
    make_folder(tmp_path, {"cat": 2, "dog": 2})
    write_png(tmp_path / ".ipynb_checkpoints" / "x.png", solid((0, 0, 0)))
    write_png(tmp_path / "cat" / ".hidden.png", solid((0, 0, 0)))
    write_png(tmp_path / "dog" / ".thumbnails" / "x.png", solid((0, 0, 0)))
    ds = ImageFolderDataset(tmp_path, image_size=8)
    assert ds.classes == ("cat", "dog") and len(ds) == 4


def test_subset_is_class_balanced_and_deterministic(tmp_path, monkeypatch):
    make_folder(tmp_path, {"cat": 10, "dog": 10, "eel": 10, "fox": 10})
    full = ImageFolderDataset(tmp_path, image_size=8)
    a = ImageFolderDataset(tmp_path, image_size=8, subset=10, seed=3)
    assert len(a) == 10 and sorted(a.class_counts().tolist()) == [2, 2, 3, 3]  # k = 2.5
    files_a = [str(a.path(i)) for i in range(len(a))]
    assert set(files_a) <= {str(full.path(i)) for i in range(len(full))}
    assert all(a.label(i) == full.classes.index(a.path(i).parent.name) for i in range(len(a)))
    # the same (listing, subset, seed) gives the same files even when the filesystem lists in another order
    real_listdir, real_walk = os.listdir, os.walk
    monkeypatch.setattr(os, "listdir", lambda p: list(reversed(real_listdir(p))))
    monkeypatch.setattr(os, "walk", lambda p, **kw: ((d, list(reversed(s)), list(reversed(f)))
                                                      for d, s, f in real_walk(p, **kw)))
    b = ImageFolderDataset(tmp_path, image_size=8, subset=10, seed=3)
    assert [str(b.path(i)) for i in range(len(b))] == files_a
    monkeypatch.undo()
    c = ImageFolderDataset(tmp_path, image_size=8, subset=10, seed=4)
    assert [str(c.path(i)) for i in range(len(c))] != files_a
    half = ImageFolderDataset(tmp_path, image_size=8, subset=0.5, seed=0)
    assert half.class_counts().tolist() == [5, 5, 5, 5]


def test_subset_with_a_small_class(tmp_path):
    make_folder(tmp_path, {"cat": 10, "dog": 10, "eel": 10, "fox": 3})
    ds = ImageFolderDataset(tmp_path, image_size=8, subset=0.5)  # 17 of 33: fox gives 3, others 4 or 5
    counts = ds.class_counts().tolist()
    assert sum(counts) == 17 and counts[3] == 3 and sorted(counts[:3]) == [4, 5, 5]
    with pytest.raises(ConfigError, match="34 items but only 33"):
        ImageFolderDataset(tmp_path, image_size=8, subset=34)


def test_imagenet_synset_folders_give_the_standard_ids(tmp_path):
    from core.data.classes import imagenet_class_names

    png = io.BytesIO()
    solid((1, 2, 3), (4, 4)).save(png, format="PNG")
    synsets = [f"n{10_000_000 + 7919 * i:08d}" for i in range(1000)]
    for s in reversed(synsets):
        (tmp_path / s).mkdir()
        (tmp_path / s / f"{s}_1.JPEG").write_bytes(png.getvalue())  # content decides the format, as in ImageNet
    ds = ImageFolderDataset(tmp_path, image_size=4)
    assert ds.classes == tuple(sorted(synsets)) and ds.class_names == imagenet_class_names()
    check_num_classes(ds, 1000)
    assert ds[999][1] == 999


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("file", "is a file, not a folder"),
    ("empty", "is empty; expected root/<class>/<image>"),
    ("flat", "holds 3 images directly .* expected root/<class>/<image>"),
    ("no_images", "none of the 2 class folders .* holds images"),
    ("some_empty", "1 of 3 class folders .* hold no images: dog"),
])
def test_imagefolder_layout_errors(tmp_path, case, message):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "empty":
        root.mkdir()
    elif case == "flat":
        for k in range(3):
            write_png(root / f"{k}.png", solid((0, 0, 0)))
    elif case == "no_images":
        (root / "cat").mkdir(parents=True)
        (root / "dog").mkdir()
        (root / "dog" / "readme.txt").write_text("x")
    elif case == "some_empty":
        make_folder(root, {"cat": 1, "eel": 1})
        (root / "dog").mkdir()
    with pytest.raises(DataError, match=message) as e:
        ImageFolderDataset(root, image_size=8)
    assert str(root) in str(e.value)


def test_check_num_classes_names_both_numbers(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1, "eel": 1})
    ds = ImageFolderDataset(tmp_path, image_size=8)
    check_num_classes(ds, 3)
    with pytest.raises(DataError, match=r"has 3 classes but the model has 1000.*n01440764"):
        check_num_classes(ds, 1000)


def make_broken_folder(root, n_bad: int, n_good: int = 4) -> list:
    """cat: n_good PNGs, a truncated JPEG, then non-images with an image suffix; dog: 2 PNGs; a .txt."""
    make_folder(root, {"cat": n_good, "dog": 2})
    good = jpeg_bytes()
    (root / "cat" / "img_100_truncated.jpg").write_bytes(good[: len(good) // 2])
    bad = [root / "cat" / "img_100_truncated.jpg"]
    for k in range(n_bad - 1):
        (root / "cat" / f"img_2{k:02d}_fake.jpg").write_text("this is not a JPEG")
        bad.append(root / "cat" / f"img_2{k:02d}_fake.jpg")
    (root / "cat" / "readme.txt").write_text("ignored: not an image suffix")
    return bad


def test_unreadable_file_is_replaced_from_its_class_and_recorded(tmp_path, caplog, monkeypatch):
    bad = make_broken_folder(tmp_path, n_bad=2)
    ds = ImageFolderDataset(tmp_path, image_size=8, max_bad_fraction=0.5)
    paths = [ds.path(i) for i in range(len(ds))]
    assert len(ds) == 8 and tmp_path / "cat" / "readme.txt" not in paths
    i_trunc = paths.index(bad[0])
    image, label = ds[i_trunc]
    # the next files of class cat are the fake JPEG (also bad), then wrap around to img_000
    assert label == 0 and ds.bad_files() == bad
    torch.testing.assert_close(image, ds[paths.index(tmp_path / "cat" / "img_000.png")][0])
    assert "unreadable image skipped" in caplog.text and str(bad[0]) in caplog.text
    again = ImageFolderDataset(tmp_path, image_size=8, max_bad_fraction=0.5)
    assert torch.equal(again[i_trunc][0], image)  # deterministic substitute: a token cache stays valid
    reads = []
    real_load = imagefolder.load_rgb
    monkeypatch.setattr(imagefolder, "load_rgb", lambda p: reads.append(p) or real_load(p))
    assert torch.equal(ds[i_trunc][0], image)
    assert reads == [tmp_path / "cat" / "img_000.png"]  # known-bad files are not re-read or re-counted
    assert len(ds.bad_files()) == 2


def test_too_many_bad_files_raise(tmp_path):
    bad = make_broken_folder(tmp_path, n_bad=3)
    ds = ImageFolderDataset(tmp_path, image_size=8)  # max_bad_fraction 0.01
    with pytest.raises(DataError, match=r"3 of \d+ images read .* unreadable .*max_bad_fraction=0.01") as e:
        for i in range(len(ds)):
            ds[i]
    assert str(bad[0]) in str(e.value)
    strict = ImageFolderDataset(tmp_path, image_size=8, max_bad_fraction=0.0)
    idx = [str(strict.path(i)) for i in range(len(strict))].index(str(bad[0]))
    with pytest.raises(DataError, match="1 of 1 images"):
        strict[idx]


def test_verify_before_training(tmp_path):
    make_broken_folder(tmp_path, n_bad=1)
    ds = ImageFolderDataset(tmp_path, image_size=8)
    report = ds.verify(sample=None)  # 1 bad of 7: recorded, below the 3-file minimum
    assert report["checked"] == 7 and report["bad"] == [tmp_path / "cat" / "img_100_truncated.jpg"]
    assert ds.bad_files() == report["bad"]
    assert ImageFolderDataset(tmp_path, image_size=8).verify(sample=2)["checked"] == 2
    broken = tmp_path / "broken"
    make_broken_folder(broken, n_bad=4)
    with pytest.raises(DataError, match="unreadable"):
        ImageFolderDataset(broken, image_size=8).verify(sample=None)
    with pytest.raises(ConfigError, match="sample"):
        ds.verify(sample=0)


def test_a_class_with_no_readable_image(tmp_path):
    make_folder(tmp_path, {"cat": 2})
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "a.jpg").write_text("x")
    ds = ImageFolderDataset(tmp_path, image_size=8, max_bad_fraction=0.9)
    with pytest.raises(DataError, match="every image of class 'dog'"):
        ds[2]


def test_imagefolder_pickles_and_loads_in_workers(tmp_path):
    make_folder(tmp_path, {"cat": 3, "dog": 3})
    ds = ImageFolderDataset(tmp_path, image_size=8, subset=4, seed=1)
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[1][0], ds[1][0]) and copy.label(1) == ds.label(1)
    loader = DataLoader(ds, batch_size=4, num_workers=1)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 8, 8) and labels.dtype == torch.long
    assert labels.tolist() == [ds.label(i) for i in range(4)]


def test_imagefolder_argument_errors(tmp_path):
    make_folder(tmp_path, {"cat": 2})
    for kw, field in [({"image_size": 0}, "image_size"), ({"image_size": 8, "seed": "x"}, "seed"),
                      ({"image_size": 8, "max_bad_fraction": 1.5}, "max_bad_fraction"),
                      ({"image_size": 8, "subset": 0.1}, "subset")]:
        with pytest.raises(ConfigError) as e:
            ImageFolderDataset(tmp_path, **kw)
        assert e.value.field == field


# ----------------------------------------------------------------------------- captions
def make_caption_folder(root, n: int = 6, jsonl: str = "captions.jsonl", keys=("image", "caption")) -> list[dict]:
    records = []
    for k in range(n):
        write_png(root / "images" / f"{k}.png", solid((10 * k, 100, 200)))
        records.append({keys[0]: f"images/{k}.png", keys[1]: f"a picture number {k}"})
    records.append({keys[0]: "images/0.png", keys[1]: "the first picture again"})  # two captions, one image
    write_jsonl(root / jsonl, records)
    return records


def write_jsonl(path, records, blank_line_at: int | None = None) -> None:
    lines = [json.dumps(r) for r in records]
    if blank_line_at is not None:
        lines.insert(blank_line_at, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_caption_dataset_reads_pairs(tmp_path):
    make_caption_folder(tmp_path)
    ds = CaptionDataset(tmp_path, image_size=8)
    assert len(ds) == 7 and ds.num_classes is None
    image, caption = ds[3]
    assert caption == "a picture number 3" and image.shape == (3, 8, 8)
    torch.testing.assert_close(image, expected_tensor((30, 100, 200))[:, None, None].expand(3, 8, 8))
    assert ds[6][1] == "the first picture again" and torch.equal(ds[6][0], ds[0][0])
    with pytest.raises(DataError, match="captions, not class labels"):
        check_num_classes(ds, 1000)


def test_caption_dataset_accepts_hugging_face_metadata(tmp_path):
    make_caption_folder(tmp_path, jsonl="metadata.jsonl", keys=("file_name", "text"))
    ds = CaptionDataset(tmp_path, image_size=8)
    assert ds.captions_file.name == "metadata.jsonl" and ds[2][1] == "a picture number 2"
    # a captions file in a sub-folder: image paths are relative to that folder
    sub = tmp_path / "split"
    write_png(sub / "x.png", solid((1, 2, 3)))
    write_jsonl(sub / "meta.jsonl", [{"file_name": "x.png", "text": "sub"}])
    one = CaptionDataset(tmp_path, image_size=8, captions_file="split/meta.jsonl")
    assert len(one) == 1 and one.path(0) == sub / "x.png" and one[0][1] == "sub"


@pytest.mark.parametrize("line, message", [
    ('{"image": "images/1.png", "caption": "ok"', r"line 3: invalid JSON"),
    ('["images/1.png", "x"]', r"line 3: expected a JSON object"),
    ('{"path": "images/1.png", "caption": "x"}', r"line 3: needs an image path under 'image' or 'file_name'.*'path'"),
    ('{"image": "images/1.png", "caption": 7}', r"line 3: needs a caption string"),
])
def test_caption_file_errors_name_the_line(tmp_path, line, message):
    make_caption_folder(tmp_path, n=2)
    path = tmp_path / "captions.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        CaptionDataset(tmp_path, image_size=8)


def test_empty_captions_and_missing_files(tmp_path):
    records = make_caption_folder(tmp_path, n=10)
    records[2]["caption"] = "   "
    records[5]["caption"] = ""
    write_jsonl(tmp_path / "captions.jsonl", records, blank_line_at=1)  # blank lines are skipped, still counted
    with pytest.raises(DataError, match=r"2 empty caption\(s\), at line\(s\) 4, 7"):
        CaptionDataset(tmp_path, image_size=8)
    records[2]["caption"] = records[5]["caption"] = "fixed"
    write_jsonl(tmp_path / "captions.jsonl", records)
    (tmp_path / "images" / "4.png").unlink()
    with pytest.raises(DataError, match=r"1 of 11 images listed .* do not exist .*line 5: .*4\.png"):
        CaptionDataset(tmp_path, image_size=8)
    ds = CaptionDataset(tmp_path, image_size=8, max_missing_fraction=0.2)
    assert len(ds) == 10 and ds.missing_files() == [(5, tmp_path / "images" / "4.png")]
    assert "a picture number 4" not in [ds.caption(i) for i in range(len(ds))]


def test_caption_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        CaptionDataset(tmp_path / "nope", image_size=8)
    with pytest.raises(DataError, match="no captions file .*captions.jsonl or metadata.jsonl"):
        CaptionDataset(tmp_path, image_size=8)
    with pytest.raises(DataError, match="other.jsonl does not exist"):
        CaptionDataset(tmp_path, image_size=8, captions_file="other.jsonl")
    (tmp_path / "captions.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="has no entries"):
        CaptionDataset(tmp_path, image_size=8)
    (tmp_path / "captions.jsonl").write_bytes(b'{"image": "a.png", "caption": "\xff"}\n')
    with pytest.raises(DataError, match="line 1: not UTF-8"):
        CaptionDataset(tmp_path, image_size=8)


def test_caption_subset_ignores_line_order(tmp_path):
    records = make_caption_folder(tmp_path, n=12)
    a = CaptionDataset(tmp_path, image_size=8, subset=5, seed=2)
    pairs = {(str(a.path(i)), a.caption(i)) for i in range(len(a))}
    assert len(pairs) == 5
    write_jsonl(tmp_path / "captions.jsonl", list(reversed(records)))
    b = CaptionDataset(tmp_path, image_size=8, subset=5, seed=2)
    assert {(str(b.path(i)), b.caption(i)) for i in range(len(b))} == pairs
    assert [b.line(i) for i in range(len(b))] == sorted(b.line(i) for i in range(len(b)))  # file order kept
    assert len(CaptionDataset(tmp_path, image_size=8, subset=0.5)) == 7  # 13 lines * 0.5 = 6.5 -> 7


def test_caption_unreadable_image_takes_the_next_item(tmp_path):
    make_caption_folder(tmp_path, n=4)
    data = jpeg_bytes()
    (tmp_path / "images" / "1.png").write_bytes(data[: len(data) // 3])
    ds = CaptionDataset(tmp_path, image_size=8, max_bad_fraction=0.5)
    image, caption = ds[1]
    assert caption == "a picture number 2" and torch.equal(image, ds[2][0])
    assert ds.bad_files() == [tmp_path / "images" / "1.png"]


# ----------------------------------------------------------------------------- factory and collation
def test_build_dataset_kinds(tmp_path):
    make_folder(tmp_path / "inet", {"cat": 4, "dog": 4})
    make_caption_folder(tmp_path / "caps")
    inet = build_dataset("imagefolder", tmp_path / "inet", 8, subset=0.5, seed=0, num_classes=2, max_bad_fraction=0.1)
    assert isinstance(inet, ImageFolderDataset) and inet.class_counts().tolist() == [2, 2]
    caps = build_dataset("captions", str(tmp_path / "caps"), 8, captions_file="captions.jsonl")
    assert isinstance(caps, CaptionDataset) and len(caps) == 7
    shapes = build_dataset("shapes", None, 16, subset=0.01, seed=0)  # the config default: 1% of 10k scenes
    assert len(shapes) == 100 and shapes.num_classes == 10
    images, labels = default_collate([shapes[i] for i in range(10)])
    assert images.shape == (10, 3, 16, 16) and labels.tolist() == list(range(10))
    second = build_dataset("shapes", "val", 16, subset=20, seed=1, with_captions=True)
    assert len(second) == 20 and second.num_classes is None
    from core.demo.shapes import ShapesDataset

    scene = ShapesDataset("val", start=20, length=1, image_size=16, with_captions=True)[0]
    image, caption = second[0]  # seed 1 -> scenes 20..39 of "val"
    assert torch.equal(image, scene[0]) and caption == scene[2]
    assert pickle.loads(pickle.dumps(second))[0][1] == caption


@pytest.mark.parametrize("args, kw, field", [
    (("webdataset", "x", 8), {}, "data"),
    (("imagefolder", None, 8), {}, "data_path"),
    (("captions", "  ", 8), {}, "data_path"),
    (("imagefolder", "INET", 8), {"subset": 100}, "data_subset"),
    (("imagefolder", "INET", 8), {"subset": 2.5}, "data_subset"),
    (("imagefolder", "INET", 8), {"captions_file": "c.jsonl"}, "captions_file"),
    (("shapes", "training", 16), {}, "data_path"),
    (("shapes", None, 16), {"seed": -1}, "seed"),
    (("shapes", None, 16), {"subset": 0.00001}, "data_subset"),
])
def test_build_dataset_errors_name_the_config_field(tmp_path, args, kw, field):
    make_folder(tmp_path / "INET", {"cat": 4, "dog": 4})
    kind, path, size = args
    path = str(tmp_path / path) if path == "INET" else path
    with pytest.raises(ConfigError) as e:
        build_dataset(kind, path, size, **kw)
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")


def test_build_dataset_checks_the_model_classes(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1, "eel": 1})
    with pytest.raises(DataError, match="has 3 classes but the model has 1000"):
        build_dataset("imagefolder", tmp_path, 8, num_classes=1000)
    with pytest.raises(DataError, match="captions, not class labels"):
        build_dataset("shapes", "", 16, subset=10, with_captions=True, num_classes=10)
