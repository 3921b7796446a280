"""The settings of the evaluation jobs (`EvalConfig`: one model's FID/IS/precision/recall/CLIP;
`EmbeddingConfig`: the embedding shift of base vs aligned) and the input helpers they validate with.
Each is a dataclass; every check names its field."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from core import configmeta
from core.configmeta import MAX_JOB_STEPS, setting
from core.demo.prompts import CATEGORIES as PROMPT_ATTRIBUTES  # what a demo prompt names (color_by)
from core.errors import ConfigError, DataError
from core.models.registry import DEFAULT_GENERATOR

if TYPE_CHECKING:  # sampling imports torch: the CLI builds its options from these configs without it
    from core.eval.sampling import SamplingSpec

METRICS = ("fid", "isc", "prc", "clip", "adherence")
NO_FEATURES = ("clip", "adherence")  # metrics that read no extractor features
NO_LOGITS = ("clip", "dinov2")  # extractors without a classifier head: no Inception Score
DEFAULT_CLIP_TEMPLATE = "a photo of a {}"


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: ``.txt`` one per line, or ``.jsonl`` objects with "prompt", "caption" or "text"."""
    from core.data.files import not_regular, open_regular

    path = Path(path)
    why = not_regular(path)
    if why is not None:
        raise DataError(f"{path}: prompt file not found" if why == "does not exist" else
                        f"{path} {why}, not a prompt file; pass a regular .txt or .jsonl file")
    with open_regular(path) as f:
        lines = [line.strip() for line in f.read().decode("utf-8").splitlines()]
    if path.suffix == ".jsonl":
        prompts = []
        for lineno, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            text = next((row.get(k) for k in ("prompt", "caption", "text") if isinstance(row, dict)
                         and isinstance(row.get(k), str)), None)
            if not text:
                raise DataError(f'{path}:{lineno}: needs a string "prompt" (or "caption" / "text")')
            prompts.append(text)
    else:
        prompts = [line for line in lines if line]
    if not prompts:
        raise DataError(f"{path}: no prompts in the file")
    return prompts



def num_classes_of(model: str) -> Optional[int]:
    """Class count of a class-conditional preset (from its config, without building it); None for t2i."""
    from core.models import registry

    preset = registry.get_generator(model)
    return int(preset.overrides.get("num_classes", 1000)) if preset.task == "c2i" else None



def class_ids_of(model: str, classes: Optional[Sequence], field_name: str = "classes") -> Optional[list[int]]:
    """Class ids from ids or names ("golden retriever", "207") for a preset; None stays None."""
    from core.data.classes import class_names_for, resolve_classes

    if classes is None:
        return None
    return resolve_classes(classes, class_names_for(num_classes_of(model) or 0), field_name)


WEIGHTS_HELP = "a weights file, a checkpoint folder, a run folder (its last checkpoint) or a run id [@STEP]"
PRECISIONS = ("fp32", "bf16")
PROJECTIONS = ("tsne", "umap")  # core.eval.embeddings.METHODS
SAMPLING_FIELDS = ("cfg_scale", "temperature", "top_k", "top_p", "seed", "batch_size", "precision", "device", "compile")
COMPILE_MODES = ("auto", "on", "off")  # core.models.generate.COMPILE_MODES


@dataclass
class JobSettings:
    """The sampling and measuring settings both jobs have, each with one default and one help text. Their
    fields come first in EvalConfig and EmbeddingConfig (keyword construction only)."""

    cfg_scale: float = setting(1.0, group="sampling", help="classifier-free guidance scale (1 = off). Table 2: w/o cfg 1.0, w/ cfg 2.0 (LlamaGen-XL) or 1.75 (XXL)")
    temperature: float = setting(1.0, group="sampling", help="sampling temperature, App. D (0 = greedy)")
    top_k: int = setting(0, group="sampling", help="top-k sampling, App. D (0 = off)")
    top_p: float = setting(1.0, group="sampling", help="nucleus sampling, App. D (1 = off)")
    seed: int = setting(0, group="sampling", help="first sampling seed: sample i uses a seed derived from (seed, i), so a rerun draws the same images")
    num_seeds: int = setting(3, group="sampling", help="sampling seeds seed, seed+1, ...: numbers are mean ± std over them, and a change is called better/worse only when its 95% interval excludes zero (at least 3 for a spread)")
    batch_size: int = setting(32, group="sampling", help="samples per batch; part of a sample folder's identity (a folder resumes only with the same)")
    image_size: Optional[int] = setting(None, group="sampling", help="resize samples to this side before measuring (Table 2: 256 for 384 px models); None: native size")
    precision: str = setting("fp32", group="sampling", choices=PRECISIONS, help="generator dtype while sampling (LlamaGen samples in bf16)")
    device: str = setting("auto", group="sampling", help="auto, cpu, cuda or cuda:N (auto under accelerate launch)")
    compile: str = setting("auto", group="sampling", choices=COMPILE_MODES, help="torch.compile the sampler's decode step (same samples either way): auto = on a GPU with triton for 64+ samples, off on a CPU where it does not pay")
    extractor_path: Optional[str] = setting(None, group="measure", help="the extractor's weights: Inception .pth file, demo evaluator .safetensors, CLIP/DINOv2 folder or hub id; None: the default location")
    k: int = setting(3, group="measure", help="precision/recall neighbourhood (Kynkäänniemi et al. 2019; ADM's evaluator)")


