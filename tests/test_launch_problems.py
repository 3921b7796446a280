"""The Launch form's full check: every preflight problem under its own field at once, and the estimate (with the
CPU warning for a paper preset) in the status once the inputs pass. Through the tab's own functions, in process."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from app import form
from app.tabs import launch
from tests.standins import make_image_folder


def _values(preset: str, **over) -> dict:
    return {**form.preset_form_values(preset), "preset": preset, "name": "t", "devices": ["cpu"], **over}


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    from core import paths

    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "empty")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "data").mkdir()
    return SimpleNamespace(data_roots=[tmp_path / "data"], weight_roots=[tmp_path], app=None)


def test_every_problem_is_shown_under_its_field(ctx, tmp_path, tiny_demo):
    make_image_folder(tmp_path / "data" / "imagenet", classes=2, per_class=1)
    values = _values("llamagen-c2i-xxl", data_path="imagenet", data_subset=0.1)
    with pytest.raises(form.FormProblems) as e:
        launch.check(ctx, values, full=True)
    fields = [f for f, _ in e.value.problems]
    assert fields == ["data_subset", "model", "model", "reward_weights.lpips"], fields
    updates, sections, targets = launch._error_outputs(None, e.value, None, values)
    assert list(targets) == ["data_subset", "model", "reward_weights.lpips"]
    by_key = dict(zip(launch.KEYS, updates))
    assert "rounds to 0" in by_key["data_subset"]["info"] and by_key["data_subset"]["elem_classes"] == ["field-error"]
    assert "c2i_XXL_384.pt" in by_key["model"]["info"] and "vq_ds16_c2i.pt" in by_key["model"]["info"]
    assert "vgg16-397923af.pth" in by_key["reward_weights.lpips"]["info"]
    status = launch._error_text(e.value, "Check failed")
    assert status.startswith("✗ **Check failed** — 4 problems:") and status.count("\n- `") == 4
    # fixed fields are cleared on the next check (the flags come back as the previous state)
    updates, _, _ = launch._error_outputs(targets, None, None, values)
    cleared = dict(zip(launch.KEYS, updates))
    assert cleared["model"]["elem_classes"] == [] and cleared["data_subset"]["elem_classes"] == []
    # the same problems again: no input gets an update (one could land while its user types, putting back an older
    # value), nor is a section reopened; a flag whose text changed is sent, and an API caller's list of keys is
    # answered in full
    skip = launch.gr.skip()
    again, sections, same = launch._error_outputs(targets, e.value, None, values)
    assert same == targets and all(u == skip for u in again) and all(s == skip for s in sections)
    changed = {**targets, "model": "an older text"}
    again, _, _ = launch._error_outputs(changed, e.value, None, values)
    assert [k for k, u in zip(launch.KEYS, again) if u != skip] == ["model"]
    again, _, _ = launch._error_outputs(list(targets), e.value, None, values)
    assert sorted(k for k, u in zip(launch.KEYS, again) if u != skip) == sorted(targets)


def test_a_passing_check_shows_the_estimate_and_the_cpu_warning(ctx, tmp_path, tiny_demo, monkeypatch):
    plan = launch.check(ctx, _values("demo-c2i"), full=True)
    text = launch.estimate_text(plan)
    assert text.startswith("**Estimate**") and "GiB per device" in text and "100 steps ≈" in text
    assert plan.warnings == [] and plan.data_summary.startswith("shapes, ")
    # a paper-size model on the CPU: the warning with its ETA (the weights and LPIPS present as empty stand-ins)
    from core import paths

    paths.CHECKPOINTS_DIR.mkdir(parents=True)
    for name in ("c2i_XXL_384.pt", "vq_ds16_c2i.pt"):
        (paths.CHECKPOINTS_DIR / name).write_bytes(b"")
    make_image_folder(tmp_path / "data" / "imagenet", classes=2, per_class=1)
    plan = launch.check(ctx, _values("llamagen-c2i-xxl", data_path="imagenet", data_subset=None,
                                     **{"reward_weights.lpips": 0}), full=True)
    assert any("on the CPU" in w and "100 steps" in w for w in plan.warnings), plan.warnings


def test_caption_data_may_be_a_file_or_a_shard_pattern_inside_the_roots(ctx, tmp_path, tiny_demo):
    from tests.test_caption_formats import _png, _write_tar

    shards = tmp_path / "data" / "shards"
    shards.mkdir()
    for s in range(2):
        _write_tar(shards / f"{s:05d}.tar", [(f"{s}{k}", _png(k), {"caption": f"c{k}"}) for k in range(3)])
    values = _values("demo-t2i", data="captions", data_path="shards/{00000..00001}.tar", data_subset=None)
    plan = launch.check(ctx, values, full=False)  # where the path may point (the shards are read in the slow test
    assert plan.cfg.data_path == str(shards.resolve() / "{00000..00001}.tar")  # of tests/test_caption_formats.py)
    plan = launch.check(ctx, {**values, "data_path": "shards/00000.tar"}, full=False)
    assert plan.cfg.data_path == str((shards / "00000.tar").resolve())
    with pytest.raises(form.ConfigError, match="data_path"):
        launch.check(ctx, {**values, "data_path": "shards/{..,x}/a.tar"}, full=False)
    with pytest.raises(form.ConfigError, match="data_path.*not found inside the allowed roots"):
        launch.check(ctx, {**values, "data_path": f"{tmp_path}/{{a,b}}.tar"}, full=False)
    with pytest.raises(form.ConfigError, match="may not name"):
        launch.check(ctx, {**values, "data_path": "shards/{..,00000.tar}"}, full=False)
