"""Diagnostics of base vs aligned on constructed cases (core/eval/diagnostics.py)."""
import torch

from core.eval import diagnostics as D
from tests.helpers import ToyTokenizer, tiny_gpt, tiny_vq


class Bumped(torch.nn.Module):
    """A policy equal to `inner` except for one logit raised at the given positions."""

    def __init__(self, inner, positions, token=3, bump=4.0):
        super().__init__()
        self.inner, self.positions, self.token, self.bump = inner, positions, token, bump

    def teacher_forced_logits(self, cond, context, cond_mask=None):
        logits = self.inner.teacher_forced_logits(cond, context, cond_mask=cond_mask).clone()
        logits[:, self.positions, self.token] += self.bump
        return logits


def tokens_for(model, B=5):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, model.vocab_size, (B, model.num_tokens), generator=g), torch.arange(B) % 10


def test_per_position_kl_is_zero_for_identical_models():
    base = tiny_gpt()
    tokens, cond = tokens_for(base)
    kl = D.per_position_kl(base, tiny_gpt(), cond, tokens)
    assert kl.shape == (base.num_tokens,) and torch.equal(kl, torch.zeros_like(kl))


def test_per_position_kl_is_nonzero_only_where_a_logit_was_perturbed():
    base = tiny_gpt()
    tokens, cond = tokens_for(base)
    kl = D.per_position_kl(base, Bumped(base, [0, 17]), cond, tokens)
    assert kl[0] > 1e-3 and kl[17] > 1e-3
    others = torch.ones_like(kl, dtype=torch.bool)
    others[[0, 17]] = False
    assert torch.equal(kl[others], torch.zeros(int(others.sum())))


def test_off_manifold_rate_of_fixed_points_is_zero_and_counts_changed_tokens():
    tok = ToyTokenizer()
    tokens = torch.randint(0, 32, (4, 64), generator=torch.Generator().manual_seed(0))
    assert D.off_manifold_rate(tok, tokens) == 0.0  # decode -> encode returns every token

    class Shifted(ToyTokenizer):  # re-encodes token 5 as 6: a token outside the tokenizer's fixed points
        def encode(self, images):
            t = super().encode(images)
            return torch.where(t == 5, torch.full_like(t, 6), t)

    tokens[:, :2] = 5
    assert D.off_manifold_rate(Shifted(), tokens) == (tokens == 5).float().mean().item()


def test_teacher_forced_reward_uses_the_same_random_numbers_for_both_models():
    tok = tiny_vq()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    tokens, cond = tok.encode(images), torch.tensor([1, 2, 3])
    kw = dict(num_generations=4, weights={"mse": 1.0}, seed=7)
    a = D.teacher_forced_reward(tiny_gpt(), tok, images, cond, tokens, **kw)
    b = D.teacher_forced_reward(tiny_gpt(), tok, images, cond, tokens, **kw)
    assert a == b and a["reward"] < 0 and a["dist_mse"] == -a["reward"]
    c = D.teacher_forced_reward(tiny_gpt(seed=3), tok, images, cond, tokens, **kw)
    assert c["reward"] != a["reward"]


# ----------------------------------------------------------------------------- the job (CLI and Evaluate tab)
def test_diagnose_config_errors_name_the_field():
    import pytest

    from core.errors import ConfigError

    for bad, field in (({"checkpoint": ""}, "checkpoint"), ({"seeds": []}, "seeds"), ({"cfg_scales": [0.5]}, "cfg_scales"),
                       ({"num_images": 1}, "num_images"), ({"num_samples": True}, "num_samples")):
        with pytest.raises(ConfigError) as e:
            D.DiagnoseConfig(**{"checkpoint": "run", **bad})
        assert e.value.field == field
    with pytest.raises(ConfigError, match="schedule"):  # an unknown key of a run's config.json
        D.DiagnoseConfig.from_dict({"checkpoint": "run", "schedule": "x"})
    from core.runs import kinds

    assert kinds.kind_of(kinds.DIAGNOSE_ENTRY) == kinds.DIAGNOSE


def test_the_diagnose_job_writes_results_reports_progress_and_stops_between_phases(tmp_path):
    import json

    from core.models import checkpoint, load
    from core.runs import kinds

    gen, _ = load.load_pair("demo-c2i")
    with torch.no_grad():
        gen.tok_embeddings.weight[:, 0] += 0.5  # an "aligned" model that differs from the base
    weights = tmp_path / "model.pt"
    checkpoint.save_upstream(gen.state_dict(), weights, config={})

    class Recorder:
        def __init__(self, stop_after=None):
            self.progress, self.metrics, self.stop_after = [], [], stop_after

        def set_progress(self, done, total=None):
            self.progress.append((done, total))

        def should_stop(self):
            return self.stop_after is not None and len(self.progress) >= self.stop_after

        def log_metrics(self, step, row):
            self.metrics.append((step, row))

    config = {"entry": kinds.DIAGNOSE_ENTRY, "checkpoint": str(weights), "num_images": 16,
              "seeds": [0, 1], "num_generations": 2, "cfg_scales": [1.0], "num_samples": 20}
    run_dir = tmp_path / "runs" / "diag"
    run_dir.mkdir(parents=True)
    rec = Recorder()
    D.run_diagnose(config, run_dir, rec, resume=False)
    assert rec.progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    out = json.loads((run_dir / "results.json").read_text())
    assert len(out["kl_per_position"]) == out["grid"][0] * out["grid"][1] and out["kl_mean"] > 0
    assert out["config"]["seeds"] == [0, 1] and [r["cfg_scale"] for r in out["cfg_sweep"]] == [1.0]
    step, row = rec.metrics[0]
    assert step == 4 and row["kl_mean"] == out["kl_mean"] and "demo_fid_aligned_cfg1" in row
    stopped = tmp_path / "runs" / "stopped"
    stopped.mkdir()
    rec = Recorder(stop_after=1)
    D.run_diagnose(config, stopped, rec, resume=False)
    assert rec.progress == [(1, 4)] and not (stopped / "results.json").exists() and rec.metrics == []
