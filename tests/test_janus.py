"""Janus-Pro through transformers as a VA-π policy and tokenizer, with a tiny random JanusConfig.

The text tokenizer is a word-level `tokenizers` model wrapped in PreTrainedTokenizerFast that
carries Janus's special tokens (BOS, the pad tag, <begin_of_image>, the role tags).
"""
import json
from pathlib import Path

import pytest
import torch

from core import paths
from core.errors import CheckpointError, ConfigError, MissingWeightsError
from core.models import janus
from core.models.generate import cfg_mix, draw_uniforms, generate, generate_images, pick
from core.models.janus import JanusPolicy, JanusTokenizer, format_prompt, load_janus
from core.models.protocols import Policy, Tokenizer

WORDS = ["[UNK]", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<begin_of_image>",
         "<end_of_image>", "<image_placeholder>", "<|User|>", "<|Assistant|>", ":", "a", "red", "cube", "on",
         "blue", "sphere", "cat", "dog", "photo", "of", "two"]
V, GRID, IMAGE = 40, 4, 32  # tiny: 40 codes, a 4 x 4 grid, 32 px (Janus-Pro: 16384, 24 x 24, 384 px)
N = GRID * GRID
PROMPTS = ["a red cube on a blue sphere", "cat", "two dog"]


def tiny_text_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=WORDS[1], eos_token=WORDS[2], pad_token=WORDS[3],
                                   unk_token="[UNK]", additional_special_tokens=WORDS[4:9])


def tiny_janus_model(seed: int = 0):
    from transformers import JanusConfig, JanusForConditionalGeneration

    cfg = JanusConfig(
        text_config=dict(model_type="llama", vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=3),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE,
                           patch_size=IMAGE // GRID, projection_dim=32, num_image_tokens=N, mlp_ratio=2.0),
        vq_config=dict(embed_dim=4, num_embeddings=V, latent_channels=32, base_channels=32,
                       channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, projection_dim=32,
                       image_token_embed_dim=32, num_hidden_layers=2),
        image_token_id=6)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def policy():
    return JanusPolicy(tiny_janus_model(), tiny_text_tokenizer()).eval()


@pytest.fixture(scope="module")
def cond(policy):
    return policy.encode_prompts(PROMPTS)


def test_protocols_and_sizes(policy):
    tok = JanusTokenizer(policy.model.model.vqmodel)
    assert isinstance(policy, Policy) and isinstance(tok, Tokenizer)
    assert policy.vocab_size == V and policy.num_tokens == N
    assert tok.codebook_size == V and tok.grid == (GRID, GRID) and tok.image_size == IMAGE


def test_prompt_template_is_janus_generation_format():
    assert format_prompt("  a red cube ") == "<|User|>: a red cube\n\n<|Assistant|>:<begin_of_image>"
    assert format_prompt("") == "<|User|>:<|Assistant|>:<begin_of_image>"


def test_prompts_are_left_padded_and_start_with_bos(policy, cond):
    ids, mask = cond
    tok = policy.text_tokenizer
    for i, p in enumerate(PROMPTS):
        row = [tok.bos_token_id] + tok.encode(format_prompt(p), add_special_tokens=False)
        n = len(row)
        assert ids[i, -n:].tolist() == row and mask[i, -n:].all()
        assert not mask[i, :-n].any() and (ids[i, :-n] == policy.pad_id).all()
    assert (ids[:, -1] == policy.boi_id).all()
    with pytest.raises(TypeError):
        policy.encode_prompts("a cat")


def test_null_prompt_keeps_bos_and_image_start_only(policy, cond):
    ids, mask = cond
    null = policy.null_condition(ids)
    assert null.shape == ids.shape
    for i in range(len(PROMPTS)):
        n = int(mask[i].sum())
        assert null[i, -n] == policy.bos_id and null[i, -1] == policy.boi_id
        assert (null[i, -n + 1:-1] == policy.pad_id).all() and (null[i, :-n] == policy.pad_id).all()


def test_teacher_forced_logits_shape_and_alignment(policy, cond):
    ids, mask = cond
    ctx = torch.randint(0, V, (3, N - 1))
    with torch.no_grad():
        a = policy.teacher_forced_logits(ids, ctx, cond_mask=mask)
        ctx2 = ctx.clone()
        ctx2[:, 7:] = (ctx2[:, 7:] + 1) % V
        b = policy.teacher_forced_logits(ids, ctx2, cond_mask=mask)
    assert a.shape == (3, N, V) and a.dtype == torch.float32 and torch.isfinite(a).all()
    # logits[:, i] sees context[:, :i] only: the first comes from the <begin_of_image> position
    assert torch.equal(a[:, :8], b[:, :8]) and not torch.allclose(a[:, 8:], b[:, 8:])


