"""Will a run fit, and how long will it take? An estimate from the config alone, before any weights are read.

`estimate(cfg, devices=..., gpu=...)` counts the generator's parameters (built on the meta device: no memory,
no file), then adds up the peak memory of one device during a VA-π micro-batch:

    weights      4 P (fp32 master weights; autocast keeps them fp32)   + 2 P bf16 copies under autocast
    gradients    4 P                                                    AdamW states 8 P (exp_avg, exp_avg_sq)
    frozen       tokenizer (fp32), LPIPS VGG trunk (fp32), text encoder (bf16; LlamaGen T2I), reference policy (prior=kl)
    activations  b*T tokens x d x (per block x n_layer + ACT_OUTSIDE_LAYERS) bytes in fp32 (bf16: half), or with
                 gradient checkpointing each layer's fp32 input plus one layer recomputed
    logits       LOGIT_COPIES x b*N*V fp32 (the logits, their log-softmax and softmax, their gradients)
    reward       the decoder's full-resolution tensors of the b*G samples, LPIPS's VGG activations for a chunk of
                 `reward_chunk_size`, plus the reference images' LPIPS taps for the micro-batch (computed once per item)

The peak is the sum of the terms, except where the rollout is sampled, decoded and scored before the gradient
forward (core.vapi.objective.compute_loss: rollout_mode "train" on a model with dropout, the LlamaGen presets):
then the decode is freed before the gradient graph (activations + logits) is built, and only the larger of the
two counts. The trainer (Trainer.fit_memory) uses this estimate on its GPU to switch gradient checkpointing on
and to shrink reward_chunk_size, and README's memory table is `python -m core estimate`'s output.

with b = per_device_train_batch_size, N image tokens, T = N + condition tokens - 1, V the codebook size. DDP
replicates all of it on every device (more devices shorten a step, they do not shrink it); FSDP would shard the
4P + 4P + 8P (the trainer's FSDP: `shards`). Two sources for the constants: the CPU ones were measured on the CPU
(fp32; peak resident memory of one step of the real objective, varied one size at a time) and are checked on other
shapes by tests/test_estimate.py; two were measured on a GPU (issue 27, GPT-XXL @ 384 px, bf16 autocast) and
replace their CPU counterparts in a GPU estimate, where they disagree (see GPU_ACT_PER_LAYER, GPU_DECODE_BYTES).

Time: FLOPs of the generator's forward + backward (6 P T + 12 L T^2 d per sequence, B sequences per step: the
grouped schedule) and of decode + LPIPS (convolutions counted from the configs) over the device's dense peak at
an assumed utilisation (ASSUMED_MFU), or the utilisation `benchmarks/gpu_check.sh` measured on this GPU
(benchmarks/results/gpu_check.json) when present. On the CPU the peak is a measured fp32 matmul rate.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from core import paths
from core.errors import ConfigError
from core.units import format_duration

GIB = 2**30
# Measured on the CPU in fp32 (tests/test_estimate.py fits none of these: it checks them on shapes they were not
# read from): bytes per token per unit of width d kept for the backward, and copies of [b, N, V] / decoded images.
ACT_PER_LAYER = 50  # per block (attention and SwiGLU inputs, norms, dropout masks), fp32; bf16 halves it
ACT_OUTSIDE_LAYERS = 150  # embeddings, the final norm, the output head's input and its gradients' buffers
ACT_CHECKPOINTED = 66  # with gradient checkpointing: one block recomputed plus the same outside part, per token
# Measured on a GPU (issue 27: GPT-XXL @ 384 px, 16 images per micro-batch, bf16 autocast, SDPA), used for GPU
# estimates instead of the CPU figures above, where the two disagree; the CPU figures stay for CPU estimates.
# - saved activations: 50 MiB per block per image = 50 * 2**20 / (577 positions x 1536) = 59 bytes per token per
#   unit of width in bf16 (118 in fp32 terms), against the CPU's ACT_PER_LAYER 50 fp32 (25 bf16): CUDA's SDPA and
#   autocast keep fp32 copies the CPU path does not, so the CPU figure halved would put GPT-XXL at 17 GiB, not the
#   measured 37.5 GiB.
# - decode + reward of a chunk: 11 GiB for 32 images at 384 px, decoded and scored in fp32 (VQ-16 decoder, MSE +
#   LPIPS) = 2500 bytes per pixel per image; the CPU model (DECODE_COPIES, scaled to bf16) gave 10.6 GiB but the
#   decode runs in fp32 (x* and rewards in fp32), so the GPU measurement is the one used.
GPU_ACT_PER_LAYER = 118  # fp32-equivalent bytes per token per unit of width per block (59 measured under bf16)
GPU_DECODE_BYTES = 2500  # per pixel per image of a reward chunk, for a 128-channel (VQ-16) decoder; scaled by width
VQ16_DECODER_CHANNELS = 128
FIT_FRACTION = 0.92  # of the device's memory the estimate may use: the allocator's fragmentation, the CUDA context
LOGIT_COPIES = 6  # fp32 [b, N, V] tensors alive at the peak: logits, /tau, log-softmax, softmax, their gradients
DECODE_COPIES = 4.5  # full-resolution decoder tensors per decoded sample
RUNTIME_BYTES = 32 * 2**20  # the framework's own buffers on first use
LPIPS_PARAMS = 14_714_688  # VGG16 trunk to relu5_3 (torchvision's vgg16.features[:30])
T5_XL_ENCODER_PARAMS = 1_223_527_424  # FLAN-T5-XL's encoder (T5EncoderModel), the LlamaGen T2I text encoder
ASSUMED_MFU = 0.35  # utilisation of the dense bf16 peak without a measured figure (gpu_check's target is >= 40%)
CPU_EFFICIENCY = 0.5  # of the measured fp32 matmul rate, for a whole step on the CPU
GPU_MEMORY_GIB = {"H200": 141, "H100": 80, "A100-40GB": 40, "A100": 80, "L40S": 48, "A6000": 48, "RTX 4090": 24,
                  "A10": 24, "V100": 32, "T4": 16}
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12, "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12, "RTX 4090": 165e12,
             "A10": 125e12, "V100": 125e12, "T4": 65e12}  # dense, TFLOP/s x 1e12 (vendor figures); the first
# name found in the device name wins, so each variant comes before its family
GPU_CHECK_RESULTS = paths.ROOT / "benchmarks" / "results" / "gpu_check.json"


@dataclass
class Arch:
    """What the estimate needs of a generator: sizes, not weights."""

    params: int  # all parameters of the generator
    trained: int  # of those, the ones the optimizer updates
    n_layer: int
    dim: int
    vocab: int  # image codebook size V
    image_tokens: int  # N
    cond_tokens: int  # 1 class token, 120 caption tokens, or a Janus prompt (estimated)
    image_size: int
    embedding_params: int = 0  # token / class / caption embeddings and the output head (not in the 6PT FLOPs)
    dropout: bool = False  # train mode changes the forward (core.vapi.objective.has_dropout)


@dataclass
class Estimate:
    model: str
    arch: Arch
    micro_batch: int
    num_generations: int
    world: int
    accumulation: int
    device: str  # "cuda:0", "cpu", or the named GPU
    device_bytes: Optional[int]
    memory: dict[str, float]  # term -> bytes, with the run's gradient_checkpointing setting
    peak_other: float  # the peak with gradient checkpointing flipped
    checkpointing: bool
    step_seconds: Optional[float]
    basis: str  # where the step time's rate comes from
    advice: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    overlap: bool = True  # whether the rollout's decode coexists with the gradient graph

    @property
    def peak(self) -> float:
        return peak_of(self.memory, self.overlap)

    @property
    def fits(self) -> Optional[bool]:
        return None if self.device_bytes is None else self.peak <= FIT_FRACTION * self.device_bytes

    def lines(self) -> list[str]:
        a = self.arch
        out = [f"model: {self.model}: {a.params / 1e9:.2f}B parameters ({a.trained / 1e9:.2f}B trained), "
               f"{a.n_layer} layers x {a.dim}, {a.image_tokens} image tokens + {a.cond_tokens} condition tokens, V {a.vocab}",
               f"step: {self.micro_batch} images x G {self.num_generations} per micro-batch, {self.accumulation} "
               f"micro-batch(es) per step on {self.world} device(s)",
               f"peak memory per device ({'with' if self.checkpointing else 'without'} gradient checkpointing): "
               f"{self.peak / GIB:.1f} GiB"]
        out += [f"  {k:24s} {v / GIB:7.2f} GiB" for k, v in self.memory.items()]
        if not self.overlap:
            out.append("  rollout first (rollout_mode=train, a model with dropout): the decode is freed before the "
                       "gradient graph, so only the larger of 'decode + reward' and 'activations' + 'logits' counts")
        out.append(f"  {'with' if not self.checkpointing else 'without'} gradient checkpointing it would be "
                   f"{self.peak_other / GIB:.1f} GiB")
        if self.device_bytes is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            out.append(f"device: {self.device}, {self.device_bytes / GIB:.0f} GiB: {verdict}")
        out += [f"  to fit: {a}" for a in self.advice]
        if self.step_seconds is not None:
            out.append(f"time: about {format_duration(self.step_seconds)} per step, 100 steps ≈ {format_duration(100 * self.step_seconds)} "
                       f"({self.basis})")
        out += [f"warning: {w}" for w in self.warnings]
        return out


# ----------------------------------------------------------------------------- the architecture
def arch_of(model: str) -> Arch:
    """A preset's sizes, from a meta-device build (LlamaGen) or its config.json (Janus); no weights are read."""
    import torch

    from core.models import load, registry

    preset = registry.get_generator(model)
    if preset.family == "janus":
        return _janus_arch(preset)
    with torch.device("meta"):
        gpt = load.build_generator(model)
    from core.vapi.objective import has_dropout

    c = gpt.config
    params = sum(p.numel() for p in gpt.parameters())
    emb = sum(p.numel() for n, p in gpt.named_parameters() if "embedding" in n or n.startswith("output"))
    return Arch(params, params, c.n_layer, c.dim, c.vocab_size, c.block_size, c.cls_token_num, preset.image_size, emb,
                has_dropout(gpt))


