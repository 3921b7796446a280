"""core.eval.reference (ADM/LlamaGen .npz batches) and core.eval.geneval (prompt file, image layout)."""
import hashlib
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError, DataError
from core.eval import geneval as gv
from core.eval.reference import (
    NpzImageDataset,
    list_png_samples,
    pngs_to_npz,
    quantize,
    read_npz,
    read_npz_labels,
    to_uint8_nhwc,
    write_npz,
)


def _pixels(n=6, h=8, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ npz

def test_quantize_is_llamagen_rounding_and_inverts_uint8_to_float():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    # LlamaGen: clamp(127.5 x + 128, 0, 255) truncated
    assert quantize(x)[0, 0, 0].tolist() == [0, 0, 128, 191, 255, 255]
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    assert torch.equal(quantize(u.float() / 127.5 - 1.0), u)


def test_npz_written_and_read_back_in_the_adm_layout(tmp_path):
    images = torch.rand(5, 3, 8, 12) * 2 - 1                         # [N,3,H,W] in [-1,1]
    path = write_npz(tmp_path / "samples.npz", images, labels=np.arange(5))
    back = read_npz(path)
    assert back.shape == (5, 8, 12, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, quantize(images).permute(0, 2, 3, 1).numpy())
    assert isinstance(back, np.memmap)                               # np.savez stores uncompressed
    np.testing.assert_array_equal(read_npz_labels(path), np.arange(5))
    # what LlamaGen / ADM's evaluator open: np.load(...)["arr_0"], and the raw arr_0.npy member
    with np.load(path) as npz:
        assert npz.files == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(npz["arr_0"], back)
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f) if version == (1, 0) \
            else np.lib.format.read_array_header_2_0(f)
    assert version in ((1, 0), (2, 0)) and shape == (5, 8, 12, 3) and not fortran and dtype == np.uint8


def test_npz_without_labels_and_compressed_archives(tmp_path):
    pixels = _pixels()
    path = write_npz(tmp_path / "a.npz", pixels)
    assert read_npz_labels(path) is None
    np.savez_compressed(tmp_path / "c.npz", arr_0=pixels)
    back = read_npz(tmp_path / "c.npz")
    assert not isinstance(back, np.memmap)
    np.testing.assert_array_equal(back, pixels)


@pytest.mark.parametrize("arrays,match", [
    ({"arr_0": np.zeros((2, 8, 8, 3), np.float32)}, "uint8"),
    ({"arr_0": np.zeros((8, 8, 3), np.uint8)}, "rank 4"),
    ({"arr_0": np.zeros((2, 3, 8, 8), np.uint8)}, "NCHW"),
    ({"arr_0": np.zeros((2, 8, 8, 4), np.uint8)}, "3 RGB channels"),
    ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, "no 'arr_0'"),
])
def test_bad_npz_files_raise_data_error_naming_the_file(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match) as err:
        read_npz(path)
    assert str(path) in str(err.value)