@dataclass
class EvalConfig(JobSettings):
    """One model, one sampling setting, several metrics. Defaults: Table 2's protocol w/o CFG."""

    model: str = setting(DEFAULT_GENERATOR, group="model", help="generator preset (python -m core info lists them)")
    weights: Optional[str] = setting(None, group="model", help=f"generator weights: {WEIGHTS_HELP}; None: the preset's own weights (the base model)")
    label: str = setting("", group="model", help="free text shown with the results and in `eval summary`, e.g. 'aligned, step 100'")
    num_samples: int = setting(50_000, group="sampling", help="images to sample per seed; Table 2: 50000 (50 per ImageNet class)",
                               maximum=MAX_JOB_STEPS, why="more than this workbench samples as one job; split it")
    classes: Optional[list] = setting(None, group="sampling", help="class-conditional: class ids or names to cycle through; None: all classes")
    prompts: Optional[list[str]] = setting(None, group="sampling", help="text-to-image: prompts to cycle through")
    prompts_file: Optional[str] = setting(None, group="sampling", help="text-to-image: a .txt (one per line) or .jsonl prompt file, instead of prompts")
    metrics: list[str] = setting(default_factory=lambda: ["fid", "isc", "prc"], group="measure", choices=METRICS, help="FID/FD and precision/recall need a reference set; IS needs class logits (demo or Inception); clip is the CLIP score; adherence is prompt adherence per category (demo-t2i, read by the demo evaluator)")
    extractor: str = setting("inception", group="measure", help="features for FID/IS/precision/recall: inception (FID proper), dinov2, clip or demo (the demo evaluator)")
    reference: Optional[str] = setting(None, group="measure", help="reference set: an .npz batch (ADM layout, e.g. VIRTUAL_imagenet256_labeled.npz), an image folder, or 'shapes[:split]' for the demo domain")
    reference_count: Optional[int] = setting(None, group="measure", help="images taken from a folder / shapes reference (None: num_samples)")
    clip_model: Optional[str] = setting(None, group="measure", help="CLIP folder or hub id for the clip metric (None: openai/clip-vit-large-patch14)")
    clip_template: str = setting(DEFAULT_CLIP_TEMPLATE, group="measure", help="class-conditional: the CLIP text of a class, {} = its name")
    isc_splits: int = setting(10, group="measure", help="Inception Score splits (improved-GAN, ADM, torch-fidelity)")

    def __post_init__(self):
        from core.eval.extractors import EXTRACTORS
        from core.models import registry

        registry.get_generator(self.model)  # ConfigError naming "model" for an unknown preset
        if isinstance(self.metrics, str):
            self.metrics = [self.metrics]
        self.metrics = list(self.metrics)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise ConfigError("metrics", f"choose one or more of {', '.join(METRICS)} (each once), got {self.metrics}")
        for name in ("num_samples", "num_seeds", "k", "isc_splits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if self.reference_count is not None and (isinstance(self.reference_count, bool)
                                                 or not isinstance(self.reference_count, int) or self.reference_count < 2):
            raise ConfigError("reference_count", f"must be an integer >= 2, got {self.reference_count!r}")
        needs_features = [m for m in self.metrics if m not in NO_FEATURES]
        if needs_features and self.extractor not in EXTRACTORS:
            raise ConfigError("extractor", f"unknown extractor {self.extractor!r}; choose one of {sorted(EXTRACTORS)}")
        if ("fid" in self.metrics or "prc" in self.metrics) and not self.reference:
            raise ConfigError("reference", "FID and precision/recall need a reference set: an .npz batch, an image "
                                           "folder, or 'shapes' for the demo")
        if "isc" in self.metrics and self.extractor in NO_LOGITS:
            raise ConfigError("metrics", f"the Inception Score needs class logits, which '{self.extractor}' has not; "
                                         "drop isc or use extractor inception (or demo)")
        if "isc" in self.metrics and self.isc_splits > self.num_samples:
            raise ConfigError("isc_splits", f"{self.isc_splits} splits need at least as many samples, got {self.num_samples}")
        if ("fid" in self.metrics or "prc" in self.metrics) and self.num_samples <= self.k:
            raise ConfigError("num_samples", f"must be more than k={self.k} for FID and precision/recall")
        if self.prompts is not None and self.prompts_file is not None:
            raise ConfigError("prompts_file", "give prompts or a prompts_file, not both")
        if "{}" not in self.clip_template:
            raise ConfigError("clip_template", f"must contain {{}} where the class name goes, got {self.clip_template!r}")
        self.sampling_spec(None, self.prompts)  # sampling fields are checked where they are defined

    @classmethod
    def from_dict(cls, d: dict) -> EvalConfig:
        """From a run's config.json (its "entry" key is ignored); unknown keys are an error."""
        return configmeta.from_dict(cls, d, "an evaluation", ignore=("entry",))

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_prompts(self) -> Optional[list[str]]:
        return read_prompts(self.prompts_file) if self.prompts_file is not None else self.prompts

    def sampling_spec(self, weights: Optional[str], prompts: Optional[Sequence[str]]) -> SamplingSpec:
        from core.eval.sampling import SamplingSpec

        classes = class_ids_of(self.model, self.classes) if self.classes is not None else None
        return SamplingSpec(model=self.model, weights=weights, cfg_scale=self.cfg_scale, temperature=self.temperature,
                            top_k=self.top_k, top_p=self.top_p, seed=self.seed, batch_size=self.batch_size,
                            image_size=self.image_size, precision=self.precision,
                            classes=tuple(classes) if classes is not None else None,
                            prompts=tuple(prompts) if prompts is not None else None)

    def seeds(self) -> list[int]:
        return [self.seed + j for j in range(self.num_seeds)]

    @property
    def total_samples(self) -> int:
        return self.num_samples * self.num_seeds

    def setting(self, spec: SamplingSpec) -> dict:
        """What the numbers depend on besides the model: sampling (minus model and weights) and how they
        are measured. Which metrics were asked for is not part of it, so an evaluation of FID alone
        pairs with one of FID and IS in the summary; nor is the batch size (float rounding only)."""
        sampling = spec.to_dict()
        for key in ("model", "weights", "batch_size"):  # batch_size moves pixels by float rounding only
            sampling.pop(key)
        if sampling["prompts"] is not None:
            text = "\n".join(sampling["prompts"]).encode("utf-8")
            sampling["prompts"] = {"count": len(spec.prompts), "sha256": hashlib.sha256(text).hexdigest()}
        return {**sampling, "num_samples": self.num_samples, "num_seeds": self.num_seeds, "extractor": self.extractor,
                "extractor_path": self.extractor_path, "reference": self.reference,
                "reference_count": self.reference_count, "k": self.k, "isc_splits": self.isc_splits,
                "clip_model": self.clip_model, "clip_template": self.clip_template}



