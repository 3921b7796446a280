"""Free-running sampler: CFG, filtering, seeds, log-probs."""
import pytest
import torch

from core.errors import ConfigError
from core.models.generate import filter_logits, generate, generate_images, pick
from tests.helpers import tiny_gpt, tiny_vq


@pytest.mark.slow
def test_seeded_generation_is_reproducible_and_batch_invariant():
    m = tiny_gpt()
    cond = torch.tensor([1, 2, 3, 4])
    a = generate(m, cond, seeds=[10, 11, 12, 13], top_k=20)
    b = generate(m, cond, seeds=[10, 11, 12, 13], top_k=20)
    c = generate(m, cond[2:], seeds=[12, 13], top_k=20)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.tokens[2:], c.tokens)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(generate(m, cond, generator=g1).tokens, generate(m, cond, generator=g2).tokens)
    assert not torch.equal(generate(m, cond, seeds=[0, 1, 2, 3]).tokens, a.tokens)


def test_logprobs_match_the_teacher_forced_distribution():
    m = tiny_gpt()
    cond = torch.tensor([0, 5])
    out = generate(m, cond, seeds=[1, 2], return_logprobs=True)
    with torch.no_grad():
        tf = m.teacher_forced_logits(cond, out.tokens[:, :-1])
    ref = torch.log_softmax(tf, -1).gather(-1, out.tokens[..., None]).squeeze(-1)
    assert torch.allclose(out.logprobs, ref, atol=1e-5)


def test_cfg_scale_one_equals_conditional_and_guidance_mixes_logits():
    m = tiny_gpt()
    cond = torch.tensor([2, 7])
    # scale 1: identical to sampling the conditional model alone; greedy exposes the logits used
    a = generate(m, cond, cfg_scale=1.0, temperature=0.0)
    with torch.no_grad():
        tf = m.teacher_forced_logits(cond, a.tokens[:, :-1])
    assert torch.equal(a.tokens, tf.argmax(-1))
    s = 3.0
    g = generate(m, cond, cfg_scale=s, temperature=0.0)
    with torch.no_grad():
        c = m.teacher_forced_logits(cond, g.tokens[:, :-1])
        u = m.teacher_forced_logits(m.null_condition(cond), g.tokens[:, :-1])
    assert torch.equal(g.tokens, (u + s * (c - u)).argmax(-1))


def test_filtering_hand_cases():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.10]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isinf(k2[0, 2:]).all() and torch.isfinite(k2[0, :2]).all()
    p = filter_logits(logits, top_p=0.7)  # 0.5 < 0.7, 0.75 crosses: keep the first two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p = filter_logits(logits, top_p=0.4)  # the top token always stays
    assert torch.isfinite(p[0, 0]) and torch.isinf(p[0, 1:]).all()


def test_inverse_cdf_pick():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    tok, lp = pick(logits, torch.tensor([0.1, 0.6, 0.9]), 1.0, 0, 1.0)
    assert tok.tolist() == [0, 1, 2]
    assert torch.allclose(lp, torch.log(torch.tensor([0.5, 0.25, 0.25])))
    tok, _ = pick(logits, torch.tensor([0.99, 0.99, 0.99]), 1.0, 1, 1.0)  # top-k 1: zero-mass tokens unreachable
    assert tok.tolist() == [0, 0, 0]


def test_bad_sampling_arguments_name_the_field():
    m = tiny_gpt()
    with pytest.raises(ConfigError, match="cfg_scale"):
        generate(m, torch.tensor([1]), cfg_scale=0.5)
    with pytest.raises(ConfigError, match="top_p"):
        generate(m, torch.tensor([1]), top_p=0.0)
    with pytest.raises(ConfigError, match="seeds"):
        generate(m, torch.tensor([1, 2]), seeds=[1])


@pytest.mark.slow
def test_generate_images_batches_do_not_change_results():
    m, t = tiny_gpt(), tiny_vq()
    cond = torch.tensor([0, 1, 2, 3, 4])
    a = generate_images(m, t, cond, seeds=[0, 1, 2, 3, 4], batch_size=2)
    b = generate_images(m, t, cond, seeds=[0, 1, 2, 3, 4], batch_size=5)
    assert a.shape == (5, 3, 16, 16) and (a - b).abs().max() < 1e-4  # conv batching: float-level noise only


# ------------------------------------------------------------------ the static cache and the compiled step
def uncached_reference(m, cond, seeds, cfg_scale=1.0, cond_mask=None, **sampling):
    """The sampler without any cache: one full teacher-forced forward per token, same uniforms, same pick."""
    from core.models.generate import cfg_mix, draw_uniforms

    B, N = cond.shape[0], m.num_tokens
    u = draw_uniforms(B, N, cond.device, seeds=seeds).float()
    tokens = torch.zeros(B, 0, dtype=torch.long)
    with torch.no_grad():
        for i in range(N):
            ctx = torch.cat([tokens, torch.zeros(B, 1, dtype=torch.long)], 1)[:, :N - 1]  # position i reads tokens < i
            logits = m.teacher_forced_logits(cond, ctx, cond_mask=cond_mask)[:, i]
            if cfg_scale != 1.0:
                unc = m.teacher_forced_logits(m.null_condition(cond), ctx, cond_mask=cond_mask)[:, i]
                logits = cfg_mix(logits, unc, cfg_scale)
            tok, _ = pick(logits, u[:, i], sampling.get("temperature", 1.0), sampling.get("top_k", 0),
                          sampling.get("top_p", 1.0))
            tokens = torch.cat([tokens, tok[:, None]], 1)
    return tokens


