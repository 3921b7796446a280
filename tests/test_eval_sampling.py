"""core.eval.sampling: which sample is which, resume after interruption, shards, the .npz layout,
text-conditional sampling and the GenEval export, on the tiny random demo (16 px, 64 tokens)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError, MissingWeightsError
from core.eval import sampling as S
from core.eval.reference import quantize, read_npz, read_npz_labels
from tests.helpers import TINY_GPT, tiny_gpt

N, B = 22, 4  # 6 blocks, the last one partly past N


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny models do many small ops; on a shared 2-core machine OpenMP's second thread only waits.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def sampler(tiny_demo):
    return S.load_sampler("demo-c2i", device="cpu")


@pytest.fixture
def reference(sampler, tmp_path):
    """The uninterrupted single-process result of SPEC: (images [N,16,16,3] uint8, labels [N])."""
    result = S.run_sampling(SPEC, N, tmp_path / "reference", device="cpu", sampler=sampler)
    assert result.complete and result.written == N
    return read_npz(result.npz, mmap=False), read_npz_labels(result.npz)


SPEC = S.SamplingSpec(model="demo-c2i", batch_size=B, seed=7, top_k=20)


def _pngs(folder):
    return sorted(p.name for p in (folder / S.SAMPLES_DIR).iterdir())


def test_seeds_and_conditions_are_functions_of_the_sample_index():
    seeds = [S.sample_seed(3, i) for i in range(1000)]
    assert seeds == [S.sample_seed(3, i) for i in range(1000)] and len(set(seeds)) == 1000
    assert all(0 <= s < 2**63 for s in seeds) and S.sample_seed(4, 0) != seeds[0]
    imagenet = S.labels_for(S.SamplingSpec(), 50_000, num_classes=1000)
    assert np.array_equal(np.bincount(imagenet), np.full(1000, 50))  # Table 2: 50 per class
    assert S.labels_for(S.SamplingSpec(classes=(3, 7)), 5).tolist() == [3, 7, 3, 7, 3]
    assert S.labels_for(S.SamplingSpec(prompts=("a", "b", "c")), 5).tolist() == [0, 1, 2, 0, 1]
    assert [list(b) for b in S.shard_blocks(10, 4, 1, 2)] == [[4, 5, 6, 7]]
    assert [b.start for b in S.shard_blocks(10, 2, 0, 2)] == [0, 4, 8]


def test_spec_fields_are_validated_by_name():
    for kwargs, name in [({"cfg_scale": 0.5}, "cfg_scale"), ({"batch_size": 0}, "batch_size"),
                         ({"precision": "fp8"}, "precision"), ({"classes": ()}, "classes"),
                         ({"classes": (1,), "prompts": ("x",)}, "classes"), ({"image_size": 4}, "image_size")]:
        with pytest.raises(ConfigError, match=f"^{name}:"):
            S.SamplingSpec(**kwargs)
    with pytest.raises(ConfigError, match="^colour:"):
        S.SamplingSpec.from_dict({"colour": 1})
    assert S.SamplingSpec.from_dict(SPEC.to_dict()) == SPEC


def test_npz_layout_reads_back_and_matches_the_pngs(reference, tmp_path):
    images, labels = reference
    assert images.dtype == np.uint8 and images.shape == (N, 16, 16, 3)
    assert labels.tolist() == [i % 10 for i in range(N)]
    with np.load(tmp_path / "reference" / S.NPZ_FILE) as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]
    for i in (0, 9, N - 1):
        png = np.asarray(Image.open(tmp_path / "reference" / S.SAMPLES_DIR / f"{i:06d}.png"))
        assert np.array_equal(png, images[i])
    assert len({images[i].tobytes() for i in range(N)}) == N  # every sample has its own seed
    spec = json.loads((tmp_path / "reference" / S.SPEC_FILE).read_text())
    assert spec["spec"] == SPEC.to_dict() and set(spec["sha256"]) == {"generator", "tokenizer"}
    assert S.read_spec(tmp_path / "reference") == SPEC


def test_interrupted_sampling_resumes_without_duplicates_or_gaps(sampler, reference, tmp_path):
    out = tmp_path / "resumed"
    calls = []

    def stop_after_two_blocks():
        calls.append(1)
        return len(calls) > 2

    first = S.run_sampling(SPEC, N, out, device="cpu", sampler=sampler, should_stop=stop_after_two_blocks)
    assert not first.complete and first.npz is None and first.written == 2 * B
    assert _pngs(out) == [f"{i:06d}.png" for i in range(2 * B)]

    # a crash in the middle of block 1: one file never renamed into place, its temporary left behind
    (out / S.SAMPLES_DIR / "000005.png").unlink()
    (out / S.SAMPLES_DIR / f".000005.png.{os.getpid() + 1}.tmp").write_bytes(b"half a png")
    untouched = (out / S.SAMPLES_DIR / "000000.png").stat().st_mtime_ns

    progress = []
    second = S.run_sampling(SPEC, N, out, device="cpu", sampler=sampler, progress=lambda d, t: progress.append((d, t)))
    assert second.complete and second.written == N - B  # block 1 again whole, block 0 kept
    assert (out / S.SAMPLES_DIR / "000000.png").stat().st_mtime_ns == untouched
    assert _pngs(out) == [f"{i:06d}.png" for i in range(N)]  # no gaps, no extras, no temporaries
    assert progress[0] == (B + B - 1, N) and progress[-1] == (N, N)
    images, labels = reference
    assert np.array_equal(read_npz(second.npz), images) and np.array_equal(read_npz_labels(second.npz), labels)


def test_two_simulated_ranks_write_disjoint_blocks_that_equal_one_process(sampler, reference, tmp_path):
    out = tmp_path / "sharded"
    one = S.run_sampling(SPEC, N, out, device="cpu", sampler=sampler, rank=1, world_size=2)
    assert not one.complete and one.npz is None
    assert _pngs(out) == [f"{i:06d}.png" for b in (1, 3, 5) for i in range(b * B, min((b + 1) * B, N))]
    zero = S.run_sampling(SPEC, N, out, device="cpu", sampler=sampler, rank=0, world_size=2)
    assert zero.complete and one.written + zero.written == N
    images, labels = reference
    assert np.array_equal(read_npz(zero.npz), images) and np.array_equal(read_npz_labels(zero.npz), labels)
    with pytest.raises(ConfigError, match="^rank:"):
        S.run_sampling(SPEC, N, out, device="cpu", sampler=sampler, rank=2, world_size=2)


def test_raising_n_extends_a_folder_and_another_setting_is_refused(sampler, reference, tmp_path, tiny_demo):
    out = tmp_path / "grow"
    S.run_sampling(SPEC, 10, out, device="cpu", sampler=sampler)
    grown = S.run_sampling(SPEC, 14, out, device="cpu", sampler=sampler)
    assert grown.written == 6  # block 2 (8..11) again whole, then 12..13
    assert np.array_equal(read_npz(grown.npz), reference[0][:14])

    changed = S.SamplingSpec(**{**SPEC.to_dict(), "cfg_scale": 2.0})
    with pytest.raises(ConfigError, match=r"^out: .*cfg_scale was 1\.0, now 2\.0"):
        S.run_sampling(changed, 14, out, device="cpu", sampler=sampler)
    weights = tiny_demo / "gpt_c2i.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")  # same path, other contents
    with pytest.raises(ConfigError, match="contents changed"):
        S.run_sampling(SPEC, 14, out, device="cpu", sampler=sampler)


def test_guidance_seed_and_resizing_change_what_they_should(sampler, reference, tmp_path):
    def images(name, **change):
        spec = S.SamplingSpec(**{**SPEC.to_dict(), **change})
        return read_npz(S.run_sampling(spec, 6, tmp_path / name, device="cpu", sampler=sampler).npz, mmap=False)

    assert not np.array_equal(images("cfg", cfg_scale=3.0), reference[0][:6])
    assert not np.array_equal(images("seed", seed=8), reference[0][:6])
    big = images("resized", image_size=24)
    assert big.shape == (6, 24, 24, 3)
    direct = torch.nn.functional.interpolate(torch.from_numpy(reference[0][:6]).permute(0, 3, 1, 2).float() / 127.5 - 1,
                                             size=(24, 24), mode="bicubic")
    expected = quantize(direct).permute(0, 2, 3, 1).numpy()
    assert np.abs(big.astype(int) - expected.astype(int)).max() <= 1  # the PNGs here were quantised once more


def test_classes_out_of_range_and_cfg_without_a_null_class_fail_before_sampling(sampler, tmp_path):
    with pytest.raises(ConfigError, match="^classes: class id 12"):
        S.run_sampling(S.SamplingSpec(classes=(1, 12)), 4, tmp_path / "a", device="cpu", sampler=sampler)
    no_null = S.Sampler(tiny_gpt(class_dropout_prob=0.0), sampler.tokenizer, sampler.device, "c2i", 10)
    with pytest.raises(ConfigError, match="^class_dropout_prob:"):
        S.run_sampling(S.SamplingSpec(cfg_scale=2.0), 4, tmp_path / "b", device="cpu", sampler=no_null)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------- text-conditional

CAPTION_DIM, CAPTION_LEN = 8, 4


def _encode(prompts):
    """A stand-in caption encoder: features from the prompt's bytes, the last len(words) tokens valid."""
    feats = torch.zeros(len(prompts), CAPTION_LEN, CAPTION_DIM)
    mask = torch.zeros(len(prompts), CAPTION_LEN, dtype=torch.bool)
    for row, text in enumerate(prompts):
        gen = torch.Generator().manual_seed(sum(text.encode()))
        n = min(CAPTION_LEN, len(text.split()))
        feats[row, -n:] = torch.randn(n, CAPTION_DIM, generator=gen)
        mask[row, -n:] = True
    return feats, mask


