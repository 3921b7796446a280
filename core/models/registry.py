"""Named model presets: which architecture, which tokenizer, which file, where it comes from.

A generator preset names a LlamaGen GPT size and resolution, its tokenizer preset, and the
Hugging Face repo + filename of the published weights. Files live flat under `checkpoints/`
(`core.paths.CHECKPOINTS_DIR`); the embedded demo models live in `checkpoints/demo/` and are
committed. `require_files` says which file is missing, where to put it and which command fetches
it, before any work starts.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from core import paths
from core.demo import configs as demo_configs
from core.errors import ConfigError, MissingWeightsError

HF_C2I = "FoundationVision/LlamaGen"
HF_T2I = "peizesun/llamagen_t2i"
HF_JANUS = "deepseek-community/Janus-Pro-1B"  # transformers-format conversion of deepseek-ai/Janus-Pro-1B


class _WeightsLocation:
    """Where a preset's weights live: checkpoints/demo/ when embedded (repo_id None), else checkpoints/."""

    filename: str
    repo_id: Optional[str]
    folder: bool

    @property
    def path(self) -> Path:
        return (paths.DEMO_DIR if self.repo_id is None else paths.CHECKPOINTS_DIR) / self.filename

    @property
    def present(self) -> bool:
        return (self.path / "config.json").is_file() if self.folder else self.path.is_file()


@dataclass(frozen=True)
class TokenizerPreset(_WeightsLocation):
    name: str
    arch: str  # "VQ-16" | "VQ-8" | "demo"
    filename: str
    repo_id: Optional[str]  # None: embedded (committed) weights
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    description: str = ""
    folder: bool = False  # a transformers model folder (Janus) instead of one file


