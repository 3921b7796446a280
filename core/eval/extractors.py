"""Feature extractors by name, and the torch-fidelity route for Inception metrics.

Every extractor maps images [B,3,H,W] in [-1,1] to features [B,D] (float32, on the CPU), and to
logits [B,C] where the network has a classifier head:

- ``inception``: FID's Inception-v3 (TF 2015-12-05 graph, torch-fidelity's port); features pool3
  [B,2048], logits [B,1008] without the bias (what the Inception Score uses).
- ``clip``: transformers CLIPModel (default openai/clip-vit-large-patch14); projected image
  embeddings, L2-normalised; text embeddings too. No logits.
- ``dinov2``: transformers Dinov2Model (default facebook/dinov2-base); CLS token [B,768]. No logits.
- ``demo``: the demo domain's evaluator (`core.demo.evaluator`); its features and class logits.

Which code computes which number:

- `fidelity_metrics` (torch-fidelity's ``calculate_metrics``): Inception FID, IS, precision/recall
  of PNG folders, ``.npz`` batches or Datasets. Its numbers are torch-fidelity's.
- `core.eval.metrics` on features from `extract`: every other case (CLIP / DINOv2 / demo
  features, per-class metrics, the embedding-shift analysis). On Inception features the two agree
  (tested).

Weights: the Inception file is never downloaded implicitly (torch-fidelity's silent download is
bypassed by always handing it the file; `download_inception_weights` fetches it on request).
CLIP / DINOv2 come from a local folder or the Hugging Face cache, and are downloaded into that cache
only when offline mode is off. A missing file raises MissingWeightsError naming the file, the folder
it belongs in and how to get it, when the extractor is built, before any image is processed.
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.checkpoints import file_sha256
from core.errors import CheckpointError, ConfigError, DataError, MissingWeightsError
from core.eval.reference import NpzImageDataset, quantize

# torch-fidelity downloads this file with torch.hub.load_state_dict_from_url, which keeps it in
# <torch hub dir>/checkpoints/<basename of the URL> (torch_fidelity/feature_extractor_inceptionv3.py).
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
# pytorch-fid's name for the same conversion; torch.hub caches it in the same folder. The -6726825d
# suffix (torch.hub's SHA-256 prefix convention) is checked, so only identical bytes are accepted.
INCEPTION_WEIGHTS_ALT_FILE = "pt_inception-2015-12-05-6726825d.pth"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_DINOV2 = "facebook/dinov2-base"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP preprocessing
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)             # DINOv2 preprocessing
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Extracted:
    features: torch.Tensor              # [N, D] float32, CPU
    logits: torch.Tensor | None = None  # [N, C] float32, CPU; None for networks without a head


class FeatureExtractor(ABC):
    """images [B,3,H,W] in [-1,1] -> Extracted(features [B,D], logits [B,C] | None)."""

    name: str = ""
    has_logits: bool = False

    @abstractmethod
    def extract(self, images: torch.Tensor) -> Extracted:
        """One batch; `images` on any device, results on the CPU."""

    @abstractmethod
    def network(self) -> "torch.nn.Module | None":
        """The torch module `to` moves (None: nothing to move)."""

    def to(self, device: str | torch.device) -> FeatureExtractor:
        """Move the network; returns self."""
        self.device = torch.device(device)
        net = self.network()
        if net is not None:
            net.to(self.device)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract(images).features

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if not self.has_logits:
            raise ConfigError("extractor", f"'{self.name}' has no classifier logits; use 'inception' or 'demo'")
        return self.extract(images).logits


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str):
    def deco(factory: Callable[..., FeatureExtractor]):
        if name in EXTRACTORS:
            raise ValueError(f"extractor '{name}' registered twice")
        EXTRACTORS[name] = factory
        return factory
    return deco


def build_extractor(name: str, **options) -> FeatureExtractor:
    """Build a registered extractor: ``build_extractor("clip", name_or_path=..., local_files_only=True)``."""
    if name not in EXTRACTORS:
        raise ConfigError("extractor", f"unknown extractor '{name}'; choose one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**options)


def _check_images(images: torch.Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise DataError(f"images: expected a tensor [B,3,H,W] in [-1,1], got {shape}")
    if not images.dtype.is_floating_point:
        raise DataError(f"images: expected float pixels in [-1,1], got {images.dtype}; "
                        "convert uint8 with images_from_uint8")


def images_from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] (0..255) -> float [B,3,H,W] in [-1,1]; `quantize` maps it back exactly."""
    return pixels.float() / 127.5 - 1.0


