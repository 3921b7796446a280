"""Tiny random stand-ins for the paper's models, so the real preset paths (form, CLI, worker) run offline.

`make_standins(root)` writes, under root/checkpoints (point $VAPI_CHECKPOINTS there):
  c2i_XXL_384.pt, c2i_XL_384.pt, t2i_XL_stage1_256.pt   tiny LlamaGen GPTs, upstream {"model": sd} layout
  flan-t5-xl/                                          a tiny random T5 encoder + a real T5 tokenizer
  Janus-Pro-1B/                                        a tiny random transformers Janus + tokenizer
and root/standins.py, a registry plugin ($VAPI_PLUGINS) that keeps each paper preset's name, family, task,
file and tokenizer files but shrinks the architecture to the stand-in's and puts the LlamaGen ones on the
(tiny) demo tokenizer. Nothing else changes: the form, preflight, launcher, worker and trainer are the real ones.
It needs the `tiny_demo` fixture (the demo tokenizer the LlamaGen stand-ins use).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from core.models import checkpoint
from core.models.llamagen import GPTConfig, Transformer
from tests.helpers import TINY_GPT, TINY_VQ

T5_DIM = 16  # the tiny T5's d_model (FLAN-T5-XL: 2048)
T5_SENTENCES = ["a photo of a cat", "a red cube on a blue sphere", "two dogs playing in the park",
                "an astronaut riding a horse", "a bowl of fruit on a wooden table"]
IMAGE = TINY_VQ["image_size"]  # the tiny demo tokenizer: 16 px, 8 x 8 tokens, 32 codes
C2I = {**TINY_GPT, "num_classes": 1000}
T2I = {**TINY_GPT, "model_type": "t2i", "caption_dim": T5_DIM, "cls_token_num": 120, "num_classes": 1000}
LLAMAGEN = {"llamagen-c2i-xxl-384": C2I, "llamagen-c2i-xl-384": C2I, "llamagen-t2i-xl-256": T2I}

PLUGIN = '''"""Test stand-ins: the paper presets' names on tiny random architectures (written by tests/standins.py)."""
import json
from dataclasses import replace

from core.models import registry

for name, gpt in json.loads({spec!r}).items():
    g = registry.GENERATORS[name]
    registry.register_generator(replace(g, size="demo", image_size={image}, tokenizer="demo-vq", overrides=gpt,
                                        description="tiny random stand-in of " + name))
g = registry.GENERATORS["janus-pro-1b"]
registry.register_generator(replace(g, image_size={janus_image}, description="tiny random stand-in of janus-pro-1b"))
'''


def make_tiny_t5(folder: Path) -> Path:
    """A tiny random T5 encoder with a real T5 tokenizer (sentencepiece trained here), saved as a model folder."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(T5_SENTENCES * 4), model_writer=proto, vocab_size=48,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    tok = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], extra_ids=0)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=T5_DIM, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", decoder_start_token_id=0)
    folder.mkdir(parents=True, exist_ok=True)
    T5EncoderModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_standins(root: Path) -> dict[str, str]:
    """Write the stand-ins; returns the environment that makes the app and its workers use them."""
    from tests.test_janus import IMAGE as JANUS_IMAGE, tiny_janus_model, tiny_text_tokenizer

    ckpts = root / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    from core.models import registry

    for name, spec in LLAMAGEN.items():
        torch.manual_seed(0)
        gpt = Transformer(GPTConfig(**spec))
        torch.nn.init.normal_(gpt.output.weight, std=0.02)  # LlamaGen zero-initialises its head: uniform logits
        # whatever the condition, so a stand-in that ignored its caption or class would train the same
        checkpoint.save_upstream(gpt, ckpts / registry.GENERATORS[name].filename)
    make_tiny_t5(ckpts / "flan-t5-xl")
    janus = ckpts / "Janus-Pro-1B"
    tiny_janus_model().save_pretrained(janus)
    tiny_text_tokenizer().save_pretrained(janus)
    plugin = root / "standins.py"
    plugin.write_text(PLUGIN.format(spec=json.dumps(LLAMAGEN), image=IMAGE, janus_image=JANUS_IMAGE))
    return {"VAPI_CHECKPOINTS": str(ckpts), "VAPI_PLUGINS": str(plugin)}


def make_image_folder(root: Path, classes: int = 1000, per_class: int = 1, size: int = 20) -> Path:
    """ImageNet layout (root/<synset>/<image>.png) with `classes` folders of random images."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = (torch.rand(size, size, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(px).save(d / f"{i}.png")
    return root


def make_caption_folder(root: Path, count: int = 16, size: int = 20) -> Path:
    """Images + captions.jsonl ({"image": ..., "caption": ...})."""
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        px = (torch.rand(size, size, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(px).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "caption": T5_SENTENCES[i % len(T5_SENTENCES)]}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root
