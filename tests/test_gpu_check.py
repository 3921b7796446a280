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
    assert "CUDA-marked tests: skipped (dry run, no CUDA)" in out and "FSDP smoke: skipped" in out
    for row in ("| step, grouped |", "| step, per-sample |", "| grouped vs per-sample |", "| generator fwd+bwd |",
                "| decode + MSE + LPIPS |", "| sampling, growing cache |", "| sampling, static cache |", "| VQ decode |"):
        assert row in out, row
    assert out.count('"imported_beyond_a_bare_gpu_machine": []') == 4  # runs with torch, accelerate, numpy only
    assert out.count('"smoke": "ddp"') == 4 and '"method": "decoder", "resumed": true, "checkpoints": [1, 2, 3]' in out
