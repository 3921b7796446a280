"""Pixel reconstruction rewards (paper Eq. 10): plain functions registered by name.

Every reward function has one signature:

    fn(pred: Tensor [M, 3, H, W], ref: Reference, item: Tensor [M] long) -> Tensor [M]

`pred` are decoded samples, `item[m]` says which ground-truth image of `ref` sample m belongs to,
and the result is a per-sample DISTANCE (lower is better). The step turns the weighted sum into
a reward r = -sum_k w_k d_k. Ground-truth-side work (e.g. LPIPS features of the real images) is
cached on the Reference, so it is computed once per image, not once per sample.

Registered: "mse", "l1", "lpips" (VGG, as the paper and the authors' code), "lpips-alex".
LPIPS needs torchvision's backbone weights on disk; `check_available` says which file is missing
and where it goes, before a run starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from core.errors import MissingWeightsError


class Reference:
    """Ground-truth images of a batch [B, 3, H, W] in [-1, 1], the run's tokenizer (for rewards that
    use its networks) and a per-reward cache of the images' features."""

    def __init__(self, images: Tensor, tokenizer=None):
        self.images = images
        self.tokenizer = tokenizer
        self._cache: dict = {}

    def cached(self, key, compute: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


RewardFn = Callable[[Tensor, Reference, Tensor], Tensor]
REWARDS: dict[str, RewardFn] = {}


def register(name: str):
    def deco(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return deco


@register("mse")
def mse(pred: Tensor, ref: Reference, item: Tensor) -> Tensor:
    """Mean squared error per sample over pixels, images in [-1, 1]."""
    return (pred.float() - ref.images[item].float()).pow(2).mean(dim=(1, 2, 3))


@register("l1")
def l1(pred: Tensor, ref: Reference, item: Tensor) -> Tensor:
    return (pred.float() - ref.images[item].float()).abs().mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------- LPIPS
BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}


def backbone_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


class LPIPSFeatures(nn.Module):
    """LPIPS (Zhang et al. 2018, the `lpips` package's v0.1 linear heads) split into a feature pass
    and a distance, so reference features are computed once. distance(features(a), features(b))
    equals lpips.LPIPS(net)(a, b) (tested). Differentiable w.r.t. the images (the STE and decoder
    baselines back-propagate through it); the network's own weights are frozen."""

    def __init__(self, net: str = "vgg", pretrained_backbone: bool = True):
        super().__init__()
        import lpips

        self.inner = lpips.LPIPS(net=net, pnet_rand=not pretrained_backbone, verbose=False).eval()
        self.inner.requires_grad_(False)

    def features(self, x: Tensor) -> list[Tensor]:
        import lpips

        outs = self.inner.net.forward(self.inner.scaling_layer(x.float()))
        return [lpips.normalize_tensor(o) for o in outs]

    def distance(self, fa: list[Tensor], fb: list[Tensor]) -> Tensor:
        total = 0
        for lin, a, b in zip(self.inner.lins, fa, fb):
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))
        return total.view(-1)  # [M]


_LPIPS: dict[tuple[str, str], LPIPSFeatures] = {}


def load_lpips(net: str, device: torch.device) -> LPIPSFeatures:
    """The LPIPS network for `net` on `device`, loaded once per process (read-only afterwards)."""
    key = (net, str(device))
    if key not in _LPIPS:
        check_backbone(net)
        _LPIPS[key] = LPIPSFeatures(net).to(device)
    return _LPIPS[key]


def check_backbone(net: str) -> None:
    p = backbone_path(net)
    if not p.is_file():
        raise MissingWeightsError(
            f"LPIPS ({net}) needs torchvision's pretrained backbone {p.name}, not found at {p}. On a machine with "
            f"internet run `python -c \"import lpips; lpips.LPIPS(net='{net}')\"` (it downloads the file there), or copy "
            f"{p.name} into {p.parent} (TORCH_HOME moves it). Offline, drop the LPIPS term: --set reward_weights='{{\"mse\": 1}}'.")


