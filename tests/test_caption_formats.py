"""data=captions in every format the authors' scripts read, each from small files written here: the same images
and captions read back from a TSV, tar shards (a folder, a brace pattern), a saved HF dataset, parquet and LlamaGen
lists as from today's captions.jsonl; the subset the same across shard counts; skipped and unreadable items
counted; demo-t2i trains on tar shards of shapes scenes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.build import build_dataset, check_readable
from core.data.caption_formats import CaptionRecords, detect, expand_braces, open_captions
from core.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
N = 12


def _png(k: int, size: int = 20) -> bytes:
    g = torch.Generator().manual_seed(k)
    px = (torch.rand(size, size, 3, generator=g) * 255).byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def _caption(k: int) -> str:
    return f"caption number {k}"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """images/<k>.png and the reference: a captions.jsonl folder (today's format)."""
    root = tmp_path_factory.mktemp("ref")
    (root / "images").mkdir()
    for k in range(N):
        (root / "images" / f"{k:03d}.png").write_bytes(_png(k))
    (root / "captions.jsonl").write_text("".join(json.dumps({"image": f"images/{k:03d}.png", "caption": _caption(k)}) + "\n"
                                                 for k in range(N)))
    return root


def _write_tar(path: Path, items: list[tuple[str, bytes, object]]) -> None:
    """items: (key, image bytes, sidecar dict | str (a .txt) | None)."""
    with tarfile.open(path, "w") as tf:
        for key, data, side in items:
            for name, payload in [(f"{key}.png", data)] + (
                    [(f"{key}.json", json.dumps(side).encode())] if isinstance(side, dict) else
                    [(f"{key}.txt", side.encode())] if isinstance(side, str) else []):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))


def _items(ds) -> dict[str, torch.Tensor]:
    return {ds[i][1]: ds[i][0] for i in range(len(ds))}


def _assert_same(ds, reference) -> None:
    got, want = _items(ds), _items(reference)
    assert sorted(got) == sorted(want)
    for caption, image in want.items():
        assert torch.equal(got[caption], image), caption


@pytest.fixture(scope="module")
def reference(images):
    return build_dataset("captions", images, image_size=16)


def test_tsv_with_relative_and_absolute_paths(images, reference, tmp_path):
    lines = [f"{'images/' if k % 2 else str(images / 'images') + '/'}{k:03d}.png\t{_caption(k)}" for k in range(N)]
    (images / "laion_coco.tsv").write_text("\n".join(lines) + "\n")
    try:
        assert detect(images / "laion_coco.tsv") == "tsv"
        ds = build_dataset("captions", images / "laion_coco.tsv", image_size=16)
        assert isinstance(ds, CaptionRecords) and ds.format == "tsv"
        _assert_same(ds, reference)
    finally:
        (images / "laion_coco.tsv").unlink()


def test_tar_shards_with_sidecars_a_folder_and_a_brace_pattern(images, reference, tmp_path):
    sidecars = [{"caption": _caption(k)} if k % 3 == 0 else {"text": _caption(k)} if k % 3 == 1 else
                {"meta": {"caption": _caption(k)}} for k in range(N)]
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(3):
        _write_tar(shards / f"{s:05d}.tar", [(f"{k:06d}", _png(k), sidecars[k]) for k in range(s, N, 3)]
                   + ([("orphan", _png(99), None)] if s == 0 else []))
    pattern = str(shards / "{00000..00002}.tar")
    assert expand_braces(pattern) == [str(shards / f"{s:05d}.tar") for s in range(3)]
    for path in (shards, pattern, shards / "00000.tar"):
        assert detect(path) == "tar"
    ds = build_dataset("captions", pattern, image_size=16)
    assert ds.format == "tar" and len(ds) == N
    _assert_same(ds, reference)
    assert ds.skipped_counts == {"no caption sidecar": 1} and "orphan.png" in ds.skipped["no caption sidecar"][0]
    assert len(build_dataset("captions", shards / "00000.tar", image_size=16)) == 4
    with pytest.raises(DataError, match=r"1 of the 4 shards .* do not exist"):
        build_dataset("captions", str(shards / "{00000..00003}.tar"), image_size=16)


def test_the_subset_is_the_same_whatever_the_shard_count(tmp_path):
    items = [(f"{k:06d}", _png(k, 8), {"caption": f"c{k}"}) for k in range(40)]
    keys = []
    for count in (2, 5):
        folder = tmp_path / f"by{count}"
        folder.mkdir()
        for s in range(count):
            _write_tar(folder / f"{s:05d}.tar", items[s::count])
        ds = build_dataset("captions", str(folder / f"{{00000..{count - 1:05d}}}.tar"), image_size=8, subset=0.25, seed=3)
        keys.append(sorted(ds.key(i) for i in range(len(ds))))
    assert len(keys[0]) == 10 and keys[0] == keys[1]
    other = build_dataset("captions", tmp_path / "by2", image_size=8, subset=0.25, seed=4)
    assert sorted(other.key(i) for i in range(len(other))) != keys[0]  # the seed picks another subset