def test_kv_cache_decoding_equals_teacher_forcing(policy, cond):
    ids, mask = cond
    tokens = torch.randint(0, V, (3, N))
    with torch.no_grad():
        tf = policy.teacher_forced_logits(ids, tokens[:, :-1], cond_mask=mask)
        cache = policy.new_cache(3)
        steps = [policy.prefill(ids, cache, cond_mask=mask)]
        steps += [policy.decode_one(tokens[:, i], cache) for i in range(N - 1)]
    assert (torch.stack(steps, 1) - tf).abs().max() <= 1e-4
    # the cache was filled (a cache argument the language model does not read would leave it empty and decode
    # each token without context; the equality above could then only hold by accident)
    assert cache.kv.get_seq_length() == ids.shape[1] + N - 1


def test_a_padded_row_equals_the_prompt_alone(policy, cond):
    ids, mask = cond
    ctx = torch.randint(0, V, (3, N - 1))
    with torch.no_grad():
        batched = policy.teacher_forced_logits(ids, ctx, cond_mask=mask)
        one_ids, one_mask = policy.encode_prompts(PROMPTS[1:2])
        alone = policy.teacher_forced_logits(one_ids, ctx[1:2], cond_mask=one_mask)
    assert one_ids.shape[1] < ids.shape[1] and one_mask.all()
    assert (batched[1:2] - alone).abs().max() <= 1e-5


def test_cond_dropout_uses_the_null_prompt(policy, cond):
    ids, mask = cond
    ctx = torch.randint(0, V, (3, N - 1))
    with torch.no_grad():
        dropped = policy.teacher_forced_logits(ids, ctx, cond_mask=mask, cond_drop_prob=1.0)
        null = policy.teacher_forced_logits(policy.null_condition(ids), ctx, cond_mask=mask)
        kept = policy.teacher_forced_logits(ids, ctx, cond_mask=mask)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        p1 = policy.teacher_forced_logits(ids, ctx, cond_mask=mask, cond_drop_prob=0.5, generator=g1)
        p2 = policy.teacher_forced_logits(ids, ctx, cond_mask=mask, cond_drop_prob=0.5, generator=g2)
    assert torch.equal(dropped, null) and not torch.allclose(dropped, kept)
    assert torch.equal(p1, p2)


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_sampled_logprobs_match_guided_teacher_forcing(policy, cond, scale):
    """cfg 1 samples the conditional model alone; cfg s mixes it with the null prompt's logits."""
    ids, mask = cond
    out = generate(policy, ids, cond_mask=mask, cfg_scale=scale, seeds=[4, 5, 6], return_logprobs=True)
    with torch.no_grad():
        c = policy.teacher_forced_logits(ids, out.tokens[:, :-1], cond_mask=mask)
        u = policy.teacher_forced_logits(policy.null_condition(ids), out.tokens[:, :-1], cond_mask=mask)
    guided = c if scale == 1.0 else u + scale * (c - u)
    ref = torch.log_softmax(guided, -1).gather(-1, out.tokens[..., None]).squeeze(-1)
    assert (out.logprobs - ref).abs().max() <= 1e-4
    assert torch.equal(cfg_mix(c, u, 1.0), c)


def test_scale_one_draws_the_conditional_samples(policy, cond):
    ids, mask = cond
    out = policy.generate(ids, cond_mask=mask, cfg_scale=1.0, seeds=[7, 8, 9], top_k=10)
    u = draw_uniforms(3, N, ids.device, seeds=[7, 8, 9]).float()
    toks = []
    with torch.no_grad():
        cache = policy.new_cache(3)
        logits = policy.prefill(ids, cache, cond_mask=mask)
        for i in range(N):
            t, _ = pick(logits, u[:, i], 1.0, 10, 1.0)
            toks.append(t)
            if i + 1 < N:
                logits = policy.decode_one(t, cache)
    assert torch.equal(out.tokens, torch.stack(toks, 1))


