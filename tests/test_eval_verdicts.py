"""Evaluate and Embeddings on the same checkpoint and seeds report the same FD and the same verdict
(both run `core.eval.verdict` on the same samples and features); a change inside the seed spread
reads "within noise"."""
from __future__ import annotations

import pytest
import torch

from core.eval import configs, eval_job, shift_job, summary
from tests.helpers import tiny_gpt, train_tiny_evaluator

SAMPLES = 40  # per seed: 4 per demo class
BATCH = 20


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    return str(train_tiny_evaluator(tmp_path_factory.mktemp("evaluator"), steps=10))


def checkpoint(path, scale: float, sharpen: float = 1.0):
    """The tiny demo's own generator (tiny_gpt(seed=0)) with its weights moved by `scale` x N(0, 1) and its
    logits multiplied by `sharpen` (> 1: near-greedy sampling, a much narrower distribution)."""
    model = tiny_gpt(seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
        model.output.weight.mul_(sharpen)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def evaluate(evaluator, out, weights=None):
    cfg = configs.EvalConfig(num_samples=SAMPLES, batch_size=BATCH, extractor="demo", extractor_path=evaluator,
                          reference="shapes", metrics=["fid", "prc"], device="cpu", num_seeds=3, weights=weights,
                          label="" if weights else "base")
    return eval_job.evaluate(cfg, out, log=lambda m: None)


@pytest.mark.slow
def test_evaluate_and_embeddings_agree_on_fd_and_verdict(tiny_demo, evaluator, tmp_path):
    base = evaluate(evaluator, tmp_path / "eval-base")
    assert len(base["spread"]["fid"]["values"]) == 3 and base["spread"]["fid"]["std"] > 0
    for name, scale, sharpen in (("near", 1e-4, 1.0), ("far", 0.0, 30.0)):
        weights = checkpoint(tmp_path / f"{name}.pt", scale, sharpen)
        evaluate(evaluator, tmp_path / f"eval-{name}", weights)
        rows = summary.evaluation_summary(tmp_path / "no-runs", folders=[tmp_path / "eval-base", tmp_path / f"eval-{name}"])
        row = next(r for r in rows if r["checkpoint"] != "base")
        from_eval = row["verdicts"]
        assert from_eval["fid"]["method"] == "bootstrap" and from_eval["fid"]["seeds"] == 3

        emb = configs.EmbeddingConfig(aligned_weights=weights, per_class=SAMPLES // 10, extractor="demo",
                                   extractor_path=evaluator, projections=["tsne"], batch_size=BATCH, device="cpu",
                                   num_seeds=3)
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
        if name == "near":  # weights moved by 1e-4: inside the seed spread
            assert all(from_eval[m]["verdict"] == "within noise" for m in ("fid", "precision", "recall"))
            assert from_eval["fid"]["low"] < 0 < from_eval["fid"]["high"]
    # the far checkpoint (near-greedy sampling) is another distribution: its numbers move, and the verdict
    # follows its interval (the rule itself is tested on known shifts in test_alignment_views.py)
    far = from_eval["fid"]
    assert far["aligned"]["values"] != pytest.approx(far["base"]["values"], rel=1e-3)
    assert (far["verdict"] == "within noise") == (far["low"] <= 0 <= far["high"])
