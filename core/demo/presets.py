"""The embedded demo's alignment preset: the demo generator on the shapes domain, CPU-friendly.

Everything else is Table 7 (G 8, beta 0.1, xi 0, clip 0.2, A_max 5, 128 images x 100 steps = the
paper's 12.8K images). Two departures: offline there are no VGG weights for LPIPS, so the reward is
pixel-only (MSE), and the learning rate is scaled up for a 1.4M-parameter model (the paper's 1e-6 is
for 0.8-1.4B). The measured effect of this preset, with its ablations, is in README and in
checkpoints/demo/manifest.json.
"""
from __future__ import annotations

PRESETS = {
    "demo-c2i": dict(
        model="demo-c2i", data="shapes", data_subset=12_800, reward_weights={"mse": 1.0},
        global_batch_size=128, per_device_train_batch_size=64, max_steps=100, learning_rate=1e-5,
        mixed_precision="no", num_workers=0, save_steps=25, preview_steps=25,
    ),
}
