"""`python -m core data inspect`: the format found, the item count, a few captions, what listing left out,
unreadable images among those decoded and a full-pass time, on small files written here."""
from __future__ import annotations

import pytest

from core import cli
from tests.test_caption_formats import _png, _write_tar


@pytest.fixture
def run(capsys):
    def go(*args):
        rc = cli.main(["data", "inspect", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return go


def test_inspect_tar_shards_counts_what_it_left_out_and_what_it_cannot_read(tmp_path, run):
    items = [(f"{k:04d}", _png(k), {"caption": f"a thing {k}"}) for k in range(20)]
    items[7] = ("0007", b"not an image", {"caption": "a thing 7"})
    _write_tar(tmp_path / "00000.tar", items[:10] + [("orphan", _png(50), None)])
    _write_tar(tmp_path / "00001.tar", items[10:])
    rc, out, err = run(str(tmp_path / "{00000..00001}.tar"), "--image-size", "16", "--sample", "20")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("format: tar (captions)") and lines[1] == "items: 20"
    assert "'a thing 0'" in out and "'a thing 4'" in out
    assert "left out while listing: 1 no caption sidecar" in out
    assert "unreadable images: 1 of 20 decoded" in out and "00000.tar:0007.png" in out
    assert "a full pass over 20 items ≈" in out
    rc, out, _ = run(str(tmp_path), "--image-size", "16", "--subset", "0.5")
    assert rc == 0 and "items: 10 of 20 listed (the subset)" in out


def test_too_many_unreadable_images_is_the_problem_a_run_would_stop_on(tmp_path, run):
    _write_tar(tmp_path / "bad.tar", [(f"{k}", b"junk", {"caption": f"c{k}"}) for k in range(4)]
               + [("ok", _png(1), {"caption": "fine"})])
    rc, out, _ = run(str(tmp_path / "bad.tar"), "--image-size", "16")
    assert rc == 2 and "problem:" in out and "unreadable" in out


def test_inspect_other_kinds_and_bad_paths(tmp_path, run):
    from tests.standins import make_image_folder

    make_image_folder(tmp_path / "imagenet", classes=3, per_class=2)
    rc, out, _ = run(str(tmp_path / "imagenet"), "--data", "imagefolder", "--image-size", "16")
    assert rc == 0 and "format: imagefolder" in out and "items: 6" in out and "n00000002" in out
    rc, _, err = run(str(tmp_path / "nowhere"))
    assert rc == 2 and "does not exist" in err
