"""LlamaGen GPT: upstream state-dict layout, upstream-equal outputs, and the mode methods."""
import json
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError
from core.models import llamagen
from core.models.generate import cfg_mix
from core.models.llamagen import GPTConfig, Transformer
from tests.helpers import tiny_gpt

# the team's reference manifest (copied from shared/reference): upstream keys and shapes per preset
MANIFEST = json.loads((Path(__file__).parent / "fixtures" / "llamagen_state_dicts.json").read_text())
GOLDEN = torch.load(Path(__file__).parent / "fixtures" / "upstream_golden.pt", weights_only=True)

PRESETS = [  # manifest entry -> (size, model_type, image_size)
    ("GPT-B-c2i-256", "GPT-B", "c2i", 256), ("GPT-B-c2i-384", "GPT-B", "c2i", 384),
    ("GPT-L-c2i-256", "GPT-L", "c2i", 256), ("GPT-L-c2i-384", "GPT-L", "c2i", 384),
    ("GPT-XL-c2i-256", "GPT-XL", "c2i", 256), ("GPT-XL-c2i-384", "GPT-XL", "c2i", 384),
    ("GPT-XXL-c2i-256", "GPT-XXL", "c2i", 256), ("GPT-XXL-c2i-384", "GPT-XXL", "c2i", 384),
    ("GPT-3B-c2i-256", "GPT-3B", "c2i", 256), ("GPT-3B-c2i-384", "GPT-3B", "c2i", 384),
    ("GPT-XL-t2i-256", "GPT-XL", "t2i", 256),
]


def tiny(model_type="c2i", **kw) -> Transformer:
    torch.manual_seed(0)
    base = dict(dim=64, n_layer=2, n_head=4, vocab_size=50, num_classes=7, block_size=16, multiple_of=32,
                model_type=model_type, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0)
    if model_type == "t2i":
        base.update(caption_dim=24, cls_token_num=6)
    base.update(kw)
    m = Transformer(GPTConfig(**base))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m.eval()


@pytest.mark.parametrize("entry,size,model_type,image_size", PRESETS)
def test_state_dict_matches_upstream_manifest(entry, size, model_type, image_size):
    with torch.device("meta"):
        m = llamagen.build(size, model_type=model_type, image_size=image_size)
    ref = MANIFEST[entry]
    sd = m.state_dict()
    assert len(sd) == ref["n_keys"]
    assert sum(p.numel() for p in m.parameters()) == ref["params"]
    if "state_dict" in ref:
        assert {k: list(v.shape) for k, v in sd.items()} == ref["state_dict"]
    assert m.config.block_size == (image_size // 16) ** 2


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_logits_equal_upstream(kind):
    g = GOLDEN[kind]
    m = Transformer(GPTConfig(**g["args"])).eval()
    m.load_state_dict(g["state_dict"], strict=True)
    with torch.no_grad():
        tf = m.teacher_forced_logits(g["cond"], g["tokens"][:, :-1], cond_mask=g.get("cond_mask"))
    assert tf.dtype == torch.float32
    assert (tf - g["tf_logits"]).abs().max() <= 1e-4
    cache = m.new_cache(g["tokens"].shape[0])
    with torch.no_grad():
        steps = [m.prefill(g["cond"], cache, cond_mask=g.get("cond_mask"))]
        steps += [m.decode_one(g["tokens"][:, i], cache) for i in range(g["tokens"].shape[1] - 1)]
    assert (torch.stack(steps, 1) - g["cached_logits"]).abs().max() <= 1e-4
    static = decode_static(m, g["cond"], g["tokens"], g.get("cond_mask"))
    assert (static - g["cached_logits"]).abs().max() <= 1e-4


def decode_static(m, cond, tokens, mask):
    """Prefill + decode_step over every token but the last: [B, N, V] logits, positions as tensors."""
    C = m.config.cls_token_num
    cache = m.new_cache(tokens.shape[0])
    with torch.no_grad():
        steps = [m.prefill(cond, cache, cond_mask=mask)]
        steps += [m.decode_step(tokens[:, i], torch.tensor([C + i]), cache) for i in range(tokens.shape[1] - 1)]
    return torch.stack(steps, 1)


@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_kv_cache_decoding_equals_teacher_forcing(kind):
    m = tiny(kind, n_kv_head=2)  # grouped-query attention path too
    B, N = 3, 16
    tokens = torch.randint(0, 50, (B, N))
    if kind == "c2i":
        cond, mask = torch.tensor([1, 4, 6]), None
    else:
        cond = torch.randn(B, 6, 24)
        mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    with torch.no_grad():
        tf = m.teacher_forced_logits(cond, tokens[:, :-1], cond_mask=mask)
        cache = m.new_cache(B)
        steps = [m.prefill(cond, cache, cond_mask=mask)] + [m.decode_one(tokens[:, i], cache) for i in range(N - 1)]
    assert (torch.stack(steps, 1) - tf).abs().max() < 1e-5
    # the fixed-shape step (whole preallocated cache under a mask) computes the same logits
    assert (decode_static(m, cond, tokens, mask) - tf).abs().max() < 1e-5


def test_the_output_head_runs_on_the_image_positions_only():
    gpt = tiny_gpt(model_type="t2i", caption_dim=8, cls_token_num=5)
    seen = []
    gpt.output.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[:2])))
    n = gpt.num_tokens
    with torch.no_grad():
        gpt.teacher_forced_logits(torch.randn(2, 5, 8), torch.randint(0, 32, (2, n - 1)))
        gpt.prefill(torch.randn(2, 5, 8), gpt.new_cache(2))
    assert seen == [(2, n), (2, 1)]  # not the 4 caption positions before the last one