def _resize_center_crop(x01: torch.Tensor, size: int) -> torch.Tensor:
    """[B,3,H,W] in [0,1]: bicubic (antialiased) resize of the short side to `size`, then centre crop."""
    h, w = x01.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x01 = F.interpolate(x01, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x01[..., top:top + size, left:left + size].clamp(0.0, 1.0)


def _normalize(x01: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - m) / s


# ---------------------------------------------------------------------------------------------- inception

def inception_weights_dir() -> Path:
    """Where torch-fidelity (torch.hub) keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _check_name_hash(path: Path) -> None:
    """torch.hub convention: a ``-<hex>.`` in the file name is a prefix of the file's SHA-256."""
    m = _HASH_IN_NAME.search(path.name)
    if not m:
        return
    if not file_sha256(path).startswith(m.group(1)):
        raise CheckpointError(f"{path}: SHA-256 does not start with {m.group(1)} as its name says "
                              f"(truncated or different file); delete it and download {INCEPTION_WEIGHTS_URL}")


def find_inception_weights(weights_path: str | Path | None = None) -> Path:
    """The Inception-v3 FID weights file, or MissingWeightsError saying where to put it."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise MissingWeightsError(f"{path}: Inception-v3 FID weights not found; download "
                                      f"{INCEPTION_WEIGHTS_URL} to that path")
        return path
    folder = inception_weights_dir()
    for name in (INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_ALT_FILE):
        if (folder / name).is_file():
            return folder / name
    raise MissingWeightsError(
        f"Inception-v3 FID weights {INCEPTION_WEIGHTS_FILE} not found in {folder} (torch hub cache, "
        f"set by TORCH_HOME). On a machine with internet run: mkdir -p {folder} && "
        f"curl -L -o {folder / INCEPTION_WEIGHTS_FILE} {INCEPTION_WEIGHTS_URL} "
        "(or call core.eval.extractors.download_inception_weights()), or pass weights_path=")


def download_inception_weights(folder: str | Path | None = None) -> Path:
    """Fetch the Inception-v3 FID weights into `folder` (default: where `find_inception_weights` looks).

    The SHA-256 prefix in the file name is checked after the download; without a network this raises
    MissingWeightsError with the URL to fetch by other means.
    """
    folder = Path(folder) if folder is not None else inception_weights_dir()
    dest = folder / INCEPTION_WEIGHTS_FILE
    if dest.is_file():
        _check_name_hash(dest)
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(INCEPTION_WEIGHTS_URL, str(dest), progress=False)
    except OSError as e:  # URLError, connection and DNS failures
        raise MissingWeightsError(f"could not download {INCEPTION_WEIGHTS_URL} ({e}); fetch it on a machine "
                                  f"with internet and copy it to {dest}") from e
    try:
        _check_name_hash(dest)
    except CheckpointError:
        dest.unlink()
        raise
    return dest


def _validated_inception_weights(weights_path: str | Path | None) -> Path:
    path = find_inception_weights(weights_path)
    _check_name_hash(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise CheckpointError(f"{path}: not a plain tensor state dict ({e}); delete it and download "
                              f"{INCEPTION_WEIGHTS_URL}") from e
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise CheckpointError(f"{path}: not Inception-v3 FID weights (no fc.weight); download "
                              f"{INCEPTION_WEIGHTS_URL}")
    return path


class InceptionExtractor(FeatureExtractor):
    """torch-fidelity's Inception-v3 (TF-exact resize to 299, FID weights).

    Images are quantised to uint8 as LlamaGen saves PNGs, so features of a tensor equal torch-fidelity's
    features of its PNG. Logits are the unbiased ones (pool3 @ W) used for the Inception Score.
    """

    name = "inception"
    has_logits = True

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights_path = _validated_inception_weights(weights_path)  # raises before any work
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(self.weights_path))
        except RuntimeError as e:  # load_state_dict: missing/unexpected keys or shapes
            raise CheckpointError(f"{self.weights_path}: does not fit Inception-v3 ({e})") from e
        self.to(device)

    def network(self):
        return self.net

    @torch.no_grad()
    def extract(self, images):
        _check_images(images)
        feats, logits = self.net(quantize(images.to(self.device)))
        return Extracted(feats.float().cpu(), logits.float().cpu())


@register_extractor("inception")
def _build_inception(weights_path: str | Path | None = None, device: str | torch.device = "cpu"):
    return InceptionExtractor(weights_path=weights_path, device=device)


# ------------------------------------------------------------------------------------- transformers models

def _is_path_like(name_or_path: str) -> bool:
    return name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path


def load_pretrained(cls, name_or_path: str | Path, *, local_files_only: bool | None = None,
                    cache_dir: str | Path | None = None, what: str = "model"):
    """``cls.from_pretrained`` from a local folder or a hub id, with MissingWeightsError when absent.

    local_files_only: None follows HF_HUB_OFFLINE; True never touches the network.
    """
    from huggingface_hub import constants

    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists() or _is_path_like(text):
        if not (path / "config.json").is_file():
            raise MissingWeightsError(
                f"{path}: no {what} here (needs config.json and the weights); download it on a machine "
                f"with internet with `hf download <hub id> --local-dir {path}`")
        try:
            return cls.from_pretrained(path, local_files_only=True)
        except OSError as e:
            raise MissingWeightsError(f"{path}: {what} files incomplete ({e}); download the whole "
                                      f"repository with `hf download <hub id> --local-dir {path}`") from e
    offline = constants.HF_HUB_OFFLINE if local_files_only is None else local_files_only
    try:
        return cls.from_pretrained(text, local_files_only=offline, cache_dir=cache_dir)
    except OSError as e:
        cache = cache_dir or constants.HF_HUB_CACHE
        how = "offline mode is on" if offline else f"the hub did not provide it: {str(e).splitlines()[0]}"
        raise MissingWeightsError(
            f"{what} '{text}' is not in the Hugging Face cache {cache} and {how}. On a machine with "
            f"internet run `hf download {text}` (or `hf download {text} --local-dir DIR` and pass DIR)"
        ) from e


class ClipExtractor(FeatureExtractor):
    """CLIP image (and text) embeddings, projected and L2-normalised (normalize=False keeps the norm).

    Preprocessing as CLIP's: short side resized (bicubic) to the vision tower's image size, centre crop,
    OpenAI mean/std.
    """

    name = "clip"
    has_logits = False

    def __init__(self, model, tokenizer=None, *, mean=CLIP_MEAN, std=CLIP_STD, normalize: bool = True,
                 device: str | torch.device = "cpu"):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)
        self.max_text_len = int(model.config.text_config.max_position_embeddings)
        self.mean, self.std, self.normalize = mean, std, normalize
        self.to(device)

    def network(self):
        return self.model

    def _finish(self, out) -> torch.Tensor:
        emb = out if torch.is_tensor(out) else out.pooler_output  # transformers 4 returns the tensor
        emb = emb.float()
        return (F.normalize(emb, dim=-1) if self.normalize else emb).cpu()

    @torch.no_grad()
    def extract(self, images):
        _check_images(images)
        x = images.to(self.device, torch.float32)
        x = _normalize(_resize_center_crop((x + 1) / 2, self.image_size), self.mean, self.std)
        return Extracted(self._finish(self.model.get_image_features(pixel_values=x)))

    @torch.no_grad()
    def text_features_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """input_ids [B,L] long -> [B,D] text embeddings."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.model.get_text_features(input_ids=input_ids.to(self.device),
                                           attention_mask=attention_mask.to(self.device))
        return self._finish(out)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> [B,D] text embeddings (needs the tokenizer)."""
        if self.tokenizer is None:
            raise ConfigError("tokenizer", "this CLIP extractor was built without a tokenizer")
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_text_len,
                             return_tensors="pt")
        return self.text_features_from_ids(tok["input_ids"], tok["attention_mask"])


@register_extractor("clip")
def _build_clip(name_or_path: str | Path = DEFAULT_CLIP, *, model=None, tokenizer=None,
                local_files_only: bool | None = None, cache_dir=None, normalize: bool = True,
                device: str | torch.device = "cpu"):
    """model= takes a ready CLIPModel (tests, custom configs); otherwise it loads `name_or_path`."""
    if model is None:
        from transformers import AutoTokenizer, CLIPModel

        model = load_pretrained(CLIPModel, name_or_path, local_files_only=local_files_only,
                                cache_dir=cache_dir, what="CLIP model")
        if tokenizer is None:
            tokenizer = load_pretrained(AutoTokenizer, name_or_path, local_files_only=local_files_only,
                                        cache_dir=cache_dir, what="CLIP tokenizer")
    return ClipExtractor(model, tokenizer, normalize=normalize, device=device)


class Dinov2Extractor(FeatureExtractor):
    """DINOv2 CLS token after the final layer norm (``pooler_output``).

    Preprocessing as FD_DINOv2 (Stein et al., 2023, dgm-eval): the whole image resized (bicubic) to
    224 x 224, no crop, ImageNet mean/std.
    """

    name = "dinov2"
    has_logits = False

    def __init__(self, model, *, image_size: int = 224, device: str | torch.device = "cpu"):
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.to(device)

    def network(self):
        return self.model

    @torch.no_grad()
    def extract(self, images):
        _check_images(images)
        x = (images.to(self.device, torch.float32) + 1) / 2
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0.0, 1.0)
        out = self.model(pixel_values=_normalize(x, IMAGENET_MEAN, IMAGENET_STD))
        return Extracted(out.pooler_output.float().cpu())


@register_extractor("dinov2")
def _build_dinov2(name_or_path: str | Path = DEFAULT_DINOV2, *, model=None, image_size: int = 224,
                  local_files_only: bool | None = None, cache_dir=None, device: str | torch.device = "cpu"):
    if model is None:
        from transformers import Dinov2Model

        model = load_pretrained(Dinov2Model, name_or_path, local_files_only=local_files_only,
                                cache_dir=cache_dir, what="DINOv2 model")
    return Dinov2Extractor(model, image_size=image_size, device=device)


# ------------------------------------------------------------------------------------------------- demo

class DemoExtractor(FeatureExtractor):
    """The demo domain's evaluator (`core.demo.evaluator.load_evaluator`): features and logits."""

    name = "demo"
    has_logits = True

    def __init__(self, evaluator, device: str | torch.device = "cpu"):
        self.evaluator = evaluator
        self.to(device)

    def network(self):
        return self.evaluator if isinstance(self.evaluator, torch.nn.Module) else None

    @torch.no_grad()
    def extract(self, images):
        _check_images(images)
        x = images.to(self.device, torch.float32)
        return Extracted(self.evaluator.features(x).float().cpu(), self.evaluator.logits(x).float().cpu())


