"""Where an alignment run moved the generator, and whether that helps: diagnostics of base vs aligned.

- per_position_kl: KL(pi_aligned || pi_base) at each token position, teacher-forced on held-out real
  token sequences (clean context, eval mode): which positions the run changed.
- teacher_forced_reward: the reward VA-π optimizes (G teacher-forced samples per held-out image, decoded,
  scored against the image), with the same random numbers for both models: does the objective improve
  off the training set?
- off_manifold_rate: the share of tokens that change under decode -> re-encode. Real token sequences are
  (nearly) fixed points of the tokenizer; generated ones need not be. The paper's argument is that VA-π
  moves the generator's sequences toward what the tokenizer reproduces.
- a CFG sweep: demo-FID / class accuracy vs guidance scale, base and aligned (does alignment reduce the
  need for CFG, as the paper argues?).

`python -m core eval diagnose --checkpoint RUN` runs them on the embedded demo; the Evaluate tab queues them as a
background run (kind "diagnose" of core.runs.kinds: `check_job`, worker entry `run_diagnose`) and shows its results.json. Legend: B images, N tokens, V vocab.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from core import configmeta
from core.configmeta import MAX_JOB_STEPS, setting
from core.errors import ConfigError
from core.vapi import objective

MODEL = "demo-c2i"  # the generator diagnosed: the demo's class-conditional one (its shapes images and evaluator)


@torch.no_grad()
def per_position_kl(base, aligned, cond: Tensor, tokens: Tensor, temperature: float = 1.0,
                    cond_mask: Optional[Tensor] = None, batch: int = 256) -> Tensor:
    """Mean over items of KL(pi_aligned || pi_base) per position, teacher forced on `tokens` [B, N] -> [N]."""
    total = torch.zeros(tokens.shape[1], dtype=torch.float64)
    for s in range(0, tokens.shape[0], batch):
        c, t = cond[s:s + batch], tokens[s:s + batch]
        m = cond_mask[s:s + batch] if cond_mask is not None else None
        with objective.model_mode(base, False), objective.model_mode(aligned, False):
            lp = torch.log_softmax(aligned.teacher_forced_logits(c, t[:, :-1], cond_mask=m).float() / temperature, -1)
            lq = torch.log_softmax(base.teacher_forced_logits(c, t[:, :-1], cond_mask=m).float() / temperature, -1)
        total += (lp.exp() * (lp - lq)).sum(-1).sum(0).double().cpu()  # [N]
    return (total / tokens.shape[0]).float()


@torch.no_grad()
def teacher_forced_reward(policy, tokenizer, images: Tensor, cond: Tensor, tokens: Tensor, *, num_generations: int,
                          weights: dict, seed: int, temperature: float = 1.0, batch: int = 64,
                          cond_mask: Optional[Tensor] = None) -> dict:
    """Mean reward (and per-term distances) of G teacher-forced samples per image, clean context, eval mode.
    The sampling generator is seeded from `seed` alone, so two models draw with the same random numbers."""
    g = torch.Generator(device=tokens.device).manual_seed(seed)
    rewards, dists = [], {}
    for s in range(0, tokens.shape[0], batch):
        c, t, x = cond[s:s + batch], tokens[s:s + batch], images[s:s + batch]
        m = cond_mask[s:s + batch] if cond_mask is not None else None
        with objective.model_mode(policy, False):
            logits = policy.teacher_forced_logits(c, t[:, :-1], cond_mask=m)
        samples = objective.sample_groups(logits, num_generations, temperature, g)
        r, d = objective.score_samples(tokenizer, samples, x, weights, 256)
        rewards.append(r)
        for k, v in d.items():
            dists.setdefault(k, []).append(v)
    r = torch.cat(rewards)
    out = {"reward": r.mean().item()}
    out.update({f"dist_{k}": torch.cat(v).mean().item() for k, v in dists.items()})
    return out


@torch.no_grad()
def off_manifold_rate(tokenizer, tokens: Tensor, batch: int = 500) -> float:
    """Share of tokens [B, N] that change under decode -> re-encode (0 = fixed points of the tokenizer)."""
    changed = 0
    for s in range(0, tokens.shape[0], batch):
        t = tokens[s:s + batch]
        with objective.fp32(t.device):
            again = tokenizer.encode(tokenizer.decode(t).float().clamp(-1, 1))
        changed += int((again != t).sum())
    return changed / tokens.numel()


def _mean_std(vals: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


# ----------------------------------------------------------------------------- `python -m core eval diagnose` (demo)
def diagnose_demo(weights: Path, num_images: int = 500, seeds: Sequence[int] = (0, 1, 2), num_generations: int = 8,
                  cfg_scales: Sequence[float] = (1.0, 1.5, 2.5), num_samples: int = 1000, log=print,
                  progress: Optional[Callable[[int, int], None]] = None,
                  should_stop: Callable[[], bool] = lambda: False) -> Optional[dict]:
    """Every diagnostic of one aligned demo generator against the committed base -> the results dict (None when
    `should_stop` said so between phases). progress(done, total) after each of the 3 + len(cfg_scales) phases."""
    total = 3 + len(cfg_scales)

    def phase_done(done: int) -> bool:
        if progress is not None:
            progress(done, total)
        return should_stop()

    from core.demo.report import evaluate_checkpoint
    from core.demo.shapes import images_tensor
    from core.models.load import load_pair

    base, tok = load_pair(MODEL)
    aligned, _ = load_pair(MODEL, weights)
    images, labels = images_tensor("val", range(num_images), tok.image_size)  # held out from training
    with objective.fp32("cpu"):
        tokens = tok.encode(images)
    out: dict = {"weights": str(weights), "num_images": num_images, "seeds": list(seeds)}

    kl = per_position_kl(base, aligned, labels, tokens)
    h, w = tok.grid
    out["kl_per_position"] = kl.tolist()
    out["kl_mean"] = kl.mean().item()
    out["kl_first_token"] = kl[0].item()
    log(f"KL(aligned || base) per position, held-out teacher forcing (mean {kl.mean():.4f}, first token {kl[0]:.4f}):")
    for r in range(h):
        log("  " + " ".join(f"{v:.4f}" for v in kl[r * w:(r + 1) * w].tolist()))
    out["grid"] = [h, w]
    if phase_done(1):
        return None

    per_seed = {name: [teacher_forced_reward(model, tok, images, labels, tokens, num_generations=num_generations,
                                             weights={"mse": 1.0}, seed=s)["reward"] for s in seeds]
                for name, model in (("base", base), ("aligned", aligned))}
    tf = {name: dict(zip(("reward", "reward_std"), _mean_std(v))) for name, v in per_seed.items()}
    # same seed = same random numbers for both models: the paired difference cancels most sampling noise
    tf["paired_gain"], tf["paired_gain_std"] = _mean_std([a - b for a, b in zip(per_seed["aligned"], per_seed["base"])])
    tf["per_seed"] = per_seed
    out["teacher_forced_reward"] = tf
    log(f"held-out teacher-forced reward (-MSE, G {num_generations}, {len(seeds)} seeds): base {tf['base']['reward']:.5f} "
        f"± {tf['base']['reward_std']:.5f}, aligned {tf['aligned']['reward']:.5f} ± {tf['aligned']['reward_std']:.5f}; "
        f"paired gain {tf['paired_gain']:+.6f} ± {tf['paired_gain_std']:.6f}")
    if phase_done(2):
        return None

    from core.models.generate import generate

    rates = {"real": off_manifold_rate(tok, tokens)}
    for name, w_ in (("base", None), ("aligned", weights)):
        model = base if w_ is None else aligned
        vals = []
        for s in seeds:
            cond = torch.arange(num_images) % model.config.num_classes
            toks = generate(model, cond, generator=torch.Generator().manual_seed(s)).tokens
            vals.append(off_manifold_rate(tok, toks))
        rates[name], rates[name + "_std"] = _mean_std(vals)
        rates[name + "_per_seed"] = vals  # paired by seed with the other model's: the change's interval
    out["off_manifold_rate"] = rates
    log(f"off-manifold rate (tokens changed by decode -> re-encode): real {rates['real']:.4f}, base {rates['base']:.4f} "
        f"± {rates['base_std']:.4f}, aligned {rates['aligned']:.4f} ± {rates['aligned_std']:.4f}")
    if phase_done(3):
        return None

    sweep = []
    for scale in cfg_scales:
        row = {"cfg_scale": scale}
        for name, w_ in (("base", None), ("aligned", weights)):
            r = evaluate_checkpoint(weights=w_, num_samples=num_samples, sample_seeds=seeds, cfg_scale=scale,
                                    log=lambda m: None)
            row[name] = {k: r[k] for k in ("demo_fid", "demo_fid_std", "class_accuracy", "class_accuracy_std")}
            for k in ("demo_fid", "class_accuracy"):  # paired by seed: the same uniforms for base and aligned
                row[name][k + "_per_seed"] = [p[k] for p in r["per_seed"]]
        sweep.append(row)
        log(f"CFG {scale}: demo-FID base {row['base']['demo_fid']:.3f} ± {row['base']['demo_fid_std']:.3f}, aligned "
            f"{row['aligned']['demo_fid']:.3f} ± {row['aligned']['demo_fid_std']:.3f}; class accuracy base "
            f"{row['base']['class_accuracy']:.3f}, aligned {row['aligned']['class_accuracy']:.3f}")
        if phase_done(3 + len(sweep)) and len(sweep) < len(cfg_scales):
            return None
    out["cfg_sweep"] = sweep
    return out


# ----------------------------------------------------------------------------- the job (CLI and Evaluate tab)
DIAGNOSE_FIELDS = ("checkpoint", "num_images", "seeds", "num_generations", "cfg_scales", "num_samples")


@dataclass
class DiagnoseConfig:
    """The diagnostics of one aligned demo generator against the committed base."""

    checkpoint: str = setting("", help="the aligned demo generator: a run id (or id@step), a run folder, a checkpoint "
                                       "folder or a model.pt")
    num_images: int = setting(500, help="held-out real scenes (val split) for the teacher-forced views",
                              maximum=MAX_JOB_STEPS, why="more than this workbench runs as one job")
    seeds: list[int] = setting(default_factory=lambda: [0, 1, 2], help="sampling seeds (mean ± std over them)")
    num_generations: int = setting(8, help="G teacher-forced samples per image, as in training", maximum=256,
                                   why="G samples per image, as a run's num_generations")
    cfg_scales: list[float] = setting(default_factory=lambda: [1.0, 1.5, 2.5],
                                      help="guidance scales of the demo-FID sweep (1 = no guidance)")
    num_samples: int = setting(1000, help="free-running samples per seed and scale in the CFG sweep",
                               maximum=MAX_JOB_STEPS, why="more than this workbench samples as one job")

    def __post_init__(self):
        if not self.checkpoint:
            raise ConfigError("checkpoint", "name the aligned demo generator: a run id, run folder or checkpoint")
        for name in ("num_images", "num_generations", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(name, f"must be a whole number >= 2, got {value!r}")
        if not self.seeds or any(isinstance(x, bool) or not isinstance(x, int) for x in self.seeds):
            raise ConfigError("seeds", f"must be a non-empty list of whole numbers, got {self.seeds!r}")
        if not self.cfg_scales or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x < 1
                                      for x in self.cfg_scales):
            raise ConfigError("cfg_scales", f"must be a non-empty list of numbers >= 1, got {self.cfg_scales!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "DiagnoseConfig":
        return configmeta.from_dict(cls, d, "the diagnostics", ignore=("entry",))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def total_steps(self) -> int:
        """Progress units: per-position KL, held-out reward, off-manifold rate, one per CFG scale."""
        return 3 + len(self.cfg_scales)


def resolve(cfg: DiagnoseConfig, runs_dir: Optional[str | Path] = None) -> Path:
    """The aligned generator's model.pt, checked before any work (the demo's files too)."""
    from core.checkpoints import resolve_weights
    from core.models import registry

    registry.require_files(MODEL)
    ref = resolve_weights(cfg.checkpoint, runs_dir, field="checkpoint")
    if ref.path is None:
        raise ConfigError("checkpoint", "the base model against itself shows nothing: name an aligned checkpoint")
    return Path(ref.path)


def summary_metrics(out: dict) -> dict[str, float]:
    """The headline numbers of a diagnosis, as one metrics row of its run."""
    tf, rates = out["teacher_forced_reward"], out["off_manifold_rate"]
    row = {"kl_mean": out["kl_mean"], "kl_first_token": out["kl_first_token"], "tf_reward_gain": tf["paired_gain"],
           "tf_reward_gain_std": tf["paired_gain_std"], "off_manifold_base": rates["base"],
           "off_manifold_aligned": rates["aligned"], "off_manifold_real": rates["real"]}
    for r in out["cfg_sweep"]:
        for name in ("base", "aligned"):
            row[f"demo_fid_{name}_cfg{r['cfg_scale']:g}"] = r[name]["demo_fid"]
    return row


def run_diagnose(config: dict, run_dir: Path, recorder, resume: bool) -> None:
    """Worker entry (core.runs.kinds, kind "diagnose"): the diagnostics into the run folder's results.json.
    A stop lands between phases; a resumed run starts over (a few minutes on a CPU)."""
    from core.eval.job_io import RESULTS_FILE, print_flush, write_json

    cfg = DiagnoseConfig.from_dict(config)
    weights = resolve(cfg, Path(run_dir).parent)
    out = diagnose_demo(weights, num_images=cfg.num_images, seeds=cfg.seeds, num_generations=cfg.num_generations,
                        cfg_scales=cfg.cfg_scales, num_samples=cfg.num_samples, log=print_flush,
                        progress=recorder.set_progress, should_stop=recorder.should_stop)
    if out is not None:
        write_json(Path(run_dir) / RESULTS_FILE, {**out, "config": cfg.to_dict()})
        recorder.log_metrics(cfg.total_steps, summary_metrics(out))


def check_job(cfg: DiagnoseConfig, runs_dir: Optional[str | Path] = None) -> str:
    """`resolve` for a queued job (core.runs.kinds, kind "diagnose"): returns the job's default name."""
    resolve(cfg, runs_dir)
    return f"diagnose {cfg.checkpoint}"
