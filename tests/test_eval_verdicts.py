"""Evaluate and Embeddings on the same checkpoint and seeds report the same FD and the same verdict
(both run `core.eval.verdict` on the same samples and features); a change inside the seed spread
reads "within noise", a collapsed generator "worse". It runs on the committed demo (generator and evaluator):
a tiny random generator is so far from the shapes that no checkpoint of it measured worse (FD 6.0-7.4 for the
random one and its near-greedy, uniform and constant-token variants alike)."""
from __future__ import annotations

import pytest
import torch

from core import paths
from core.eval import configs, eval_job, shift_job, summary

SAMPLES = 40  # per seed: 4 per demo class
BATCH = 20


def checkpoint(path, scale: float, sharpen: float = 1.0):
    """The committed demo generator with its weights moved by `scale` x N(0, 1) and its logits multiplied by
    `sharpen` (> 1: near-greedy sampling, a much narrower distribution)."""
    from core.models.checkpoint import read_file

    sd, _ = read_file(paths.DEMO_DIR / "gpt_c2i.safetensors")
    gen = torch.Generator().manual_seed(0)
    sd = {k: v + torch.randn(v.shape, generator=gen) * scale if v.is_floating_point() else v for k, v in sd.items()}
    sd["output.weight"] = sd["output.weight"] * sharpen
    torch.save({"model": sd}, path)
    return str(path)


def evaluate(out, weights=None):
    cfg = configs.EvalConfig(num_samples=SAMPLES, batch_size=BATCH, extractor="demo", reference="shapes",
                             metrics=["fid", "prc"], device="cpu", num_seeds=3, weights=weights,
                             label="" if weights else "base")
    return eval_job.evaluate(cfg, out, log=lambda m: None)


@pytest.mark.slow
def test_evaluate_and_embeddings_agree_on_fd_and_verdict(tmp_path):
    base = evaluate(tmp_path / "eval-base")
    assert len(base["spread"]["fid"]["values"]) == 3 and base["spread"]["fid"]["std"] > 0
    for name, scale, sharpen in (("near", 1e-6, 1.0), ("far", 0.0, 30.0)):
        weights = checkpoint(tmp_path / f"{name}.pt", scale, sharpen)
        evaluate(tmp_path / f"eval-{name}", weights)
        rows = summary.evaluation_summary(tmp_path / "no-runs", folders=[tmp_path / "eval-base", tmp_path / f"eval-{name}"])
        row = next(r for r in rows if r["checkpoint"] != "base")
        from_eval = row["verdicts"]
        assert from_eval["fid"]["method"] == "bootstrap" and from_eval["fid"]["seeds"] == 3

        emb = configs.EmbeddingConfig(aligned_weights=weights, per_class=SAMPLES // 10, extractor="demo",
                                      projections=["tsne"], batch_size=BATCH, device="cpu", num_seeds=3)
        report = shift_job.embedding_shift(emb, tmp_path / f"emb-{name}", log=lambda m: None)
        from_emb = report.results["verdicts"]
        for metric in ("fid", "precision", "recall"):
            e, m = from_eval[metric], from_emb[metric]
            assert e["verdict"] == m["verdict"], (name, metric, e, m)
            for key in ("base", "aligned"):
                assert e[key]["values"] == pytest.approx(m[key]["values"], rel=1e-4, abs=1e-6), (name, metric, key)
            assert (e["low"], e["high"]) == pytest.approx((m["low"], m["high"]), rel=1e-3, abs=1e-4), (name, metric)
        # the Embeddings table's overall row is the same mean over seeds
        assert report.results["overall"]["aligned"]["frechet"] == pytest.approx(from_eval["fid"]["aligned"]["mean"],
                                                                               rel=1e-4)
        if name == "near":  # weights moved by 1e-6 (1e-4 already moves recall on the trained demo): inside the spread
            assert all(from_eval[m]["verdict"] == "within noise" for m in ("fid", "precision", "recall"))
            assert from_eval["fid"]["low"] < 0 < from_eval["fid"]["high"]
    # the far checkpoint (near-greedy sampling, logits x 30) collapses onto a few images per class: its FD is
    # higher on every seed (measured 4.5-5.3 -> 20.8-21.5) and the interval of the change excludes zero, so both
    # tabs call it "worse"
    far = from_eval["fid"]
    assert min(far["aligned"]["values"]) > max(far["base"]["values"])
    assert far["verdict"] == "worse" and 0 < far["low"] <= far["high"], far


def test_a_verdict_of_one_seed_reads_the_same_in_every_table():
    """One seed with no features to resample: no interval. Evaluate's table, the sweep table and `eval summary` all
    write it one way (they once wrote 'none (1 seed)', '(one seed)' and 'no interval (one seed)')."""
    from app.tabs.evaluate import _change as evaluate_change
    from core.eval.verdict import NO_INTERVAL, verdict_change
    from core.sweep.table import _change as sweep_change

    v = {"method": "none", "delta": -0.012345, "low": 0.0, "high": 0.0, "seeds": 1, "verdict": "within noise"}
    assert verdict_change(v) == ("-0.01235", "no interval (one seed)") == ("-0.01235", NO_INTERVAL)
    assert evaluate_change(v["delta"], v) == verdict_change(v)
    assert sweep_change(v) == "-0.01235 no interval (one seed) within noise"
