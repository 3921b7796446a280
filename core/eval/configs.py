"""The settings of the evaluation jobs (`EvalConfig`: one model's FID/IS/precision/recall/CLIP;
`EmbeddingConfig`: the embedding shift of base vs aligned) and the input helpers they validate with.
Each is a dataclass; every check names its field."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from core.errors import ConfigError, DataError
from core.eval.sampling import SamplingSpec

METRICS = ("fid", "isc", "prc", "clip")
NO_LOGITS = ("clip", "dinov2")  # extractors without a classifier head: no Inception Score
DEFAULT_CLIP_TEMPLATE = "a photo of a {}"


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: ``.txt`` one per line, or ``.jsonl`` objects with "prompt", "caption" or "text"."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
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



@dataclass
class EvalConfig:
    """One model, one sampling setting, several metrics. Defaults: Table 2's protocol w/o CFG."""

    model: str = "demo-c2i"  # generator preset
    weights: Optional[str] = None  # see resolve_weights; None: the preset's weights (base model)
    label: str = ""  # free text for summaries, e.g. "aligned, step 100"
    num_samples: int = 50_000  # Table 2: 50k samples, 50 per ImageNet class
    cfg_scale: float = 1.0  # Table 2 w/o cfg; w/ cfg: 2.0 (XL), 1.75 (XXL)
    temperature: float = 1.0  # App. D
    top_k: int = 0  # App. D (0 = off)
    top_p: float = 1.0  # App. D (1 = off)
    seed: int = 0  # first sampling seed
    num_seeds: int = 3  # seeds seed, seed+1, ...: every metric is mean ± std over them, verdicts carry an interval
    batch_size: int = 32
    image_size: Optional[int] = None  # resize before saving; Table 2: 256 (384 px samples)
    precision: str = "fp32"  # fp32 | bf16
    classes: Optional[list] = None  # c2i: ids or names to cycle through; None: all classes
    prompts: Optional[list[str]] = None  # t2i: prompts to cycle through
    prompts_file: Optional[str] = None  # t2i: .txt / .jsonl prompt file (instead of prompts)
    metrics: list[str] = field(default_factory=lambda: ["fid", "isc", "prc"])  # of METRICS
    extractor: str = "inception"  # inception | dinov2 | clip | demo (FID/IS/precision/recall)
    extractor_path: Optional[str] = None  # its weights file / folder; None: the default location
    reference: Optional[str] = None  # .npz (ADM layout), image folder, or "shapes[:split]" (demo)
    reference_count: Optional[int] = None  # images of a folder / shapes reference (default num_samples)
    clip_model: Optional[str] = None  # CLIP folder or hub id for the "clip" metric (default ViT-L/14)
    clip_template: str = DEFAULT_CLIP_TEMPLATE  # c2i: CLIP text of a class, "{}" = its name
    k: int = 3  # precision/recall neighbourhood (Kynkäänniemi et al. 2019; ADM's evaluator)
    isc_splits: int = 10  # Inception Score splits (improved-GAN, ADM, torch-fidelity)
    device: str = "auto"

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
        needs_features = [m for m in self.metrics if m != "clip"]
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
        d = {k: v for k, v in d.items() if k != "entry"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"not a field of an evaluation; the fields are {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved_prompts(self) -> Optional[list[str]]:
        return read_prompts(self.prompts_file) if self.prompts_file is not None else self.prompts

    def sampling_spec(self, weights: Optional[str], prompts: Optional[Sequence[str]]) -> SamplingSpec:
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
class EmbeddingConfig:
    """Real vs base vs aligned samples of some classes in one feature space (Fig. 1b-c)."""

    model: str = "demo-c2i"
    base_weights: Optional[str] = None  # None: the preset's weights
    aligned_weights: Optional[str] = None  # required: see resolve_weights
    classes: Optional[list] = None  # ids or names; None: the first 10 classes
    per_class: int = 100  # samples per class, set and seed (demo: 10 x 100 = Evaluate's 1000 samples)
    num_seeds: int = 3  # seeds seed, seed+1, ...: overall numbers are mean ± std, verdicts carry an interval
    real: str = "shapes"  # "shapes[:split]" (demo; default split "reference") or an ImageNet-layout folder
    extractor: Optional[str] = None  # None: demo for the demo preset, inception otherwise
    extractor_path: Optional[str] = None
    projections: list[str] = field(default_factory=lambda: ["tsne", "umap"])
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 32
    image_size: Optional[int] = None
    precision: str = "fp32"
    k: int = 3  # precision/recall neighbourhood
    max_points_per_set: int = 2000  # points per set on the maps (numbers use all)
    device: str = "auto"

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
            self.extractor = "demo" if registry.get_generator(self.model).embedded else "inception"
        if self.extractor not in EXTRACTORS:
            raise ConfigError("extractor", f"unknown extractor {self.extractor!r}; choose one of {sorted(EXTRACTORS)}")
        self.projections = [self.projections] if isinstance(self.projections, str) else list(self.projections)
        bad = [p for p in self.projections if p not in METHODS]
        if bad:
            raise ConfigError("projections", f"unknown projection {bad[0]!r}; choose from {', '.join(METHODS)}")
        if registry.get_generator(self.model).task != "c2i":
            raise ConfigError("model", f"{self.model} is text-conditional; the embedding shift compares classes "
                                       "(use a class-conditional preset)")
        self.sampling_spec(None)

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddingConfig:
        d = {k: v for k, v in d.items() if k != "entry"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(unknown[0], f"not a field of an embedding comparison; the fields are {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def class_ids(self) -> list[int]:
        ids = class_ids_of(self.model, self.classes)
        if ids is None:
            return list(range(min(10, num_classes_of(self.model) or 0)))
        twice = sorted({c for c in ids if ids.count(c) > 1})
        if twice:
            raise ConfigError("classes", f"class {twice[0]} is listed more than once; list each class once")
        return ids

    def sampling_spec(self, weights: Optional[str]) -> SamplingSpec:
        return SamplingSpec(model=self.model, weights=weights, cfg_scale=self.cfg_scale, temperature=self.temperature,
                            top_k=self.top_k, top_p=self.top_p, seed=self.seed, batch_size=self.batch_size,
                            image_size=self.image_size, precision=self.precision, classes=tuple(self.class_ids()))

    def seeds(self) -> list[int]:
        return [self.seed + j for j in range(self.num_seeds)]

    @property
    def total_samples(self) -> int:
        """Samples drawn in all: per_class x classes x seeds, for base and for aligned."""
        return 2 * self.per_class * len(self.class_ids()) * self.num_seeds
