"""The procedural demo domain: determinism, splits, balance, captions, pixel content, bad input."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from core.demo import shapes
from core.errors import DataError
from core.paths import ASSETS_DIR, ROOT

COLOR_RGB = dict(shapes.COLORS)
BACKGROUND_RGB = dict(shapes.BACKGROUNDS)
PROBES = [("train", 0), ("evaluator", 1), ("reference", 2), ("val", 7), ("train", 123_456_789_012_345)]
# sha256 prefixes of PROBES[:3] at 32 px; any change means the dataset changed (bump DOMAIN_KEY).
PINNED = ["e4903d49586f90bb", "bd6bb024e20883f0", "9c25e7842181edb7"]


def _digest(split: str, index: int, image_size: int = 32) -> str:
    return hashlib.sha256(shapes.render(split, index, image_size).image.tobytes()).hexdigest()


def _foreground_fraction(sample: shapes.ShapeSample) -> np.ndarray:
    """Per pixel t in bg + t * (fg - bg), by least squares: [H, W] float."""
    bg = np.asarray(BACKGROUND_RGB[sample.attrs["background"]], dtype=np.float64)
    fg = np.asarray(COLOR_RGB[sample.attrs["color"]], dtype=np.float64)
    return ((sample.image - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))


def test_same_split_and_index_render_identical_bytes():
    for split, index in PROBES:
        a, b = shapes.render(split, index), shapes.render(split, index)
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.label, a.caption, a.attrs) == (b.label, b.caption, b.attrs)


def test_rendering_is_identical_in_a_fresh_process():
    code = (
        "import hashlib\nfrom core.demo import shapes\n"
        f"for split, index in {PROBES!r}:\n"
        "    print(hashlib.sha256(shapes.render(split, index).image.tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [_digest(split, index) for split, index in PROBES]


def test_pinned_pixels_catch_unversioned_rendering_changes():
    assert shapes.DOMAIN_KEY == 0x5A9E_0001
    assert [_digest(s, i)[:16] for s, i in PROBES[:3]] == PINNED


def test_splits_render_different_scenes():
    for index in range(20):
        images = [shapes.render(split, index).image.tobytes() for split in shapes.SPLITS]
        assert len(set(images)) == len(shapes.SPLITS)


def test_labels_follow_the_index_and_ranges_are_balanced():
    start = 987_654
    _, labels = shapes.images_tensor("reference", range(start, start + 200))
    assert torch.equal(labels, torch.arange(start, start + 200) % 10)
    assert torch.bincount(labels, minlength=10).tolist() == [20] * 10
    assert [shapes.render("val", i).label for i in range(start, start + 10)] == list(range(4, 10)) + list(range(4))


def test_image_arrays_and_tensors():
    for size in (32, 64):
        sample = shapes.render("train", 3, size)
        assert sample.image.dtype == np.uint8 and sample.image.shape == (size, size, 3)
        images, labels = shapes.images_tensor("train", [3, 4, 5], size)
        assert images.dtype == torch.float32 and images.shape == (3, 3, size, size)
        assert labels.dtype == torch.long
        assert images.min() >= -1.0 and images.max() <= 1.0
        expected = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 127.5 - 1.0
        assert torch.allclose(images[0], expected)


def test_pixels_are_flat_colours_with_antialiased_edges_only():
    """Every pixel blends the background and the shape colour; no noise or texture."""
    for index in range(300):
        sample = shapes.render("val", index)
        t = _foreground_fraction(sample)  # [H, W]
        bg = np.asarray(BACKGROUND_RGB[sample.attrs["background"]], dtype=np.float64)
        fg = np.asarray(COLOR_RGB[sample.attrs["color"]], dtype=np.float64)
        blend = bg + np.clip(t, 0, 1)[..., None] * (fg - bg)  # [H, W, 3]
        assert np.abs(sample.image - blend).max() <= 1.0, index
        solid_fg, solid_bg = (t > 0.99).mean(), (t < 0.01).mean()
        assert solid_fg > 0.02 and solid_bg > 0.3, index
        assert solid_fg + solid_bg > 0.75, index  # edges are thin: mostly solid pixels


def test_shape_count_matches_connected_components():
    # 8-connected at half coverage; moons are skipped: their horn tips are thinner than a pixel.
    checked = 0
    for index in range(400):
        sample = shapes.render("val", index)
        if sample.attrs["shape"] == "moon":
            continue
        n = ndi.label(_foreground_fraction(sample) > 0.5, structure=np.ones((3, 3)))[1]
        assert n == sample.attrs["count"], (index, sample.caption)
        checked += 1
    assert checked == 360


def test_position_names_the_cell_of_the_shapes_centroid():
    checked = 0
    for index in range(400):
        sample = shapes.render("val", index)
        ys, xs = np.nonzero(_foreground_fraction(sample) > 0.5)
        cy, cx = (ys.mean() + 0.5) / 32, (xs.mean() + 0.5) / 32
        if min(abs(cx - 1 / 3), abs(cx - 2 / 3), abs(cy - 1 / 3), abs(cy - 2 / 3)) < 0.1:
            continue  # pixel centroid and geometric centroid may fall in different cells
        row, col = min(int(cy * 3), 2), min(int(cx * 3), 2)
        assert sample.attrs["position"] == shapes.POSITIONS[3 * row + col], (index, sample.caption)
        checked += 1
    assert checked > 50


def test_larger_image_size_renders_the_same_scene():
    for index in range(20):
        small = shapes.render("train", index, 32).image.astype(np.float64)
        large = shapes.render("train", index, 64).image.astype(np.float64)
        pooled = large.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))  # [32, 32, 3]
        assert np.abs(pooled - small).mean() < 2.0, index


def test_captions_name_count_colour_shape_position_and_background():
    counts, colors, positions = set(), set(), set()
    for index in range(500):
        sample = shapes.render("val", index)
        a = sample.attrs
        assert a["shape"] == shapes.CLASS_NAMES[sample.label]
        noun = shapes.PLURALS[sample.label] if a["count"] == 2 else shapes.CLASS_NAMES[sample.label]
        article = "two" if a["count"] == 2 else ("an" if a["color"] == "orange" else "a")
        phrase = shapes.POSITION_PHRASES[shapes.POSITIONS.index(a["position"])]
        assert sample.caption == f"{article} {a['color']} {noun} {phrase} on a {a['background']} background"
        counts.add(a["count"]), colors.add(a["color"]), positions.add(a["position"])
    assert counts == {1, 2} and colors == set(shapes.COLOR_NAMES) and positions == set(shapes.POSITIONS)
    assert shapes.render("val", 0).caption == "a pink circle in the center on a gray background"


def test_class_names_asset_is_generated_from_class_names(tmp_path):
    assert len(shapes.CLASS_NAMES) == 10 == len(set(shapes.CLASS_NAMES))
    committed = ASSETS_DIR / "demo_classes.json"
    assert json.loads(committed.read_text()) == list(shapes.CLASS_NAMES)
    shapes.write_class_names(tmp_path / "classes.json")
    assert (tmp_path / "classes.json").read_bytes() == committed.read_bytes()


def test_dataset_items_and_captions():
    ds = shapes.ShapesDataset("val", start=40, length=25, with_captions=True)
    assert len(ds) == 25
    image, label, caption = ds[3]
    sample = shapes.render("val", 43)
    assert image.shape == (3, 32, 32) and label == 3 and caption == sample.caption
    assert torch.equal(image, shapes.images_tensor("val", [43])[0][0])
    assert torch.equal(ds[-1][0], ds[24][0])
    with pytest.raises(IndexError):
        ds[25]
    batch = next(iter(torch.utils.data.DataLoader(shapes.ShapesDataset("val", 0, 16), batch_size=8)))
    assert batch[0].shape == (8, 3, 32, 32) and batch[1].tolist() == list(range(8))


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: shapes.render("test", 0), "split"),
        (lambda: shapes.render("train", -1), "index"),
        (lambda: shapes.render("train", 1.5), "index"),
        (lambda: shapes.render("train", True), "index"),
        (lambda: shapes.render("train", 0, 8), "image_size"),
        (lambda: shapes.render("train", 0, 4096), "image_size"),
        (lambda: shapes.render("train", 0, "32"), "image_size"),
        (lambda: shapes.images_tensor("train", [0, -3]), "indices"),
        (lambda: shapes.images_tensor("train", []), "indices"),
        (lambda: shapes.ShapesDataset("train", start=-1), "start"),
        (lambda: shapes.ShapesDataset("train", length=0), "length"),
        (lambda: shapes.ShapesDataset("holdout"), "split"),
    ],
)
def test_bad_input_raises_data_error_naming_the_argument(call, argument):
    with pytest.raises(DataError, match=rf"^{argument}:"):
        call()
