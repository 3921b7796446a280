"""The VA-π objective: hand-computed cases, the noise kernel, grouped == per-sample."""
import math

import pytest
import torch

from benchmarks import reference_step
from core.errors import ConfigError
from core.vapi import noise, objective, rewards
from core.vapi.config import VapiConfig, parse_overrides, resolve
from core.vapi.objective import Batch
from tests.helpers import tiny_gpt, tiny_vq


# ----------------------------------------------------------------------------- hand-computed cases
def test_group_advantages_hand_computed():
    r = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    a, tied = objective.group_advantages_with_ties(r, clip=5.0)
    assert torch.allclose(a[0], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)  # mean 2, unbiased std 1
    assert torch.equal(a[1], torch.zeros(3)) and tied.tolist() == [False, True]  # no spread, no signal
    r = torch.tensor([[0.0] * 9 + [1.0]])  # one outlier: (1 - 0.1) / std
    a, _ = objective.group_advantages_with_ties(r, clip=2.0)
    assert a[0, -1] == 2.0 and a[0, 0] < 0


def test_clipped_policy_loss_both_sides():
    eps = 0.2
    old = torch.zeros(1, 2, 1)
    # positive advantage: ratio 1.5 is clipped at 1.2 -> -A * 1.2; ratio 0.5 is not -> -A * 0.5
    logp = torch.log(torch.tensor([[[1.5], [0.5]]]))
    adv = torch.tensor([[2.0, 2.0]])
    loss, frac = objective.clipped_policy_loss(logp, old, adv, eps)
    assert math.isclose(loss.item(), (-2 * 1.2 + -2 * 0.5) / 2, rel_tol=1e-6)
    assert frac.item() == 0.5
    # negative advantage: ratio 0.5 is clipped at 0.8 -> -A * 0.8; ratio 1.5 is not -> -A * 1.5
    adv = torch.tensor([[-2.0, -2.0]])
    loss, frac = objective.clipped_policy_loss(logp, old, adv, eps)
    assert math.isclose(loss.item(), (2 * 1.5 + 2 * 0.8) / 2, rel_tol=1e-6)
    assert frac.item() == 0.5
    # ratio 1: the loss is -mean(A) and its gradient is the policy gradient -A * dlogp
    lp = torch.zeros(1, 2, 1, requires_grad=True)
    loss, _ = objective.clipped_policy_loss(lp, lp.detach(), torch.tensor([[1.0, -3.0]]), eps)
    loss.backward()
    assert math.isclose(loss.item(), 1.0)
    assert torch.allclose(lp.grad.view(-1), torch.tensor([-0.5, 1.5]))


def test_ce_prior_uses_clean_targets():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    loss = objective.ce_prior(logits, torch.tensor([[0, 2]]))
    assert math.isclose(loss.item(), -(math.log(0.7) + math.log(0.8)) / 2, rel_tol=1e-6)


def test_kl_prior_hand_computed():
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    kl = objective.kl_prior(p.log().view(1, 1, 2), q.log().view(1, 1, 2), 1.0)
    assert math.isclose(kl.item(), 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rel_tol=1e-6)


def test_gather_logprobs_and_group_sampling_shapes():
    logits = torch.randn(2, 5, 7)
    x = objective.sample_groups(logits, 4, 1.0, torch.Generator().manual_seed(0))
    assert x.shape == (2, 4, 5)
    lp = objective.gather_logprobs(logits, x, 1.0)
    ref = torch.log_softmax(logits, -1)
    assert torch.allclose(lp[1, 3, 2], ref[1, 2, x[1, 3, 2]])


def test_sampled_frequencies_follow_the_tempered_distribution():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1])).view(1, 1, 3)
    x = objective.sample_groups(logits.expand(1, 1, 3), 20000, 1.0, torch.Generator().manual_seed(1))
    freq = torch.bincount(x.view(-1), minlength=3).float() / x.numel()
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.015)
    x = objective.sample_groups(logits, 20000, 0.5, torch.Generator().manual_seed(1))  # tau 0.5 squares probs
    p = torch.tensor([0.36, 0.09, 0.01]) / 0.46
    assert torch.allclose(torch.bincount(x.view(-1), minlength=3).float() / x.numel(), p, atol=0.015)


