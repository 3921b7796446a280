"""CUDA-only checks (skipped without CUDA; `bash benchmarks/gpu_check.sh` runs them on a GPU machine).
Imports only torch and the project's core, so a bare GPU machine (no gradio/lpips/torchvision) runs them."""
import pytest
import torch

from benchmarks import reference_step
from core.vapi import objective
from core.vapi.config import resolve
from core.vapi.objective import Batch
from tests.helpers import tiny_gpt, tiny_vq

pytestmark = pytest.mark.gpu
DEV = "cuda"


def batch_on(dev, B=3):
    tok = tiny_vq().to(dev)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(B, 3, 16, 16, generator=g) * 2 - 1).to(dev)
    with torch.no_grad():
        return tok, Batch(images=images, cond=torch.tensor([1, 4, 7][:B], device=dev), tokens=tok.encode(images))


def test_grouped_equals_per_sample_on_cuda():
    tok, batch = batch_on(DEV)
    grads = []
    cfg = resolve(None, {"num_generations": 4, "reward_weights": {"mse": 1.0}})
    for loss_fn in (objective.compute_loss, reference_step.per_sample_loss):
        pol = tiny_gpt().to(DEV)
        out = loss_fn(pol, tok, batch, cfg, xi=0.0, generator=torch.Generator(device=DEV).manual_seed(3))
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in pol.named_parameters()})
    for n in grads[0]:
        scale = grads[0][n].abs().max().clamp_min(1e-12)
        assert ((grads[0][n] - grads[1][n]).abs().max() / scale) < 1e-4, n


def test_bf16_autocast_keeps_tokens_and_rewards_in_fp32_on_cuda():
    tok, batch = batch_on(DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16), objective.fp32(DEV), torch.no_grad():
        tokens = tok.encode(batch.images)
    assert torch.equal(tokens, batch.tokens)
    samples = batch.tokens[:, None, :].expand(-1, 2, -1).contiguous()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        r_amp, _ = objective.score_samples(tok, samples, batch.images, {"mse": 1.0}, 4)
    r, _ = objective.score_samples(tok, samples, batch.images, {"mse": 1.0}, 4)
    assert torch.allclose(r_amp, r, rtol=1e-5, atol=1e-7)


def test_kv_cache_decoding_matches_teacher_forcing_in_bf16():
    from core.models.generate import generate

    pol = tiny_gpt().to(DEV)
    cond = torch.tensor([1, 2], device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        out = generate(pol, cond, generator=torch.Generator(device=DEV).manual_seed(0), return_logprobs=True)
        tf = pol.teacher_forced_logits(cond, out.tokens[:, :-1]).float()
    ref = torch.log_softmax(tf, -1).gather(-1, out.tokens[..., None]).squeeze(-1)
    assert (ref - out.logprobs.float()).abs().max() < 0.1  # bf16: a logit rounding apart at most