def test_seeded_generation_is_reproducible_and_batch_invariant(policy, cond):
    ids, mask = cond
    a = policy.generate(ids, cond_mask=mask, cfg_scale=3.0, seeds=[1, 2, 3])
    b = policy.generate(ids, cond_mask=mask, cfg_scale=3.0, seeds=[1, 2, 3])
    one_ids, one_mask = policy.encode_prompts(PROMPTS[2:])
    c = policy.generate(one_ids, cond_mask=one_mask, cfg_scale=3.0, seeds=[3])
    assert a.tokens.shape == (3, N) and a.tokens.dtype == torch.long
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens[2:], c.tokens)
    assert not torch.equal(policy.generate(ids, cond_mask=mask, cfg_scale=3.0, seeds=[11, 12, 13]).tokens, a.tokens)


def test_cond_must_come_from_encode_prompts(policy, cond):
    ids, mask = cond
    with pytest.raises(ValueError, match="begin_of_image"):
        policy.teacher_forced_logits(ids[:, :-1], torch.zeros(3, N - 1, dtype=torch.long))
    with pytest.raises(ValueError, match="prompt ids"):
        policy.teacher_forced_logits(torch.randn(3, 5, 8), torch.zeros(3, N - 1, dtype=torch.long))


def test_training_path_and_frozen_modules():
    policy = JanusPolicy(tiny_janus_model(seed=1), tiny_text_tokenizer())
    ids, mask = policy.encode_prompts(PROMPTS)
    tokens = torch.randint(0, V, (3, N))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("model.model.vision_model.", "model.model.aligner.", "model.model.vqmodel."))
                   for n in trainable)

    def grads(checkpointing: bool):
        policy.zero_grad(set_to_none=True)
        policy.gradient_checkpointing = checkpointing
        policy.train()
        logits = policy(ids, tokens[:, :-1], cond_mask=mask)  # forward() is the teacher-forced pass
        torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1)).backward()
        return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    plain = grads(False)
    for part in ("generation_embeddings", "generation_aligner", "generation_head", "language_model.layers",
                 "language_model.embed_tokens"):
        assert any(part in n and g.abs().sum() > 0 for n, g in plain.items()), part
    ckpt = grads(True)
    assert policy.gradient_checkpointing and plain.keys() == ckpt.keys()
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-6) for n in plain)


def test_tokenizer_encode_decode_shapes():
    tok = JanusTokenizer(tiny_janus_model().model.vqmodel)
    images = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    ids = tok.encode(images)
    assert ids.shape == (2, N) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < V
    out = tok.decode(ids)
    assert out.shape == (2, 3, IMAGE, IMAGE) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="expected images"):
        tok.encode(torch.rand(2, 3, 2 * IMAGE, 2 * IMAGE))
    with pytest.raises(ValueError, match="expected tokens"):
        tok.decode(ids[:, :-1])


def test_tokenizer_looks_up_the_normalised_codebook():
    """Janus's quantizer compares unit vectors: rescaling codebook rows must not change the codes."""
    tok = JanusTokenizer(tiny_janus_model().model.vqmodel)
    images = torch.rand(3, 3, IMAGE, IMAGE) * 2 - 1
    ids = tok.encode(images)
    with torch.no_grad():
        z = torch.nn.functional.normalize(tok.encode_latent(images), dim=1)  # [B, e, h, w]
        e = torch.nn.functional.normalize(tok.vq.quantize.embedding.weight, dim=1)
        cosine = torch.einsum("behw,ve->bhwv", z, e).flatten(1, 2)  # [B, N, V]
        assert torch.equal(ids, cosine.argmax(-1))
        tok.vq.quantize.embedding.weight.mul_(torch.rand(V, 1) * 5 + 0.1)
    assert torch.equal(tok.encode(images), ids)


def test_generated_tokens_decode_through_the_shared_sampler(policy, cond):
    ids, mask = cond
    tok = JanusTokenizer(policy.model.model.vqmodel)
    images = generate_images(policy, tok, ids, seeds=[1, 2, 3], batch_size=2, cond_mask=mask, cfg_scale=2.0)
    assert images.shape == (3, 3, IMAGE, IMAGE) and images.abs().max() <= 1


def test_load_janus_reads_a_saved_folder(tmp_path, policy, cond):
    folder = tmp_path / "Janus-Tiny"
    policy.model.save_pretrained(folder)
    policy.text_tokenizer.save_pretrained(folder)
    loaded, tok = load_janus(folder, dtype=torch.float32)
    ids, mask = cond
    ctx = torch.randint(0, V, (3, N - 1))
    with torch.no_grad():
        assert torch.allclose(loaded.teacher_forced_logits(ids, ctx, cond_mask=mask),
                              policy.teacher_forced_logits(ids, ctx, cond_mask=mask), atol=1e-6)
    assert tok.grid == (GRID, GRID) and not loaded.training