@pytest.mark.parametrize("sampling", [dict(), dict(cfg_scale=3.0, top_k=12), dict(cfg_scale=1.5, top_p=0.8, temperature=0.9)])
def test_static_cache_growing_cache_and_uncached_forward_draw_the_same_tokens(sampling):
    m = tiny_gpt()  # 64 tokens
    cond, seeds = torch.tensor([1, 2, 3]), [7, 8, 9]
    static = generate(m, cond, seeds=seeds, **sampling)
    growing = generate(m, cond, seeds=seeds, static=False, **sampling)
    assert torch.equal(static.tokens, growing.tokens)
    assert torch.equal(static.tokens, uncached_reference(m, cond, seeds, **sampling))
    # a different seed of one row changes that row only
    other = generate(m, cond, seeds=[7, 8, 10], **sampling)
    assert torch.equal(other.tokens[:2], static.tokens[:2]) and not torch.equal(other.tokens[2], static.tokens[2])


def test_t2i_prompts_with_padding_through_the_static_cache():
    m = tiny_gpt(model_type="t2i", caption_dim=24, cls_token_num=6, block_size=16)
    torch.manual_seed(3)
    cond = torch.randn(3, 6, 24)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    for cfg in (1.0, 2.0):
        static = generate(m, cond, seeds=[1, 2, 3], cond_mask=mask, cfg_scale=cfg)
        assert torch.equal(static.tokens, generate(m, cond, seeds=[1, 2, 3], cond_mask=mask, cfg_scale=cfg, static=False).tokens)
        assert torch.equal(static.tokens, uncached_reference(m, cond, [1, 2, 3], cfg_scale=cfg, cond_mask=mask))
    # the padding matters: without the mask, the padded rows sample differently
    assert not torch.equal(generate(m, cond, seeds=[1, 2, 3]).tokens[[0, 2]], static.tokens[[0, 2]])


def test_prefix_continuation_through_the_static_cache():
    m = tiny_gpt(block_size=16)
    cond, seeds = torch.tensor([4, 5]), [3, 4]
    own = generate(m, cond, seeds=seeds, return_logprobs=True)
    cont = generate(m, cond, seeds=seeds, prefix=own.tokens[:, :6], return_logprobs=True)
    ref = generate(m, cond, seeds=seeds, prefix=own.tokens[:, :6], return_logprobs=True, static=False)
    assert torch.equal(cont.tokens, own.tokens) and torch.equal(cont.tokens, ref.tokens)
    assert torch.allclose(cont.logprobs, ref.logprobs, atol=1e-6)


def test_compile_switch_is_checked_and_auto_stays_off_on_cpu(monkeypatch, tmp_path):
    from core.models.generate import use_compile

    m = tiny_gpt(block_size=16)
    with pytest.raises(ConfigError, match="compile"):
        generate(m, torch.tensor([1]), compile="yes")
    assert use_compile("auto", torch.device("cpu"), 10_000) is False
    assert use_compile("off", torch.device("cpu"), 10_000) is False
    monkeypatch.setenv("PATH", str(tmp_path))  # a real PATH without any C++ compiler on it
    with pytest.raises(ConfigError, match="compile.*C\\+\\+ compiler"):
        generate(m, torch.tensor([1]), compile="on")


@pytest.mark.slow
def test_compiled_step_draws_the_same_tokens_and_reports_its_compile_time_once(caplog):
    import logging

    m = tiny_gpt(block_size=16)
    cond, seeds = torch.tensor([1, 2, 3, 4]), [5, 6, 7, 8]
    with caplog.at_level(logging.INFO, logger="core.models.generate"):
        for sampling in (dict(), dict(cfg_scale=2.5, top_k=10)):
            eager = generate(m, cond, seeds=seeds, **sampling)
            compiled = generate(m, cond, seeds=seeds, compile="on", **sampling)
            again = generate(m, cond, seeds=seeds, compile="on", **sampling)  # the kept graph and cache
            assert torch.equal(eager.tokens, compiled.tokens) and torch.equal(eager.tokens, again.tokens)
    lines = [r.getMessage() for r in caplog.records if "compiled the decode step" in r.getMessage()]
    assert len(lines) == 2, lines  # once per batch shape: 4 rows (cfg 1) and 8 rows (cfg doubled)


def test_prepacked_weights_on_a_cpu_draw_the_same_tokens():
    from core.models.llamagen import PackedLinears

    m = tiny_gpt(dim=512, n_head=8, n_layer=1, block_size=16)  # wide enough for the MKL-prepacked path
    cache = m.new_cache(6)
    m.pack_linears(cache)
    if not PackedLinears.available(m.output.weight):
        pytest.skip("this torch has no MKL")
    assert cache.packed is not None
    cond, seeds = torch.tensor([1, 2, 3]), [4, 5, 6]
    for sampling in (dict(), dict(cfg_scale=2.0, top_p=0.9)):
        static = generate(m, cond, seeds=seeds, **sampling)
        assert torch.equal(static.tokens, generate(m, cond, seeds=seeds, static=False, **sampling).tokens)
        assert torch.equal(static.tokens, uncached_reference(m, cond, seeds, **sampling))