@dataclass(frozen=True)
class GeneratorPreset(_WeightsLocation):
    name: str
    family: str  # "llamagen"
    task: str  # "c2i" | "t2i"
    size: str  # "GPT-B" ... "GPT-3B", or "demo"
    image_size: int
    tokenizer: str  # TokenizerPreset name
    filename: str
    repo_id: Optional[str]
    description: str = ""
    overrides: dict = field(default_factory=dict)  # extra GPTConfig fields (e.g. the demo's sizes)
    folder: bool = False  # a transformers model folder (Janus) instead of one file
    text_encoder: str = "flan-t5-xl"  # LlamaGen T2I's caption features (core.models.text.caption_encoder)

    @property
    def is_demo(self) -> bool:
        """The one answer to "is this the demo?": an embedded demo model (demo-c2i, demo-t2i), its weights committed
        under checkpoints/demo/ and trained on the shapes domain, so the demo evaluator, the shapes reference set
        and prompt adherence apply to it."""
        return self.repo_id is None

    @property
    def demo_sized(self) -> bool:
        """Its architecture is read from `overrides` (size "demo"), not built from a LlamaGen size name, and fits the
        CPU. True for the demo models, and also for a plugin that shrinks a paper preset to tiny sizes (the tests'
        stand-ins), which keeps that preset's name and files and so is not `is_demo`."""
        return self.size == "demo"

    @property
    def num_tokens(self) -> int:
        """N, image tokens per sample (the token grid h*w): the demo's from its config, else a 16x downsample."""
        return int(self.overrides.get("block_size", (self.image_size // 16) ** 2))

    @property
    def caption_encoder(self) -> Optional[str]:
        """The text encoder this preset's captions go through; None for class-conditional presets and for Janus
        (it encodes its own prompts)."""
        return self.text_encoder if self.task == "t2i" and self.family != "janus" else None


TOKENIZERS: dict[str, TokenizerPreset] = {t.name: t for t in [
    TokenizerPreset("vq16-c2i", "VQ-16", "vq_ds16_c2i.pt", HF_C2I, description="LlamaGen VQ-16 (ImageNet), 16x downsample"),
    TokenizerPreset("vq16-t2i", "VQ-16", "vq_ds16_t2i.pt", HF_T2I, description="LlamaGen VQ-16 (T2I data), 16x downsample"),
    TokenizerPreset("demo-vq", "demo", "vq.safetensors", None, description="embedded demo tokenizer (shapes domain)"),
    TokenizerPreset("janus-vq", "janus", "Janus-Pro-1B", HF_JANUS, description="Janus-Pro's VQ (inside the model folder)",
                    folder=True),
]}

GENERATORS: dict[str, GeneratorPreset] = {g.name: g for g in [
    GeneratorPreset("llamagen-c2i-b-256", "llamagen", "c2i", "GPT-B", 256, "vq16-c2i", "c2i_B_256.pt", HF_C2I, "GPT-B 111M, 256 px"),
    GeneratorPreset("llamagen-c2i-b-384", "llamagen", "c2i", "GPT-B", 384, "vq16-c2i", "c2i_B_384.pt", HF_C2I, "GPT-B 111M, 384 px"),
    GeneratorPreset("llamagen-c2i-l-256", "llamagen", "c2i", "GPT-L", 256, "vq16-c2i", "c2i_L_256.pt", HF_C2I, "GPT-L 343M, 256 px"),
    GeneratorPreset("llamagen-c2i-l-384", "llamagen", "c2i", "GPT-L", 384, "vq16-c2i", "c2i_L_384.pt", HF_C2I, "GPT-L 343M, 384 px"),
    GeneratorPreset("llamagen-c2i-xl-384", "llamagen", "c2i", "GPT-XL", 384, "vq16-c2i", "c2i_XL_384.pt", HF_C2I, "GPT-XL 775M, 384 px"),
    GeneratorPreset("llamagen-c2i-xxl-384", "llamagen", "c2i", "GPT-XXL", 384, "vq16-c2i", "c2i_XXL_384.pt", HF_C2I, "GPT-XXL 1.4B, 384 px (the paper's C2I model)"),
    GeneratorPreset("llamagen-c2i-3b-384", "llamagen", "c2i", "GPT-3B", 384, "vq16-c2i", "c2i_3B_384.pt", HF_C2I, "GPT-3B 3.1B, 384 px"),
    GeneratorPreset("llamagen-t2i-xl-256", "llamagen", "t2i", "GPT-XL", 256, "vq16-t2i", "t2i_XL_stage1_256.pt", HF_T2I, "GPT-XL T2I stage 1, 256 px (the paper's T2I model)"),
    GeneratorPreset("llamagen-t2i-xl-512", "llamagen", "t2i", "GPT-XL", 512, "vq16-t2i", "t2i_XL_stage2_512.pt", HF_T2I, "GPT-XL T2I stage 2, 512 px"),
    GeneratorPreset("janus-pro-1b", "janus", "t2i", "Janus-Pro-1B", 384, "janus-vq", "Janus-Pro-1B", HF_JANUS,
                    "Janus-Pro 1B unified model (transformers format), 384 px", folder=True),
]}

DEFAULT_GENERATOR = "demo-c2i"  # the generator a config, a form or a command uses when none is named: the embedded demo


def register_generator(preset: GeneratorPreset) -> None:
    GENERATORS[preset.name] = preset


PLUGINS_ENV = "VAPI_PLUGINS"  # os.pathsep-separated Python files that register presets (private models, test stand-ins)
_loaded_plugins: set[str] = set()
_env_done = ""  # the $VAPI_PLUGINS value whose files are all loaded


def load_plugins(files: Optional[list[str]] = None) -> None:
    """Import each plugin file once (default: the files named by $VAPI_PLUGINS). A plugin calls
    register_generator (or adds to TOKENIZERS), e.g. to put a private fine-tune under a preset name, or a tiny
    random stand-in under a paper preset's name for tests. Workers inherit the variable, so a run launched
    from the UI sees the same presets as the UI."""
    import importlib.util
    import os

    global _env_done
    from_env = files is None
    if from_env:
        value = os.environ.get(PLUGINS_ENV, "")
        if value == _env_done:  # the registry asks on every look-up: no file-system work once these are in
            return
        files = [f for f in value.split(os.pathsep) if f.strip()]
    for f in files:
        path = Path(f).expanduser().resolve()
        if str(path) in _loaded_plugins:
            continue
        if not path.is_file():
            raise ConfigError(PLUGINS_ENV, f"plugin file {path} not found; fix or unset ${PLUGINS_ENV}")
        spec = importlib.util.spec_from_file_location(f"vapi_plugin_{len(_loaded_plugins)}", path)
        module = importlib.util.module_from_spec(spec)
        _loaded_plugins.add(str(path))
        spec.loader.exec_module(module)
    if from_env:
        _env_done = value


def register_demo_presets() -> None:
    """(Re-)register `demo-c2i` and `demo-t2i` from the demo's manifest (`core.demo.configs`: the sizes recorded there, or the
    build's defaults when no demo is built); tests call it again after pointing `paths.DEMO_DIR` elsewhere."""
    cfg = demo_configs.gpt_config()
    register_generator(GeneratorPreset(
        "demo-c2i", "llamagen", "c2i", "demo", demo_configs.vq_config()["image_size"], "demo-vq",
        "gpt_c2i.safetensors", None,
        f"embedded demo: LlamaGen GPT (dim {cfg['dim']} x {cfg['n_layer']} layers) on the 10-class shapes domain, CPU-friendly",
        overrides=cfg))
    t2i = demo_configs.gpt_t2i_config()
    register_generator(GeneratorPreset(
        "demo-t2i", "llamagen", "t2i", "demo", demo_configs.vq_config()["image_size"], "demo-vq",
        "gpt_t2i.safetensors", None,
        f"embedded demo: LlamaGen T2I GPT (dim {t2i['dim']} x {t2i['n_layer']} layers) on shapes-domain captions, "
        f"all-MiniLM-L6-v2 caption features, CPU-friendly",
        overrides=t2i, text_encoder=demo_configs.DEMO_T2I_TEXT_ENCODER))


def _ensure_demo_registered() -> None:
    """The demo presets come from the committed manifest (their sizes are recorded there); plugins after them."""
    if "demo-c2i" not in GENERATORS:
        register_demo_presets()
    load_plugins()


def is_demo_model(name: str) -> bool:
    """Whether `name` is a registered demo model (GeneratorPreset.is_demo); False for a name no preset has."""
    _ensure_demo_registered()
    return name in GENERATORS and GENERATORS[name].is_demo


def get_generator(name: str) -> GeneratorPreset:
    _ensure_demo_registered()
    if name not in GENERATORS:
        raise ConfigError("model", f"unknown model preset {name!r}; known: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]


def get_tokenizer(name: str) -> TokenizerPreset:
    _ensure_demo_registered()
    if name not in TOKENIZERS:
        raise ConfigError("tokenizer", f"unknown tokenizer preset {name!r}; known: {', '.join(sorted(TOKENIZERS))}")
    return TOKENIZERS[name]


def all_generators() -> list[GeneratorPreset]:
    _ensure_demo_registered()
    return list(GENERATORS.values())


def download_hint(filename: str, repo_id: Optional[str]) -> str:
    if repo_id is None:
        return f"{paths.DEMO_DIR / filename} is part of the repository; restore it with `git checkout -- checkpoints/demo` or rebuild with `python -m core demo build`"
    if "." not in filename:  # a model folder
        return (f"download it with `python -m core download {filename}` (or `hf download {repo_id} --local-dir "
                f"{paths.CHECKPOINTS_DIR / filename}` on a machine with internet)")
    url = f"{hub_endpoint()}/{repo_id}/resolve/main/{filename}"
    return (f"download it with `python -m core download {filename.rsplit('.', 1)[0]}` "
            f"or fetch {url} by hand and place it at {paths.CHECKPOINTS_DIR / filename}")


@dataclass(frozen=True)
class WeightsFile:
    """One file (or model folder) a generator preset needs, where it lives and how to get it."""

    role: str  # "generator" | "tokenizer" | "text encoder" (| "LPIPS backbone", core.vapi.fetch)
    name: str  # its name for `python -m core download NAME`
    path: Path  # where it is (or goes)
    present: bool
    hint: str  # how to get it when missing: the download command (or why none fetches it)
    source: Optional[str] = None  # the hub repo id or URL it comes from; None: embedded or installed by pip

    def line(self) -> str:
        return f"{self.role} {self.path} — {self.hint}"


def text_encoder_file(name: str) -> WeightsFile:
    """A T2I preset's text encoder (GeneratorPreset.text_encoder) as a required file, found without loading it:
    FLAN-T5-XL in checkpoints/flan-t5-xl (or the Hugging Face cache), MiniLM from its pip package."""
    from core.models import text

    hub_id = text.TEXT_ENCODERS.get(name)
    if hub_id is None:
        raise ConfigError("text_encoder", f"unknown text encoder {name!r}; known: {', '.join(text.TEXT_ENCODERS)}")
    folder = text.default_local_dir(hub_id)
    try:
        found = text.minilm_folder() if name == "minilm-l6" else text.resolve_pretrained(hub_id, what="T5 text encoder")
    except MissingWeightsError as e:
        if name == "minilm-l6":
            return WeightsFile("text encoder", name, folder, False, str(e))
        return WeightsFile("text encoder", name, folder, False,
                           f"download it with `python -m core download {name}` ({e})", hub_id)
    return WeightsFile("text encoder", name, found, True, "", hub_id if name != "minilm-l6" else None)


def files_of(generator: str) -> list[WeightsFile]:
    """Every weights file a generator preset needs: its generator, tokenizer and (LlamaGen T2I) text encoder."""
    g = get_generator(generator)
    t = get_tokenizer(g.tokenizer)
    out = []
    for role, p in [("generator", g)] + ([("tokenizer", t)] if t.path != g.path else []):  # Janus: one model folder
        name = p.filename if p.folder else p.filename.rsplit(".", 1)[0]
        out.append(WeightsFile(role, name, p.path, p.present, download_hint(p.filename, p.repo_id), p.repo_id))
    if g.caption_encoder is not None:
        out.append(text_encoder_file(g.caption_encoder))
    return out


def require_files(generator: str) -> None:
    """Raise MissingWeightsError naming every missing file of a generator preset: generator, tokenizer, text encoder."""
    missing = [f for f in files_of(generator) if not f.present]
    if missing:
        lines = [f"missing weights for preset {generator!r}:"]
        lines += [f"  {f.line()}" for f in missing]
        raise MissingWeightsError("\n".join(lines))


def find_download(name: str) -> tuple[str, str]:
    """A download name (preset name, or file name with or without .pt) -> (repo_id, filename)."""
    from core.models import text

    _ensure_demo_registered()
    for p in list(GENERATORS.values()) + list(TOKENIZERS.values()):
        if p.repo_id is None:
            continue
        if name in (p.name, p.filename, p.filename.rsplit(".", 1)[0]):
            return p.repo_id, p.filename
    if name in DOWNLOADABLE_TEXT_ENCODERS:
        return text.TEXT_ENCODERS[name], text.default_local_dir(text.TEXT_ENCODERS[name]).name
    known = sorted({p.filename.rsplit(".", 1)[0] for p in list(GENERATORS.values()) + list(TOKENIZERS.values()) if p.repo_id})
    raise ConfigError("name", f"nothing to download called {name!r}; known: {', '.join(known + list(DOWNLOADABLE_TEXT_ENCODERS))}")


DOWNLOADABLE_TEXT_ENCODERS = ("flan-t5-xl",)  # the demo's MiniLM comes with its pip package (requirements.txt)


def hub_endpoint() -> str:
    """The hub downloads go to: $HF_ENDPOINT (a mirror, read as huggingface_hub reads it), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_reachable(endpoint: Optional[str] = None, timeout: float = 3.0) -> bool:
    """False at once under HF_HUB_OFFLINE=1 (huggingface_hub's own switch), else whether a TCP connection to the hub
    endpoint's host and port opens within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlsplit(endpoint or hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def download(name: str, force: bool = False) -> Path:
    """Fetch a published checkpoint (or a text encoder's model folder) into checkpoints/, with huggingface_hub's
    progress bars; an interrupted download resumes (the hub keeps the partial file)."""
    repo_id, filename = find_download(name)
    dest = paths.CHECKPOINTS_DIR / filename
    if name in DOWNLOADABLE_TEXT_ENCODERS:
        present = text_encoder_file(name).present  # every shard, not just config.json
    else:
        present = dest.is_file() or (dest / "config.json").is_file()
    if present and not force:
        return dest
    endpoint = hub_endpoint()
    if not hub_reachable(endpoint):
        by_hand = (f"`hf download {repo_id} --local-dir {dest}`" if "." not in filename else
                   f"{endpoint}/{repo_id}/resolve/main/{filename}")
        raise MissingWeightsError(
            f"cannot reach {urlsplit(endpoint).netloc} to download {filename} (offline?). Fetch {by_hand} on a machine "
            f"with internet and place it at {dest}")
    paths.CHECKPOINTS_DIR.mkdir(parents=True, exist_ok=True)
    if name in DOWNLOADABLE_TEXT_ENCODERS:  # safetensors only (the repo also holds .bin / TF / Flax copies)
        from core.models import text

        return text.resolve_pretrained(repo_id, what=f"text encoder {name}", allow_download=True)
    if "." not in filename:  # a model folder (Janus)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, local_dir=str(dest)))
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_dir=str(paths.CHECKPOINTS_DIR)))
