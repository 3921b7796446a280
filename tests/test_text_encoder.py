"""T5 caption features in LlamaGen T2I's convention, with a tiny random T5 built offline.

The tokenizer is a real T5 tokenizer over a sentencepiece model trained here on a few sentences;
model and tokenizer are saved to a folder and read back through `T5CaptionEncoder`'s loading code.
"""
import pytest
import torch

from core import paths
from core.errors import ConfigError, MissingWeightsError
from core.models import text
from core.models.generate import generate
from core.models.llamagen import GPTConfig, Transformer
from core.models.text import T5CaptionEncoder, clean_caption, left_align
from tests.standins import T5_DIM, T5_SENTENCES, make_tiny_t5

D = T5_DIM  # the tiny T5's d_model (FLAN-T5-XL: 2048)
SENTENCES = T5_SENTENCES


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("flan-t5-tiny"))


@pytest.fixture(scope="module")
def enc(t5_dir):
    return T5CaptionEncoder(t5_dir, device="cpu", dtype=torch.float32)


def test_features_are_left_padded_as_upstream(enc):
    prompts = ["a cat", "A red cube on a blue sphere.", "two dogs"]
    feats, mask = enc.encode(prompts)
    assert feats.shape == (3, 120, D) and feats.dtype == torch.float32
    assert mask.shape == (3, 120) and mask.dtype == torch.bool
    ids, ids_mask = enc.tokenize(prompts)
    for i in range(3):
        n = int(ids_mask[i].sum())
        assert 1 < n < 120 and int(mask[i].sum()) == n
        assert mask[i, -n:].all() and not mask[i, :-n].any()  # the valid tokens last
        assert torch.count_nonzero(feats[i, :-n]) == 0  # padding rows exactly zero
        assert ids[i, n - 1] == enc.tokenizer.eos_token_id  # </s> is the last valid token
        with torch.no_grad():  # the same caption encoded alone, unpadded: the rows moved, unchanged
            alone = enc.model(input_ids=ids[i:i + 1, :n]).last_hidden_state[0]
        assert torch.allclose(feats[i, -n:], alone, atol=1e-5)


def test_default_precision_is_bf16_and_its_features_follow_fp32(enc, t5_dir):
    default = T5CaptionEncoder(t5_dir)  # as the T2I presets build it: bf16 weights (upstream's precision)
    assert {p.dtype for p in default.model.parameters()} == {torch.bfloat16}
    prompts = ["a cat", "A red cube on a blue sphere.", "two dogs playing in the park"]
    feats, mask = default.encode(prompts)
    ref, ref_mask = enc.encode(prompts)
    assert feats.dtype == torch.float32 and torch.equal(mask, ref_mask)  # fp32 out, the same layout
    assert torch.isfinite(feats).all() and torch.count_nonzero(feats[~mask]) == 0
    valid = ref[mask]
    err = (feats[mask] - valid).norm(dim=-1) / valid.norm(dim=-1)  # per token, relative
    assert err.max() < 0.05, err.max()  # bf16 rounding through 2 layers (measured max ~1e-2)
    assert not torch.equal(feats, ref)  # it did run in bf16


def test_truncates_at_max_length_and_keeps_eos(enc, t5_dir):
    long = " ".join(SENTENCES * 12)
    ids, ids_mask = enc.tokenize([long])
    assert ids.shape == (1, 120) and ids_mask.all()
    assert ids[0, -1] == enc.tokenizer.eos_token_id
    feats, mask = enc.encode([long, "a cat"])
    assert mask[0].all() and torch.count_nonzero(feats[0].abs().sum(-1)) == 120
    short = T5CaptionEncoder(t5_dir, max_length=8, dtype=torch.float32)
    f8, m8 = short.encode([long])
    assert f8.shape == (1, 8, D) and m8.all()


def test_encoding_is_deterministic_and_batch_invariant(enc):
    a, ma = enc.encode(["a bowl of fruit", "a cat"])
    b, mb = enc.encode(["a bowl of fruit", "a cat"])
    c, mc = enc.encode(["a cat"])
    assert torch.equal(a, b) and torch.equal(ma, mb)
    assert torch.equal(ma[1:], mc) and torch.allclose(a[1:], c, atol=1e-5)


