"""The estimate before launch: memory terms against a hand computation, against peak memory measured on the CPU for
shapes the constants were not read from and against issue 27's GPU measurements, the advice when a run does not fit,
the CPU warning with its ETA, and the trainer switching gradient checkpointing on by itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import cli
from core.vapi import estimate as E
from core.vapi.config import resolve

ROOT = Path(__file__).resolve().parents[1]
LOW, HIGH = 0.15, 0.5  # the CPU estimate against the measured peak: at most 15% under, 50% over (conservative)


def test_memory_terms_by_hand():
    arch = E.Arch(params=1000, trained=1000, n_layer=2, dim=8, vocab=32, image_tokens=16, cond_tokens=1, image_size=16)
    t = E.memory_terms(arch, micro_batch=2, num_generations=4, reward_chunk_size=3, bf16=False, checkpointing=False,
                       lpips=False, tokenizer_params=10, decoder_channels=32, on_cpu=True)
    # b=2, T = 16 + 1 - 1 = 16 tokens, d=8, L=2, N=16, V=32, H=16; fp32
    assert t["weights (fp32)"] == 4000 and t["gradients (fp32)"] == 4000 and t["AdamW states (fp32)"] == 8000
    assert t["activations"] == 2 * 16 * 8 * (50 * 2 + 150)  # 64,000
    assert t["logits (fp32)"] == 6 * 4 * 2 * 16 * 32  # 24,576
    assert t["decode + reward"] == 8 * 4.5 * 32 * 16 * 16 * 4  # the CPU keeps all b*G = 8 decoded samples
    assert t["frozen models"] == 40 and "weights (bf16 copies)" not in t
    # a GPU: the GPU-measured constants (issue 27) replace the CPU's, and a chunk of 3 is decoded at a time
    g = E.memory_terms(arch, micro_batch=2, num_generations=4, reward_chunk_size=3, bf16=True, checkpointing=False,
                       lpips=True, tokenizer_params=10, decoder_channels=32, on_cpu=False, shards=4)
    assert g["activations"] == 2 * 16 * 8 * (118 * 2 + 150) * 0.5
    assert g["decode + reward"] == 3 * 2500 * 16 * 16 * 32 / 128
    assert g["weights (fp32)"] == 1000 and g["AdamW states (fp32)"] == 2000  # FSDP over 4 ranks
    assert E.peak_of(g, overlap=False) == sum(g.values()) - min(g["activations"] + g["logits (fp32)"],
                                                                g["decode + reward"])
    ck = E.memory_terms(arch, micro_batch=2, num_generations=4, reward_chunk_size=3, bf16=True, checkpointing=True,
                        lpips=True, tokenizer_params=10, decoder_channels=32, on_cpu=True)
    assert ck["activations"] == 2 * 16 * 8 * (4 * 2 + 66 * 0.5)  # fp32 block inputs + one block in bf16
    assert ck["weights (bf16 copies)"] == 2000
    assert ck["decode + reward"] == 8 * 4.5 * 32 * 256 * 2 + 3 * ((64 + 32 + 16 + 8 + 2) * 256 * 4 + 3 * 64 * 256 * 4)
    assert ck["LPIPS of the references"] == 2 * (64 + 32 + 16 + 8 + 2) * 256 * 4
    assert ck["frozen models"] == 40 + 4 * E.LPIPS_PARAMS


def test_parameter_counts_are_the_real_models(tiny_demo):
    from core.models import load

    arch = E.arch_of("demo-c2i")
    assert arch.params == sum(p.numel() for p in load.build_generator("demo-c2i").parameters())
    xxl = E.arch_of("llamagen-c2i-xxl-384")  # on the meta device: no memory, no file
    assert 1.3e9 < xxl.params < 1.5e9 and (xxl.n_layer, xxl.dim, xxl.image_tokens) == (48, 1536, 576)


@pytest.mark.slow
@pytest.mark.parametrize("ckpt", [False, True])
def test_the_estimate_matches_peak_memory_measured_on_the_cpu(ckpt):
    """Shapes none of the constants were read from (those came from d 256, 4-8 layers, V 4096-8192). The measurement
    is the steady-state step (the second, beside the AdamW states the first created) with glibc's mmap threshold
    fixed, so freed memory goes back as CUDA's caching allocator reuses it (the default threshold grows, and the
    peak then drifted from run to run: 1.04-1.23 GB for the same step). Measured 0.98 GB without checkpointing
    (estimate 0.86, -12%) and 0.32 GB with it (estimate 0.44, +39%: conservative), the same to 0.01% run to run."""
    spec = {"dim": 384, "layers": 6, "vocab": 2048, "grid": 16, "b": 12, "G": 4, "chunk": 16, "ckpt": ckpt}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    r = subprocess.run([sys.executable, "-m", "tests.measure_step_memory", json.dumps(spec)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    arch = E.Arch(got["params"], got["params"], spec["layers"], spec["dim"], spec["vocab"], spec["grid"] ** 2, 1,
                  spec["grid"] * 4)
    terms = E.memory_terms(arch, micro_batch=spec["b"], num_generations=spec["G"], reward_chunk_size=spec["chunk"],
                           bf16=False, checkpointing=ckpt, lpips=False, decoder_channels=32, on_cpu=True)
    # what the step adds; the rollout is decoded before the gradient forward (a model with dropout, rollout_mode train)
    assert got["rollout_first"]
    step = E.peak_of(terms, overlap=False) - terms["weights (fp32)"] - terms["frozen models"]
    assert (1 - LOW) * got["measured"] <= step <= (1 + HIGH) * got["measured"], (step, got["measured"], terms)


@pytest.fixture
def run(capsys, monkeypatch, tmp_path):
    from core import paths

    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "empty")

    def go(*args):
        rc = cli.main(["estimate", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return go


def test_cli_fits_or_says_what_to_change(run):
    rc, out, _ = run("--preset", "llamagen-c2i-xxl", "--gpu", "H100")
    assert rc == 0 and "1.41B parameters" in out and "device: H100, 80 GiB: fits" in out and "100 steps ≈" in out
    assert "with gradient checkpointing it would be" in out
    rc, out, _ = run("--preset", "llamagen-c2i-xxl", "--gpu", "40")
    assert "does NOT fit" in out and "set per_device_train_batch_size=" in out
    rc, out, _ = run("--preset", "llamagen-c2i-xxl", "--gpu", "24")
    assert "does NOT fit" in out and "FSDP" in out
    rc, _, err = run("--preset", "llamagen-c2i-xxl", "--gpu", "abacus")
    assert rc == 2 and "--gpu: unknown GPU 'abacus'" in err


def test_a_paper_preset_on_the_cpu_is_warned_with_its_eta(run, tiny_demo):
    rc, out, _ = run("--preset", "llamagen-c2i-xxl", "--devices", "cpu")
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert rc == 0 and len(warning) == 1 and "on the CPU" in warning[0] and "for 100 steps" in warning[0], out
    rc, out, _ = run("--preset", "demo-c2i", "--devices", "cpu")
    assert rc == 0 and "warning:" not in out  # the demo is meant for the CPU
    cfg = resolve("llamagen-c2i-xxl", {"data_path": "x", "device": "cpu"})
    assert any("on the CPU" in w for w in E.quick_warnings(cfg))


def test_gpu_check_figures_calibrate_the_step_time(run, tmp_path, monkeypatch):
    _, before, _ = run("--preset", "llamagen-c2i-xxl", "--gpu", "H100")
    results = tmp_path / "gpu_check.json"
    results.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "mfu": 0.41, "step_seconds": 12.0}))
    monkeypatch.setattr(E, "GPU_CHECK_RESULTS", results)
    _, after, _ = run("--preset", "llamagen-c2i-xxl", "--gpu", "H100")
    line = next(x for x in after.splitlines() if x.startswith("time:"))
    assert "gpu_check's step time on NVIDIA H100 80GB HBM3 (12.0 s)" in line and "about 12.0 s per step" in line, line
    assert line != next(x for x in before.splitlines() if x.startswith("time:"))


def test_checkpointing_needed_for_a_trainer_that_decides_by_itself(monkeypatch, tmp_path):
    from core import paths

    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path)
    cfg = resolve("llamagen-c2i-xxl", {"data_path": "x"})
    assert E.checkpointing_needed(cfg, gpu="H100") is False  # fits as it is
    assert E.checkpointing_needed(cfg, gpu="48") is True  # fits only with it
    assert E.checkpointing_needed(cfg, gpu="24") is None  # fits neither way


def test_gpt_xxl_at_the_papers_setting_reproduces_the_gpu_measurements(monkeypatch, tmp_path):
    """Issue 27's measurements on a GPU (GPT-XXL @ 384 px, 16 images per micro-batch, G 8, chunk 32): 50 MiB of saved
    activations per block per image, 11 GiB to decode and score a 32-image chunk; states 16 bytes per parameter."""
    from dataclasses import replace

    from core import paths

    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path)
    cfg = resolve("llamagen-c2i-xxl", {"data_path": "x"})
    est = E.estimate(cfg, gpu="H100")
    m = {k: v / E.GIB for k, v in est.memory.items()}
    assert m["weights (fp32)"] + m["gradients (fp32)"] + m["AdamW states (fp32)"] == pytest.approx(21.0, abs=0.1)
    assert m["activations"] == pytest.approx(48 * 16 * 50 / 1024, rel=0.03)  # 37.5 GiB + the layers' outside part
    assert m["decode + reward"] == pytest.approx(11.0, abs=0.1)
    # the LlamaGen presets have dropout: under rollout_mode=train the rollout is decoded before the gradient forward
    assert not est.overlap and est.peak / E.GIB == pytest.approx(66.8, abs=0.1) and est.fits
    beside = E.estimate(replace(cfg, rollout_mode="eval"), gpu="H100")
    assert beside.overlap and beside.peak == pytest.approx(est.peak + est.memory["decode + reward"])
    assert beside.fits is False and beside.peak_other / E.GIB == pytest.approx(42.9, abs=0.1)  # issue's "borderline"
    assert est.peak_other / E.GIB == pytest.approx(36.1, abs=0.1)
    fsdp = E.estimate(cfg, gpu="H100", shards=8)  # the trainer's call under FSDP on 8 GPUs
    # README's table is these figures
    table = {line.split("|")[1].strip(): line.split("|")[2:4] for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("| 1 GPU (or DDP)") or line.startswith("| FSDP on 8 GPUs")}
    rows = [(est, "rollout first (as configured)"), (beside, "decode beside"), (fsdp, "FSDP on 8 GPUs")]
    for e, row in rows:
        cells = next(v for k, v in table.items() if row in k)
        assert [c.strip().split(" GiB")[0] for c in cells] == [f"{e.peak / E.GIB:.1f}", f"{e.peak_other / E.GIB:.1f}"]
    # on the CPU the CPU-measured constants stay
    cpu = E.estimate(replace(cfg, device="cpu"))
    assert cpu.memory["activations"] == 16 * 576 * 1536 * (E.ACT_PER_LAYER * 48 + E.ACT_OUTSIDE_LAYERS)  # fp32 there
    assert est.memory["activations"] == 16 * 576 * 1536 * (E.GPU_ACT_PER_LAYER * 48 + E.ACT_OUTSIDE_LAYERS) / 2


def test_reward_chunk_that_fits_uses_what_is_left_beside_the_rest_of_the_step(monkeypatch, tmp_path):
    from dataclasses import replace

    from core import paths

    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path)
    cfg = resolve("llamagen-c2i-xxl", {"data_path": "x", "gradient_checkpointing": True, "rollout_mode": "eval"})
    est = E.estimate(cfg, gpu="H100")
    per_image = est.memory["decode + reward"] / 32
    rest = est.peak - est.memory["decode + reward"]
    assert E.reward_chunk_that_fits(cfg, gpu="H100") == 32  # fits as configured
    room = int((rest + 12.5 * per_image) / E.FIT_FRACTION) + 1  # room for 12 images' decode beside the graph
    assert E.reward_chunk_that_fits(cfg, capacity_bytes=room) == 12
    # rollout first: the decode only has to fit beside the states, not beside the graph as well
    first = replace(cfg, rollout_mode="train")
    assert E.reward_chunk_that_fits(first, capacity_bytes=room) == 32
    assert E.reward_chunk_that_fits(cfg, capacity_bytes=int(10 * E.GIB)) == 1


@pytest.mark.slow
def test_trainer_switches_checkpointing_on_when_the_estimate_does_not_fit(tiny_demo, tmp_path):
    from dataclasses import replace

    from core.vapi.trainer import Trainer

    cfg = resolve("demo-c2i", {"device": "cpu", "data_subset": 20, "reward_weights": {"mse": 1}})
    logs = []
    t = Trainer(cfg, tmp_path, log=logs.append)
    t.setup()
    on_gpu = dict(capacity_bytes=2**40)  # the trainer calls it on its GPU: the GPU's constants
    without = E.estimate(replace(cfg, gradient_checkpointing=False), **on_gpu)
    assert without.peak_other < without.peak
    t.fit_memory(t.policy, capacity_bytes=int(without.peak))  # 92% of it: does not fit
    assert t.policy.gradient_checkpointing and "gradient checkpointing switched on" in logs[-1]
    assert t.cfg.reward_chunk_size == cfg.reward_chunk_size  # with checkpointing the decode chunk fits
    t.policy.gradient_checkpointing = False
    t.fit_memory(t.policy, capacity_bytes=int(2 * without.peak))  # fits: left as configured
    assert not t.policy.gradient_checkpointing and t.cfg.reward_chunk_size == cfg.reward_chunk_size
    # so little memory that even with checkpointing the decode of a full chunk does not fit: a smaller chunk
    t.policy.gradient_checkpointing = True
    with_ = E.estimate(replace(cfg, gradient_checkpointing=True), **on_gpu)
    decode = with_.memory["decode + reward"]
    room = int((with_.peak - decode + decode / 4) / E.FIT_FRACTION)
    t.fit_memory(t.policy, capacity_bytes=room)
    assert t.cfg.reward_chunk_size < cfg.reward_chunk_size and "reward_chunk_size" in logs[-1]


@pytest.mark.slow
def test_janus_counts_what_the_policy_trains(tmp_path, monkeypatch):
    """Janus's sizes come from its model folder's config.json (a tiny random stand-in here); the trained count is
    what JanusPolicy leaves trainable (the understanding encoder, its aligner and the VQ are frozen)."""
    from core import paths
    from core.models import janus, registry
    from tests.standins import make_standins

    env = make_standins(tmp_path)
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", Path(env["VAPI_CHECKPOINTS"]))
    arch = E.arch_of("janus-pro-1b")
    policy, _ = janus.load_janus(registry.get_generator("janus-pro-1b").path)
    assert arch.params == sum(p.numel() for p in policy.parameters())
    assert arch.trained == sum(p.numel() for p in policy.parameters() if p.requires_grad) < arch.params