def test_a_saved_hugging_face_dataset(images, reference, tmp_path):
    from datasets import Dataset, DatasetDict, Image as HFImage

    ds = Dataset.from_dict({"image": [{"bytes": _png(k), "path": None} for k in range(N)],
                            "text": [_caption(k) for k in range(N)], "id": list(range(N))}).cast_column("image", HFImage())
    ds.save_to_disk(str(tmp_path / "saved"))
    assert detect(tmp_path / "saved") == "hf-disk"
    got = build_dataset("captions", tmp_path / "saved", image_size=16)
    assert got.format == "hf-disk" and got.key(0) == "0"
    _assert_same(got, reference)
    DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))  # a DatasetDict: its train split
    _assert_same(build_dataset("captions", tmp_path / "dict", image_size=16), reference)


def test_parquet_files_read_by_row_group(images, reference, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "flux" / "data"
    folder.mkdir(parents=True)
    for f, ks in enumerate((range(0, 7), range(7, N))):
        table = pa.table({"image": [{"bytes": _png(k), "path": None} for k in ks], "caption": [_caption(k) for k in ks]})
        pq.write_table(table, folder / f"train-{f:05d}.parquet", row_group_size=3)
    assert detect(tmp_path / "flux") == "parquet" and detect(folder / "train-00000.parquet") == "parquet"
    ds = build_dataset("captions", tmp_path / "flux", image_size=16)
    assert ds.format == "parquet"
    _assert_same(ds, reference)


def test_llamagen_jsonl_lists(images, reference, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    for part, ks in enumerate((range(0, 5), range(5, N))):
        (lists / f"part{part}.jsonl").write_text("".join(
            json.dumps({"image_path": str(images / "images" / f"{k:03d}.png"),
                        "text": [_caption(k), f"a longer llava caption {k}"]}) + "\n" for k in ks))
    assert detect(lists) == "llamagen-jsonl"
    ds = build_dataset("captions", lists, image_size=16)
    assert ds.format == "llamagen-jsonl"
    _assert_same(ds, reference)  # the first caption of LlamaGen's list (blip)


def test_missing_and_unreadable_images_are_counted_and_named(images, tmp_path):
    lines = [f"images/{k:03d}.png\t{_caption(k)}" for k in range(N)] + ["images/gone.png\tlost", "no tab here"]
    (tmp_path / "images").symlink_to(images / "images")
    (tmp_path / "list.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"1 of 13 images listed .* do not exist .*gone\.png"):
        build_dataset("captions", tmp_path / "list.tsv", image_size=16)
    ds = build_dataset("captions", tmp_path / "list.tsv", image_size=16, max_missing_fraction=0.5)
    assert len(ds) == N and ds.skipped_counts == {"not <image path>\\t<caption>": 1, "image file missing": 1}
    # a corrupt image inside a shard: named by shard and member when checked
    _write_tar(tmp_path / "bad.tar", [("a", _png(1), {"caption": "ok"}), ("b", b"not a png", {"caption": "broken"})])
    ds = build_dataset("captions", tmp_path / "bad.tar", image_size=16)
    found = ds.verify(sample=None)
    assert found["checked"] == 2 and found["bad"] == [f"{tmp_path / 'bad.tar'}:b.png"]
    _write_tar(tmp_path / "allbad.tar", [("b", b"junk", {"caption": "x"})])
    with pytest.raises(DataError, match="unreadable"):
        check_readable(build_dataset("captions", tmp_path / "allbad.tar", image_size=16), tmp_path / "allbad.tar")


def test_unknown_layouts_say_what_each_format_looks_like(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no caption data found.*\.tsv.*\{00000\.\.00127\}\.tar.*save_to_disk.*parquet"):
        detect(tmp_path / "empty")
    (tmp_path / "x.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="compressed tar"):
        detect(tmp_path / "x.tar.gz")
    with pytest.raises(DataError, match="does not exist"):
        detect(tmp_path / "nowhere")


@pytest.mark.slow
def test_demo_t2i_trains_two_steps_on_tar_shards_of_shapes_scenes(tmp_path):
    from core.demo import configs
    from core.demo.shapes import ShapesDataset

    size = configs.vq_config()["image_size"]
    scenes = ShapesDataset("train", length=24, image_size=size, with_captions=True)
    items = []
    for k in range(len(scenes)):
        image, _, caption = scenes[k]
        px = ((image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        items.append((f"{k:06d}", buf.getvalue(), {"caption": caption}))
    (tmp_path / "shards").mkdir()
    for s in range(2):
        _write_tar(tmp_path / "shards" / f"{s:05d}.tar", items[s::2])
    run = tmp_path / "runs" / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "core", "train", "--preset", "demo-t2i", "--set", "data=captions",
                        "--set", f"data_path={tmp_path / 'shards' / '{00000..00001}.tar'}", "--set", "max_steps=2",
                        "--set", "global_batch_size=4", "--set", "per_device_train_batch_size=4",
                        "--set", "num_generations=2", "--set", "device=cpu", "--set", "preview_steps=100", "--set", "preview_seeds=[0]", "--set", "data_subset=null",
                        "--run-dir", str(run)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "finished at step 2/2" in r.stdout, (r.stdout[-1500:], r.stderr[-3000:])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 2 and np.isfinite(metrics[-1].get("loss", 0.0))