@register_extractor("demo")
def _build_demo(path: str | Path | None = None, device: str | torch.device = "cpu"):
    from core import paths

    path = Path(path) if path is not None else paths.DEMO_DIR / "evaluator.safetensors"
    if not path.is_file():
        raise MissingWeightsError(f"{path}: demo evaluator weights not found; they ship with the "
                                  f"repository in {paths.DEMO_DIR} (restore them with git)")
    from core.demo.evaluator import load_evaluator

    return DemoExtractor(load_evaluator(path), device=device)


# ------------------------------------------------------------------------------------------- extraction

def _batches(images, batch_size: int) -> Iterator[torch.Tensor]:
    """Float [-1,1] batches [b,3,H,W] from a float tensor [N,3,H,W], a uint8 [N,H,W,3] array, an .npz path,
    or a Dataset of uint8 [3,H,W] tensors."""
    if isinstance(images, (str, Path)):
        images = NpzImageDataset(images).images
    if torch.is_tensor(images):
        for s in range(0, images.shape[0], batch_size):
            yield images[s:s + batch_size]
    elif isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"images: numpy input must be uint8 [N,H,W,3], got {images.dtype} {images.shape}")
        for s in range(0, images.shape[0], batch_size):
            chunk = torch.from_numpy(np.array(images[s:s + batch_size]))  # copy: a memmap is read-only
            yield images_from_uint8(chunk.permute(0, 3, 1, 2))
    elif isinstance(images, torch.utils.data.Dataset):
        loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False)
        for batch in loader:
            yield images_from_uint8(batch) if batch.dtype == torch.uint8 else batch
    else:
        raise DataError(f"images: unsupported input {type(images).__name__}; pass a float tensor "
                        "[N,3,H,W], a uint8 array [N,H,W,3], an .npz path or a Dataset")