def test_condition_positions_have_zero_rope_and_image_positions_rotate():
    f = llamagen.precompute_freqs_cis_2d(grid_size=4, head_dim=16, cls_token_num=3)
    assert f.shape == (3 + 16, 8, 2)
    assert torch.count_nonzero(f[:3]) == 0
    # row r, col c at position 3 + 4r + c: first half of pairs depends on r only, second on c only
    assert torch.allclose(f[3 + 4 * 2 + 1, :4], f[3 + 4 * 2 + 3, :4])
    assert torch.allclose(f[3 + 4 * 0 + 2, 4:], f[3 + 4 * 3 + 2, 4:])
    assert torch.allclose(f[3:, :, 0] ** 2 + f[3:, :, 1] ** 2, torch.ones(16, 8))


def test_cond_dropout_is_explicit_and_uses_the_null_class():
    m = tiny()
    m.train()  # .training must not drop labels by itself
    cond, ctx = torch.tensor([1, 2]), torch.randint(0, 50, (2, 15))
    with torch.no_grad():
        a = m.teacher_forced_logits(cond, ctx)
        b = m.teacher_forced_logits(cond, ctx)
        dropped = m.teacher_forced_logits(cond, ctx, cond_drop_prob=1.0)
        null = m.teacher_forced_logits(m.null_condition(cond), ctx)
    assert torch.equal(a, b)
    assert torch.allclose(dropped, null)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        part = m.teacher_forced_logits(torch.arange(7).repeat(20), torch.randint(0, 50, (140, 15)), cond_drop_prob=0.3, generator=g)
    assert part.shape == (140, 16, 50)


def test_t2i_null_caption_and_dropout():
    m = tiny("t2i")
    cap = torch.randn(2, 6, 24)
    null = m.null_condition(cap)
    assert torch.equal(null[0], m.cls_embedding.uncond_embedding[:6])
    ctx = torch.randint(0, 50, (2, 15))
    with torch.no_grad():
        assert torch.allclose(m.teacher_forced_logits(cap, ctx, cond_drop_prob=1.0), m.teacher_forced_logits(null, ctx))


def test_cfg_formula_and_scale_one_is_conditional():
    c, u = torch.randn(2, 50), torch.randn(2, 50)
    assert torch.equal(cfg_mix(c, u, 1.0), c)
    assert torch.allclose(cfg_mix(c, u, 3.0), u + 3.0 * (c - u))


def test_no_null_row_means_no_cfg():
    m = tiny(class_dropout_prob=0.0)
    assert m.cls_embedding.embedding_table.weight.shape[0] == 7
    with pytest.raises(ConfigError, match="null"):
        m.null_condition(torch.tensor([1]))


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="block_size"):
        GPTConfig(dim=64, n_layer=1, n_head=4, block_size=15)
    with pytest.raises(ConfigError, match="model_type"):
        GPTConfig(dim=64, n_layer=1, n_head=4, model_type="x")
    with pytest.raises(ConfigError, match="size"):
        llamagen.build("GPT-Z")


def test_bf16_keeps_rope_in_float32():
    m = tiny().to(torch.bfloat16)
    assert m._rope_cpu.dtype == torch.float32
    with torch.no_grad():
        out = m.teacher_forced_logits(torch.tensor([1]), torch.randint(0, 50, (1, 15)))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