def _janus_arch(preset) -> Arch:
    import torch

    config_file = preset.path / "config.json"
    if not config_file.is_file():
        raise ConfigError("model", f"{preset.name}: the estimate reads the model's sizes from {config_file}, which is not "
                                   f"there yet: `python -m core download --preset {preset.name}`")
    from transformers import JanusConfig, JanusForConditionalGeneration

    with torch.device("meta"):
        model = JanusForConditionalGeneration(JanusConfig.from_pretrained(preset.path))
    params = sum(p.numel() for p in model.parameters())
    text = model.config.text_config
    vision_gen = getattr(model.config, "vq_config", None)
    vocab = int(getattr(vision_gen, "num_embeddings", 16384)) if vision_gen is not None else 16384
    side = preset.image_size // 16
    frozen = ("model.vision_model.", "model.aligner.", "model.vqmodel.")  # what core.models.janus freezes
    trained = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(frozen))
    from core.vapi.objective import has_dropout

    return Arch(params, trained or params, int(text.num_hidden_layers), int(text.hidden_size), vocab, side * side,
                64, preset.image_size, int(text.vocab_size) * int(text.hidden_size), has_dropout(model))


def _tokenizer_bytes_and_decoder(model: str, image_size: int) -> tuple[int, int, list[tuple[int, int]]]:
    """(tokenizer parameters, decoder full-resolution channels, [(channels, resolution)] per decoder stage)."""
    import torch

    from core.models import load, registry

    preset = registry.get_generator(model)
    t = registry.get_tokenizer(preset.tokenizer)
    if t.arch == "janus":  # Janus's VQ is LlamaGen's VQ-16 design
        from core.models.vq import VQConfig

        cfg = VQConfig(image_size=image_size)
        params = 72_000_000
    else:
        with torch.device("meta"):
            tok = load.build_tokenizer(preset.tokenizer)
        cfg = tok.config
        params = sum(p.numel() for p in tok.parameters())
    mult = list(cfg.decoder_ch_mult)
    stages = [(cfg.ch * m, image_size // 2 ** k) for k, m in enumerate(mult)]  # stage k at image_size / 2^k
    return params, cfg.ch * mult[0], stages


# ----------------------------------------------------------------------------- memory
def memory_terms(arch: Arch, *, micro_batch: int, num_generations: int, reward_chunk_size: int, bf16: bool,
                 checkpointing: bool, lpips: bool, text_encoder_params: int = 0, tokenizer_params: int = 0,
                 decoder_channels: int = 0, ref_policy: bool = False, on_cpu: bool = False,
                 shards: int = 1) -> dict[str, float]:
    """Bytes per device for one micro-batch, term by term (the module docstring's model): CPU-measured constants
    with `on_cpu`, else (a GPU) the GPU-measured ones where they exist. `shards`: FSDP's ranks, over which the fp32
    weights, gradients and AdamW states are divided."""
    b, G, N, d, L = micro_batch, num_generations, arch.image_tokens, arch.dim, arch.n_layer
    T = N + arch.cond_tokens - 1
    scale = 0.5 if bf16 else 1.0  # autocast keeps bf16 activations for the backward
    per_layer = ACT_PER_LAYER if on_cpu else GPU_ACT_PER_LAYER
    if checkpointing:  # each block's fp32 input, one block recomputed (with the GPU's per-block figure on a GPU)
        activations = b * T * d * (4 * L + (ACT_CHECKPOINTED - ACT_PER_LAYER + per_layer) * scale)
    else:
        activations = b * T * d * (per_layer * L + ACT_OUTSIDE_LAYERS) * scale
    H = arch.image_size
    chunk = min(reward_chunk_size, b * G)
    lpips_taps = (64 + 128 / 4 + 256 / 16 + 512 / 64 + 512 / 256) * H * H * 4  # fp32 unit-normalised VGG taps per image
    if on_cpu:  # the CPU's allocator keeps what each chunk's decode freed (measured: the peak grows with all b*G)
        reward = b * G * DECODE_COPIES * decoder_channels * H * H * 4 * scale
        reward += chunk * (lpips_taps + 3 * 64 * H * H * 4) if lpips else 0
    else:  # CUDA's caching allocator reuses a chunk's memory: a chunk, at the GPU measurement (with LPIPS: an upper
        # bound for MSE-only rewards)
        reward = chunk * GPU_DECODE_BYTES * H * H * decoder_channels / VQ16_DECODER_CHANNELS
    terms = {
        "weights (fp32)": 4 * arch.params / shards,
        "gradients (fp32)": 4 * arch.trained / shards,
        "AdamW states (fp32)": 8 * arch.trained / shards,
        "activations": activations,
        "logits (fp32)": LOGIT_COPIES * 4 * b * N * arch.vocab,
        "decode + reward": reward,
        "frozen models": 4 * tokenizer_params + (4 * LPIPS_PARAMS if lpips else 0) + 2 * text_encoder_params,
        "runtime": RUNTIME_BYTES,
    }
    if bf16:
        terms["weights (bf16 copies)"] = 2 * arch.params
    if lpips:
        terms["LPIPS of the references"] = b * lpips_taps
    if ref_policy:
        terms["reference policy"] = (2 if bf16 else 4) * arch.params
    return terms


def peak_of(terms: dict[str, float], overlap: bool = True) -> float:
    """The peak of `memory_terms`: their sum, or, when the rollout is decoded before the gradient forward
    (overlap False), the rest plus the larger of the decode and the gradient graph."""
    if overlap:
        return sum(terms.values())
    graph = terms["activations"] + terms["logits (fp32)"]
    return sum(terms.values()) - min(graph, terms["decode + reward"])


# ----------------------------------------------------------------------------- time
def gen_flops(arch: Arch, sequences: int, checkpointing: bool) -> float:
    """Forward + backward FLOPs of `sequences` teacher-forced sequences (benchmarks/gpu_check.py's count);
    checkpointing adds one forward (x 4/3)."""
    T = arch.image_tokens + arch.cond_tokens - 1
    per = 6 * (arch.params - arch.embedding_params) * T + 12 * arch.n_layer * T**2 * arch.dim
    return sequences * per * (4 / 3 if checkpointing else 1)


def reward_flops(stages: list[tuple[int, int]], images: int, lpips: bool, num_res_blocks: int = 2) -> float:
    """Decoder 3x3 convolutions per stage ((num_res_blocks + 1) ResNet blocks of two convs) and, with LPIPS, VGG16's
    13 convolutions, forward only."""
    dec = sum((num_res_blocks + 1) * 2 * 2 * 9 * c * c * r * r for c, r in stages)
    vgg = 0.0
    if lpips:
        H = stages[0][1]
        vgg_layers = [(3, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 2), (128, 256, 4), (256, 256, 4), (256, 256, 4),
                      (256, 512, 8), (512, 512, 8), (512, 512, 8), (512, 512, 16), (512, 512, 16), (512, 512, 16)]
        vgg = sum(2 * 9 * cin * cout * (H / s) ** 2 for cin, cout, s in vgg_layers)
    return images * (dec + vgg)


_CPU_RATE: Optional[float] = None


def cpu_flops() -> float:
    """Measured fp32 matmul FLOP/s of this process's CPU threads (about 0.3 s, once per process)."""
    global _CPU_RATE
    if _CPU_RATE is None:
        import torch

        a = torch.randn(512, 512)
        a @ a
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            a @ a
            n += 1
        _CPU_RATE = n * 2 * 512**3 / (time.perf_counter() - t0)
    return _CPU_RATE


def measured_mfu(gpu_name: str, peak: float) -> Optional[tuple[float, str]]:
    """(utilisation, source) from benchmarks/results/gpu_check.json when it was measured on a GPU of this name: the
    FLOPs this module counts for gpu_check's step (GPT-XXL @ 384, 128 images x G 8, LPIPS) over its measured time."""
    if not GPU_CHECK_RESULTS.is_file():
        return None
    try:
        data = json.loads(GPU_CHECK_RESULTS.read_text())
        device, seconds = str(data["device"]), float(data["step_seconds"])
    except (ValueError, KeyError, TypeError):
        return None
    if not (device in gpu_name or any(k in device and k in gpu_name for k in PEAK_BF16)) or seconds <= 0:
        return None
    arch = arch_of("llamagen-c2i-xxl-384")
    _, _, stages = _tokenizer_bytes_and_decoder("llamagen-c2i-xxl-384", arch.image_size)
    flops = gen_flops(arch, 128, False) + reward_flops(stages, 128 * 8, True)
    mfu = flops / (seconds * peak)
    return mfu, f"{mfu:.0%} of the peak: gpu_check's step time on {device} ({seconds:.1f} s)"


# ----------------------------------------------------------------------------- the device
def parse_gpu(text: str) -> tuple[str, int]:
    """`--gpu H100` / `--gpu 80` (GiB) -> (name, bytes)."""
    t = str(text).strip()
    try:
        gib = float(t.lower().removesuffix("gib").removesuffix("gb"))
        if gib <= 0:
            raise ValueError
        return f"a {gib:g} GiB GPU", int(gib * GIB)
    except ValueError:
        pass
    for name in sorted(GPU_MEMORY_GIB, key=len, reverse=True):
        if name.lower().replace(" ", "") in t.lower().replace(" ", ""):
            return name, GPU_MEMORY_GIB[name] * GIB
    raise ConfigError("--gpu", f"unknown GPU {t!r}; give its memory in GiB (e.g. --gpu 80) or one of "
                               f"{', '.join(GPU_MEMORY_GIB)}")


def _device_of(devices: Sequence[str]) -> tuple[str, Optional[int], str]:
    """(device label, memory bytes, kind "cuda" | "cpu") of the first device of the set."""
    first = devices[0] if devices else "cpu"
    if first.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = int(first.split(":")[1]) if ":" in first else 0
            props = torch.cuda.get_device_properties(index)
            return f"{first} ({props.name})", int(props.total_memory), "cuda"
        return first, None, "cuda"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = None
    return "cpu", total, "cpu"


# ----------------------------------------------------------------------------- the estimate
def estimate(cfg, devices: Optional[Sequence[str]] = None, gpu: Optional[str] = None, *,
             capacity_bytes: Optional[int] = None, shards: int = 1) -> Estimate:
    """The estimate for a resolved VapiConfig on `devices` (default: the config's device), a named GPU, or a GPU of
    `capacity_bytes` (the trainer's own device); `shards`: FSDP's ranks."""
    from core.device import devices_of
    from core.models import registry

    preset = registry.get_generator(cfg.model)
    arch = arch_of(cfg.model)
    if devices is None:
        devices = [d for d in devices_of(cfg.device).split(",") if d]
    world = max(1, len(devices))
    if capacity_bytes is not None:
        label, device_bytes, kind = f"a {capacity_bytes / GIB:.1f} GiB GPU", int(capacity_bytes), "cuda"
    elif gpu is not None:
        label, device_bytes = parse_gpu(gpu)
        kind = "cuda"
    else:
        label, device_bytes, kind = _device_of(devices)
    bf16 = cfg.mixed_precision == "bf16" and (kind == "cuda" or cfg.mixed_precision_on_cpu)
    lpips = any(w > 0 and k in ("lpips", "lpips-alex") for k, w in cfg.reward_weights.items())
    tok_params, dec_ch, stages = _tokenizer_bytes_and_decoder(cfg.model, arch.image_size)
    text_params = T5_XL_ENCODER_PARAMS if preset.caption_encoder == "flan-t5-xl" else 0
    common = dict(num_generations=cfg.num_generations, reward_chunk_size=cfg.reward_chunk_size, bf16=bf16, lpips=lpips,
                  text_encoder_params=text_params, tokenizer_params=tok_params, decoder_channels=dec_ch,
                  ref_policy=cfg.prior == "kl", on_cpu=kind == "cpu", shards=shards)
    b = cfg.per_device_train_batch_size
    ckpt = bool(cfg.gradient_checkpointing)
    overlap = not (cfg.rollout_mode == "train" and arch.dropout)  # rollout first: core.vapi.objective.compute_loss
    memory = memory_terms(arch, micro_batch=b, checkpointing=ckpt, **common)
    other = peak_of(memory_terms(arch, micro_batch=b, checkpointing=not ckpt, **common), overlap)
    try:
        accumulation = cfg.accumulation_steps(world)
    except ConfigError:
        accumulation = max(1, cfg.global_batch_size // (b * world))
    est = Estimate(cfg.model, arch, b, cfg.num_generations, world, accumulation, label, device_bytes, memory, other,
                   ckpt, None, "", overlap=overlap)
    # --- time: the whole step's FLOPs over the devices' rate
    images_per_device = cfg.global_batch_size / world
    flops = gen_flops(arch, images_per_device, ckpt) + reward_flops(stages, images_per_device * cfg.num_generations, lpips)
    if kind == "cuda":
        name = label if gpu is None else gpu
        peak = next((v for k, v in PEAK_BF16.items() if k.lower() in str(name).lower()), None)
        measured = measured_mfu(str(name), peak) if peak is not None else None
        if peak is not None:
            mfu, basis = measured if measured else (ASSUMED_MFU, f"{ASSUMED_MFU:.0%} of the dense bf16 peak, assumed")
            est.step_seconds, est.basis = flops / (peak * mfu), f"{basis}; {peak / 1e12:.0f} TFLOP/s peak"
    else:
        rate = cpu_flops() * CPU_EFFICIENCY
        est.step_seconds, est.basis = flops / rate, f"{rate / 1e9:.0f} GFLOP/s: this CPU's measured matmul rate x {CPU_EFFICIENCY}"
    # --- what to change when it does not fit
    if est.fits is False:
        est.advice = advice(cfg, arch, world, device_bytes, common, gpu=kind == "cuda", overlap=overlap)
    if kind == "cpu" and not preset.demo_sized and est.step_seconds is not None:
        est.warnings.append(f"{cfg.model} ({arch.params / 1e9:.1f}B parameters) on the CPU: about "
                            f"{format_duration(est.step_seconds)} per step, {format_duration(100 * est.step_seconds)} for 100 steps. "
                            f"Run it on a GPU (devices cuda:0 ...), or try the method on the CPU with demo-c2i / demo-t2i")
    return est


def advice(cfg, arch: Arch, world: int, device_bytes: int, common: dict, gpu: bool = True,
           overlap: bool = True) -> list[str]:
    """Changes that bring the peak under the device's memory, smallest first."""
    limit = FIT_FRACTION * device_bytes
    out = []
    per_step = cfg.global_batch_size // world
    sizes = [k for k in range(cfg.per_device_train_batch_size - 1, 0, -1) if per_step % k == 0]
    for ckpt in ([False, True] if not cfg.gradient_checkpointing else [True]):
        for k in sizes:
            if peak_of(memory_terms(arch, micro_batch=k, checkpointing=ckpt, **common), overlap) <= limit:
                change = f"per_device_train_batch_size={k}" + (" and gradient_checkpointing=true" if ckpt else "")
                out.append(f"set {change} (more micro-batches per step: same result, longer step)")
                break
        if out:
            break
    if not cfg.gradient_checkpointing and peak_of(memory_terms(arch, micro_batch=cfg.per_device_train_batch_size,
                                                               checkpointing=True, **common), overlap) <= limit:
        out.insert(0, "set gradient_checkpointing=true (about a third more compute)")
    if not out:  # nothing fits on one device: shard the weights, gradients and AdamW states (FSDP)
        smallest = memory_terms(arch, micro_batch=1, checkpointing=True, **common)
        shardable = smallest["weights (fp32)"] + smallest["gradients (fp32)"] + smallest["AdamW states (fp32)"]
        rest = peak_of(smallest, overlap) - shardable
        if rest < limit and gpu:
            need = math.ceil(shardable / (limit - rest))
            out.append(f"weights, gradients and AdamW states take {shardable / GIB:.0f} GiB: shard them over >= {need} GPUs "
                       f"with FSDP (ACCELERATE_USE_FSDP=true), with per_device_train_batch_size=1 and "
                       f"gradient_checkpointing=true (more DDP devices do not shrink the per-device memory)")
        else:
            out.append(f"a {'GPU' if gpu else 'machine'} with more memory: even 1 image per micro-batch with gradient "
                       f"checkpointing does not fit")
    return out


def quick_warnings(cfg) -> list[str]:
    """The estimate's warnings for preflight (a paper-size model on the CPU; a micro-batch that will not fit),
    never raising: an estimate is advice, not a check."""
    try:
        est = estimate(cfg)
    except Exception as e:  # noqa: BLE001 (advice only: a failure here must not stop a run)
        return [f"no estimate ({type(e).__name__}: {e})"] if not isinstance(e, ConfigError) else []
    out = list(est.warnings)
    if est.fits is False:
        out.append(f"the estimated peak memory per device, {est.peak / GIB:.1f} GiB, is above {est.device}'s "
                   f"{est.device_bytes / GIB:.0f} GiB: " + "; or ".join(est.advice))
    return out


def checkpointing_needed(cfg, devices: Optional[Sequence[str]] = None, gpu: Optional[str] = None,
                         **kw) -> Optional[bool]:
    """For a trainer that turns gradient checkpointing on by itself: True when the micro-batch fits on the device only
    with it, False when it fits without, None when neither fits or the device's memory is unknown. `kw`:
    estimate's capacity_bytes and shards."""
    from dataclasses import replace

    without = estimate(replace(cfg, gradient_checkpointing=False), devices=devices, gpu=gpu, **kw)
    if without.fits is None:
        return None
    if without.fits:
        return False
    return True if without.peak_other <= FIT_FRACTION * without.device_bytes else None


def reward_chunk_that_fits(cfg, **kw) -> int:
    """The largest reward_chunk_size (at most cfg's) whose step fits the device (estimate's `kw`: devices, gpu,
    capacity_bytes, shards) with cfg's gradient_checkpointing; at least 1. The rewards are per sample: the chunk
    changes memory, not results. The reward term is scaled with the chunk, as on a GPU (the trainer's case)."""
    est = estimate(cfg, **kw)
    if est.fits is not False:
        return cfg.reward_chunk_size
    terms = dict(est.memory)
    per_image = terms["decode + reward"] / min(cfg.reward_chunk_size, est.micro_batch * est.num_generations)
    for chunk in range(cfg.reward_chunk_size - 1, 0, -1):
        terms["decode + reward"] = per_image * chunk
        if peak_of(terms, est.overlap) <= FIT_FRACTION * est.device_bytes:
            return chunk
    return 1