def extract(extractor: FeatureExtractor, images, batch_size: int = 50) -> Extracted:
    """Features (and logits) of a whole set, batch by batch. See `_batches` for the accepted inputs."""
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    feats, logits = [], []
    for batch in _batches(images, batch_size):
        out = extractor.extract(batch)
        feats.append(out.features)
        if out.logits is not None:
            logits.append(out.logits)
    if not feats:
        raise DataError("images: the set is empty")
    return Extracted(torch.cat(feats), torch.cat(logits) if logits else None)


# ------------------------------------------------------------------------------------ torch-fidelity route

def _fidelity_input(x):
    if isinstance(x, (str, Path)):
        p = Path(x)
        if p.is_dir():
            return str(p)
        if p.suffix == ".npz":
            return NpzImageDataset(p)
        raise DataError(f"{p}: expected a folder of images or an .npz sample batch")
    if isinstance(x, torch.utils.data.Dataset):
        return x
    raise DataError(f"unsupported input {type(x).__name__}: pass a folder, an .npz path or a Dataset of "
                    "uint8 [3,H,W] tensors")


def fidelity_metrics(generated, reference=None, *, fid: bool = True, isc: bool = True, prc: bool = True,
                     weights_path: str | Path | None = None, batch_size: int = 64, isc_splits: int = 10,
                     prc_k: int = 3, cuda: bool | None = None, verbose: bool = False) -> dict[str, float]:
    """Inception FID / IS / precision / recall through ``torch_fidelity.calculate_metrics``.

    generated, reference: a folder of PNG/JPEG images, an ``.npz`` batch (ADM/LlamaGen layout) or a
    Dataset of uint8 [3,H,W] tensors; `reference` is needed for FID and precision/recall.
    Returns the requested subset of {"fid", "is_mean", "is_std", "precision", "recall"}.
    Departs from torch-fidelity's defaults in two places: IS splits are taken in order, without its
    seeded shuffle (as ADM's evaluator and `core.eval.metrics.inception_score`), and its on-disk
    feature cache is off (it unpickles with weights_only=False).
    """
    import torch_fidelity

    if not (fid or isc or prc):
        raise ConfigError("metrics", "ask for at least one of fid, isc, prc")
    if (fid or prc) and reference is None:
        raise ConfigError("reference", "FID and precision/recall need a reference set")
    path = _validated_inception_weights(weights_path)  # before any image is read
    kwargs = dict(
        input1=_fidelity_input(generated), fid=fid, isc=isc, prc=prc, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(path), batch_size=batch_size, isc_splits=isc_splits,
        prc_neighborhood=prc_k, cuda=torch.cuda.is_available() if cuda is None else cuda,
        samples_shuffle=False, cache=False, save_cpu_ram=True, verbose=verbose)
    if reference is not None:
        kwargs["input2"] = _fidelity_input(reference)
    out = torch_fidelity.calculate_metrics(**kwargs)
    names = {"frechet_inception_distance": "fid", "inception_score_mean": "is_mean",
             "inception_score_std": "is_std", "precision": "precision", "recall": "recall"}
    return {names[k]: float(v) for k, v in out.items() if k in names}
