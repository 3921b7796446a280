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

Several processes: DDP by default (accelerate wraps the trained module), or FSDP2 with sharding="fsdp" (or
`accelerate launch --use_fsdp`): the trainer shards the trained module itself (`fsdp_shard`: one unit per
block of `fsdp_wrap_modules()`, frozen weights kept out of every unit) BEFORE the optimizer is built, so AdamW
steps the sharded weights. The KL probe and previews run on every rank with the weights gathered (`gathered`),
rank 0 writes. The lr schedule is stepped once per optimizer step, whatever the number of processes.

Checkpoints: `core.checkpoints` owns the layout and the atomic save; each holds the trained module in the
upstream layout ({"model": state_dict, "config": json}), optimizer + lr-scheduler state, and
{"step": s, "method": ..., "world_size": ...}.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
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


def _full_on_rank0():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def fsdp_shard(module: torch.nn.Module) -> None:
    """FSDP2 (`fully_shard`), in place: each block of `module.fsdp_wrap_modules()` is its own unit (or, for a
    module without one, each child holding trained weights: the decoder baseline's post_quant_conv and decoder);
    the trained weights left over form the root unit. Frozen weights (requires_grad False: the tokenizer's
    encoder, Janus's vision tower and VQ) are kept out of every unit: replicated, never gathered."""
    from torch.distributed.fsdp import fully_shard

    def trained(m):
        return any(p.requires_grad for p in m.parameters())

    def frozen(m):
        return {p for p in m.parameters() if not p.requires_grad} or None

    wrap = getattr(module, "fsdp_wrap_modules", None)
    units = list(wrap()) if wrap is not None else [c for c in module.children() if trained(c)]
    inside = set()
    for unit in units:
        if trained(unit):
            fully_shard(unit, ignored_params=frozen(unit))
            inside |= set(unit.parameters())
    if any(p.requires_grad and p not in inside for p in module.parameters()):
        fully_shard(module, ignored_params=frozen(module))