def test_left_align_moves_valid_rows_last_and_zeroes_padding():
    feats = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1) + 1  # rows 1..4 and 5..8
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out, m = left_align(feats, mask)
    assert out[:, :, 0].tolist() == [[0, 0, 1, 2], [5, 6, 7, 8]]
    assert m.tolist() == [[False, False, True, True], [True] * 4]
    with pytest.raises(ValueError, match="valid tokens first"):
        left_align(feats, torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))


# (caption, what upstream LlamaGen's T5Embedder.text_preprocessing returns), computed with upstream's code
UPSTREAM_CLEANED = [
    ("A motorcycle parked in a parking space next to another motorcycle.",
     "a motorcycle parked in a parking space next to another motorcycle."),
    ("Visit https://www.example.com/path now!", "visit now!"),
    ("a <b>bold</b> cat &amp; dog", "a bold cat dog"),
    ("“Quoted” text — with dashes", '"quoted" text - with dashes'),
    ("@user check photo_of_a_big_red_dog_on_grass", "check photo of a big red dog on grass"),
    ("IMG_1234.jpg a cat", "a cat"),
    ("A 1920x1080 wallpaper, free shipping", "a wallpaper"),
    ("a dog,cat/bird.fish", "a dog, cat bird. fish"),
    ("'single quoted'", "single quoted"),
    ("Ｆｕｌｌｗｉｄｔｈ text", "fullwidth text"),
    ("東京 tower at night", "tower at night"),
]


@pytest.mark.parametrize("caption,expected", UPSTREAM_CLEANED)
def test_caption_cleaning_matches_upstream(caption, expected):
    assert clean_caption(caption) == expected


def test_features_feed_llamagen_t2i(enc):
    torch.manual_seed(0)
    gpt = Transformer(GPTConfig(dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=50, block_size=16,
                                model_type="t2i", caption_dim=D, cls_token_num=120, token_dropout_p=0.0,
                                resid_dropout_p=0.0, ffn_dropout_p=0.0))
    for p in gpt.parameters():
        torch.nn.init.normal_(p, std=0.2)
    gpt.eval()
    feats, mask = enc.encode(["a red cube on a blue sphere", "a cat"])
    ctx = torch.randint(0, 50, (2, 15))
    with torch.no_grad():
        logits = gpt.teacher_forced_logits(feats, ctx, cond_mask=mask)
        noisy = feats.masked_fill(~mask[:, :, None], 3.0)  # garbage in the padding rows
        same = gpt.teacher_forced_logits(noisy, ctx, cond_mask=mask)
        unmasked = gpt.teacher_forced_logits(noisy, ctx)
    assert logits.shape == (2, 16, 50) and torch.isfinite(logits).all()
    assert torch.allclose(logits, same, atol=1e-5)  # the mask hides the padding from the GPT
    assert not torch.allclose(logits, unmasked, atol=1e-3)
    out = generate(gpt, feats, cond_mask=mask, cfg_scale=3.0, seeds=[1, 2], return_logprobs=True)
    assert out.tokens.shape == (2, 16) and torch.isfinite(out.logprobs).all()
    again = generate(gpt, feats, cond_mask=mask, cfg_scale=3.0, seeds=[1, 2])
    assert torch.equal(out.tokens, again.tokens)


def test_missing_weights_name_the_model_folder_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    with pytest.raises(MissingWeightsError) as e:
        T5CaptionEncoder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "hf download google/flan-t5-xl" in str(e.value)
    with pytest.raises(MissingWeightsError) as e:
        T5CaptionEncoder("vapi-tests/no-such-t5")
    msg = str(e.value)
    assert "vapi-tests/no-such-t5" in msg and str(tmp_path / "checkpoints" / "no-such-t5") in msg
    assert "hf download vapi-tests/no-such-t5 --local-dir" in msg
    partial = tmp_path / "checkpoints" / "flan-t5-xl"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    (partial / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors"}}')
    with pytest.raises(MissingWeightsError, match="model-00001-of-00002.safetensors.*spiece.model"):
        T5CaptionEncoder(text.FLAN_T5_XL)


def test_fp16_is_refused_before_loading():
    with pytest.raises(ConfigError, match="dtype"):
        T5CaptionEncoder("/nonexistent", dtype=torch.float16)
