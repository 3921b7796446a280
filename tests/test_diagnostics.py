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
