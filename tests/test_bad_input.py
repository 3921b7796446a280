"""Issue 22: bad input, second pass: bounded sizes, weights and data files checked before a run folder
exists, data listing that opens only regular files and never hangs, typed paths confined, typed text
shown as text, a login throttle that cannot lock the owner out. Real FIFOs, symlink loops and files."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_reliability import TINY, one_line_error, run_core


def no_run_folder(runs: Path) -> bool:
    return not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


# --- 1. sizes bounded by the config metadata, the same in CLI, resume and UI ------------------------------


@pytest.mark.parametrize("override, message", [
    ("max_steps=2000000", "max_steps: 2,000,000 is above the maximum 1,000,000"),
    ("max_steps=100000000000000000000", "max_steps: 100,000,000,000,000,000,000 is above the maximum"),
    ("num_generations=1e8", "num_generations: 1e+08 is above the maximum 256"),
    ("data_subset=1e12", "data_subset: 1e+12 is above the maximum 10,000,000"),
    ("seed=1180591620717411303424", "seed: 1,180,591,620,717,411,303,424 is above the maximum 4,294,967,295"),
    ("seed=-1", "seed: -1 is below the minimum 0"),
    ("policy_skip_tokens=100000", "policy_skip_tokens: 100,000 is above the maximum"),
    ("policy_skip_tokens=1000", "policy_skip_tokens: 1000 leaves none of demo-c2i's"),
])
def test_sizes_beyond_the_fields_bounds_are_one_line_errors_before_a_run_folder(tiny_demo, tmp_path, capsys,
                                                                                override, message):
    runs = tmp_path / "runs"
    rc, err = run_core(capsys, "train", *TINY, "--set", override, "--runs-dir", str(runs))
    one_line_error(rc, err, message)
    assert no_run_folder(runs)


def test_the_ui_and_a_resumed_config_apply_the_same_bounds():
    from app import form
    from core import configmeta
    from core.errors import ConfigError
    from core.vapi.config import VapiConfig

    values = {**form.preset_form_values("demo-c2i"), "max_steps": 2_000_000}
    with pytest.raises(ConfigError, match=r"^max_steps: 2,000,000 is above the maximum 1,000,000 \(more than"):
        form.build_plan("demo-c2i", values, "cpu", "too long")
    with pytest.raises(ConfigError, match=r"^seed: .* is above the maximum"):
        VapiConfig.from_dict({**VapiConfig().to_dict(), "seed": 2**70})  # what `train --resume` reads config.json with
    help_line = next(line for line in configmeta.describe(VapiConfig).splitlines() if "max_steps =" in line)
    assert "(at most 1,000,000)" in help_line  # `train --help` shows the bound