def _lpips(net: str, pred: Tensor, ref: Reference, item: Tensor) -> Tensor:
    model = load_lpips(net, pred.device)
    ref_feats = ref.cached(("lpips", net), lambda: [f.detach() for f in model.features(ref.images)])
    pred_feats = model.features(pred)
    return model.distance(pred_feats, [f[item] for f in ref_feats])


@register("lpips")
def lpips_vgg(pred: Tensor, ref: Reference, item: Tensor) -> Tensor:
    """LPIPS with the VGG backbone (the paper's and the authors' perceptual term)."""
    return _lpips("vgg", pred, ref, item)


@register("lpips-alex")
def lpips_alex(pred: Tensor, ref: Reference, item: Tensor) -> Tensor:
    return _lpips("alex", pred, ref, item)


def encoder_features(tokenizer, x: Tensor) -> list[Tensor]:
    """Unit-normalised feature maps of a LlamaGen VQ encoder at every resolution (+ the middle block)."""
    import lpips

    enc = tokenizer.encoder
    h = enc.conv_in(x.float())
    feats = []
    for i, blk in enumerate(enc.conv_blocks):
        for j in range(enc.num_res_blocks):
            h = blk.res[j](h)
            if len(blk.attn):
                h = blk.attn[j](h)
        feats.append(lpips.normalize_tensor(h))
        if i != enc.num_resolutions - 1:
            h = blk.downsample(h)
    for m in enc.mid:
        h = m(h)
    feats.append(lpips.normalize_tensor(h))
    return feats


@register("encoder")
def encoder_distance(pred: Tensor, ref: Reference, item: Tensor) -> Tensor:
    """A perceptual distance that needs no external weights: LPIPS's recipe (unit-normalised feature
    maps, squared differences, spatial mean; here an unweighted channel mean and a mean over levels)
    on the frozen tokenizer's own encoder. Usable offline, e.g. for the demo; it is not LPIPS."""
    tok = ref.tokenizer
    if tok is None or not hasattr(tok, "encoder") or not hasattr(tok.encoder, "conv_blocks"):
        raise ValueError("the 'encoder' reward needs a LlamaGen VQ tokenizer on the Reference")
    ref_feats = ref.cached("encoder", lambda: [f.detach() for f in encoder_features(tok, ref.images)])
    pred_feats = encoder_features(tok, pred)
    total = 0
    for a, b in zip(pred_feats, ref_feats):
        total = total + ((a - b[item]) ** 2).mean(dim=(1, 2, 3))
    return total / len(pred_feats)


LPIPS_NETS = {"lpips": "vgg", "lpips-alex": "alex"}


def check_available(weights: dict[str, float]) -> None:
    """Raise MissingWeightsError before any work if a weighted reward's network is absent."""
    for name, w in weights.items():
        if w > 0 and name in LPIPS_NETS:
            check_backbone(LPIPS_NETS[name])


def score(pred: Tensor, ref: Reference, item: Tensor, weights: dict[str, float]) -> dict[str, Tensor]:
    """Distances of every weighted term for a chunk of samples: {name: [M]}."""
    return {name: REWARDS[name](pred, ref, item) for name, w in weights.items() if w > 0}


def patch_mse(pred: Tensor, ref: Reference, item: Tensor, grid: int) -> Tensor:
    """Per-token distances for the per-token reward extension: the pixel MSE of each token's patch, the image
    cut into a grid x grid raster in the tokens' order. -> [M, grid * grid]; their mean is `mse`."""
    err = (pred.float() - ref.images[item].float()).pow(2).mean(dim=1, keepdim=True)  # [M, 1, H, W]
    return torch.nn.functional.adaptive_avg_pool2d(err, grid).flatten(1)


def combine(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """r = -sum_k w_k d_k, per sample."""
    total = None
    for name, d in terms.items():
        total = weights[name] * d if total is None else total + weights[name] * d
    return -total
