"""The embedded demo's alignment preset: the demo generator on the shapes domain, on CPU.

Offline there are no VGG weights, so the reward is pixel-only (MSE); the paper's LPIPS term is
used wherever its weights exist. Values below are the ones the demo's measurements were made with
(README, checkpoints/demo/manifest.json).
"""
from __future__ import annotations

PRESETS = {
    "demo-c2i": dict(
        model="demo-c2i", data="shapes", data_subset=2048, reward_weights={"mse": 1.0},
        global_batch_size=16, per_device_train_batch_size=16, max_steps=100, learning_rate=1e-5,
        mixed_precision="no", num_workers=0, save_steps=25, preview_steps=25, device="cpu",
    ),
}
