"""Training methods: what each one trains, its loss, and the file its checkpoints hold.

The trainer's loop is the same for all three; everything that differs between them lives here:
- `VaPi` (§4): the generator, policy loss + prior on rollouts (core.vapi.objective); PPO iterations re-use a
  micro-batch's rollout; a frozen reference copy only for prior="kl".
- `Ste` (App. C.1): the generator, end to end through the frozen decoder (core.vapi.baselines.ste_loss).
- `DecoderPostTrain` (App. C.2): the tokenizer's decoder, the generator frozen (core.vapi.baselines.decoder_loss).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from core import checkpoints
from core.errors import ConfigError
from core.vapi import baselines, objective
from core.vapi.config import METHODS, VapiConfig
from core.vapi.objective import Batch, Rollout


@dataclass
class Models:
    """The modules of a run as the trainer holds them: `policy` / `tokenizer` prepared by accelerate where the
    method trains them; `unwrap` strips a DDP/FSDP wrapper."""

    policy: Any
    tokenizer: Any
    ref_policy: Any
    unwrap: Callable[[Any], Any]


LossOut = tuple[torch.Tensor, dict, Optional[Rollout]]


class Method:
    name = ""
    trains = "generator"  # "generator" | "tokenizer": the module the optimizer steps (and accelerate prepares)
    weights_file = checkpoints.MODEL_FILE  # what a checkpoint folder holds of the trained module (the upstream layout)
    probes_kl = True  # KL(pi || pi_base) is reported (the generator moves)

    def trainable(self, policy, tokenizer):
        """Set requires_grad and modes for training; returns the module to optimise. The generator methods train
        in train mode (VA-π then sets each forward's mode from cfg.rollout_mode)."""
        tokenizer.requires_grad_(False)
        policy.train()
        return policy

    def uses_reference(self, cfg: VapiConfig) -> bool:
        """Whether the run needs a frozen copy of the base generator."""
        return False

    def samples_per_image(self, cfg: VapiConfig) -> int:
        return 1

    def loss(self, m: Models, batch: Batch, cfg: VapiConfig, *, xi: float, generator: torch.Generator,
             rollout: Optional[Rollout]) -> LossOut:
        """One micro-batch -> (loss, metrics, rollout to keep for the next PPO iteration or None)."""
        raise NotImplementedError


class VaPi(Method):
    name = "vapi"

    def uses_reference(self, cfg: VapiConfig) -> bool:
        return cfg.prior == "kl"

    def samples_per_image(self, cfg: VapiConfig) -> int:
        return cfg.num_generations

    def loss(self, m, batch, cfg, *, xi, generator, rollout):
        out = objective.compute_loss(m.policy, m.unwrap(m.tokenizer), batch, cfg, xi=xi, generator=generator,
                                     ref_policy=m.ref_policy, rollout=rollout)
        return out.loss, out.metrics, out.rollout


class Ste(Method):
    name = "ste"

    def loss(self, m, batch, cfg, *, xi, generator, rollout):
        return (*baselines.ste_loss(m.policy, m.unwrap(m.tokenizer), batch, cfg, xi=xi, generator=generator), None)


class DecoderPostTrain(Method):
    name = "decoder"
    trains = "tokenizer"
    weights_file = checkpoints.TOKENIZER_FILE
    probes_kl = False

    def trainable(self, policy, tokenizer):
        policy.requires_grad_(False)
        policy.eval()
        tokenizer.requires_grad_(False)
        for p in baselines.decoder_parameters(tokenizer):
            p.requires_grad_(True)
        tokenizer.decoder.train()
        return tokenizer

    def loss(self, m, batch, cfg, *, xi, generator, rollout):
        return (*baselines.decoder_loss(m.unwrap(m.policy), m.tokenizer, batch, cfg, xi=xi, generator=generator), None)


REGISTRY: dict[str, Method] = {m.name: m for m in (VaPi(), Ste(), DecoderPostTrain())}
assert tuple(REGISTRY) == METHODS, "core.vapi.config.METHODS lists the methods defined here"


def method_of(cfg: VapiConfig) -> Method:
    if cfg.method not in REGISTRY:
        raise ConfigError("method", f"must be one of {METHODS}, got {cfg.method!r}")
    return REGISTRY[cfg.method]