def test_missing_weights_name_the_model_folder_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "checkpoints")
    with pytest.raises(MissingWeightsError) as e:
        load_janus()
    msg = str(e.value)
    assert janus.JANUS_PRO_1B in msg and str(tmp_path / "checkpoints" / "Janus-Pro-1B") in msg
    assert f"hf download {janus.JANUS_PRO_1B} --local-dir" in msg
    with pytest.raises(MissingWeightsError, match="hf download deepseek-community/Janus-Pro-1B"):
        load_janus(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="deepseek-community/Janus-Pro-1B"):
        load_janus("deepseek-ai/Janus-Pro-1B")
    original = tmp_path / "original"
    original.mkdir()
    (original / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))
    (original / "model.safetensors").write_bytes(b"")
    (original / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="multi_modality"):
        load_janus(original)


JANUS_SETUP = '''
import sys, torch
from core.models.janus import load_janus
from core.vapi import objective
from core.vapi.config import resolve
from core.vapi.trainer import Trainer
cfg = resolve("janus-pro-1b", {"data_path": sys.argv[1], "device": "cpu", "reward_weights": {"mse": 1},
                               "mixed_precision_on_cpu": True, "global_batch_size": 2, "per_device_train_batch_size": 2})
t = Trainer(cfg, sys.argv[2])
t.setup()
assert t.accelerator.mixed_precision == "bf16"
kinds = {p.dtype for m in (t.policy, t.tokenizer) for p in m.parameters()}
assert kinds == {torch.float32}, kinds  # stored bf16, trained as fp32 masters; the VQ in fp32
ref = load_janus(sys.argv[3], dtype=torch.bfloat16)[1].float()  # the same bf16 weights, computed in fp32
batch, _ = t.batch(0, 0)
with t.accelerator.autocast():
    assert torch.equal(batch.tokens, ref.encode(batch.images.float()))  # x*
    with objective.fp32("cpu"):
        img = t.tokenizer.decode(batch.tokens)  # what the rewards score
assert torch.equal(img, ref.decode(batch.tokens)), (img - ref.decode(batch.tokens)).abs().max()
print("fp32 ok")
'''


@pytest.mark.slow
def test_janus_stored_in_bf16_trains_fp32_masters_with_its_vq_in_fp32(tiny_demo, tmp_path):
    """The tiny Janus stand-in is loaded in bf16 like Janus-Pro-1B. At the paper's lr 1e-7 AdamW's first steps
    (about lr per weight) vanish in bf16; in fp32 masters they move most trained weights."""
    import json
    import os
    import subprocess
    import sys

    from core.models import checkpoint
    from tests.standins import make_caption_folder, make_standins

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, **make_standins(tmp_path), "VAPI_DEMO_DIR": str(tiny_demo), "OMP_NUM_THREADS": "1"}
    data = make_caption_folder(tmp_path / "coco")
    folder = tmp_path / "checkpoints" / "Janus-Pro-1B"
    r = subprocess.run([sys.executable, "-c", JANUS_SETUP, str(data), str(tmp_path / "setup"), str(folder)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "fp32 ok" in r.stdout, r.stderr[-3000:]
    run = tmp_path / "runs" / "janus"
    small = {"data_path": str(data), "learning_rate": 1e-7, "max_steps": 2, "save_steps": 2, "device": "cpu",
             "reward_weights": json.dumps({"mse": 1}), "global_batch_size": 2, "per_device_train_batch_size": 2,
             "num_generations": 2, "preview_seeds": "[0]", "kl_probe_size": 0}
    r = subprocess.run([sys.executable, "-m", "core", "train", "--preset", "janus-pro-1b", "--run-dir", str(run),
                        *[a for k, v in small.items() for a in ("--set", f"{k}={v}")]],
                       cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-3000:]
    base = load_janus(folder, dtype=torch.bfloat16)[0]
    trained = {n for n, p in base.named_parameters() if p.requires_grad}
    sd, _ = checkpoint.read_file(run / "checkpoints" / "step-000002" / "model.pt")
    ref = base.state_dict()
    moved = sum(int((sd[n].float() != ref[n].float()).sum()) for n in trained)
    total = sum(ref[n].numel() for n in trained)
    assert moved / total > 0.3, f"{moved}/{total} trained weights moved at lr 1e-7"