def test_missing_or_non_zip_npz(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_npz(tmp_path / "nope.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="not an .npz"):
        read_npz(tmp_path / "text.npz")


def test_npz_dataset_yields_uint8_chw_tensors(tmp_path):
    pixels = _pixels(3)
    ds = NpzImageDataset(write_npz(tmp_path / "a.npz", pixels))
    assert len(ds) == 3 and isinstance(ds, torch.utils.data.Dataset)
    item = ds[1]
    assert item.dtype == torch.uint8 and item.shape == (3, 8, 10)
    np.testing.assert_array_equal(item.permute(1, 2, 0).numpy(), pixels[1])


def _png_folder(folder, pixels):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(folder / f"{i:06d}.png")
    return folder


def test_png_folder_to_npz(tmp_path):
    pixels = _pixels(7)
    folder = _png_folder(tmp_path / "samples", pixels)
    (folder / "notes.txt").write_text("ignored")
    out = pngs_to_npz(folder, tmp_path / "samples.npz", labels=np.arange(7) % 3, flush_every=3)
    np.testing.assert_array_equal(read_npz(out), pixels)
    np.testing.assert_array_equal(read_npz_labels(out), np.arange(7) % 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples", "samples.npz"]   # no partial files left
    first5 = pngs_to_npz(folder, tmp_path / "five.npz", num=5)
    assert read_npz(first5).shape == (5, 8, 10, 3)


def test_png_folder_to_npz_resumes_after_an_interruption(tmp_path):
    pixels = _pixels(6)
    folder = _png_folder(tmp_path / "samples", pixels)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "000004.png")   # wrong size: stops at 4
    with pytest.raises(DataError, match="000004.png"):
        pngs_to_npz(folder, tmp_path / "out.npz", flush_every=2)
    state = json.loads((tmp_path / "out.npz.partial.json").read_text())
    assert state["done"] == 4
    # the resumed run does not read 000000..000003 again: changing one now leaves the archive as packed
    Image.fromarray(np.zeros_like(pixels[0])).save(folder / "000000.png")
    Image.fromarray(pixels[4]).save(folder / "000004.png")
    out = pngs_to_npz(folder, tmp_path / "out.npz", flush_every=2)
    np.testing.assert_array_equal(read_npz(out), pixels)


def test_png_folder_gaps_and_modes_are_reported(tmp_path):
    pixels = _pixels(4)
    folder = _png_folder(tmp_path / "gap", pixels)
    (folder / "000002.png").unlink()
    with pytest.raises(DataError, match="000002.png"):
        list_png_samples(folder, num=4)
    with pytest.raises(DataError, match="not found"):
        list_png_samples(tmp_path / "missing")
    gray = tmp_path / "gray"
    gray.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gray / "000000.png")
    with pytest.raises(DataError, match="mode L"):
        pngs_to_npz(gray, tmp_path / "gray.npz")


def test_to_uint8_nhwc_rejects_channel_first_uint8():
    with pytest.raises(DataError, match="NCHW"):
        to_uint8_nhwc(np.zeros((2, 3, 8, 8), np.uint8))


# --------------------------------------------------------------------------------------------- GenEval

def test_geneval_prompts_are_the_official_553(tmp_path):
    path = gv.write_geneval_prompts(tmp_path / "evaluation_metadata.jsonl")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == gv.GENEVAL_PROMPTS_SHA256
    prompts = gv.read_geneval_prompts(path)
    assert len(prompts) == gv.GENEVAL_NUM_PROMPTS
    assert gv.prompts_by_tag(prompts) == {"single_object": 80, "two_object": 99, "counting": 80,
                                          "colors": 94, "position": 100, "color_attr": 100}
    assert prompts[0] == {"tag": "single_object", "include": [{"class": "bench", "count": 1}],
                          "prompt": "a photo of a bench"}
    assert {p["include"][0]["class"] for p in prompts if p["tag"] == "single_object"} == set(gv.GENEVAL_OBJECTS)
    assert not any(p["tag"] == "colors" and p["include"][0]["class"] == "person" for p in prompts)


def test_geneval_prompts_other_seed_differ():
    other = gv.geneval_prompts(seed=0, draws_per_task=10)
    assert other != gv.geneval_prompts()[:len(other)]
    assert gv.prompts_by_tag(other)["single_object"] == 80


@pytest.mark.parametrize("line,match", [("not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                        ('{"tag": "x", "include": []}', '"prompt"'),
                                        ('{"tag": "x", "prompt": "p"}', '"include"')])
def test_geneval_prompt_file_errors_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"tag": "a", "include": [], "prompt": "ok"}\n' + line + "\n")
    with pytest.raises(DataError, match=match) as err:
        gv.read_geneval_prompts(path)
    assert f"{path}:2" in str(err.value)


def test_geneval_export_layout_and_resume(tmp_path):
    prompts = gv.geneval_prompts()[:3]
    calls = []

    def generate(meta):
        calls.append(meta["prompt"])
        return torch.rand(4, 3, 16, 16) * 2 - 1

    out = tmp_path / "geneval"
    assert gv.export_geneval(out, prompts, generate, images_per_prompt=4) == [0, 1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002"]
    folder = out / "00001"
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    text = (folder / "metadata.jsonl").read_text()
    assert text.count("\n") == 1 and json.loads(text) == prompts[1]          # GenEval reads it with json.load
    with Image.open(folder / "samples" / "0000.png") as im:
        assert im.mode == "RGB" and im.size == (16, 16)
    back = gv.read_geneval_folder(out)
    assert [m for m, _ in back] == prompts and all(len(s) == 4 for _, s in back)

    # resumable: complete folders are skipped, a half-written one is redone
    (out / "00002" / "samples" / "0003.png").unlink()
    calls.clear()
    assert gv.export_geneval(out, prompts, generate, images_per_prompt=4) == [2]
    assert calls == [prompts[2]["prompt"]]
    # another prompt file in the same folder is refused
    with pytest.raises(DataError, match="another prompt"):
        gv.export_geneval(out, prompts[1:], generate, images_per_prompt=4)


def test_geneval_export_checks_image_count_and_reader_checks_layout(tmp_path):
    prompts = gv.geneval_prompts()[:1]
    with pytest.raises(ConfigError, match="images_per_prompt"):
        gv.export_geneval(tmp_path / "a", prompts, lambda m: np.zeros((2, 8, 8, 3), np.uint8), images_per_prompt=4)
    (tmp_path / "b" / "00000").mkdir(parents=True)
    with pytest.raises(DataError, match="metadata.jsonl"):
        gv.read_geneval_folder(tmp_path / "b")