@pytest.fixture
def t2i(tiny_demo, monkeypatch, sampler):
    """A tiny text-conditional preset "tiny-t2i" (weights in the tiny demo folder) and its sampler."""
    from core.models import checkpoint, registry

    change = {"model_type": "t2i", "caption_dim": CAPTION_DIM, "cls_token_num": CAPTION_LEN}
    policy = tiny_gpt(**change)
    config = {**TINY_GPT, **change}
    checkpoint.save_safetensors(policy, tiny_demo / "gpt_t2i.safetensors")
    preset = registry.GeneratorPreset("tiny-t2i", "llamagen", "t2i", "demo", 16, "demo-vq", "gpt_t2i.safetensors",
                                      None, overrides=config)
    monkeypatch.setitem(registry.GENERATORS, "tiny-t2i", preset)
    return S.Sampler(policy, sampler.tokenizer, torch.device("cpu"), "t2i", None, _encode)


def test_text_conditional_sampling_cycles_prompts_and_is_batch_and_shard_invariant(t2i, tmp_path):
    prompts = ("a red circle", "two blue squares on the left", "a star")
    spec = S.SamplingSpec(model="tiny-t2i", prompts=prompts, batch_size=3, seed=1)
    whole = S.run_sampling(spec, 7, tmp_path / "whole", device="cpu", sampler=t2i)
    assert read_npz_labels(whole.npz).tolist() == [0, 1, 2, 0, 1, 2, 0]
    for rank in (1, 0):
        parts = S.run_sampling(spec, 7, tmp_path / "parts", device="cpu", sampler=t2i, rank=rank, world_size=2)
    assert np.array_equal(read_npz(parts.npz), read_npz(whole.npz))
    with pytest.raises(ConfigError, match="^prompts: tiny-t2i is text-conditional"):
        S.run_sampling(S.SamplingSpec(model="tiny-t2i"), 3, tmp_path / "x", device="cpu", sampler=t2i)