# ----------------------------------------------------------------------------- noise kernel
def test_noise_kernel_statistics_and_never_the_ground_truth():
    g = torch.Generator().manual_seed(0)
    V = 7
    x = torch.randint(0, V, (400, 250), generator=g)
    y = noise.corrupt(x, 0.3, V, g)
    changed = y != x
    assert abs(changed.float().mean().item() - 0.3) < 0.01  # replaced exactly when drawn (never re-drawn to x*)
    # among replaced positions, every other token is equally likely
    rel = ((y - x) % V)[changed]
    counts = torch.bincount(rel, minlength=V).float()
    assert counts[0] == 0
    assert (counts[1:] / counts[1:].sum() - 1 / (V - 1)).abs().max() < 0.01
    assert torch.equal(noise.corrupt(x, 0.0, V, g), x)


# ----------------------------------------------------------------------------- rewards
def test_mse_and_l1_rewards_hand_computed():
    ref = rewards.Reference(torch.zeros(2, 3, 2, 2))
    pred = torch.stack([torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), -1.0), torch.zeros(3, 2, 2)])
    item = torch.tensor([0, 1, 1])
    assert torch.allclose(rewards.mse(pred, ref, item), torch.tensor([0.25, 1.0, 0.0]))
    assert torch.allclose(rewards.l1(pred, ref, item), torch.tensor([0.5, 1.0, 0.0]))
    terms = rewards.score(pred, ref, item, {"mse": 2.0, "l1": 1.0})
    assert torch.allclose(rewards.combine(terms, {"mse": 2.0, "l1": 1.0}), torch.tensor([-1.0, -3.0, 0.0]))


def test_lpips_split_equals_the_package_and_reference_features_are_computed_once():
    import lpips

    net = rewards.LPIPSFeatures("vgg", pretrained_backbone=False)
    a, b = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    item = torch.tensor([0, 1, 1])
    ours = net.distance(net.features(a), [f[item] for f in net.features(b)])
    with torch.no_grad():
        theirs = net.inner(a, b[item]).view(-1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert isinstance(net.inner, lpips.LPIPS)
    calls = []
    ref = rewards.Reference(b)
    for _ in range(3):
        ref.cached("k", lambda: calls.append(1) or 0)
    assert len(calls) == 1


def test_missing_lpips_backbone_is_reported_before_work(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(Exception, match=r"vgg16-397923af\.pth.*" + str(tmp_path)):
        rewards.check_available({"mse": 1.0, "lpips": 1.0})
    rewards.check_available({"mse": 1.0, "lpips": 0.0})  # weight 0: not needed


# ----------------------------------------------------------------------------- config
def test_config_defaults_are_the_papers():
    c = VapiConfig()
    assert (c.learning_rate, c.weight_decay, c.beta, c.num_generations, c.advantage_clip, c.epsilon) == (1e-6, 1e-4, 0.1, 8, 5.0, 0.2)
    assert (c.max_grad_norm, c.global_batch_size, c.max_steps, c.xi, c.adam_beta2) == (1.0, 128, 100, 0.0, 0.999)
    assert c.reward_weights == {"mse": 1.0, "lpips": 1.0}
    assert resolve("llamagen-t2i-xl", {"data_path": "/d"}).xi == 0.5
    assert resolve("janus-pro-1b", {"data_path": "/d"}).learning_rate == 1e-7
    with pytest.raises(ConfigError, match="data_path"):
        resolve("llamagen-c2i-xxl")


@pytest.mark.parametrize("override,field", [
    ({"num_generations": 1}, "num_generations"), ({"xi": 1.0}, "xi"), ({"beta": -1}, "beta"),
    ({"reward_weights": {"psnr": 1}}, "reward_weights.psnr"), ({"reward_weights": {"mse": 0}}, "reward_weights"), ({"reward_weights.mse": -1}, "reward_weights.mse"),
    ({"data": "imagefolder"}, "data_path"), ({"global_batch_size": 20, "per_device_train_batch_size": 8}, "global_batch_size"),
    ({"prior": "l2"}, "prior"), ({"rollout_mode": "fast"}, "rollout_mode"), ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"lr": 1e-6}, "lr"), ({"data_subset": 2.5}, "data_subset"), ({"temperature": 0}, "temperature"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        resolve(None, override)
    assert e.value.field == field


def test_overrides_parse_json_and_dotted_keys():
    o = parse_overrides(["learning_rate=1e-5", "reward_weights.lpips=0.5", "preview_classes=[1,2]", "init_weights=none", "data_path=/x y"])
    c = resolve(None, o)
    assert c.learning_rate == 1e-5 and c.reward_weights == {"mse": 1.0, "lpips": 0.5}
    assert c.preview_classes == [1, 2] and c.init_weights is None
    with pytest.raises(ConfigError, match="--set"):
        parse_overrides(["oops"])


def test_xi_schedules():
    c = resolve(None, {"xi": 0.5, "xi_schedule": "linear", "max_steps": 11})
    assert c.xi_at(0) == 0 and math.isclose(c.xi_at(5), 0.25) and math.isclose(c.xi_at(10), 0.5)
    c = resolve(None, {"xi": 0.5, "xi_schedule": "cosine", "max_steps": 11})
    assert c.xi_at(0) == 0 and math.isclose(c.xi_at(5), 0.25, abs_tol=1e-9) and math.isclose(c.xi_at(10), 0.5)


# ----------------------------------------------------------------------------- grouped == per-sample
def make_batch(B=3, seed=0):
    tok = tiny_vq()
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, 16, 16, generator=g) * 2 - 1
    return tok, Batch(images=images, cond=torch.tensor([1, 4, 7][:B]), tokens=tok.encode(images))


@pytest.mark.parametrize("prior,xi", [("ce", 0.0), ("ce", 0.5), ("kl", 0.3)])
def test_grouped_and_per_sample_schedules_give_the_same_loss_and_gradients(prior, xi):
    tok, batch = make_batch()
    ref = tiny_gpt(seed=9) if prior == "kl" else None
    results = []
    cfg = resolve(None, {"prior": prior, "num_generations": 4, "cond_drop_prob": 0.3, "reward_weights": {"mse": 1.0, "l1": 0.5}})
    for loss_fn in (objective.compute_loss, reference_step.per_sample_loss):
        pol = tiny_gpt()
        out = loss_fn(pol, tok, batch, cfg, xi=xi, generator=torch.Generator().manual_seed(3), ref_policy=ref)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in pol.named_parameters()}))
    (a, ga), (b, gb) = results
    assert torch.equal(a.rollout.samples, b.rollout.samples)  # same draws from identical logits
    assert torch.allclose(a.loss, b.loss, rtol=1e-6, atol=1e-7)
    # gradients equal up to float summation order: relative 1e-5 of the largest entry per tensor
    for n in ga:
        scale = ga[n].abs().max().clamp_min(1e-12)
        assert ((ga[n] - gb[n]).abs().max() / scale) < 1e-5, n


