"""Peak resident memory of a steady-state VA-π micro-batch step on the CPU (the real objective, backward and AdamW
step, twice: the second beside the AdamW states the first created), above
the memory held before it: `python -m tests.measure_step_memory '{"dim": 384, ...}'` prints {"measured": bytes}.
Linux only: the peak (VmHWM) is reset through /proc/self/clear_refs just before the step, in a fresh process."""
from __future__ import annotations

import gc
import json
import os
import sys

import torch


def main(spec: dict) -> int:
    from core.models import llamagen, vq
    from core.vapi import objective
    from core.vapi.config import resolve
    from core.vapi.objective import Batch

    torch.set_num_threads(1)
    gen = llamagen.Transformer(llamagen.GPTConfig(dim=spec["dim"], n_layer=spec["layers"], n_head=4, vocab_size=spec["vocab"],
                                                  num_classes=10, block_size=spec["grid"] ** 2, class_dropout_prob=0.1)).train()
    tok = vq.VQModel(vq.VQConfig(codebook_size=spec["vocab"], codebook_embed_dim=8, ch=32, encoder_ch_mult=[1, 2, 2],
                                 decoder_ch_mult=[1, 2, 2], z_channels=32, num_res_blocks=1,
                                 image_size=spec["grid"] * 4)).eval()
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-6)
    b = spec["b"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, spec["grid"] * 4, spec["grid"] * 4, generator=g) * 2 - 1
    with torch.no_grad():
        batch = Batch(images=images, cond=torch.randint(0, 10, (b,), generator=g), tokens=tok.encode(images))
    cfg = resolve(None, {"num_generations": spec["G"], "global_batch_size": b, "per_device_train_batch_size": b,
                         "reward_chunk_size": spec["chunk"], "reward_weights": {"mse": 1.0},
                         "gradient_checkpointing": spec["ckpt"]})
    gen.gradient_checkpointing = spec["ckpt"]
    gc.collect()
    base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident set size (VmHWM) starts again from the current one
    for step in range(2):  # the second step runs with the AdamW states the first one created, as every later one
        out = objective.compute_loss(gen, tok, batch, cfg, xi=0.0, generator=torch.Generator().manual_seed(1 + step))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del out
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"measured": peak - base, "params": sum(p.numel() for p in gen.parameters()),
                      "rollout_first": cfg.rollout_mode == "train" and objective.has_dropout(gen)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(json.loads(sys.argv[1])))
