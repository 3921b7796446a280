"""The trainer: VA-π (and the two baselines) on `accelerate` — one CPU, one GPU, DDP or FSDP.

Setup order: every input is checked before any heavy work (`core.vapi.preflight`: preset files, LPIPS
weights, data folder, class count), then models, data, optimizer. What is trained, its loss and its
checkpoint file come from the method object (`core.vapi.methods`); the loop has no method branches.
One optimizer step = the run's global batch (global_batch_size images), split into micro-batches of
per_device_train_batch_size images per process; gradient sync only on the last micro-batch of a step.

Determinism and resume: nothing random depends on state carried between steps. The data order is
a seeded permutation per epoch; step s consumes global image positions [s*GB, (s+1)*GB); the
rollout of micro-batch m on rank r draws from a generator seeded by (seed, step, m*world + r).
So a run resumed from a checkpoint (weights + optimizer + step) continues exactly as if it had
not stopped, and N processes reproduce one process with the same global batch.

Checkpoints: `core.checkpoints` owns the layout and the atomic save; each holds the trained module in the
upstream layout ({"model": state_dict, "config": json}), optimizer + lr-scheduler state, and
{"step": s, "method": ..., "world_size": ...}.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from core import checkpoints
from core.errors import ConfigError, UserError
from core.seeding import derive_seed
from core.vapi import objective
from core.vapi.config import VapiConfig
from core.vapi.methods import Models, method_of
from core.vapi.objective import Batch
from core.vapi.preflight import preflight

DEFAULT_IMAGENET_PREVIEW = [207, 360, 387, 974, 88, 979, 417, 279]  # LlamaGen's sample_c2i classes


class NonFiniteError(UserError):
    """A loss term or the gradient norm was NaN/inf: the step was not applied."""


@dataclass
class StepPlan:
    """Which images each process uses in a step (see module docstring)."""

    dataset_len: int
    global_batch: int
    per_device: int
    world: int
    seed: int

    @property
    def accum(self) -> int:
        return self.global_batch // (self.per_device * self.world)

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, 0xDA7A, epoch)).permutation(self.dataset_len)

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        start = step * self.global_batch + (micro * self.world + rank) * self.per_device
        out, cache = [], {}
        for p in range(start, start + self.per_device):
            e, i = divmod(p, self.dataset_len)
            if e not in cache:
                cache[e] = self._perm(e)
            out.append(int(cache[e][i]))
        return out


class Trainer:
    def __init__(self, cfg: VapiConfig, run_dir: str | Path, recorder=None, *, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.method = method_of(cfg)
        self.run_dir = Path(run_dir)
        self.recorder = recorder
        self._log = log

    # ------------------------------------------------------------------ logging helpers
    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    @property
    def is_main(self) -> bool:
        acc = getattr(self, "accelerator", None)
        return acc is None or acc.is_main_process

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from core import device as devmod
        from core.models import load
        from core.models.load import condition_encoder

        cfg = self.cfg
        checked = preflight(cfg)
        self.preset, self.dataset = checked.preset, checked.dataset
        dev = devmod.resolve(cfg.device) if cfg.device != "auto" else None
        cpu = (dev is not None and dev.type == "cpu") or not torch.cuda.is_available()
        if dev is not None and dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev.index)
        precision = "no" if cpu and not cfg.mixed_precision_on_cpu else cfg.mixed_precision
        trackers = list(cfg.report_to)
        self.accelerator = acc = Accelerator(cpu=cpu, mixed_precision=precision, log_with=trackers or None,
                                             project_dir=str(self.run_dir))
        set_seed(cfg.seed)
        self.device = acc.device
        self.world = acc.num_processes
        self.rank = acc.process_index
        self.accum = cfg.accumulation_steps(self.world)
        self.log(f"[setup] {cfg.method} on {self.world} process(es), device {self.device}, precision {precision}; "
                 f"{cfg.global_batch_size} images/step = {self.world} x {cfg.per_device_train_batch_size} x {self.accum} accumulation")

        # --- data (built and checked in preflight, before the weights are read)
        self.plan = StepPlan(len(self.dataset), cfg.global_batch_size, cfg.per_device_train_batch_size, self.world, cfg.seed)

        # --- models
        policy, tokenizer = load.load_pair(cfg.model, cfg.init_weights, self.device)
        if self.preset.task == "c2i" and cfg.data == "imagefolder":
            from core.data.imagefolder import check_num_classes

            check_num_classes(self.dataset, policy.config.num_classes)
        policy.gradient_checkpointing = cfg.gradient_checkpointing
        ref_policy = None
        if self.method.uses_reference(cfg):
            ref_policy = load.load_generator(cfg.model, cfg.init_weights, self.device)
            ref_policy.requires_grad_(False)

        # --- what is trained (the method decides), prepared by accelerate
        trained = self.method.trainable(policy, tokenizer)
        decay = [p for n, p in trained.named_parameters() if p.requires_grad and "norm" not in n]
        no_decay = [p for n, p in trained.named_parameters() if p.requires_grad and "norm" in n]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda)
        self.trained_prepared, self.optimizer, self.scheduler = acc.prepare(trained, optimizer, scheduler)
        modules = {"generator": policy, "tokenizer": tokenizer, self.method.trains: self.trained_prepared}
        self.models = Models(policy=modules["generator"], tokenizer=modules["tokenizer"], ref_policy=ref_policy,
                             unwrap=self.unwrap)
        self.cond_encoder = condition_encoder(policy, self.preset.task, self.device, text_encoder=self.preset.text_encoder)  # captions -> condition; None for c2i
        self.token_cache: dict[int, torch.Tensor] = {}  # dataset index -> x* [N], always encoded in fp32 (encode_fp32)
        if trackers:
            acc.init_trackers(self.run_dir.name, config=cfg.to_dict())

    def _lr_lambda(self, step: int) -> float:
        cfg = self.cfg
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_scheduler == "cosine":
            t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return 1.0

    @property
    def policy(self):
        """The generator (as prepared by accelerate when the method trains it)."""
        return self.models.policy

    @property
    def tokenizer(self):
        """The tokenizer (as prepared by accelerate when the method trains it)."""
        return self.models.tokenizer

    # ------------------------------------------------------------------ data
    def unwrap(self, model):
        return self.accelerator.unwrap_model(model)

    @torch.no_grad()
    def load_items(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Dataset items -> (images [B,3,H,W], cond, cond_mask) on the device."""
        items = [self.dataset[int(i)] for i in idx]
        images = torch.stack([it[0] for it in items]).to(self.device)
        if self.cond_encoder is None:
            return images, torch.tensor([int(it[1]) for it in items], device=self.device), None
        cond, mask = self.cond_encoder([it[1] for it in items])
        return images, cond.to(self.device), mask.to(self.device) if mask is not None else None

    @torch.no_grad()
    def batch(self, step: int, micro: int) -> tuple[Batch, list[int]]:
        idx = self.plan.indices(step, micro, self.rank)
        images, cond, mask = self.load_items(idx)
        return Batch(images=images, cond=cond, tokens=self._tokens(idx, images), cond_mask=mask), idx

    def encode_fp32(self, images: torch.Tensor) -> torch.Tensor:
        """x* = Q(E(I)) in fp32 under any autocast, as the authors' code: under bf16 the nearest-code search
        ties and 18% of the demo's tokens changed."""
        with objective.fp32(self.device):
            return self.unwrap(self.tokenizer).encode(images.float())

    def _tokens(self, idx: list[int], images: torch.Tensor) -> torch.Tensor:
        if not self.cfg.cache_tokens:
            return self.encode_fp32(images)
        missing = [k for k, i in enumerate(idx) if i not in self.token_cache]
        if missing:
            enc = self.encode_fp32(images[missing])
            for k, t in zip(missing, enc.cpu()):
                self.token_cache[idx[k]] = t
        return torch.stack([self.token_cache[i] for i in idx]).to(self.device)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> None:
        acc = self.accelerator
        state = acc.get_state_dict(self.trained_prepared)
        optim = self._optimizer_state()
        if not acc.is_main_process:
            return
        from core.models import checkpoint

        name = self.method.weights_file
        meta = {"step": step, "method": self.cfg.method, "world_size": self.world}
        with self.recorder.save_checkpoint(step) as d:
            checkpoint.save_upstream(state, d / name, config=self.cfg.to_dict())
            torch.save({"optimizer": optim, "scheduler": self.scheduler.state_dict()}, d / checkpoints.OPTIMIZER_FILE)
            (d / checkpoints.TRAINER_STATE_FILE).write_text(json.dumps(meta) + "\n")
        self.log(f"[checkpoint] step {step} -> {checkpoints.checkpoint_dir(self.recorder.run_dir, step)}")

    def _optimizer_state(self) -> dict:
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type == DistributedType.FSDP:
            from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            model = self.trained_prepared
            with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                      FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
                                      FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=True)):
                return FSDP.optim_state_dict(model, self.optimizer.optimizer)
        return self.optimizer.state_dict()

    def load_checkpoint(self, path: Path) -> int:
        from accelerate.utils import DistributedType

        from core.models import checkpoint

        meta = json.loads((path / checkpoints.TRAINER_STATE_FILE).read_text())
        if meta.get("method", self.cfg.method) != self.cfg.method:
            raise ConfigError("method", f"{path} was written by method {meta['method']!r}, the run says {self.cfg.method!r}")
        model = self.trained_prepared
        name = self.method.weights_file
        sd, _ = checkpoint.read_file(path / name)
        if self.accelerator.distributed_type == DistributedType.FSDP:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType

            with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=True)):
                model.load_state_dict(sd)
        else:
            checkpoint.load_strict(self.unwrap(model), sd, path / name)
        opt = checkpoint.load_object(path / checkpoints.OPTIMIZER_FILE)
        if self.accelerator.distributed_type == DistributedType.FSDP:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            osd = FSDP.optim_state_dict_to_load(model, self.optimizer.optimizer, opt["optimizer"])
            self.optimizer.optimizer.load_state_dict(osd)
        else:
            self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        return int(meta["step"])

    # ------------------------------------------------------------------ previews and probes
    def preview_conditions(self):
        cfg = self.cfg
        policy = self.unwrap(self.policy)
        if self.preset.task == "c2i":
            n = policy.config.num_classes
            if cfg.preview_classes:
                classes = [int(c) for c in cfg.preview_classes]
            elif n == 1000:
                classes = DEFAULT_IMAGENET_PREVIEW
            else:
                classes = list(range(min(n, 10)))
            bad = [c for c in classes if not 0 <= c < n]
            if bad:
                raise ConfigError("preview_classes", f"class ids {bad} out of range 0..{n - 1}")
            return classes, [str(c) for c in classes]
        prompts = cfg.preview_prompts or ["a red circle in the center", "two blue squares at the top left"]
        return prompts, prompts

    @torch.no_grad()
    def write_preview(self, step: int) -> None:
        if not self.is_main:
            return
        from core import imaging
        from core.data.classes import class_names_for
        from core.models.generate import generate_images

        cfg = self.cfg
        policy, tok = self.unwrap(self.policy), self.unwrap(self.tokenizer)
        was_training = policy.training, tok.training
        policy.eval()
        tok.eval()
        conds, labels = self.preview_conditions()
        seeds = [int(s) for s in cfg.preview_seeds]
        try:
            if self.cond_encoder is None:
                cond = torch.tensor([c for c in conds for _ in seeds], device=self.device)
                mask = None
                names = class_names_for(policy.config.num_classes)
                labels = [names[c] for c in conds]
            else:
                cond, mask = self.cond_encoder([p for p in conds for _ in seeds])
                cond, mask = cond.to(self.device), mask.to(self.device) if mask is not None else None
            with self.accelerator.autocast():
                imgs = generate_images(policy, tok, cond, seeds=[s for _ in conds for s in seeds],
                                       cond_mask=mask, cfg_scale=cfg.preview_cfg_scale, temperature=cfg.temperature)
        finally:
            policy.train(was_training[0])
            tok.train(was_training[1])
        up = max(1, 96 // imgs.shape[-1])
        path = self.recorder.sample_path(step)
        imaging.save_png(imaging.grid(imgs, nrow=len(seeds), upscale=up), path)
        path.with_suffix(".json").write_text(json.dumps({
            "step": step, "rows": labels, "seeds": seeds, "cfg_scale": cfg.preview_cfg_scale,
            "tile": imgs.shape[-1] * up, "pad": imaging.GRID_PAD}))

    @torch.no_grad()
    def capture_kl_probe(self) -> None:
        """Keep the base model's log-probs on a few fixed images (clean context, eval mode)."""
        self.kl_probe = None
        if self.cfg.kl_probe_size <= 0 or not self.method.probes_kl:
            return
        n = min(self.cfg.kl_probe_size, len(self.dataset))
        idx = list(np.random.default_rng(derive_seed(self.cfg.seed, 0x9B0BE)).choice(len(self.dataset), n, replace=False))
        images, cond, mask = self.load_items(idx)
        tokens = self.encode_fp32(images)
        self.kl_probe = (cond, mask, tokens[:, :-1])
        self.kl_base = self._probe_logprobs().to("cpu", torch.float16)

    @torch.no_grad()
    def _probe_logprobs(self) -> torch.Tensor:
        policy = self.unwrap(self.policy)
        was = policy.training
        policy.eval()
        cond, mask, ctx = self.kl_probe
        with self.accelerator.autocast():
            logits = policy.teacher_forced_logits(cond, ctx, cond_mask=mask)
        policy.train(was)
        return torch.log_softmax(logits.float() / self.cfg.temperature, dim=-1)

    def kl_to_base(self) -> Optional[float]:
        if getattr(self, "kl_probe", None) is None:
            return None
        logp = self._probe_logprobs()
        base = self.kl_base.to(logp.device, torch.float32)
        return float((logp.exp() * (logp - base)).sum(-1).mean())

    # ------------------------------------------------------------------ the loop
    def micro_loss(self, batch: Batch, step: int, micro: int, rollouts: dict):
        cfg = self.cfg
        g = torch.Generator(device=self.device).manual_seed(derive_seed(cfg.seed, step, micro * self.world + self.rank))
        torch.manual_seed(derive_seed(cfg.seed, 0xD0, step, micro * self.world + self.rank))  # dropout
        rollout = rollouts.get(micro) if step % cfg.num_iterations > 0 else None  # PPO iterations 2.. re-use it
        loss, metrics, rollouts[micro] = self.method.loss(self.models, batch, cfg, xi=cfg.xi_at(step), generator=g,
                                                          rollout=rollout)
        return loss, metrics

    def rollout_step(self, step: int) -> int:
        """The step that produced the rollout used at `step` (PPO iterations re-use it)."""
        return step - step % self.cfg.num_iterations

    def train_step(self, step: int, rollouts: dict) -> dict:
        """One optimizer step (0-based `step`). Returns its metrics (reduced over processes)."""
        acc, cfg = self.accelerator, self.cfg
        model = self.trained_prepared
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        for micro in range(self.accum):
            batch, _ = self.batch(self.rollout_step(step), micro)
            sync = micro == self.accum - 1

            def ctx():  # gradient all-reduce only on the last micro-batch of the step
                return contextlib.nullcontext() if sync else acc.no_sync(model)

            with ctx(), acc.autocast():
                loss, m = self.micro_loss(batch, step, micro, rollouts)
            bad = {k: v for k, v in m.items() if k.startswith("loss") and not math.isfinite(v)}
            if bad:
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteError(f"non-finite loss at step {step + 1}: " + ", ".join(f"{k}={v}" for k, v in m.items()
                                     if k.startswith("loss") or k.startswith("dist_") or k.startswith("reward")))
            with ctx():
                acc.backward(loss / self.accum)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v / self.accum
        grad_norm = acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(f"non-finite gradient norm ({grad_norm}) at step {step + 1}; losses: "
                                 + ", ".join(f"{k}={v:.4g}" for k, v in sums.items() if k.startswith("loss")))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        names = sorted(sums)
        vec = torch.tensor([sums[k] for k in names], device=self.device, dtype=torch.float64)
        vec = acc.reduce(vec, reduction="mean") if self.world > 1 else vec
        metrics = dict(zip(names, vec.tolist()))
        samples = cfg.global_batch_size * self.method.samples_per_image(cfg)
        metrics.update(grad_norm=grad_norm, lr=lr, step_time=dt, samples_per_s=samples / dt)
        return metrics

    def _stop_requested(self) -> bool:
        flag = bool(self.recorder is not None and self.recorder.should_stop())
        if self.world > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def train(self, resume: bool = False) -> dict:
        """Run to max_steps (or until a stop request). Returns the last step's metrics."""
        cfg = self.cfg
        self.setup()
        self.capture_kl_probe()  # on the base weights, before a resume loads the run's: KL stays "to the base"
        start = 0
        if resume:
            ck = self.recorder.last_checkpoint() if self.recorder is not None else None
            if ck is not None:
                start = self.load_checkpoint(Path(ck.path))
                self.log(f"[resume] from {ck.path} (step {start})")
            else:
                self.log("[resume] no checkpoint yet: starting from the base model")
        if self.is_main:
            (self.run_dir / "config.resolved.json").write_text(cfg.to_json())
        if self.recorder is not None:
            self.recorder.set_progress(start, cfg.max_steps)
        if start == 0 and self.recorder is not None:
            self.write_preview(0)
        rollouts: dict = {}
        last: dict = {}
        saved = start
        t_start = time.perf_counter()
        for step in range(start, cfg.max_steps):
            if self._stop_requested():
                self.log(f"[stop] requested: checkpointing step {step} and stopping")
                if saved != step and step > 0:
                    self.save_checkpoint(step)
                break
            last = self.train_step(step, rollouts)
            done = step + 1
            if done % cfg.logging_steps == 0 or done == cfg.max_steps:
                kl = self.kl_to_base()
                if kl is not None:
                    last["kl_base"] = kl
                if self.recorder is not None:
                    self.recorder.log_metrics(done, last)
                if cfg.report_to:
                    self.accelerator.log(last, step=done)
            if self.recorder is not None:
                self.recorder.set_progress(done)
            if done % cfg.preview_steps == 0 or done == cfg.max_steps:
                self.write_preview(done)
            if done % cfg.save_steps == 0 or done == cfg.max_steps:
                self.save_checkpoint(done)
                saved = done
            elapsed = time.perf_counter() - t_start
            eta = elapsed / (done - start) * (cfg.max_steps - done)
            self.log(f"[step {done}/{cfg.max_steps}] reward {last.get('reward_mean', float('nan')):.4f} "
                     f"loss {last['loss']:.4f} grad {last['grad_norm']:.3f} {last['step_time']:.2f}s/step ETA {eta:.0f}s")
        # every process done, then end the trackers and (under a distributed launch) destroy the process
        # group: left to interpreter exit, a rank that finishes first can abort in gloo's teardown (SIGABRT)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return last


def run_worker(config: dict, run_dir: Path, recorder, resume: bool) -> None:
    """Entry point for core.runs.worker (the "train" kind of core.runs.kinds)."""
    cfg = VapiConfig.from_dict({k: v for k, v in config.items() if k != "entry"})
    Trainer(cfg, run_dir, recorder, log=lambda m: print(m, flush=True)).train(resume=resume)


