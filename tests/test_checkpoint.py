"""Checkpoint files: both upstream layouts, safetensors, round trips, and clear errors."""
import argparse

import pytest
import torch

from core.errors import CheckpointError
from core.models import checkpoint
from tests.helpers import tiny_gpt, tiny_vq


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ddp_layout_with_namespace_args_loads(tmp_path):
    src = tiny_gpt(1)
    p = tmp_path / "c2i_ddp.pt"
    torch.save({"model": src.state_dict(), "optimizer": {"step": 3}, "steps": 10,
                "args": argparse.Namespace(gpt_model="GPT-B", lr=1e-4, image_size=256)}, p)
    dst = tiny_gpt(2)
    extras = checkpoint.load_gpt(dst, p)
    assert same_weights(src, dst)
    assert extras["args"].gpt_model == "GPT-B" and extras["steps"] == 10


def test_fsdp_consolidated_state_dict_loads(tmp_path):
    src = tiny_gpt(1)
    p = tmp_path / "consolidated.pth"
    torch.save(src.state_dict(), p)
    dst = tiny_gpt(2)
    checkpoint.load_gpt(dst, p)
    assert same_weights(src, dst)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_round_trip_is_exact(tmp_path, fmt):
    src = tiny_gpt(3)
    p = tmp_path / f"model.{fmt}"
    if fmt == "pt":
        checkpoint.save_upstream(src, p, config={"lr": 1e-6})
        raw = torch.load(p, weights_only=True)
        assert set(raw) == {"model", "config"}  # upstream samplers read checkpoint["model"]
    else:
        checkpoint.save_safetensors(src, p, metadata={"config": {"lr": 1e-6}})
    dst = tiny_gpt(4)
    assert not same_weights(src, dst)
    checkpoint.load_gpt(dst, p)
    assert same_weights(src, dst)
    vsrc, vdst = tiny_vq(1), tiny_vq(2)
    checkpoint.save_safetensors(vsrc, tmp_path / "vq.safetensors")
    checkpoint.load_vq(vdst, tmp_path / "vq.safetensors")
    assert same_weights(vsrc, vdst)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"previous good checkpoint")

    def boom(tmp):
        open(tmp, "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoint.atomic_write(target, boom)
    assert target.read_bytes() == b"previous good checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_corrupted_file_gets_a_clear_error(tmp_path):
    p = tmp_path / "c2i_B_256.pt"
    torch.save({"model": tiny_gpt().state_dict()}, p)
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"c2i_B_256\.pt is not a readable checkpoint"):
        checkpoint.load_gpt(tiny_gpt(), p)
    s = tmp_path / "x.safetensors"
    s.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="x.safetensors"):
        checkpoint.read_file(s)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.read_file(tmp_path / "absent.pt")


class Payload:
    ran = False

    def __reduce__(self):
        return (Payload.mark, ())

    @staticmethod
    def mark():
        Payload.ran = True
        return "executed"


def test_pickle_with_non_allow_listed_object_is_refused_without_running_it(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": tiny_gpt().state_dict(), "extra": Payload()}, p)
    Payload.ran = False
    with pytest.raises(CheckpointError, match="not allowed") as e:
        checkpoint.read_file(p)
    assert not Payload.ran
    assert "Payload" in str(e.value) or "mark" in str(e.value)


def test_wrong_architecture_names_expected_and_found(tmp_path):
    p = tmp_path / "big.pt"
    torch.save({"model": tiny_gpt(n_layer=3, dim=96, n_head=4).state_dict()}, p)
    with pytest.raises(CheckpointError, match=r"found dim 96 x 3 layers .* preset says .*dim 64 x 2 layers"):
        checkpoint.load_gpt(tiny_gpt(), p)
    with pytest.raises(CheckpointError, match="codebook/vocab size 40"):
        torch.save({"model": tiny_gpt(vocab_size=40).state_dict()}, p)
        checkpoint.load_gpt(tiny_gpt(), p)
    with pytest.raises(CheckpointError, match="not a LlamaGen GPT"):
        torch.save({"model": tiny_vq().state_dict()}, p)
        checkpoint.load_gpt(tiny_gpt(), p)


def test_named_sizes_in_the_architecture_message():
    from core.models import llamagen

    with torch.device("meta"):
        xl, xxl = llamagen.build("GPT-XL", image_size=384), llamagen.build("GPT-XXL", image_size=384)
    sd = {k: torch.empty(v.shape, device="meta") for k, v in xl.state_dict().items()}
    with pytest.raises(CheckpointError, match="found dim 1280 x 36 layers = GPT-XL, preset says GPT-XXL"):
        checkpoint.check_gpt_architecture(xxl, sd, "c2i_XL_384.pt", expected="GPT-XXL")


def test_strict_load_lists_missing_and_unexpected_keys(tmp_path):
    sd = tiny_gpt().state_dict()
    sd.pop("norm.weight")
    sd["_orig_mod.norm.weight"] = torch.ones(64)
    p = tmp_path / "compiled.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): norm.weight; unexpected keys \(1\): _orig_mod.norm.weight"):
        checkpoint.load_gpt(tiny_gpt(), p)


def test_unrecognised_layout(tmp_path):
    p = tmp_path / "odd.pt"
    torch.save({"weights": {"a": 1}, "note": "x"}, p)
    with pytest.raises(CheckpointError, match="unrecognised layout"):
        checkpoint.read_file(p)