def test_a_missing_text_encoder_is_reported_before_the_generator_loads(t2i, tmp_path, monkeypatch):
    from core import paths
    from core.models import load

    def must_not_load(*args, **kwargs):
        raise AssertionError("the generator was loaded before the missing text encoder was reported")

    monkeypatch.setattr(load, "load_generator", must_not_load)
    monkeypatch.setattr(load, "load_tokenizer", must_not_load)
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="T5 text encoder 'google/flan-t5-xl'"):
        S.load_sampler("tiny-t2i", device="cpu")


def test_geneval_export_lays_out_each_prompts_images(t2i, tmp_path):
    from core import paths
    from core.eval.geneval import read_geneval_folder, read_geneval_prompts
    from core.eval.geneval import export_geneval_samples

    rows = read_geneval_prompts(paths.ASSETS_DIR / "geneval" / "evaluation_metadata.jsonl")[:3]
    prompts_file = tmp_path / "three.jsonl"
    prompts_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = export_geneval_samples("tiny-t2i", tmp_path / "geneval", prompts_file=prompts_file, images_per_prompt=2,
                                 batch_size=4, device="cpu", sampler=t2i)
    folders = read_geneval_folder(out)
    assert [meta for meta, _ in folders] == rows and all(len(files) == 2 for _, files in folders)
    pixels = read_npz(tmp_path / "geneval.sampling" / S.NPZ_FILE)
    for p, (_, files) in enumerate(folders):
        for j, f in enumerate(files):
            assert np.array_equal(np.asarray(Image.open(f)), pixels[p + j * 3])  # image j of prompt p: p + j*P
    with pytest.raises(ConfigError, match="^model: demo-c2i is class-conditional"):
        export_geneval_samples("demo-c2i", tmp_path / "nope", device="cpu")


def test_janus_prompts_stay_token_ids_when_the_model_runs_in_bf16(tiny_demo, tmp_path):
    from core.models.janus import JanusPolicy, JanusTokenizer
    from tests.test_janus import PROMPTS, tiny_janus_model, tiny_text_tokenizer

    model = tiny_janus_model().to(torch.bfloat16)
    policy = JanusPolicy(model, tiny_text_tokenizer()).eval()
    janus = S.Sampler(policy, JanusTokenizer(model.model.vqmodel).eval(), torch.device("cpu"), "t2i", None,
                      policy.encode_prompts)
    spec = S.SamplingSpec(model="janus-pro-1b", prompts=tuple(PROMPTS), batch_size=2, cfg_scale=2.0, precision="bf16")
    whole = S.run_sampling(spec, 5, tmp_path / "whole", device="cpu", sampler=janus)
    assert read_npz(whole.npz).shape == (5, 32, 32, 3) and read_npz_labels(whole.npz).tolist() == [0, 1, 2, 0, 1]
    for rank in (0, 1):  # rank 0 first: it cannot pack yet, rank 1 may not; pack() after both
        parts = S.run_sampling(spec, 5, tmp_path / "parts", device="cpu", sampler=janus, rank=rank, world_size=2)
        assert parts.npz is None
    assert parts.complete and np.array_equal(read_npz(whole.npz), read_npz(S.pack(tmp_path / "parts", spec, 5)))
