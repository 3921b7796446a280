"""Evaluation-scale sampling: N samples to indexed PNGs, sharded over processes, resumable, packed
into an ADM/LlamaGen ``.npz``.

An output folder::

    spec.json            the SamplingSpec (everything that decides a sample's pixels) and the sha256
                         of the generator and tokenizer files; a folder holds samples of one spec only
    samples/000000.png   sample i, written atomically (temporary file, then rename)
    samples.npz          arr_0 uint8 [N, H, W, 3], arr_1 [N] labels (class ids, or prompt indices)

Which sample is which, independently of N, of the process that drew it and of interruptions:

- condition: sample i gets ``classes[i % K]`` (K classes; all of the model's by default) or
  ``prompts[i % P]``. 50,000 samples over the 1000 ImageNet classes are 50 per class (Table 2's
  protocol), and any K*m first samples are balanced.
- seed: `sample_seed(seed, i)`, numpy's ``SeedSequence(seed, spawn_key=(i,))``. The sampler draws
  sample i's uniforms from that seed alone (`core.models.generate`), so base and aligned models
  evaluated with the same spec use the same uniforms for the same sample.
- batches: block b, samples ``[b*B, (b+1)*B)`` (B = batch_size), is always generated and decoded
  as one batch of B rows, also where it extends past N (rows >= N are dropped). Token sampling is
  batch-invariant, but convolution and matmul kernels are not bit-exact across batch shapes
  (decoded pixels move by ~1e-6, enough to flip a uint8 level now and then); fixed blocks make a
  resumed, re-sharded or 1-versus-8-process run write byte-identical PNGs. A block missing any of
  its files is generated again whole. So `batch_size` is part of the spec and N is not: raising N
  extends a folder, lowering it packs fewer.
- sharding: rank r of W processes takes the blocks b with b % W == r. No two ranks write the same
  file and no communication is needed; after a barrier rank 0 packs the archive. With
  ``accelerate launch`` the ranks come from `accelerate.PartialState`; `run_sampling` also takes
  `rank` / `world_size` explicitly (one process per call), which is how the tests simulate shards.
  Several machines need a shared output folder.

LlamaGen's `sample_c2i_ddp.py` conventions kept: images resized (bicubic, no antialiasing) to
`image_size` before quantisation when asked (Table 2: 384 px samples evaluated at 256 px), pixels
quantised as ``clamp(127.5 x + 128, 0, 255)``. Departures: LlamaGen draws a random class per
sample and one global seed per rank; here both are functions of the sample index, as above.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from core import configmeta
from core.checkpoints import file_sha256
from core.errors import ConfigError, DataError
from core.models.registry import DEFAULT_GENERATOR
from core.seeding import derive_seed

SPEC_FILE = "spec.json"
SAMPLES_DIR = "samples"
NPZ_FILE = "samples.npz"
SPEC_FORMAT = "vapi-sampling/1"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
_SAMPLE_NAME = re.compile(r"(\d{6,})\.png")
_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"\.(\d{6,})\.png\.\d+\.tmp")  # a sample being written: .<index>.png.<pid>.tmp

ProgressFn = Callable[[int, int], None]  # (samples done, samples in total)


def sample_seed(seed: int, index: int) -> int:
    """The sampler seed of sample `index`: a 63-bit child of (seed, index)."""
    return derive_seed(seed, index)


@dataclass(frozen=True)
class SamplingSpec:
    """What decides the pixels of sample i. Defaults are LlamaGen's FID sampling (paper App. D)."""

    model: str = DEFAULT_GENERATOR  # generator preset
    weights: Optional[str] = None  # generator weights file; None: the preset's published weights
    cfg_scale: float = 1.0  # Table 2: 1.0 (w/o cfg); w/ cfg 2.0 for XL, 1.75 for XXL (§5.2)
    temperature: float = 1.0  # App. D: temperature 1.0, top-k 0, top-p 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0  # base seed; sample i uses sample_seed(seed, i)
    batch_size: int = 32  # rows per block (see the module docstring: part of the identity)
    image_size: Optional[int] = None  # resize samples to this side before saving; Table 2: 256 (from 384)
    precision: str = "fp32"  # generator dtype: fp32 | bf16 (LlamaGen samples in bf16 on GPUs)
    classes: Optional[tuple[int, ...]] = None  # c2i: sample i gets classes[i % K]; None: all classes
    prompts: Optional[tuple[str, ...]] = None  # t2i: sample i gets prompts[i % P]

    def __post_init__(self):
        from core.models.generate import check_sampling_args

        check_sampling_args(self.cfg_scale, self.temperature, self.top_k, self.top_p)
        for name in ("seed", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                raise ConfigError(name, f"must be an integer >= {1 if name == 'batch_size' else 0}, got {value!r}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 8):
            raise ConfigError("image_size", f"must be an integer >= 8 or None (native size), got {self.image_size!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.classes is not None and self.prompts is not None:
            raise ConfigError("classes", "give classes (class-conditional) or prompts (text-conditional), not both")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
            if not self.classes or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in self.classes):
                raise ConfigError("classes", f"must be a non-empty list of class ids >= 0, got {list(self.classes)!r}")
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
            if not self.prompts or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
                raise ConfigError("prompts", "must be a non-empty list of non-empty strings")

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("classes", "prompts"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SamplingSpec:
        """From a sample folder's spec; an unknown key is a ConfigError naming it."""
        return configmeta.from_dict(cls, d, "a sampling spec")


def labels_of(spec: SamplingSpec, indices, num_classes: Optional[int] = None) -> np.ndarray:
    """Condition label of samples `indices` [B] int64: the class id, or the prompt index."""
    idx = np.asarray(indices, dtype=np.int64)
    if spec.prompts is not None:
        return idx % len(spec.prompts)
    classes = np.asarray(spec.classes if spec.classes is not None else range(_require_classes(num_classes)),
                         dtype=np.int64)
    return classes[idx % len(classes)]


def labels_for(spec: SamplingSpec, num_samples: int, num_classes: Optional[int] = None) -> np.ndarray:
    """Condition labels of samples 0..num_samples-1 [N] int64 (what the archive stores as arr_1)."""
    return labels_of(spec, np.arange(num_samples), num_classes)


def _require_classes(num_classes: Optional[int]) -> int:
    if not num_classes:
        raise ConfigError("classes", "the model's number of classes is unknown; list the classes to sample")
    return num_classes


# ------------------------------------------------------------------------------------------ the model

@dataclass
class Sampler:
    """A loaded generator ready to sample: policy, tokenizer and how prompts become conditions."""

    policy: torch.nn.Module
    tokenizer: torch.nn.Module
    device: torch.device
    task: str  # "c2i" | "t2i"
    num_classes: Optional[int] = None  # c2i
    encode_prompts: Optional[Callable[[Sequence[str]], tuple[torch.Tensor, Optional[torch.Tensor]]]] = None

    def conditions(self, spec: SamplingSpec, indices: Sequence[int]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(cond, cond_mask) for samples `indices`: class ids [B], or the encoded prompts (caption
        features [B, L, D] for LlamaGen T2I, prompt token ids [B, L] for Janus) with their mask [B, L]."""
        if self.task == "c2i":
            if spec.prompts is not None:
                raise ConfigError("prompts", f"{spec.model} is class-conditional; give classes, not prompts")
            return torch.as_tensor(labels_of(spec, indices, self.num_classes), device=self.device), None
        if spec.prompts is None:
            raise ConfigError("prompts", f"{spec.model} is text-conditional; give prompts")
        if self.encode_prompts is None:
            raise ConfigError("model", f"{spec.model}: no text encoder to turn prompts into conditions")
        cond, mask = self.encode_prompts([spec.prompts[i % len(spec.prompts)] for i in indices])
        if cond.is_floating_point():  # caption features follow the generator's dtype; token ids stay ids
            cond = cond.to(self.device, next(self.policy.parameters()).dtype)
        return cond.to(self.device), (mask.to(self.device) if mask is not None else None)

    def check(self, spec: SamplingSpec) -> None:
        """Errors a spec would hit only in the first batch, raised before any work."""
        if self.task == "c2i" and spec.prompts is not None:
            raise ConfigError("prompts", f"{spec.model} is class-conditional; give classes, not prompts")
        if self.task != "c2i" and spec.prompts is None:
            raise ConfigError("prompts", f"{spec.model} is text-conditional; give prompts")
        if self.task == "c2i" and spec.classes is not None and self.num_classes is not None:
            bad = [c for c in spec.classes if c >= self.num_classes]
            if bad:
                raise ConfigError("classes", f"class id {bad[0]} is out of range 0..{self.num_classes - 1} of {spec.model}")
        if spec.cfg_scale != 1.0 and self.task == "c2i":
            self.policy.null_condition(torch.zeros(1, dtype=torch.long, device=self.device))


def load_sampler(model: str, weights: Optional[str | Path] = None, device: str | torch.device = "cpu",
                 precision: str = "fp32") -> Sampler:
    """Load a preset's generator (or `weights` into its architecture), tokenizer and text encoder.

    Every missing file (preset weights, tokenizer, T5 for LlamaGen T2I) raises MissingWeightsError
    before the generator is built. Janus-Pro encodes its own prompts and runs in bf16 whatever
    `precision` says (core.models.load).
    """
    from core.models import load, registry

    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    preset = registry.get_generator(model)
    if weights is None:
        registry.require_files(model)
    elif not Path(weights).is_file():
        raise ConfigError("weights", f"{weights}: no such generator weights file")
    device = torch.device(device)
    if preset.task == "t2i" and preset.family != "janus":
        from core.models.text import caption_encoder

        t5 = caption_encoder(preset.text_encoder, device)  # MissingWeightsError before the generator is built
    if preset.family == "janus":  # one model folder holds generator, tokenizer and prompt template
        policy, tokenizer = load.load_pair(model, weights, device)
    else:
        tokenizer = load.load_tokenizer(preset.tokenizer, device, image_size=preset.image_size)
        policy = load.load_generator(model, weights, device, dtype=PRECISIONS[precision])
    encode = load.condition_encoder(policy, preset.task, device, make_t5=lambda: t5)
    num_classes = policy.config.num_classes if preset.task == "c2i" else None
    return Sampler(policy, tokenizer, device, preset.task, num_classes, encode)


def model_files(spec: SamplingSpec) -> dict[str, str]:
    """{"generator": path, "tokenizer": path} of the files that a spec's samples come from."""
    from core.models import registry

    preset = registry.get_generator(spec.model)
    generator = Path(spec.weights) if spec.weights is not None else preset.path
    return {"generator": str(generator), "tokenizer": str(registry.get_tokenizer(preset.tokenizer).path)}


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes; for a model folder (Janus), of its files' relative paths and sizes."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(path)}\t{f.stat().st_size}\n".encode())
        return digest.hexdigest()
    return file_sha256(path)


# ------------------------------------------------------------------------------------------ the folder

def _spec_record(spec: SamplingSpec) -> dict:
    files = model_files(spec)
    return {"format": SPEC_FORMAT, "spec": spec.to_dict(),
            "sha256": {role: fingerprint(path) for role, path in files.items() if Path(path).exists()}}


def prepare_folder(out_dir: str | Path, spec: SamplingSpec, owned: Callable[[int], bool] = lambda i: True) -> Path:
    """Create `out_dir` for `spec`, or check that it already holds samples of exactly this spec.

    Also removes the temporary files an interrupted writer left for the samples `owned` says are
    this caller's (all by default: then no other process may be writing).
    """
    out_dir = Path(out_dir)
    samples = out_dir / SAMPLES_DIR
    record = _spec_record(spec)
    spec_path = out_dir / SPEC_FILE
    if spec_path.is_file():
        saved = json.loads(spec_path.read_text())
        if saved != record:
            raise ConfigError("out", f"{out_dir} holds samples of another setting ({_differences(saved, record)}); "
                                     "use a new output folder, or the same settings to continue it")
    elif samples.is_dir() and any(_SAMPLE_NAME.fullmatch(p.name) for p in samples.iterdir()):
        raise ConfigError("out", f"{samples} holds samples but no {SPEC_FILE} saying how they were made; "
                                 "use a new output folder")
    samples.mkdir(parents=True, exist_ok=True)
    for p in samples.iterdir():
        m = _TMP_NAME.fullmatch(p.name)
        if m and owned(int(m.group(1))):
            p.unlink(missing_ok=True)
    if not spec_path.is_file():
        tmp = spec_path.with_name(f".{SPEC_FILE}.{os.getpid()}{_TMP_SUFFIX}")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, spec_path)
    return out_dir


def _differences(saved: dict, now: dict) -> str:
    old, new = saved.get("spec", {}), now["spec"]
    changed = [f"{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if saved.get("sha256") != now["sha256"]:
        changed.append("the model files' contents changed")
    if saved.get("format") != now["format"]:
        changed.append(f"format {saved.get('format')!r}")
    return "; ".join(changed) or "unknown difference"


def existing_samples(out_dir: str | Path) -> set[int]:
    """Indices of the complete sample files in `out_dir`/samples."""
    samples = Path(out_dir) / SAMPLES_DIR
    if not samples.is_dir():
        return set()
    return {int(m.group(1)) for name in os.listdir(samples) if (m := _SAMPLE_NAME.fullmatch(name))}


def shard_blocks(num_samples: int, batch_size: int, rank: int, world_size: int) -> list[range]:
    """The blocks of rank `rank`: [b*B, (b+1)*B) for b % world_size == rank, covering 0..N-1."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError("rank", f"must be in 0..{world_size - 1} for {world_size} processes, got {rank}")
    num_blocks = -(-num_samples // batch_size)
    return [range(b * batch_size, (b + 1) * batch_size) for b in range(rank, num_blocks, world_size)]


def _write_pngs(samples: Path, indices: Sequence[int], pixels: np.ndarray) -> None:
    from PIL import Image

    for i, image in zip(indices, pixels):
        final = samples / f"{i:06d}.png"
        tmp = samples / f".{final.name}.{os.getpid()}{_TMP_SUFFIX}"
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, final)


@torch.no_grad()
def generate_block(sampler: Sampler, spec: SamplingSpec, block: Sequence[int], compile: str = "off") -> np.ndarray:
    """Samples of one block as uint8 [B, H, W, 3] (resized to spec.image_size when set).
    compile: the sampler's switch ("on" | "off"; same pixels either way), decided once per job."""
    from core.eval.reference import quantize
    from core.models.generate import generate_images

    cond, mask = sampler.conditions(spec, block)
    images = generate_images(sampler.policy, sampler.tokenizer, cond, seeds=[sample_seed(spec.seed, i) for i in block],
                             batch_size=len(block), cond_mask=mask, cfg_scale=spec.cfg_scale,
                             temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p, compile=compile)
    if spec.image_size is not None and images.shape[-1] != spec.image_size:
        images = F.interpolate(images.float(), size=(spec.image_size, spec.image_size), mode="bicubic")
    return quantize(images).permute(0, 2, 3, 1).cpu().numpy()


def sample_shard(sampler: Sampler, spec: SamplingSpec, num_samples: int, out_dir: str | Path, *, rank: int = 0,
                 world_size: int = 1, progress: Optional[ProgressFn] = None,
                 should_stop: Optional[Callable[[], bool]] = None, compile: str = "off") -> tuple[int, bool]:
    """Write the missing samples of rank `rank`'s blocks into a prepared folder.

    Stops between blocks once `should_stop()` is true. progress(done, total) is called after each
    block with an estimate of all ranks' samples on disk. Returns (samples written, stopped).
    """
    samples = Path(out_dir) / SAMPLES_DIR
    have = existing_samples(out_dir)
    todo = [b for b in shard_blocks(num_samples, spec.batch_size, rank, world_size)
            if any(i not in have for i in b if i < num_samples)]
    done_before = sum(1 for i in have if i < num_samples)
    written, stopped = 0, False
    if progress is not None:
        progress(done_before, num_samples)

    def finish(job: Future, count: int) -> None:
        nonlocal written
        job.result()
        written += count
        if progress is not None:
            progress(min(num_samples, done_before + written * world_size), num_samples)

    with ThreadPoolExecutor(max_workers=1) as writer:  # PNG encoding overlaps the next block
        pending: Optional[tuple[Future, int]] = None
        for block in todo:
            if should_stop is not None and should_stop():
                stopped = True
                break
            pixels = generate_block(sampler, spec, block, compile)  # [B, H, W, 3]
            keep = [i for i in block if i < num_samples]
            if pending is not None:
                finish(*pending)
            pending = writer.submit(_write_pngs, samples, keep, pixels[:len(keep)]), len(keep)
        if pending is not None:
            finish(*pending)
    return written, stopped


def pack(out_dir: str | Path, spec: SamplingSpec, num_samples: int, num_classes: Optional[int] = None) -> Path:
    """Pack samples 0..N-1 into ``samples.npz`` (arr_0 images, arr_1 labels); DataError if any is missing.

    An archive of N images written after every one of the N files is kept as it is.
    """
    from core.eval.reference import pngs_to_npz, read_npz

    out_dir = Path(out_dir)
    archive = out_dir / NPZ_FILE
    if archive.is_file() and read_npz(archive).shape[0] == num_samples:
        newest = max((out_dir / SAMPLES_DIR / f"{i:06d}.png").stat().st_mtime_ns for i in range(num_samples))
        if newest <= archive.stat().st_mtime_ns:
            return archive
    return pngs_to_npz(out_dir / SAMPLES_DIR, archive, num=num_samples, labels=labels_for(spec, num_samples, num_classes))


@dataclass
class SamplingResult:
    out_dir: Path
    num_samples: int
    written: int  # samples this process wrote in this call
    complete: bool  # all N samples are on disk
    npz: Optional[Path]  # the packed archive (main process, complete, pack=True)
    seconds: float
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))  # [N]

    @property
    def samples_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def _distributed_state(device: str | torch.device):
    """(rank, world size, device, barrier, is_main) from accelerate; one process when not launched."""
    from accelerate import PartialState

    from core import device as devmod

    # accelerate counts the processes of a CPU-only launch only when told cpu=True
    state = PartialState(cpu=str(device) == "cpu" or (str(device) == "auto" and not torch.cuda.is_available()))
    if state.num_processes > 1:
        if str(device) not in ("auto", "cpu"):
            raise ConfigError("device", f"{device}: under `accelerate launch` each process uses its own device; "
                                        "use device 'auto'")
        return state.process_index, state.num_processes, state.device, state.wait_for_everyone, state.is_main_process
    return 0, 1, devmod.resolve(str(device)), (lambda: None), True


def run_sampling(spec: SamplingSpec, num_samples: int, out_dir: str | Path, *, device: str | torch.device = "auto",
                 sampler: Optional[Sampler] = None, rank: Optional[int] = None, world_size: Optional[int] = None,
                 pack_npz: bool = True, progress: Optional[ProgressFn] = None,
                 should_stop: Optional[Callable[[], bool]] = None, compile: str = "auto") -> SamplingResult:
    """Sample `num_samples` images of `spec` into `out_dir` (resuming what is there) and pack them.

    Processes: by default the ranks of `accelerate launch` (or torchrun; one process without
    either): rank 0 prepares the folder, every rank samples its blocks, rank 0 packs. `rank` and
    `world_size` given: this call is that one rank (separate jobs, or the tests' simulated shards),
    with no barrier; each such call prepares the folder itself, and the rank-0 call packs the
    archive when every sample is on disk by then (otherwise call `pack` once all ranks are done).
    sampler: a loaded model matching spec.model / spec.weights (loaded here when None).
    progress(done, total) is called on the main process only; should_stop() between blocks.
    compile: the sampler's torch.compile switch (core.models.generate), "auto" decided on num_samples.
    It never changes a sample, so it is not part of the spec.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError("num_samples", f"must be a positive integer, got {num_samples!r}")
    from core.models.generate import check_compile, use_compile

    check_compile(compile)
    start = time.perf_counter()
    explicit = rank is not None or world_size is not None
    if not explicit:
        rank, world_size, dev, barrier, is_main = _distributed_state(device)
    else:
        from core import device as devmod

        rank, world_size = int(rank or 0), int(world_size or 1)
        shard_blocks(1, 1, rank, world_size)  # validates rank / world_size
        dev, barrier, is_main = devmod.resolve(str(device)), (lambda: None), rank == 0
    out_dir = Path(out_dir)
    if sampler is None:
        sampler = load_sampler(spec.model, spec.weights, dev, spec.precision)
    sampler.check(spec)
    if explicit:
        prepare_folder(out_dir, spec, owned=lambda i: (i // spec.batch_size) % world_size == rank)
    elif is_main:
        prepare_folder(out_dir, spec)
    barrier()
    compiled = "on" if use_compile(compile, torch.device(dev), num_samples) else "off"
    written, _ = sample_shard(sampler, spec, num_samples, out_dir, rank=rank, world_size=world_size,
                              progress=progress if is_main else None, should_stop=should_stop, compile=compiled)
    barrier()
    have = existing_samples(out_dir)
    complete = all(i in have for i in range(num_samples))
    npz = pack(out_dir, spec, num_samples, sampler.num_classes) if (is_main and complete and pack_npz) else None
    barrier()
    return SamplingResult(out_dir, num_samples, written, complete, npz, time.perf_counter() - start,
                          labels_for(spec, num_samples, sampler.num_classes))


def read_spec(out_dir: str | Path) -> SamplingSpec:
    """The spec a sample folder was made with."""
    path = Path(out_dir) / SPEC_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; {out_dir} is not a sample folder made by core.eval.sampling")
    return SamplingSpec.from_dict(json.loads(path.read_text())["spec"])
