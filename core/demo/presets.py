"""The embedded demo's alignment presets: the demo generators on the shapes domain, CPU-friendly.

Everything else is Table 7 (G 8, beta 0.1, xi 0, clip 0.2, A_max 5, 128 images x 100 steps = the
paper's 12.8K images). Two departures: offline there are no VGG weights for LPIPS, so the reward is
pixel-only (MSE), and the learning rate is scaled up for a 1.4M-parameter model (the paper's 1e-6 is
for 0.8-1.4B). The measured effect of this preset, with its ablations, is in README and in
checkpoints/demo/manifest.json.

`demo-t2i` is Table 7's T2I column scaled the same way: xi 0.5 (LlamaGen-XL T2I), the demo T2I on
captioned shapes scenes (held-out prompt combinations excluded), MSE reward, the demo's learning rate.
"""
from __future__ import annotations

PRESETS = {
    "demo-c2i": dict(
        model="demo-c2i", data="shapes", data_subset=12_800, reward_weights={"mse": 1.0},
        global_batch_size=128, per_device_train_batch_size=64, max_steps=100, learning_rate=1e-5,
        mixed_precision="no", num_workers=0, save_steps=25, preview_steps=25,
    ),
    # Table 7's T2I column (LlamaGen-XL T2I: 200 steps, xi 0.5), 64 images a step so that 200 steps fit the CPU
    # budget (the same 12,800 images as demo-c2i). Previews: two held-out prompts (core.demo.prompts) and a
    # shorter one a user would type.
    "demo-t2i": dict(
        model="demo-t2i", data="shapes", data_subset=12_800, reward_weights={"mse": 1.0}, xi=0.5,
        global_batch_size=64, per_device_train_batch_size=64, max_steps=200, learning_rate=1e-5,
        mixed_precision="no", save_steps=50, preview_steps=50,
        preview_prompts=["a red circle at the top left on a gray background", "two orange circles at the top on a gray background",
                         "one blue star on a black background"],
    ),
}
