"""The embedded demo models' configs and manifest: a small LlamaGen VQ tokenizer and a small
class-conditional LlamaGen GPT for the procedural shapes domain (`core.demo.shapes`). Same classes as
the real models, small configs. Their weights and `manifest.json` (configs, recipe, sha256, measured
metrics) live in `checkpoints/demo/` and are committed; `python -m core demo build` reproduces them.

Models layer: imports only `core.paths`. The model registry reads these configs to make the
`demo-vq` / `demo-c2i` / `demo-t2i` presets (`core.models.registry.register_demo_presets`); nothing here imports
the registry back.
"""
from __future__ import annotations

import json
from pathlib import Path

from core import paths

MANIFEST = "manifest.json"

# Defaults of the build; the manifest of a built demo records what was actually used.
DEMO_IMAGE_SIZE = 32
DEMO_VQ = dict(codebook_size=512, codebook_embed_dim=8, ch=32, encoder_ch_mult=[1, 2, 2], decoder_ch_mult=[1, 2, 2],
               z_channels=64, num_res_blocks=1, image_size=DEMO_IMAGE_SIZE)
DEMO_GPT = dict(dim=128, n_layer=6, n_head=4, multiple_of=64, vocab_size=512, num_classes=10, cls_token_num=1,
                block_size=64, class_dropout_prob=0.1, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
                model_type="c2i")
# The demo T2I: the same trunk, conditioned on all-MiniLM-L6-v2 caption features (384-d, 20 tokens, left-padded)
# through LlamaGen's caption embedder instead of a class embedding; initialised from the demo C2I's trunk.
DEMO_GPT_T2I = dict(DEMO_GPT, model_type="t2i", caption_dim=384, cls_token_num=20, class_dropout_prob=0.1)
DEMO_T2I_TEXT_ENCODER = "minilm-l6"  # core.models.text.caption_encoder name


def manifest_path(demo_dir: Path | None = None) -> Path:
    return (demo_dir or paths.DEMO_DIR) / MANIFEST


def read_manifest(demo_dir: Path | None = None) -> dict | None:
    p = manifest_path(demo_dir)
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def vq_config(demo_dir: Path | None = None) -> dict:
    m = read_manifest(demo_dir)
    return dict(m["tokenizer"]["config"]) if m else dict(DEMO_VQ)


def gpt_config(demo_dir: Path | None = None) -> dict:
    m = read_manifest(demo_dir)
    return dict(m["generator"]["config"]) if m else dict(DEMO_GPT)


def gpt_t2i_config(demo_dir: Path | None = None) -> dict:
    m = read_manifest(demo_dir)
    return dict(m["generator_t2i"]["config"]) if m and "generator_t2i" in m else dict(DEMO_GPT_T2I)
