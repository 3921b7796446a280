"""The per-image views of base vs aligned (core.eval.alignment), the verdict rules (core.eval.verdict)
and `python -m core compare`, on tiny random models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.eval import alignment as A
from core.eval import verdict as V
from tests.helpers import tiny_gpt, tiny_vq

SAMPLING = dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)


def policies(scale: float = 0.05):
    base = tiny_gpt(seed=0)
    aligned = tiny_gpt(seed=0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in aligned.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return {"base": base, "aligned": aligned}


def test_coupled_draw_is_the_rollout_distribution_and_shares_random_numbers():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5) * 2
    u = torch.rand(20000, 3)
    tok = A.coupled_draw(logits.expand(20000, 3, 5), u, 1.0)
    freq = torch.stack([torch.bincount(tok[:, i], minlength=5).float() / 20000 for i in range(3)])
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.015)
    # the same logits and the same uniforms: the same tokens; a small change of logits moves few of them
    same = A.coupled_draw(logits.expand(20000, 3, 5), u, 1.0)
    near = A.coupled_draw((logits + 0.05 * torch.randn(1, 3, 5)).expand(20000, 3, 5), u, 1.0)
    assert torch.equal(tok, same) and 0 < (tok != near).float().mean() < 0.1


@pytest.mark.slow
def test_teacher_forced_rows_score_the_rollout_and_equal_models_draw_equal_tokens():
    from core.vapi.objective import score_samples

    tok = tiny_vq()
    pol = policies()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    cond = torch.tensor([0, 1, 2])
    out = A.teacher_forced(pol, tok, images, cond, [0, 1, 2], weights={"mse": 1.0})
    assert out.target.shape == (3, 64) and out.tokens["base"].shape == (3, 64)
    for name in ("base", "aligned"):
        r, d = score_samples(tok, out.tokens[name][:, None], images, {"mse": 1.0}, 8)
        assert torch.allclose(out.rewards[name], r[:, 0]) and torch.allclose(out.distances[name]["mse"], d["mse"][:, 0])
    assert (out.tokens["base"] != out.tokens["aligned"]).any()
    twin = A.teacher_forced({"base": pol["base"], "aligned": pol["base"]}, tok, images, cond, [0, 1, 2],
                            weights={"mse": 1.0})
    assert torch.equal(twin.tokens["base"], twin.tokens["aligned"]) and torch.equal(twin.tokens["base"], out.tokens["base"])


def test_a_shared_prefix_is_kept_and_the_base_continuation_is_its_own_sample():
    tok = tiny_vq()
    pol = policies()
    cond, seeds = torch.tensor([0, 1, 2, 3]), [3, 4, 5, 6]
    free = A.free_running(pol, tok, cond, seeds, **SAMPLING)
    cont = A.prefix_continuations(pol, tok, cond, seeds, 3, **SAMPLING)
    assert cont.prefix_len == 24
    assert torch.equal(cont.tokens["base"], free.tokens["base"])
    assert torch.equal(cont.tokens["aligned"][:, :24], free.tokens["base"][:, :24])
    assert not torch.equal(cont.tokens["aligned"], free.tokens["base"])
    with pytest.raises(Exception, match="prefix_rows"):
        A.prefix_continuations(pol, tok, cond, seeds, 9, **SAMPLING)


def test_rows_outline_changed_tokens_and_the_difference_map_is_zero_only_where_equal():
    tok = tiny_vq()
    pol = policies()
    out = A.free_running(pol, tok, torch.tensor([0, 1]), [0, 1], **SAMPLING)
    rows = A.build_rows("prefix", out, [0, 1], ["a", "b"], [0, 1], None, prefix_rows=0)
    for i, row in enumerate(rows):
        changed = (out.tokens["base"][i] != out.tokens["aligned"][i]).sum().item()
        assert row.scores["changed_tokens"] == changed
        assert list(row.panels) == ["base", "aligned", "difference"]
        outlined = np.all(row.panels["aligned"] == np.array(A.CHANGED), axis=-1)
        assert outlined.any() == (changed > 0)
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 2] = 255
    heat = A.diff_heatmap(a, b)
    assert heat[1, 2].tolist() == [255, 255, 255] and heat.sum() == 3 * 255
    faint = A.diff_heatmap(a, a + 13)  # a typical pair's |Δ| of 0.05 reads as red, not as nearly black
    assert faint[0, 0, 0] > 150 and A.heat_position(0.05) > 0.2


def test_verdicts_call_a_change_only_outside_the_noise():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 8))
    base = [rng.normal(size=(300, 8)) for _ in range(3)]
    same = [rng.normal(size=(300, 8)) for _ in range(3)]
    worse = [rng.normal(size=(300, 8)) + 0.5 for _ in range(3)]
    v = V.compare_features(real, base, same, n_boot=100)
    assert {m: x.verdict for m, x in v.items()} == {"fd": "within noise", "precision": "within noise",
                                                   "recall": "within noise"}
    assert all(x.low < 0 < x.high and len(x.base.values) == 3 for x in v.values())
    w = V.compare_features(real, base, worse, n_boot=100)
    assert w["fd"].verdict == "worse" and w["fd"].low > 0 and w["precision"].verdict == "worse"
    b = V.compare_features(real, worse, base, n_boot=100)
    assert b["fd"].verdict == "better" and b["fd"].high < 0
    # deterministic for the same inputs
    assert V.compare_features(real, base, same, n_boot=100)["fd"] == v["fd"]
    # one seed has no interval from seed values alone; two seeds a wide t-interval
    assert V.from_seed_values("is_mean", [1.0], [2.0]).verdict == "within noise"
    t = V.from_seed_values("is_mean", [1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert t.verdict == "better" and t.low > 0
    acc = V.compare_indicators("accuracy", [np.ones(100)] * 3, [np.r_[np.ones(50), np.zeros(50)]] * 3, n_boot=100)
    assert acc.verdict == "worse" and acc.delta == pytest.approx(-0.5)
    assert V.sample_size_warning(100, 64, 1) and V.sample_size_warning(1000, 64, 3) is None


def test_cli_compare_writes_rows_and_scores(tiny_demo, tmp_path):
    from core.cli import main

    aligned = tmp_path / "aligned.pt"
    torch.save({"model": policies()["aligned"].state_dict()}, aligned)
    for view, panels in (("teacher-forced", ["truth", "base", "aligned", "difference"]),
                         ("prefix", ["base", "aligned", "difference"])):
        out = tmp_path / view
        assert main(["compare", "--aligned", str(aligned), "--classes", "0", "ring", "--seeds", "0", "1", "--view", view,
                     "--prefix-rows", "2", "--device", "cpu", "--out", str(out)]) == 0
        scores = json.loads((out / "scores.json").read_text())
        assert scores["view"] == view and len(scores["rows"]) == 4
        assert list(scores["rows"][0]["files"]) == panels
        assert all((out / f).is_file() for r in scores["rows"] for f in r["files"].values())
        if view == "teacher-forced":
            assert scores["reward_terms"] == ["mse"]
            assert all(r["scores"]["aligned"]["mse"] >= 0 for r in scores["rows"])
        else:
            assert all((r["scores"]["first_difference"] or 16) >= 16 for r in scores["rows"])


def test_one_compare_path_checks_the_same_rules_for_the_cli_and_the_tab(tiny_demo, tmp_path):
    """core.eval.compare is what both the CLI and the Compare tab call: its rules hold for both."""
    from core.cli import main
    from core.errors import ConfigError
    from core.eval import compare as C

    with pytest.raises(ConfigError, match="^view: demo-t2i is text-conditional.*shared-prefix or free-running"):
        C.check(C.CompareRequest("demo-t2i", "demo-t2i", view="teacher-forced", prompts=["a red circle"]))
    with pytest.raises(ConfigError, match="^class_samples: per-class numbers are for class-conditional"):
        C.check(C.CompareRequest("demo-t2i", "demo-t2i", view="free", prompts=["a red circle"], class_samples=8))
    with pytest.raises(ConfigError, match="^aligned: demo-t2i is t2i, demo-c2i is c2i"):
        C.check(C.CompareRequest("demo-c2i", "demo-t2i"))
    # the two models' class counts are checked for the CLI too (it used to check only in the tab)
    small = policies()["base"]
    big = tiny_gpt(seed=3, num_classes=small.config.num_classes + 2)
    with pytest.raises(ConfigError, match="^aligned: .* classes"):
        C.conditions(C.CompareRequest("demo-c2i", "demo-c2i", classes=[0]), "c2i", small, big)
    aligned = tmp_path / "aligned.pt"
    torch.save({"model": policies()["aligned"].state_dict()}, aligned)
    assert main(["compare", "--aligned", str(aligned), "--classes", "0", "--seeds", "0", "--view", "free",
                 "--class-samples", "2", "--device", "cpu", "--out", str(tmp_path / "o")]) == 2  # FD needs 4+