@dataclass
class EmbeddingConfig(JobSettings):
    """Real vs base vs aligned samples of some classes in one feature space (Fig. 1b-c)."""

    model: str = setting(DEFAULT_GENERATOR, group="model", help="class-conditional generator preset, or demo-t2i")
    base_weights: Optional[str] = setting(None, group="model", help=f"the base model: {WEIGHTS_HELP}; None: the preset's weights")
    aligned_weights: Optional[str] = setting(None, group="model", help=f"the aligned model (required): {WEIGHTS_HELP}")
    classes: Optional[list] = setting(None, group="sampling", help="class ids or names; None: the first 10 classes")
    per_class: int = setting(100, group="sampling", help="samples per class, set and seed, more than k (100 with the 10 demo classes: the same 1000 samples per seed as an evaluation of 1000 samples)",
                             maximum=MAX_JOB_STEPS, why="more than this workbench samples as one job")
    real: str = setting("shapes", group="measure", help="real images: 'shapes[:split]' (demo; default split reference) or an ImageNet-layout folder")
    extractor: Optional[str] = setting(None, group="measure", help="the feature space: demo, clip, dinov2 or inception; None: demo for the demo preset, inception otherwise")
    projections: list[str] = setting(default_factory=lambda: list(PROJECTIONS), group="measure", choices=PROJECTIONS, help="2-D maps fitted on all three sets (real, base, aligned) together")
    max_points_per_set: int = setting(2000, group="measure", help="points per set on the maps (the numbers use all)")
    color_by: str = setting("shape", group="measure", choices=PROMPT_ATTRIBUTES, help="demo-t2i: the prompt attribute that groups and colours the points (samples are prompted with the real scenes' captions)")

    @property
    def text_conditional(self) -> bool:
        from core.models import registry

        return registry.get_generator(self.model).task != "c2i"

    def prompt_set(self) -> list[str]:
        """demo-t2i: the canonical captions of reference scenes 0 .. per_class x 10 - 1, one sample each per seed
        (the real set is those scenes)."""
        from core.demo import prompts as P

        return [P.caption_of(P.scene_attrs("reference", i)) for i in range(self.samples_per_seed)]

    def group_names(self) -> list[str]:
        """The values of `color_by` (demo-t2i) in group-id order; the class names otherwise."""
        from core.data.classes import class_names_for
        from core.demo.prompts import VALUES

        if not self.text_conditional:
            return class_names_for(num_classes_of(self.model) or 0)
        return [str(v) for v in VALUES[self.color_by]]

    def group_of_prompt(self, prompt: str) -> int:
        from core.demo.prompts import parse_prompt

        return self.group_names().index(str(parse_prompt(prompt)[self.color_by]))

    def __post_init__(self):
        from core.eval.embeddings import METHODS
        from core.eval.extractors import EXTRACTORS
        from core.models import registry

        if not self.aligned_weights:
            raise ConfigError("aligned_weights", "name the aligned model: a checkpoint file or folder, a run folder or a run id")
        if isinstance(self.per_class, bool) or not isinstance(self.per_class, int) or self.per_class <= self.k:
            raise ConfigError("per_class", f"must be an integer > k={self.k} (per-class numbers need it), got {self.per_class!r}")
        if isinstance(self.num_seeds, bool) or not isinstance(self.num_seeds, int) or self.num_seeds < 1:
            raise ConfigError("num_seeds", f"must be a positive integer, got {self.num_seeds!r}")
        if self.extractor is None:
            self.extractor = "demo" if registry.get_generator(self.model).is_demo else "inception"
        if self.extractor not in EXTRACTORS:
            raise ConfigError("extractor", f"unknown extractor {self.extractor!r}; choose one of {sorted(EXTRACTORS)}")
        self.projections = [self.projections] if isinstance(self.projections, str) else list(self.projections)
        bad = [p for p in self.projections if p not in METHODS]
        if bad:
            raise ConfigError("projections", f"unknown projection {bad[0]!r}; choose from {', '.join(METHODS)}")
        from core.eval.inputs import shapes_split

        preset = registry.get_generator(self.model)
        if self.color_by not in PROMPT_ATTRIBUTES:
            raise ConfigError("color_by", f"one of {', '.join(PROMPT_ATTRIBUTES)}, got {self.color_by!r}")
        if preset.task != "c2i" and not preset.is_demo:
            raise ConfigError("model", f"{self.model} is text-conditional; the embedding shift compares classes, or the "
                                       "demo T2I's prompt attributes (use a class-conditional preset or demo-t2i)")
        if preset.task != "c2i" and self.classes is not None:
            raise ConfigError("classes", f"{self.model} is prompted with the real scenes' captions: group the points "
                                         "with color_by (shape, color, count, position, background), not classes")
        if preset.task != "c2i" and shapes_split(self.real, "real") is None:
            raise ConfigError("real", f"{self.model}: the real images are the demo's scenes, 'shapes[:split]'")
        self.sampling_spec(None)

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddingConfig:
        """From a run's config.json (its "entry" key is ignored); unknown keys are an error."""
        return configmeta.from_dict(cls, d, "an embedding comparison", ignore=("entry",))

    def to_dict(self) -> dict:
        return asdict(self)

    def class_ids(self) -> list[int]:
        """The classes compared (class-conditional), or the group ids of `color_by`'s values (demo-t2i)."""
        if self.text_conditional:
            return list(range(len(self.group_names())))
        ids = class_ids_of(self.model, self.classes)
        if ids is None:
            return list(range(min(10, num_classes_of(self.model) or 0)))
        twice = sorted({c for c in ids if ids.count(c) > 1})
        if twice:
            raise ConfigError("classes", f"class {twice[0]} is listed more than once; list each class once")
        return ids

    def sampling_spec(self, weights: Optional[str]) -> SamplingSpec:
        from core.eval.sampling import SamplingSpec

        conditions = (dict(prompts=tuple(self.prompt_set())) if self.text_conditional
                      else dict(classes=tuple(self.class_ids())))
        return SamplingSpec(model=self.model, weights=weights, cfg_scale=self.cfg_scale, temperature=self.temperature,
                            top_k=self.top_k, top_p=self.top_p, seed=self.seed, batch_size=self.batch_size,
                            image_size=self.image_size, precision=self.precision, **conditions)

    @property
    def samples_per_seed(self) -> int:
        """Samples of one model per seed: per_class x classes (demo-t2i: per_class x the shapes classes, as many
        reference scenes' captions: scene i shows class i % 10, so every shape is there per_class times)."""
        from core.demo.shapes import NUM_CLASSES

        return self.per_class * (NUM_CLASSES if self.text_conditional else len(self.class_ids()))

    def seeds(self) -> list[int]:
        return [self.seed + j for j in range(self.num_seeds)]

    @property
    def total_samples(self) -> int:
        """Samples drawn in all: per_class x classes x seeds, for base and for aligned."""
        return 2 * self.samples_per_seed * self.num_seeds
