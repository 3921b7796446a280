"""The memory estimate (core.vapi.memory) and the trainer switching gradient checkpointing on by itself."""
import pytest
import torch

from core.models import llamagen
from core.vapi import memory


def test_gpt_xxl_at_the_papers_setting_matches_the_measured_figures():
    with torch.device("meta"):
        gpt = llamagen.build("GPT-XXL", model_type="c2i", image_size=384)
    assert memory.model_shape(gpt) == {"blocks": 48, "dim": 1536, "positions": 577, "vocab": 16384}
    n = sum(p.numel() for p in gpt.parameters())
    common = dict(params=n, trained=n, images=16, image_size=384, reward_chunk=32, **memory.model_shape(gpt))
    plain = memory.estimate(checkpointing=False, **common)
    assert plain.states == pytest.approx(21.0, abs=0.5)  # fp32 weights + grads + AdamW, 1.41B parameters
    assert plain.graph == pytest.approx(39.7, abs=1.0)  # 37.5 GiB saved activations (50 MiB/block/image) + logits
    assert plain.peak == pytest.approx(71.7, abs=1.0)  # the decode alive beside the graph
    assert memory.estimate(checkpointing=True, **common).peak == pytest.approx(37.6, abs=1.0)
    assert memory.estimate(checkpointing=False, overlap=False, **common).peak == pytest.approx(60.7, abs=1.0)


@pytest.mark.slow
def test_trainer_switches_checkpointing_on_when_the_estimate_does_not_fit(tiny_demo, tmp_path):
    from core.vapi.config import resolve
    from core.vapi.trainer import Trainer

    cfg = resolve("demo-c2i", {"device": "cpu", "data_subset": 20, "reward_weights": {"mse": 1}})
    logs = []
    t = Trainer(cfg, tmp_path, log=logs.append)
    t.setup()
    need, without, with_ = memory.checkpointing_needed(t.policy, images=cfg.per_device_train_batch_size,
                                                       image_size=t.preset.image_size,
                                                       reward_chunk=cfg.reward_chunk_size, capacity_bytes=1)
    assert need and with_.peak < without.peak
    t.fit_memory(t.policy, capacity_bytes=int(without.peak * memory.GIB))  # 90% of it: does not fit
    assert t.policy.gradient_checkpointing and "gradient checkpointing switched on" in logs[-1]
    assert t.cfg.reward_chunk_size == cfg.reward_chunk_size  # with checkpointing the decode chunk fits
    t.policy.gradient_checkpointing = False
    t.fit_memory(t.policy, capacity_bytes=int(2 * without.peak * memory.GIB))  # fits: left as configured
    assert not t.policy.gradient_checkpointing and t.cfg.reward_chunk_size == cfg.reward_chunk_size
    # so little memory that even with checkpointing the decode of a full chunk does not fit: a smaller chunk
    t.policy.gradient_checkpointing = True
    room = int((with_.states + with_.graph + with_.decode / 4) / memory.FIT_FRACTION * memory.GIB)
    t.fit_memory(t.policy, capacity_bytes=room)
    assert t.cfg.reward_chunk_size < cfg.reward_chunk_size and "reward_chunk_size" in logs[-1]


def test_reward_chunk_that_fits_uses_what_is_left_beside_the_states_and_graph():
    est = memory.Estimate(states=20.0, graph=10.0, decode=8.0, overlap=True)  # 8 GiB for a chunk of 32
    cap = int(40 / memory.FIT_FRACTION * memory.GIB) + 2 ** 20  # 40 GiB usable: 10 left for the decode -> all 32 fit
    assert memory.reward_chunk_that_fits(est, 32, cap) == 32
    cap = int(34 / memory.FIT_FRACTION * memory.GIB) + 2 ** 20  # 4 GiB left: 16 images
    assert memory.reward_chunk_that_fits(est, 32, cap) == 16
    first = memory.Estimate(states=20.0, graph=10.0, decode=8.0, overlap=False)  # rollout first: the graph is gone
    assert memory.reward_chunk_that_fits(first, 32, cap) == 32
    assert memory.reward_chunk_that_fits(est, 32, int(10 * memory.GIB)) == 1
