"""Everything a preset needs on disk, as one plan: `python -m core download --preset P`.

A run preset (`llamagen-c2i-xxl`, core.vapi.config) needs its generator's files (generator, tokenizer, the
text encoder of a LlamaGen T2I model: core.models.registry.files_of) and the LPIPS backbone of each LPIPS
term of its reward. A generator preset (`llamagen-c2i-xxl-384`) is read with the paper's reward (LPIPS-VGG).
`plan` says what is there and what would be fetched from where, without touching the network; `fetch`
downloads what is missing (hub files through huggingface_hub, which resumes; the backbone through
core.downloads, which resumes too), refusing before any download when a source is unreachable.
"""
from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Optional

from core.errors import ConfigError, MissingWeightsError
from core.models import registry
from core.models.registry import WeightsFile
from core.vapi import rewards

BACKBONE_URLS = {"vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
                 "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"}  # torchvision's
BACKBONE_NAMES = {"vgg16": "vgg", "alexnet": "alex"}  # `python -m core download vgg16`


def backbone_file(net: str) -> WeightsFile:
    path = rewards.backbone_path(net)
    name = next(k for k, v in BACKBONE_NAMES.items() if v == net)
    return WeightsFile("LPIPS backbone", name, path, path.is_file(),
                       f"download it with `python -m core download {name}` (or fetch {BACKBONE_URLS[net]} into "
                       f"{path.parent}; TORCH_HOME moves it)", BACKBONE_URLS[net])


def plan(preset: str) -> list[WeightsFile]:
    """Every file a run preset (or a generator preset, with the paper's LPIPS-VGG reward) needs, present or not."""
    from core.vapi import config as C

    if preset in C.preset_names():
        values = C.preset_values(preset)
        model, weights = values["model"], values["reward_weights"]
    else:
        try:
            registry.get_generator(preset)
        except ConfigError:
            raise ConfigError("--preset", f"unknown preset {preset!r}; a run preset ({', '.join(C.preset_names())}) "
                                          f"or a model preset (`python -m core info` lists them)") from None
        model, weights = preset, {"lpips": 1.0}
    files = registry.files_of(model)
    nets = sorted({rewards.LPIPS_NETS[k] for k, w in weights.items() if w > 0 and k in rewards.LPIPS_NETS})
    return files + [backbone_file(net) for net in nets]


def part(name: str) -> WeightsFile:
    """One downloadable part by its own name: a checkpoint (`c2i_XXL_384`), `flan-t5-xl`, `vgg16`, `alexnet`."""
    if name in BACKBONE_NAMES:
        return backbone_file(BACKBONE_NAMES[name])
    if name in registry.DOWNLOADABLE_TEXT_ENCODERS:
        return registry.text_encoder_file(name)
    repo_id, filename = registry.find_download(name)
    dest = registry.paths.CHECKPOINTS_DIR / filename
    present = dest.is_file() or (dest / "config.json").is_file()
    return WeightsFile("checkpoint", name, dest, present, registry.download_hint(filename, repo_id), repo_id)


def _hub_host() -> str:
    return urllib.parse.urlparse(registry.hub_endpoint()).hostname  # huggingface.co, or the $HF_ENDPOINT mirror


def _host(source: str) -> str:
    return urllib.parse.urlparse(source).hostname if "://" in source else _hub_host()


def _by_hand(f: WeightsFile) -> str:
    """Where to fetch `f` from by hand: its URL, a hub file's URL at the endpoint, or the command for a hub folder."""
    if "://" in f.source:
        return f.source
    if "." in f.path.name:
        return f"{registry.hub_endpoint()}/{f.source}/resolve/main/{f.path.name}"
    return f"`hf download {f.source} --local-dir {f.path}`"


def _reachable(host: str, timeout: float = 3.0) -> bool:
    if host == _hub_host():
        return registry.hub_reachable(timeout=timeout)
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Step:
    file: WeightsFile
    action: str  # "fetch" | "skip" (present) | "cannot" (not published: the hint says how to get it)

    def line(self) -> str:
        f = self.file
        if self.action == "fetch":
            return f"fetch  {f.role:15s} {f.name:20s} {f.source} -> {f.path}"
        if self.action == "skip":
            return f"skip   {f.role:15s} {f.name:20s} present at {f.path}"
        return f"cannot {f.role:15s} {f.name:20s} {f.path}: {f.hint}"


def steps(files: list[WeightsFile], force: bool = False) -> list[Step]:
    out = []
    for f in files:
        if f.present and not force:
            out.append(Step(f, "skip"))
        elif f.source is None:
            out.append(Step(f, "cannot"))
        else:
            out.append(Step(f, "fetch"))
    return out


def fetch(files: list[WeightsFile], force: bool = False, say: Callable[[str], None] = print,
          reachable: Optional[Callable[[str], bool]] = None) -> list[Step]:
    """Download every missing file of `files` (all of them with `force`), saying what it skips. Before any
    download, a MissingWeightsError when a source is unreachable, listing every file to fetch by hand."""
    todo = steps(files, force)
    reachable = reachable or _reachable
    hosts = {h: reachable(h) for h in sorted({_host(s.file.source) for s in todo if s.action == "fetch"})}
    offline = [s for s in todo if s.action == "fetch" and not hosts[_host(s.file.source)]]
    if offline:
        lines = [f"cannot reach {', '.join(h for h, ok in hosts.items() if not ok)} (offline?); nothing was downloaded. "
                 f"On a machine with internet, get:"]
        lines += [f"  {s.file.role} {s.file.name}: {_by_hand(s.file)} -> {s.file.path}" for s in todo if s.action == "fetch"]
        raise MissingWeightsError("\n".join(lines))
    for s in todo:
        say(s.line())
        if s.action != "fetch":
            continue
        if s.file.role == "LPIPS backbone":
            from core.downloads import fetch_url

            fetch_url(s.file.source, s.file.path)
        else:
            registry.download(s.file.name, force=force)
    return todo
