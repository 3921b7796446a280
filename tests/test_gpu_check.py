"""benchmarks/gpu_check.sh in its --dry-run mode: the script runs end to end on the CPU and says what it skipped."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_prints_the_table_and_skips_cuda_parts():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    out = r.stdout
    assert r.returncode == 0, (out[-3000:], r.stderr[-3000:])
    assert "CUDA-marked tests: skipped (dry run, no CUDA)" in out
    for row in ("| step, grouped |", "| step, per-sample |", "| grouped vs per-sample |", "| generator fwd+bwd |",
                "| decode + MSE + LPIPS |", "| sampling, growing cache |", "| sampling, static cache |", "| VQ decode |"):
        assert row in out, row
    assert "allocated" in out and "reserved" in out  # peak memory: tensors and the allocator's
    assert out.count('"imported_beyond_a_bare_gpu_machine": []') == 12  # runs with torch, accelerate, numpy only
    for kind in ("ddp", "fsdp"):  # 2 methods x (first 2 steps, resume, 3 uninterrupted + checks)
        assert out.count(f'"smoke": "{kind}"') == 6
        assert out.count(f'"smoke": "{kind}", "method": "decoder", "phase": "whole"') == 1
    assert out.count('"sharded": true') == 6 and out.count('"resume_diff"') == 4


def test_gpu_check_wheels_install_pytest_offline(tmp_path):
    """A GPU machine without pytest installs it from benchmarks/wheels alone (pytest 9 needs pygments too)."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
                        str(ROOT / "benchmarks" / "wheels"), "--target", str(tmp_path / "pkgs"), "pytest"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "pkgs" / "pygments").is_dir() and (tmp_path / "pkgs" / "pytest").is_dir()


def test_mfu_counts_the_output_head_and_the_h100_variants_peak():
    from benchmarks.gpu_check import PEAK_BF16, gpt_flops
    from tests.helpers import tiny_gpt

    gpt = tiny_gpt()
    head = gpt.output.weight.numel()
    table = sum(p.numel() for n, p in gpt.named_parameters() if "embedding" in n)
    assert gpt_flops(gpt, 10) == 6 * (sum(p.numel() for p in gpt.parameters()) - table) * 10 + 12 * 2 * 100 * 64
    assert head > 0
    first = lambda name: next(v for k, v in PEAK_BF16.items() if k in name)  # noqa: E731 - as peak_flops reads it
    assert first("NVIDIA H100 PCIe") == 756e12 and first("NVIDIA H100 NVL") == 835e12
    assert first("NVIDIA H100 80GB HBM3") == 989e12 and first("NVIDIA H200") == 989e12
