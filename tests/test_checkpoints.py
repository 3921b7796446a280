"""core.checkpoints: the run/checkpoint layout, the atomic save, listing, and the one weights grammar."""
from __future__ import annotations

import json

import pytest

from core import checkpoints as C
from core.errors import CheckpointError, ConfigError


def _checkpoint(run_dir, step, weights=C.MODEL_FILE):
    run_dir.mkdir(parents=True, exist_ok=True)  # save writes into an existing run folder
    with C.save(run_dir, step) as d:
        (d / weights).write_bytes(b"w")
    return C.checkpoint_dir(run_dir, step)


@pytest.fixture
def runs(tmp_path):
    """A runs dir with two runs: 'r1-alpha' (steps 2, 5; model.pt) and 'r2-beta' (step 3; tokenizer.pt)."""
    runs = tmp_path / "runs"
    for step in (2, 5):
        _checkpoint(runs / "20260101-000000-alpha-aaaa", step)
    _checkpoint(runs / "20260102-000000-beta-bbbb", 3, C.TOKENIZER_FILE)
    (runs / "20260103-000000-empty-cccc").mkdir()
    return runs


def test_save_renames_into_place_and_writes_the_step(tmp_path):
    run = tmp_path / "run"
    folder = _checkpoint(run, 7)
    assert folder == run / "checkpoints" / "step-000007" and folder.name == C.step_dir_name(7)
    assert json.loads((folder / C.TRAINER_STATE_FILE).read_text()) == {"step": 7}
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000007"]  # no temporary folder left
    with C.save(run, 7) as d:  # the same step again replaces it
        (d / C.MODEL_FILE).write_bytes(b"new")
    assert (folder / C.MODEL_FILE).read_bytes() == b"new"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000007"]


def test_a_failed_save_leaves_nothing_and_earlier_checkpoints_stay(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 1)
    with pytest.raises(RuntimeError, match="boom"):
        with C.save(run, 2) as d:
            (d / C.MODEL_FILE).write_bytes(b"half")
            raise RuntimeError("boom")
    assert [c.step for c in C.list_checkpoints(run)] == [1]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000001"]
    with pytest.raises(ValueError, match="differs from the checkpoint step 3"):
        with C.save(run, 3) as d:
            (d / C.TRAINER_STATE_FILE).write_text('{"step": 4}')


def test_listing_counts_complete_folders_only_and_find_last(tmp_path):
    run = tmp_path / "run"
    assert C.list_checkpoints(run) == [] and C.find_last(run) is None
    for step in (10, 2):
        _checkpoint(run, step)
    root = run / "checkpoints"
    (root / "step-000011").mkdir()  # no trainer_state.json: an incomplete write
    (root / ".tmp-step-000012-99").mkdir()
    (root / "notes").mkdir()
    assert [c.step for c in C.list_checkpoints(run)] == [2, 10]
    assert C.find_last(run) == C.Checkpoint(10, root / "step-000010")
    C.remove_partial(run)
    assert sorted(p.name for p in root.iterdir()) == ["notes", "step-000002", "step-000010", "step-000011"]
    C.check_states(run)
    (root / "step-000002" / C.TRAINER_STATE_FILE).write_text('{"step": 3}')
    with pytest.raises(CheckpointError, match="expected the integer 2 of its folder; fix it or delete"):
        C.check_states(run)


@pytest.mark.parametrize("text", [None, "", "  ", "base"])
def test_the_base_model_parses_to_an_empty_ref(text, runs):
    ref = C.resolve_weights(text, runs)
    assert ref == C.WeightsRef() and ref.checkpoint == "base" and not ref.is_tokenizer


def test_each_form_of_the_grammar_parses_to_the_typed_value(runs):
    alpha = runs / "20260101-000000-alpha-aaaa"
    last = str(alpha / "checkpoints" / "step-000005" / C.MODEL_FILE)
    earlier = str(alpha / "checkpoints" / "step-000002" / C.MODEL_FILE)
    run_id = alpha.name
    expected_last = C.WeightsRef(last, run_id, 5)
    assert C.resolve_weights(last, runs) == expected_last  # a file
    assert C.resolve_weights(alpha / "checkpoints" / "step-000005", runs) == expected_last  # a checkpoint folder
    assert C.resolve_weights(alpha, runs) == expected_last  # a run folder: its last checkpoint
    assert C.resolve_weights(run_id, runs) == expected_last  # a run id
    assert C.resolve_weights("alpha", runs) == expected_last  # a fragment of exactly one id
    assert C.resolve_weights(f"{run_id}@2", runs) == C.WeightsRef(earlier, run_id, 2)  # RUN@STEP
    assert C.resolve_weights("alpha@2", runs).checkpoint == C.ref_text(run_id, 2) == f"{run_id}@2"
    # the text a WeightsRef writes parses back to the same value
    assert C.resolve_weights(expected_last.checkpoint, runs) == expected_last
    beta = C.resolve_weights("beta", runs, tokenizer_ok=True)
    assert beta.is_tokenizer and beta.step == 3


def test_a_file_outside_a_run_has_no_run_or_step(tmp_path):
    f = tmp_path / "gpt.pt"
    f.write_bytes(b"w")
    ref = C.resolve_weights(str(f))
    assert ref == C.WeightsRef(str(f.resolve())) and ref.checkpoint == str(f.resolve())


@pytest.mark.parametrize("text, field, message", [
    ("alpha@x", "weights", "the part after @ must be a step number"),
    ("alpha@7", "weights", "no checkpoint at step 7; it has steps 2, 5"),
    ("nothing-like-this", "weights", "no run id in .* contains it"),
    ("2026", "weights", "matches 3 runs .*give more of the id"),
    ("empty", "weights", "has no complete checkpoint yet"),
    ("beta", "weights", "decoder baseline.*not supported"),
    ("alpha@7", "aligned", "no checkpoint at step 7"),
])
def test_a_bad_reference_names_the_field_and_the_fix(runs, text, field, message):
    with pytest.raises(ConfigError, match=f"^{field}: .*{message}") as e:
        C.resolve_weights(text, runs, field=field)
    assert e.value.field == field


def test_without_a_runs_dir_a_run_id_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match="no run store in .*elsewhere"):
        C.resolve_weights("abc", tmp_path / "elsewhere")