@contextlib.contextmanager
def gathered(module, blocks: bool = False):
    """A block in which `module`'s own methods (teacher_forced_logits, generate, decode) may be called under
    FSDP2: its root unit gathered; its blocks gather themselves in their forward. `blocks`: every unit gathered
    for the whole block too, for code that calls the blocks' own methods instead of their forward (the sampler's
    static-cache step, `decode_static`). Every rank must enter it (the gathers are collectives). A module that
    is not sharded: nothing to do."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(module, FSDPModule):
        yield
        return
    module._get_fsdp_state()._lazy_init()  # FSDP2 picks its root at the first root forward; a probe may come first
    units = [m for m in module.modules() if isinstance(m, FSDPModule)] if blocks else [module]  # same order per rank
    # a block's forward inside (the sampler's prefill) would reshard it after itself: kept gathered, then restored
    groups = [(g, g.post_forward_mesh_info) for u in units[1:] for g in u._get_fsdp_state()._fsdp_param_groups]
    for unit in units[1:]:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in reversed(units):
            unit.reshard()
        for group, mesh_info in groups:
            group.post_forward_mesh_info = mesh_info


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
        self.generator_preset, self.dataset = checked.generator_preset, checked.dataset
        dev = devmod.resolve(cfg.device) if cfg.device != "auto" else None
        cpu = (dev is not None and dev.type == "cpu") or not torch.cuda.is_available()
        if dev is not None and dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev.index)
        precision = "no" if cpu and not cfg.mixed_precision_on_cpu else cfg.mixed_precision
        trackers = list(cfg.report_to)
        # `accelerate launch --use_fsdp` asks for FSDP: this trainer shards the module itself (FSDP2, below), so
        # accelerate stays plain data parallel and does not wrap it a second time with its FSDP1 plugin
        launched_fsdp = os.environ.pop("ACCELERATE_USE_FSDP", "false").lower() == "true"
        want_fsdp = cfg.sharding == "fsdp" or launched_fsdp
        if want_fsdp and "RANK" in os.environ:  # launched, even as one process: FSDP needs the process group
            devmod.ensure_process_group()
        self.accelerator = acc = Accelerator(cpu=cpu, mixed_precision=precision, log_with=trackers or None,
                                             project_dir=str(self.run_dir))
        set_seed(cfg.seed)
        self.device = acc.device
        self.world = acc.num_processes
        self.rank = acc.process_index
        self.accum = cfg.accumulation_steps(self.world)
        self.fsdp = want_fsdp and torch.distributed.is_initialized()  # one process not launched: nothing to shard
        self.log(f"[setup] {cfg.method} on {self.world} process(es) ({'FSDP' if self.fsdp else 'DDP' if self.world > 1 else 'unsharded'}), "
                 f"device {self.device}, precision {precision}; "
                 f"{cfg.global_batch_size} images/step = {self.world} x {cfg.per_device_train_batch_size} x {self.accum} accumulation")

        # --- data (built and checked in preflight, before the weights are read)
        self.plan = StepPlan(len(self.dataset), cfg.global_batch_size, cfg.per_device_train_batch_size, self.world, cfg.seed)

        # --- models
        policy, tokenizer = load.load_pair(cfg.model, cfg.init_weights, self.device)
        # a preset stored in bf16 (Janus) trains fp32 master weights under bf16 autocast: AdamW's steps at lr 1e-7
        # are below bf16's resolution (0.1% of the weights moved in 10 steps); its VQ in fp32 for x* and rewards
        for module in (policy, tokenizer):
            if any(p.is_floating_point() and p.dtype != torch.float32 for p in module.parameters()):
                module.float()
        if self.generator_preset.task == "c2i" and cfg.data == "imagefolder":
            from core.data.imagefolder import check_num_classes

            check_num_classes(self.dataset, policy.config.num_classes)
        policy.gradient_checkpointing = cfg.gradient_checkpointing
        ref_policy = None
        if self.method.uses_reference(cfg):
            ref_policy = load.load_generator(cfg.model, cfg.init_weights, self.device)
            ref_policy.requires_grad_(False)

        # --- what is trained (the method decides), prepared by accelerate
        trained = self.method.trainable(policy, tokenizer)
        if self.device.type == "cuda":
            self.fit_memory(policy, torch.cuda.get_device_properties(self.device).total_memory)
        if self.fsdp:  # sharded before the optimizer is built: AdamW holds (and steps) the sharded weights
            fsdp_shard(trained)
        decay = [p for n, p in trained.named_parameters() if p.requires_grad and "norm" not in n]
        no_decay = [p for n, p in trained.named_parameters() if p.requires_grad and "norm" in n]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2))
        # not prepared by accelerate: its scheduler wrapper steps once per process, N times per optimizer step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda)
        if self.fsdp:
            self.trained_prepared, self.optimizer = trained, acc.prepare(optimizer)
        else:
            self.trained_prepared, self.optimizer = acc.prepare(trained, optimizer)
        modules = {"generator": policy, "tokenizer": tokenizer, self.method.trains: self.trained_prepared}
        self.models = Models(policy=modules["generator"], tokenizer=modules["tokenizer"], ref_policy=ref_policy,
                             unwrap=self.unwrap)
        self.cond_encoder = condition_encoder(policy, self.generator_preset.task, self.device, text_encoder=self.generator_preset.text_encoder)  # captions -> condition; None for c2i
        self.token_cache: dict[int, torch.Tensor] = {}  # dataset index -> x* [N], always encoded in fp32 (encode_fp32)
        if trackers:
            acc.init_trackers(self.run_dir.name, config=cfg.to_dict())

    def fit_memory(self, policy, capacity_bytes: int) -> None:
        """Switch gradient checkpointing on when the memory estimate (core.vapi.estimate) of this run's step without
        it exceeds the device's `capacity_bytes`, and lower reward_chunk_size when even then a chunk's decode would
        not fit; each said in the log. The estimate knows whether the rollout is decoded before the gradient forward
        (rollout_mode "train" on a model with dropout) or beside its graph."""
        from core.vapi import estimate as E

        cfg = self.cfg
        if self.method.trains != "generator":
            return
        kw = dict(devices=[str(self.device)], capacity_bytes=capacity_bytes, shards=self.world if self.fsdp else 1)
        without = E.estimate(dataclasses.replace(cfg, gradient_checkpointing=False), **kw)
        if not without.fits and not cfg.gradient_checkpointing:
            policy.gradient_checkpointing = True
            self.log(f"[memory] estimated peak {without.peak / E.GIB:.1f} GiB per process is more than "
                     f"{E.FIT_FRACTION:.0%} of the device's {capacity_bytes / E.GIB:.1f} GiB: gradient "
                     f"checkpointing switched on (estimate with it: {without.peak_other / E.GIB:.1f} GiB)")
        chunk = E.reward_chunk_that_fits(
            dataclasses.replace(cfg, gradient_checkpointing=bool(policy.gradient_checkpointing)), **kw)
        if chunk < cfg.reward_chunk_size:  # the rewards are per sample: the chunk changes memory, not results
            self.log(f"[memory] reward_chunk_size {cfg.reward_chunk_size} -> {chunk}: a larger decode chunk would "
                     f"not fit beside the rest of the step")
            self.cfg = cfg = dataclasses.replace(cfg, reward_chunk_size=chunk)

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
        if self.fsdp:  # every rank takes part in gathering; rank 0 gets the full (CPU) tensors
            from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

            model = self.trained_prepared
            state = get_model_state_dict(model, options=_full_on_rank0())
            optim = get_optimizer_state_dict(model, self.optimizer.optimizer, options=_full_on_rank0())
        else:
            state = acc.get_state_dict(self.trained_prepared)
            optim = self.optimizer.state_dict()
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

    def load_checkpoint(self, path: Path) -> int:
        from core.models import checkpoint

        meta = json.loads((path / checkpoints.TRAINER_STATE_FILE).read_text())
        if meta.get("method", self.cfg.method) != self.cfg.method:
            raise ConfigError("method", f"{path} was written by method {meta['method']!r}, the run says {self.cfg.method!r}")
        model = self.trained_prepared
        name = self.method.weights_file
        if self.fsdp:  # rank 0 reads the files, the weights and AdamW states reach the other ranks by broadcast
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            sd, opt = ({}, {"optimizer": {}})
            if self.is_main:
                sd, _ = checkpoint.read_file(path / name)
                opt = checkpoint.load_object(path / checkpoints.OPTIMIZER_FILE)
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(model, sd, options=options)
            set_optimizer_state_dict(model, self.optimizer.optimizer, opt["optimizer"], options=options)
            scheduler = self._from_rank0(opt.get("scheduler"))
        else:
            sd, _ = checkpoint.read_file(path / name)
            checkpoint.load_strict(self.unwrap(model), sd, path / name)
            opt = checkpoint.load_object(path / checkpoints.OPTIMIZER_FILE)
            self.optimizer.load_state_dict(opt["optimizer"])
            scheduler = opt["scheduler"]
        self.scheduler.load_state_dict(scheduler)
        return int(meta["step"])

    def _from_rank0(self, obj):
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        return box[0]

    # ------------------------------------------------------------------ previews and probes
    def preview_conditions(self):
        cfg = self.cfg
        policy = self.unwrap(self.policy)
        if self.generator_preset.task == "c2i":
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
        """Rank 0 writes the grid; under FSDP every rank samples it (the gathers of the weights are collectives)."""
        if not self.is_main and not self.fsdp:
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
            with self.accelerator.autocast(), gathered(policy, blocks=True), gathered(tok):
                imgs = generate_images(policy, tok, cond, seeds=[s for _ in conds for s in seeds],
                                       cond_mask=mask, cfg_scale=cfg.preview_cfg_scale, temperature=cfg.temperature,
                                       compile="off")  # a live (maybe sharded) policy: a graph per preview won't pay
        finally:
            policy.train(was_training[0])
            tok.train(was_training[1])
        if not self.is_main:
            return
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
        with self.accelerator.autocast(), gathered(policy):
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

            def ctx():  # DDP: gradient all-reduce only on the last micro-batch (FSDP reduce-scatters each one)
                return contextlib.nullcontext() if sync or self.fsdp else acc.no_sync(model)

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
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm of the sharded gradients, reduced over ranks
            grad_norm = grad_norm.full_tensor()
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


