"""Run configuration of a VA-π (or baseline) post-training run.

One flat dataclass whose defaults are the paper's, each commented with its source: Table 7 of
the paper, or the authors' 8-GPU script (`scripts/autoregressive/train_c2i_grpo_8gpu.sh` in
Lil-Shake/VA-Pi) where the paper is silent. Names follow TRL's GRPOConfig where they mean the
same thing (num_generations, beta, epsilon, learning_rate, max_steps, num_iterations, ...).
Cross-field rules are checked once, at construction; an error names the field.

Presets: the paper's three settings (Table 7) plus the embedded CPU demo. `--set key=value`
overrides any field (values parsed as JSON when they parse, e.g. `reward_weights={"mse":1}`,
`preview_classes=[1,2]`; `reward_weights.lpips=0.5` sets one entry).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from core import configmeta
from core.configmeta import MAX_JOB_STEPS, setting
from core.errors import ConfigError
from core.models.registry import DEFAULT_GENERATOR

METHODS = ("vapi", "ste", "decoder")
DATA_KINDS = ("shapes", "imagefolder", "captions")
PRIORS = ("ce", "kl")
ROLLOUT_MODES = ("train", "eval", "twice")
XI_SCHEDULES = ("constant", "linear", "cosine")
LR_SCHEDULERS = ("constant", "cosine")
PRECISIONS = ("bf16", "fp16", "no")
SHARDINGS = ("ddp", "fsdp")
TRACKERS = ("tensorboard", "wandb")
# Fields a run config no longer has -> why. A config.json or preset that still holds one loads (the value is
# dropped); naming one in --set is an error.
MAX_BATCH = 65_536  # images in one step, micro-batch, chunk or probe: past this it is a typo, not a setting
MAX_IMAGES = 10_000_000  # a data subset as an image count
MAX_TOKENS = 65_536  # token positions per image (LlamaGen 384 px: 576; the demo: 64)
RETIRED = {  # fields older runs' config.json may hold: dropped on load, an error in --set / the form
    "num_workers": "no DataLoader read it (the trainer indexes its dataset in the training process)",
    "schedule": "training always runs the grouped schedule; the authors' per-sample schedule (equal loss and "
                "gradients) is the reference in benchmarks/reference_step.py, timed by python -m benchmarks.step",
}


@dataclass
class VapiConfig:
    """One run's settings. Each field's metadata holds its help text (meaning and source) and its form group
    (the section comments below); the Launch form reads them through core.configmeta."""

    # ---------------------------------------------------------------- what is trained
    method: str = setting("vapi", group="model", choices=METHODS, help="\"vapi\" (§4) | \"ste\": STE generator post-training (App. C.1) | \"decoder\": tokenizer-decoder post-training (App. C.2)")
    model: str = setting(DEFAULT_GENERATOR, group="model", label="generator", help="generator preset (python -m core info lists them)")
    init_weights: Optional[str] = setting(None, group="model", label="starting weights", help="start from this checkpoint instead of the preset's published weights")
    # ---------------------------------------------------------------- data
    data: str = setting("shapes", group="data", choices=DATA_KINDS, label="data source", help="\"shapes\" (embedded demo domain) | \"imagefolder\" (ImageNet layout) | \"captions\" (images + captions.jsonl)")
    data_path: Optional[str] = setting(None, group="data", label="data folder", help="folder for imagefolder / captions")
    data_subset: Optional[float] = setting(None, group="data", label="images used", help="a fraction <= 1 or an image count > 1; None = all (shapes: 12,800, the paper's count). C2I presets: 0.01 (§5.1)",
                                          maximum=MAX_IMAGES, why="an image count: 8x ImageNet-1k's 1.28M images; each epoch's order holds one index per image")
    cache_tokens: bool = setting(True, group="data", label="cache the x* tokens", help="x* = Q(E(I)) is fixed (frozen tokenizer, no augmentation): encode each image once")
    # ---------------------------------------------------------------- rollout (teacher-forced sampling)
    num_generations: int = setting(8, group="rollout", label="samples per image G", help="G, Table 7", maximum=256,
                                   why="G samples per image, each decoded and scored every step; the paper uses 8")
    temperature: float = setting(1.0, group="rollout", label="sampling temperature τ", help="tau for sampling and log-probs, authors' script (--temperature 1.0, no top-k/top-p)")
    xi: float = setting(0.0, group="rollout", label="context noise ξ", help="contextual noise rate of K_xi (Eq. 28-29), Table 7: C2I 0, LlamaGen T2I 0.5, Janus-Pro 0.95")
    xi_schedule: str = setting("constant", group="rollout", choices=XI_SCHEDULES, label="ξ schedule", help="\"constant\" | \"linear\" / \"cosine\": ramp 0 -> xi over max_steps (the authors' code has both)")
    cond_drop_prob: float = setting(0.1, group="rollout", label="condition dropout", help="label/caption dropout kept at the model's training rate so CFG stays usable (authors' --uncond-prob 0.1)")
    # ---------------------------------------------------------------- reward (Eq. 10)
    reward_weights: dict = setting(default_factory=lambda: {"mse": 1.0, "lpips": 1.0}, group="reward", help="Table 7 / script: w_mse 1, w_lpips 1")
    reward_chunk_size: int = setting(32, group="reward", label="decode chunk size", help="decoded images per chunk when decoding and scoring the B*G samples",
                                     maximum=MAX_BATCH, why="images held at once in a chunk")
    reward_per_token: bool = setting(False, group="reward", help="EXTENSION beyond the paper: each token's reward is -MSE of its own patch of the decoded sample, normalised per position over the G samples; the policy loss credits each token with it (the paper: one reward per sequence)")
    # ---------------------------------------------------------------- objective (Eq. 11)
    beta: float = setting(0.1, group="objective", label="prior weight β", help="weight of the prior term, Table 7")
    policy_coef: float = setting(1.0, group="objective", label="policy loss weight", help="weight of the policy term; 0 = Table 4's \"L_prior only\" ablation")
    prior: str = setting("ce", group="objective", choices=PRIORS, help="\"ce\": CE on the noisy context with clean targets (Eq. 9) | \"kl\": KL(pi || pi_ref) (Fig. 4 ablation)")
    epsilon: float = setting(0.2, group="objective", label="PPO clip ε", help="PPO clip range, authors' script (--clip-range 0.2)")
    advantage_clip: float = setting(5.0, group="objective", label="advantage clip A_max", help="A_max, Table 7")
    policy_skip_tokens: int = setting(0, group="objective", help="EXTENSION beyond the paper: leading token positions left out of the policy loss (0 = the paper; 1 keeps the reward away from the first token, which has no image prefix)",
                                      maximum=MAX_TOKENS, why="no model here has more tokens per image; preflight checks the model's own count")
    num_iterations: int = setting(1, group="objective", label="PPO iterations per rollout", help="PPO epochs per rollout (TRL's name); > 1 stores old log-probs and re-forwards B sequences",
                                  maximum=100, why="PPO epochs on one rollout; TRL and the paper use 1")
    rollout_mode: str = setting("train", group="objective", choices=ROLLOUT_MODES, label="rollout model mode", help="the authors' --sample-model-mode. Rollout (sampling + old log-probs) is always an eval-mode forward without condition dropout; the gradient forward is \"train\": train mode (dropout, condition dropout), CE on it, as all three of the authors' launch scripts pass | \"eval\": eval mode for the whole step (their argparse default; ratio 1 on the first update) | \"twice\": policy loss on an eval-mode forward, CE on a second train-mode forward. Cost per micro-batch: eval 1 forward with grad; train 1 with grad + a no-grad rollout forward (skipped where exact: no dropout layers, and only the condition-dropped rows re-run); twice 2 with grad")
    # ---------------------------------------------------------------- optimisation
    learning_rate: float = setting(1e-6, group="optimisation", label="learning rate", help="Table 7 (LlamaGen); Janus-Pro 1e-7")
    weight_decay: float = setting(1e-4, group="optimisation", label="weight decay", help="Table 7")
    adam_beta1: float = setting(0.9, group="optimisation", label="Adam β1", help="authors' script")
    adam_beta2: float = setting(0.999, group="optimisation", label="Adam β2", help="authors' script")
    max_grad_norm: float = setting(1.0, group="optimisation", label="max gradient norm", help="Table 7")
    lr_scheduler: str = setting("constant", group="optimisation", choices=LR_SCHEDULERS, label="learning-rate schedule", help="authors' script uses a constant lr")
    warmup_steps: int = setting(0, group="optimisation", label="warm-up steps", help="linear learning-rate warm-up over the first K steps (the authors' script: none)",
                                maximum=MAX_JOB_STEPS, why="at most max_steps")
    global_batch_size: int = setting(128, group="optimisation", label="images per step", help="images per optimizer step over all processes, Table 7",
                                     maximum=MAX_BATCH, why="images per step; the paper uses 128")
    per_device_train_batch_size: int = setting(16, group="optimisation", label="images per device and micro-step", help="images per micro-batch per process (authors' script: 16 images x G 8 per GPU)",
                                               maximum=MAX_BATCH, why="images per micro-batch; the authors use 16")
    max_steps: int = setting(100, group="optimisation", label="training steps", help="Table 7: C2I 100, LlamaGen T2I 200, Janus-Pro 100",
                             maximum=MAX_JOB_STEPS, why="more than this workbench runs as one job; split it into several runs")
    mixed_precision: str = setting("bf16", group="optimisation", choices=PRECISIONS, label="precision", help="Table 7; on CPU the run is fp32 unless mixed_precision_on_cpu")
    mixed_precision_on_cpu: bool = setting(False, group="optimisation", help="autocast on CPU too (bf16 only; slower on most CPUs): tests the bf16 path without a GPU")
    gradient_checkpointing: bool = setting(False, group="optimisation", label="gradient checkpointing", help="recompute block activations in backward: less memory, ~30% more compute")
    sharding: str = setting("ddp", group="optimisation", choices=SHARDINGS, label="multi-GPU sharding", help="several processes: \"ddp\" (every rank holds the model) or \"fsdp\" (FSDP2, one unit per block: weights, gradients and AdamW states split over ranks); `accelerate launch --use_fsdp` also selects fsdp")
    seed: int = setting(0, group="optimisation", help="data order, rollouts, condition dropout: a run is reproducible from it",
                        minimum=0, maximum=2**32 - 1, why="numpy's global seed, which accelerate's set_seed sets, takes 0 to 2**32-1")
    device: str = setting("auto", group="optimisation", help="\"auto\" | \"cpu\" | \"cuda\" | \"cuda:N\" (single process; multi-GPU goes through accelerate launch)")
    # ---------------------------------------------------------------- checkpoints, metrics, previews
    save_steps: int = setting(50, group="checkpoints", label="checkpoint every N steps", help="checkpoint every K steps (and at the end)",
                                   maximum=MAX_JOB_STEPS, why="at most the run's steps")
    logging_steps: int = setting(1, group="checkpoints", label="log every N steps", help="record metrics every K optimizer steps",
                                      maximum=MAX_JOB_STEPS, why="at most the run's steps")
    preview_steps: int = setting(25, group="checkpoints", label="preview every N steps", help="sample grid every K steps (step 0 = the base model)",
                                      maximum=MAX_JOB_STEPS, why="at most the run's steps")
    preview_classes: Optional[list] = setting(None, group="checkpoints", label="preview classes", help="class ids for the grids (default: spread over the classes)",
                                              maximum=1000, why="one grid row per class at every preview")
    preview_prompts: Optional[list] = setting(None, group="checkpoints", label="preview prompts", help="prompts for text-conditional models",
                                              maximum=256, why="one grid row per prompt at every preview")
    preview_seeds: list = setting(default_factory=lambda: [0, 1, 2, 3], group="checkpoints", label="preview seeds", help="one grid column per seed, the same at every step",
                                  maximum=64, why="one grid column per seed at every preview")
    preview_cfg_scale: float = setting(1.0, group="checkpoints", help="the paper trains and reports \"w/o CFG\" first")
    kl_probe_size: int = setting(4, group="checkpoints", label="KL probe size", help="images whose base logits are kept to report KL(pi || pi_base)",
                                 maximum=MAX_BATCH, why="each image keeps its [N, V] logits in memory")
    report_to: list = setting(default_factory=list, group="checkpoints", choices=TRACKERS, label="also report to", help="accelerate trackers: \"tensorboard\", \"wandb\"")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def check_types(self) -> None:
        """Each field has its annotated type (a number is finite; an int field takes a whole float such as
        1e3 and stores it as int), before any cross-field rule compares values."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.type.removeprefix("Optional[").removesuffix("]")
            if value is None and f.type.startswith("Optional["):
                continue
            if kind == "int":
                if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                    value = int(value)
                    setattr(self, f.name, value)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f.name, f"must be a whole number, got {value!r}")
            elif kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f.name, f"must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ConfigError(f.name, f"must be a finite number, got {value!r}")
            elif kind == "bool":
                if not isinstance(value, bool):
                    raise ConfigError(f.name, f"must be true or false, got {value!r}")
            elif kind == "str":
                if not isinstance(value, str):
                    raise ConfigError(f.name, f"must be a string, got {value!r}")
            elif kind in ("list", "dict"):
                if not isinstance(value, list if kind == "list" else dict):
                    raise ConfigError(f.name, f"must be a {'list' if kind == 'list' else 'mapping'}, got {value!r}")
        for name in ("preview_seeds", "preview_classes"):
            for item in getattr(self, name) or []:
                if isinstance(item, bool) or not isinstance(item, int):
                    raise ConfigError(name, f"must be a list of whole numbers, got {item!r} in it")
        for name in ("preview_prompts", "report_to"):
            for item in getattr(self, name) or []:
                if not isinstance(item, str):
                    raise ConfigError(name, f"must be a list of strings, got {item!r} in it")
        for key, weight in self.reward_weights.items():
            if isinstance(weight, (int, float)) and not isinstance(weight, bool) and not math.isfinite(weight):
                raise ConfigError(f"reward_weights.{key}", f"must be a finite number, got {weight!r}")

    def validate(self) -> None:
        def need(cond: bool, name: str, msg: str):
            if not cond:
                raise ConfigError(name, msg)

        self.check_types()

        need(self.method in METHODS, "method", f"must be one of {METHODS}, got {self.method!r}")
        need(self.data in DATA_KINDS, "data", f"must be one of {DATA_KINDS}, got {self.data!r}")
        need(self.data == "shapes" or bool(self.data_path), "data_path", f"is required for data={self.data!r} (a folder)")
        need(self.data != "shapes" or self.data_subset is None or self.data_subset > 1, "data_subset",
             "the shapes domain is unlimited: give an image count (> 1), not a fraction")
        if self.data_subset is not None:
            need(self.data_subset > 0, "data_subset", "must be > 0 (a fraction <= 1 or an image count), or null for all")
            need(self.data_subset <= 1 or float(self.data_subset).is_integer(), "data_subset", "above 1 it is an image count and must be whole")
        need(self.num_generations >= 2, "num_generations", "must be >= 2: advantages are relative to the group")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(0.0 <= self.xi < 1.0, "xi", "must be in [0, 1)")
        need(self.xi_schedule in XI_SCHEDULES, "xi_schedule", f"must be one of {XI_SCHEDULES}")
        need(0.0 <= self.cond_drop_prob < 1.0, "cond_drop_prob", "must be in [0, 1)")
        need(isinstance(self.reward_weights, dict) and bool(self.reward_weights), "reward_weights", "must be a non-empty {name: weight} mapping")
        from core.vapi.rewards import REWARDS

        for k, w in self.reward_weights.items():
            need(k in REWARDS, f"reward_weights.{k}", f"unknown reward; known: {', '.join(sorted(REWARDS))}")
            need(isinstance(w, (int, float)) and w >= 0, f"reward_weights.{k}", f"weight must be a number >= 0, got {w!r}")
        need(sum(self.reward_weights.values()) > 0, "reward_weights", "at least one weight must be > 0")
        need(self.reward_chunk_size >= 1, "reward_chunk_size", "must be >= 1")
        need(self.beta >= 0, "beta", "must be >= 0 (0 = no prior term)")
        need(self.policy_coef >= 0, "policy_coef", "must be >= 0 (0 = prior term only)")
        need(self.policy_coef > 0 or self.beta > 0, "beta", "policy_coef and beta cannot both be 0: nothing would be trained")
        need(self.prior in PRIORS, "prior", f"must be one of {PRIORS}")
        need(self.epsilon > 0, "epsilon", "must be > 0")
        need(self.advantage_clip > 0, "advantage_clip", "must be > 0")
        need(self.policy_skip_tokens >= 0, "policy_skip_tokens", "must be >= 0 (0 = every position, as the paper)")
        need(not self.reward_per_token or set(self.reward_weights) == {"mse"}, "reward_per_token",
             'the per-token reward is the patch-local MSE: set reward_weights={"mse": 1}')
        need(not self.reward_per_token or self.method == "vapi", "reward_per_token", "applies to method=vapi only")
        need(self.num_iterations >= 1, "num_iterations", "must be >= 1")
        need(self.rollout_mode in ROLLOUT_MODES, "rollout_mode", f"must be one of {ROLLOUT_MODES}, got {self.rollout_mode!r}")
        need(self.learning_rate >= 0, "learning_rate", "must be >= 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "adam_beta1", "Adam betas must be in [0, 1)")
        need(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        need(self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", f"must be one of {LR_SCHEDULERS}")
        need(self.max_steps >= 1, "max_steps", "must be >= 1")
        need(0 <= self.warmup_steps <= self.max_steps, "warmup_steps", "must be between 0 and max_steps")
        need(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be >= 1")
        need(self.global_batch_size >= self.per_device_train_batch_size, "global_batch_size",
             f"must be >= per_device_train_batch_size ({self.per_device_train_batch_size})")
        need(self.global_batch_size % self.per_device_train_batch_size == 0, "global_batch_size",
             f"{self.global_batch_size} is not a multiple of per_device_train_batch_size {self.per_device_train_batch_size}")
        need(self.mixed_precision in PRECISIONS, "mixed_precision", f"must be one of {PRECISIONS}")
        need(self.sharding in SHARDINGS, "sharding", f"must be one of {SHARDINGS}")
        need(not self.mixed_precision_on_cpu or self.mixed_precision in ("bf16", "no"), "mixed_precision_on_cpu",
             "CPU autocast supports bf16 only: set mixed_precision=bf16")
        need(self.save_steps >= 1 and self.logging_steps >= 1 and self.preview_steps >= 1, "save_steps",
             "save_steps, logging_steps and preview_steps must be >= 1")
        need(isinstance(self.preview_seeds, list) and len(self.preview_seeds) >= 1, "preview_seeds", "must be a non-empty list of ints")
        need(self.preview_cfg_scale >= 1.0, "preview_cfg_scale", "must be >= 1 (1 = no guidance)")
        need(self.kl_probe_size >= 0, "kl_probe_size", "must be >= 0")
        for t in self.report_to:
            need(t in TRACKERS, "report_to", f"unknown tracker {t!r}; known: {TRACKERS}")
        if self.method == "decoder":
            need(self.prior == "ce", "prior", "the decoder baseline trains the tokenizer decoder only; prior does not apply")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each process: global / (per_device * world)."""
        per_step = self.per_device_train_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError("global_batch_size", f"{self.global_batch_size} images per step cannot be split over {world_size} "
                                                   f"process(es) x per_device_train_batch_size {self.per_device_train_batch_size}")
        return self.global_batch_size // per_step

    def xi_at(self, step: int) -> float:
        """Noise rate at a step (0-based) under the schedule."""
        import math

        if self.xi_schedule == "constant" or self.max_steps <= 1:
            return self.xi
        t = min(step / (self.max_steps - 1), 1.0)
        return self.xi * (t if self.xi_schedule == "linear" else 0.5 - 0.5 * math.cos(math.pi * t))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "VapiConfig":
        """From a config mapping; an unknown key is a ConfigError naming it."""
        return configmeta.from_dict(cls, d, "a run config", ignore=RETIRED)

    def replace(self, **changes) -> "VapiConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- presets
DEFAULT_PRESET = "demo-c2i"  # the run preset the Launch form and a sweep start from (core.demo.presets)
PRESETS: dict[str, dict[str, Any]] = {
    # Table 7, column 1 and §5.1: LlamaGen-XXL C2I 384 px, 1% of ImageNet, 100 steps, xi 0
    "llamagen-c2i-xxl": dict(model="llamagen-c2i-xxl-384", data="imagefolder", data_subset=0.01, xi=0.0, max_steps=100,
                             learning_rate=1e-6),
    # Table 2, LlamaGen-XL: same recipe (the paper reports 20 minutes on 8 GPUs)
    "llamagen-c2i-xl": dict(model="llamagen-c2i-xl-384", data="imagefolder", data_subset=0.01, xi=0.0, max_steps=100,
                            learning_rate=1e-6),
    # Table 7, column 2: LlamaGen-XL T2I (LAION-COCO captions), 200 steps, xi 0.5. Table 7 lists 256x256 for this
    # column while §C.3 says 384 for all LlamaGen models; the published stage-1 T2I checkpoint is 256 px.
    "llamagen-t2i-xl": dict(model="llamagen-t2i-xl-256", data="captions", data_subset=None, xi=0.5, max_steps=200,
                            learning_rate=1e-6),
    # Table 7, column 3: Janus-Pro 1B, lr 1e-7, 100 steps, xi 0.95 (Table 7 says 384x384; §C.3 says 256)
    "janus-pro-1b": dict(model="janus-pro-1b", data="captions", data_subset=None, xi=0.95, max_steps=100,
                         learning_rate=1e-7),
}


def check_preview(cfg: VapiConfig, num_classes: Optional[int]) -> None:
    """Preview classes within the model's classes (`num_classes`: None for a text-conditional model)."""
    if num_classes is not None and cfg.preview_classes:
        bad = [c for c in cfg.preview_classes if not 0 <= c < num_classes]
        if bad:
            raise ConfigError("preview_classes", f"class ids {bad} out of range 0..{num_classes - 1} for {cfg.model}")


def check_sequence(cfg: VapiConfig, num_tokens: int) -> None:
    """Settings that count token positions within the model's N tokens per image."""
    if cfg.policy_skip_tokens >= num_tokens:
        raise ConfigError("policy_skip_tokens", f"{cfg.policy_skip_tokens} leaves none of {cfg.model}'s {num_tokens} token "
                                                f"positions in the policy loss; use 0 to {num_tokens - 1}")


def preset_names() -> list[str]:
    from core.demo import presets as demo_presets

    return sorted(set(PRESETS) | set(demo_presets.PRESETS))


def preset(name: str) -> dict[str, Any]:
    from core.demo import presets as demo_presets

    table = {**PRESETS, **demo_presets.PRESETS}
    if name not in table:
        raise ConfigError("preset", f"unknown preset {name!r}; known: {', '.join(sorted(table))}")
    return dict(table[name])


def preset_values(name: Optional[str]) -> dict[str, Any]:
    """Every field of a preset (defaults + the preset's changes), NOT validated: a paper preset has no data_path
    until the user gives one, so forms start from this and validate only what the user submits."""
    out = configmeta.defaults(VapiConfig)  # the defaults without __post_init__'s checks
    if name:
        out.update({k: v for k, v in preset(name).items() if k not in RETIRED})
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["learning_rate=1e-5", "reward_weights.mse=2", 'preview_classes=[1,2]'] -> {key: value}.
    Dotted keys stay dotted: `resolve` merges them into the mapping field, a plain key replaces it."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set", f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = {"none": None, "null": None, "true": True, "false": False}.get(raw.lower(), raw)
        out[key] = value
    return out


def resolve(preset_name: Optional[str] = None, overrides: Optional[dict[str, Any]] = None,
            base: Optional[dict[str, Any]] = None) -> VapiConfig:
    """Preset (or `base` dict) + overrides -> a validated config. "field.key" overrides set one entry of a
    mapping field; "field" overrides replace the whole value."""
    d: dict[str, Any] = VapiConfig().to_dict() if base is None else dict(base)
    if preset_name:
        d.update(preset(preset_name))
    for k, v in (overrides or {}).items():
        if k in RETIRED:
            raise ConfigError(k, f"is no longer a setting: {RETIRED[k]}")
        if "." in k:
            top, sub = k.split(".", 1)
            if not isinstance(d.get(top), dict):
                raise ConfigError(k, f"{top} is not a mapping field")
            d[top] = {**d[top], sub: v}
        else:
            d[k] = v
    return VapiConfig.from_dict(d)