def test_ppo_iterations_reuse_the_rollout_and_clip():
    tok, batch = make_batch()
    pol = tiny_gpt()
    cfg = resolve(None, {"num_generations": 4, "reward_weights": {"mse": 1.0}, "epsilon": 0.05, "rollout_mode": "eval"})
    opt = torch.optim.SGD(pol.parameters(), lr=5.0)
    first = objective.compute_loss(pol, tok, batch, cfg, xi=0.0, generator=torch.Generator().manual_seed(0))
    assert first.metrics["ratio_mean"] == 1.0 and first.metrics["clip_frac"] == 0.0
    first.loss.backward()
    opt.step()
    opt.zero_grad()
    second = objective.compute_loss(pol, tok, batch, cfg, xi=0.0, rollout=first.rollout)
    assert second.rollout is first.rollout
    assert second.metrics["ratio_mean"] != 1.0 and second.metrics["clip_frac"] > 0


@pytest.mark.slow
def test_tiny_policy_improves_on_a_toy_reward():
    from tests.helpers import ToyTokenizer

    tok = ToyTokenizer()
    g = torch.Generator().manual_seed(0)
    images = (torch.randint(0, 32, (4, 1, 8, 8), generator=g).float() / 31 * 2 - 1).expand(4, 3, 8, 8)
    batch = Batch(images=images, cond=torch.tensor([0, 1, 2, 3]), tokens=tok.encode(images))
    pol = tiny_gpt().train()
    start = {n: p.detach().clone() for n, p in pol.named_parameters()}
    cfg = resolve(None, {"num_generations": 8, "reward_weights": {"mse": 1.0}, "beta": 0.0, "cond_drop_prob": 0.0})
    opt = torch.optim.Adam(pol.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        out = objective.compute_loss(pol, tok, batch, cfg, xi=0.0, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append(out.metrics["reward_mean"])
    early, late = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert late > 0.7 * early, (early, late)  # the distance to the ground truth drops by > 30% (measured: 45%)
    unchanged = [n for n, p in pol.named_parameters() if torch.equal(p, start[n])]
    assert unchanged == [], unchanged  # every parameter tensor received gradient and moved


def test_encoder_reward_is_a_perceptual_distance_on_the_tokenizer():
    tok = tiny_vq()
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    ref = rewards.Reference(a, tok)
    item = torch.tensor([0, 1, 0])
    with torch.no_grad():
        d = rewards.encoder_distance(torch.stack([a[0], a[1], a[1]]), ref, item)
    assert d[0] == 0 and d[1] == 0 and d[2] > 0  # identical -> 0, another image -> > 0
    feats = rewards.encoder_features(tok, a)
    assert len(feats) == len(tok.config.encoder_ch_mult) + 1
    assert torch.allclose(feats[0].pow(2).sum(1), torch.ones(2, 16, 16), atol=1e-4)  # unit norm over channels
    with pytest.raises(ValueError, match="LlamaGen VQ tokenizer"):
        rewards.encoder_distance(a, rewards.Reference(a), torch.tensor([0, 1]))


def test_policy_coef_zero_is_the_prior_only_ablation():
    tok, batch = make_batch()
    pol, independent = tiny_gpt(), tiny_gpt()
    cfg = resolve(None, {"num_generations": 4, "reward_weights": {"mse": 1.0}, "policy_coef": 0.0, "beta": 0.5,
                         "cond_drop_prob": 0.0})
    out = objective.compute_loss(pol, tok, batch, cfg, xi=0.0, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    # the prior recomputed by hand: beta x CE of the clean tokens under the teacher-forced logits (xi 0: the clean
    # context), in float64, on a second copy of the model
    logits = independent.teacher_forced_logits(batch.cond, batch.tokens[:, :-1]).double()  # [B, N, V]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.tokens.unsqueeze(-1)).squeeze(-1)  # [B, N]
    prior = 0.5 * -logp.mean()
    prior.backward()
    assert out.loss.item() == pytest.approx(prior.item(), rel=1e-6)
    assert out.metrics["loss_pg"] != 0.0  # the policy term was computed, and weighted by 0
    for (name, p), q in zip(pol.named_parameters(), independent.parameters()):
        torch.testing.assert_close(p.grad, q.grad.float(), rtol=1e-4, atol=1e-7, msg=name)  # no policy gradient
    with pytest.raises(ConfigError, match="beta"):
        resolve(None, {"policy_coef": 0.0, "beta": 0.0})


# ----------------------------------------------------------------------------- rollout modes (authors' --sample-model-mode)
@pytest.mark.parametrize("mode", ["train", "eval", "twice"])
def test_every_rollout_mode_samples_from_the_eval_mode_forward_and_restores_the_mode(mode):
    tok, batch = make_batch()
    pol = tiny_gpt(resid_dropout_p=0.3, ffn_dropout_p=0.3).train()
    cfg = resolve(None, {"num_generations": 4, "reward_weights": {"mse": 1.0}, "cond_drop_prob": 0.5, "rollout_mode": mode})
    out = objective.compute_loss(pol, tok, batch, cfg, xi=0.0, generator=torch.Generator().manual_seed(1))
    assert pol.training  # the caller's mode is restored
    # the rollout: eval mode, condition never dropped, drawn with the same random numbers in every mode
    g = torch.Generator().manual_seed(1)
    context, drop = objective.new_rollout_noise(batch, cfg, pol.vocab_size, 0.0, g)
    with torch.no_grad(), objective.model_mode(pol, False):
        ref_logits = pol(batch.cond, context)
    samples = objective.sample_groups(ref_logits, 4, 1.0, g)
    assert torch.equal(out.rollout.samples, samples)
    assert torch.allclose(out.rollout.old_logprobs, objective.gather_logprobs(ref_logits, samples, 1.0), atol=1e-6)
    ratio = out.metrics["ratio_mean"]
    if mode == "train":  # gradient forward in train mode: dropout and condition dropout move the ratio off 1
        assert ratio != pytest.approx(1.0, abs=1e-4) and out.metrics["cond_dropped"] > 0
    else:  # the policy loss sees the eval-mode forward: ratio exactly 1 on the first update
        assert ratio == 1.0
    if mode == "eval":
        assert out.metrics["cond_dropped"] == 0.0
        ce = objective.ce_prior(ref_logits, batch.tokens)
        assert out.metrics["loss_prior"] == pytest.approx(ce.item(), rel=1e-6)  # CE on the eval forward too
    if mode == "twice":  # CE from a second, train-mode forward (dropout): not the eval forward's CE
        ce = objective.ce_prior(ref_logits, batch.tokens)
        assert out.metrics["loss_prior"] != pytest.approx(ce.item(), rel=1e-4)


def test_train_mode_reuses_its_forward_for_the_rollout_only_where_exact():
    tok, batch = make_batch()
    pol = tiny_gpt()  # no dropout layers: train mode == eval mode except for dropped conditions
    assert not objective.has_dropout(pol) and objective.has_dropout(tiny_gpt(token_dropout_p=0.1))
    drop = torch.tensor([True, False, True])
    context = batch.tokens[:, :-1]
    with torch.no_grad():
        train_logits = objective.forward_in_mode(pol, batch, context, drop, train=True)
        full = objective.rollout_logits(pol, batch, context, drop)
    reused = objective.rollout_logits(pol, batch, context, drop, train_logits=train_logits)
    assert torch.allclose(reused, full, atol=1e-5)
    assert not torch.allclose(train_logits[0], full[0], atol=1e-3)  # the dropped row was run again, conditioned


def test_a_rollout_that_is_its_own_forward_is_decoded_before_the_gradient_graph_exists():
    """Headroom: with dropout layers (rollout_mode train) the rollout is its own eval-mode forward, so it is sampled,
    decoded and scored before the gradient forward; the loss equals the other order's exactly."""
    tok, batch = make_batch()
    pol = tiny_gpt(resid_dropout_p=0.3, ffn_dropout_p=0.3).train()
    cfg = resolve(None, {"num_generations": 4, "reward_weights": {"mse": 1.0}, "cond_drop_prob": 0.5})
    saved, at_decode = [0], []
    decode = tok.decode
    tok.decode = lambda t: (at_decode.append(saved[0]), decode(t))[1]

    def pack(x):
        saved[0] += 1  # a tensor saved for backward: the gradient graph exists
        return x

    torch.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = objective.compute_loss(pol, tok, batch, cfg, xi=0.0, generator=torch.Generator().manual_seed(1))
    assert at_decode and set(at_decode) == {0} and saved[0] > 0
    torch.manual_seed(5)  # the order before: gradient forward first, then the rollout
    g = torch.Generator().manual_seed(1)
    context, drop = objective.new_rollout_noise(batch, cfg, pol.vocab_size, 0.0, g)
    logits_pg, logits_prior = objective.gradient_forwards(pol, batch, context, drop, cfg)
    rollout = objective.sample_rollout(pol, tok, batch, cfg, context, drop, g, policy_logits=logits_pg)
    logp = objective.gather_logprobs(logits_pg, rollout.samples, cfg.temperature)
    loss, _ = objective.rollout_loss(rollout, logp, logits_prior, batch.tokens, cfg)
    assert torch.equal(out.loss, loss) and torch.equal(out.rollout.samples, rollout.samples)


def test_tied_groups_get_zero_advantage_and_are_counted():
    base = torch.tensor([0.0142, 0.0142, 0.0142, 0.0142])
    noise = torch.tensor([5e-8, -1e-7, 0.0, 5e-8])  # float rounding of equal decodes (~5e-6 relative): no signal
    real = torch.tensor([0.0142, 0.0139, 0.0151, 0.0142])  # one token changed: a real difference
    r = -torch.stack([base + noise, real, base])
    adv, tied = objective.group_advantages_with_ties(r, clip=5.0)
    assert tied.tolist() == [True, False, True]
    assert torch.equal(adv[0], torch.zeros(4)) and torch.equal(adv[2], torch.zeros(4))
    assert adv[1].abs().max() > 0.5
    # without the guard the rounding noise would have become full-size advantages
    raw = (r[0] - r[0].mean()) / (r[0].std() + 1e-8)
    assert raw.abs().max() > 0.5


def test_a_run_config_written_with_the_retired_schedule_field_still_loads():
    for value in ("grouped", "per-sample"):  # config.json of a run from before the field was retired
        assert VapiConfig.from_dict({**VapiConfig().to_dict(), "schedule": value}) == VapiConfig()
    with pytest.raises(ConfigError, match="schedule.*no longer a setting"):
        resolve(None, {"schedule": "grouped"})


# ----------------------------------------------------------------------------- extensions beyond the paper (issue 15)
def test_patch_mse_splits_the_pixel_mse_over_the_token_grid():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    pred = images.clone()
    pred[1, :, :4, 4:] += 0.5  # the top-right quarter of image 1 only: token 1 of a 2x2 grid
    ref = rewards.Reference(images)
    item = torch.tensor([0, 1])
    d = rewards.patch_mse(pred, ref, item, 2)
    assert d.shape == (2, 4) and torch.equal(d[0], torch.zeros(4))
    assert d[1, 1] == pytest.approx(0.25) and d[1, [0, 2, 3]].abs().max() == 0
    assert torch.allclose(d.mean(1), rewards.mse(pred, ref, item))


def test_token_advantages_normalise_each_position_over_the_group():
    r = torch.tensor([[[1.0, 5.0], [3.0, 5.0]]])  # B 1, G 2, N 2: position 1 tied
    a, tied = objective.token_advantages(r, clip=5.0)
    s = 2 ** -0.5  # (r - mean) / std with the unbiased std of two values: +-1/sqrt(2)
    assert torch.allclose(a, torch.tensor([[[-s, 0.0], [s, 0.0]]]), atol=1e-6) and not tied.any()
    assert objective.token_advantages(torch.ones(1, 3, 4), 5.0)[1].all()


def test_policy_skip_tokens_leaves_the_first_positions_out_of_the_policy_loss():
    logp = torch.zeros(1, 2, 3, requires_grad=True)
    old = torch.zeros(1, 2, 3)
    adv = torch.tensor([[1.0, -1.0]])
    full, _ = objective.clipped_policy_loss(logp, old, adv, 0.2)
    skipped, _ = objective.clipped_policy_loss(logp, old, adv, 0.2, skip_first=1)
    assert full.item() == pytest.approx(0.0) and skipped.item() == pytest.approx(0.0)
    skipped.backward()
    assert torch.equal(logp.grad[..., 0], torch.zeros(1, 2))  # position 0 gets no policy gradient
    assert torch.allclose(logp.grad[..., 1:], torch.tensor([[[-0.25, -0.25], [0.25, 0.25]]]))  # -A / (G * 2 positions)
    with pytest.raises(ConfigError, match="policy_skip_tokens"):
        objective.clipped_policy_loss(logp, old, adv, 0.2, skip_first=3)


class TablePolicy(torch.nn.Module):
    """A policy whose logits are one learnable table [N, V], whatever the condition and context: its gradient is
    the policy gradient of each position, readable by hand."""

    def __init__(self, n: int, v: int):
        super().__init__()
        self.vocab_size = v
        self.table = torch.nn.Parameter(torch.zeros(n, v))  # uniform: every token drawn at every position

    def forward(self, cond, context, cond_mask=None):  # -> [B, N, V]
        return self.table.expand(cond.shape[0], -1, -1)


def test_per_token_reward_credits_each_token_with_its_own_patch_only():
    from tests.helpers import ToyTokenizer

    tok = ToyTokenizer(codebook_size=4, grid=(2, 2))  # token t -> one pixel of grey t/3 in [-1, 1]: patch = pixel
    cfg = resolve(None, {"num_generations": 16, "reward_weights": {"mse": 1.0}, "reward_per_token": True,
                         "beta": 0.0, "cond_drop_prob": 0.0})

    def grad_of(truth):
        grey = torch.tensor(truth, dtype=torch.float32) / 3 * 2 - 1
        images = grey.view(1, 1, 2, 2).expand(1, 3, 2, 2)
        batch = Batch(images=images, cond=torch.tensor([0]), tokens=tok.encode(images))
        assert batch.tokens.tolist() == [truth]
        pol = TablePolicy(4, 4)
        out = objective.compute_loss(pol, tok, batch, cfg, xi=0.0, generator=torch.Generator().manual_seed(0))
        assert out.rollout.advantages.shape == (1, 16, 4)
        out.loss.backward()
        return pol.table.grad  # [N, V]

    truth = [0, 3, 1, 2]
    g = grad_of(truth)
    for n, t in enumerate(truth):
        far = 3 if t < 2 else 0  # the token whose pixel is farthest from the truth's
        assert g[n, t] < 0, (n, g[n])  # descent raises the probability of the right token at every position
        assert g[n, far] > 0, (n, g[n])  # and lowers the farthest one's
    # the credit is local: other pixels' truth changes nothing at position 0 (a per-sequence advantage would)
    other = grad_of([0, 0, 3, 0])
    assert torch.equal(other[0], g[0]) and not torch.equal(other[1:], g[1:])
    with pytest.raises(ConfigError, match="reward_per_token"):
        resolve(None, {"reward_per_token": True})  # MSE + LPIPS: the per-token reward is MSE only
