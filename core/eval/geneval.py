"""GenEval (Ghosh et al., 2023): its prompt file and the image-folder layout its evaluator reads.

Prompt file (``evaluation_metadata.jsonl``): one JSON object a line, e.g.
``{"tag": "counting", "include": [{"class": "bus", "count": 3}], "exclude": [...], "prompt": "..."}``.
The official 553-prompt file is the output of GenEval's documented procedure (``create_prompts.py``:
NumPy ``default_rng(43)``, 100 draws per task over the 80 COCO object names, duplicates removed).
`geneval_prompts` re-implements that procedure, and `write_geneval_prompts` checks the bytes it writes
against the official file's SHA-256, so nothing has to be downloaded.

Image folder, one sub-folder per prompt (what ``evaluate_images.py`` reads; `export_geneval_samples`
samples a model into it)::

    <out>/00000/metadata.jsonl     the prompt's JSON object, one line
    <out>/00000/samples/0000.png   images of that prompt (any ``\\d+.png`` name is read)
    <out>/00001/...
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from core import paths
from core.checkpoints import resolve_weights
from core.errors import ConfigError, DataError
from core.eval.reference import to_uint8_nhwc

if TYPE_CHECKING:
    from core.eval.sampling import ProgressFn

# The 80 COCO object categories in COCO's id order, spelled as GenEval spells them
# ("computer mouse", "tv remote", "computer keyboard" instead of COCO's "mouse", "remote", "keyboard").
GENEVAL_OBJECTS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
GENEVAL_POSITIONS = ("left of", "right of", "above", "below")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

GENEVAL_SEED = 43            # create_prompts.py default, the paper's prompt set
GENEVAL_DRAWS_PER_TASK = 100  # create_prompts.py default (-n)
GENEVAL_NUM_PROMPTS = 553    # after de-duplication
# SHA-256 of the official prompts/evaluation_metadata.jsonl (djghosh13/geneval, commit af4902f)
GENEVAL_PROMPTS_SHA256 = "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"

_SAMPLE_NAME = re.compile(r"\d+\.png")


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _plural(word: str) -> str:
    return f"{word}es" if word.endswith("s") else f"{word}s"


def geneval_prompts(seed: int = GENEVAL_SEED, draws_per_task: int = GENEVAL_DRAWS_PER_TASK) -> list[dict]:
    """GenEval's prompt suite: one dict per prompt, in file order.

    The defaults give the official 553 prompts. The NumPy calls and their order are the procedure's;
    changing either changes every prompt after that point.
    """
    names = GENEVAL_OBJECTS
    n_obj = len(names)
    person = names.index("person")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []

    for idx in rng.choice(n_obj, size=n_obj, replace=False):          # single_object: every class once
        rows.append({"tag": "single_object", "include": [{"class": names[idx], "count": 1}],
                     "prompt": f"a photo of {_article(names[idx])}"})
    for _ in range(draws_per_task):
        a, b = rng.choice(n_obj, size=2, replace=False)
        rows.append({"tag": "two_object",
                     "include": [{"class": names[a], "count": 1}, {"class": names[b], "count": 1}],
                     "prompt": f"a photo of {_article(names[a])} and {_article(names[b])}"})
    for _ in range(draws_per_task):
        idx = rng.choice(n_obj)
        count = int(rng.integers(2, 4, endpoint=True))
        rows.append({"tag": "counting", "include": [{"class": names[idx], "count": count}],
                     "exclude": [{"class": names[idx], "count": count + 1}],
                     "prompt": f"a photo of {_NUMBER_WORDS[count]} {_plural(names[idx])}"})
    for _ in range(draws_per_task):
        idx = (rng.choice(n_obj - 1) + 1 + person) % n_obj               # never "a <color> person"
        color = GENEVAL_COLORS[rng.choice(len(GENEVAL_COLORS))]
        rows.append({"tag": "colors", "include": [{"class": names[idx], "count": 1, "color": color}],
                     "prompt": f"a photo of {_article(color)} {names[idx]}"})
    for _ in range(draws_per_task):
        a, b = rng.choice(n_obj, size=2, replace=False)
        where = GENEVAL_POSITIONS[rng.choice(len(GENEVAL_POSITIONS))]
        rows.append({"tag": "position",
                     "include": [{"class": names[b], "count": 1},
                                 {"class": names[a], "count": 1, "position": [where, 0]}],
                     "prompt": f"a photo of {_article(names[a])} {where} {_article(names[b])}"})
    for _ in range(draws_per_task):
        a, b = (rng.choice(n_obj - 1, size=2, replace=False) + 1 + person) % n_obj
        ca, cb = rng.choice(len(GENEVAL_COLORS), size=2, replace=False)
        rows.append({"tag": "color_attr",
                     "include": [{"class": names[a], "count": 1, "color": GENEVAL_COLORS[ca]},
                                 {"class": names[b], "count": 1, "color": GENEVAL_COLORS[cb]}],
                     "prompt": f"a photo of {_article(GENEVAL_COLORS[ca])} {names[a]} and "
                               f"{_article(GENEVAL_COLORS[cb])} {names[b]}"})

    unique, seen = [], set()
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def _jsonl(rows: Sequence[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")


def write_geneval_prompts(dest: str | Path, seed: int = GENEVAL_SEED,
                          draws_per_task: int = GENEVAL_DRAWS_PER_TASK) -> Path:
    """Write GenEval's ``evaluation_metadata.jsonl`` to `dest` (a file path) and return it.

    With the default seed and draw count the bytes must equal the official file (SHA-256 checked);
    a mismatch means this NumPy draws differently from the one that made the official file, and is
    reported instead of writing a prompt set that only looks official.
    """
    data = _jsonl(geneval_prompts(seed, draws_per_task))
    official = seed == GENEVAL_SEED and draws_per_task == GENEVAL_DRAWS_PER_TASK
    if official and hashlib.sha256(data).hexdigest() != GENEVAL_PROMPTS_SHA256:
        raise RuntimeError(
            f"generated GenEval prompts differ from the official file (numpy {np.__version__} draws "
            "differently); copy prompts/evaluation_metadata.jsonl from github.com/djghosh13/geneval "
            f"to {dest} instead")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


def read_geneval_prompts(path: str | Path) -> list[dict]:
    """Read a GenEval prompt file: a list of dicts, each with at least "tag", "include", "prompt"."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: GenEval prompt file not found; write it with "
                        "core.eval.geneval.write_geneval_prompts(path)")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("tag"), str):
            raise DataError(f'{path}:{lineno}: each line needs string keys "tag" and "prompt"')
        if not isinstance(row.get("include"), list):
            raise DataError(f'{path}:{lineno}: "include" must be a list of {{"class", "count"}} objects')
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: GenEval prompt file is empty")
    return rows


def prompt_folder(out_dir: str | Path, index: int) -> Path:
    """``<out>/<index:05d>``: the folder of the `index`-th prompt."""
    return Path(out_dir) / f"{index:05d}"


def write_geneval_prompt_folder(out_dir: str | Path, index: int, metadata: dict, images) -> Path:
    """Write one prompt's folder: ``metadata.jsonl`` and ``samples/0000.png`` ...

    images: [S,3,H,W] float in [-1,1] (torch or numpy), or [S,H,W,3] uint8.
    The metadata is written last, so a folder with metadata is complete.
    """
    from PIL import Image

    if index < 0:
        raise ConfigError("index", f"must be >= 0, got {index}")
    pixels = to_uint8_nhwc(images)  # [S,H,W,3] uint8
    folder = prompt_folder(out_dir, index)
    samples = folder / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(samples / f"{i:04d}.png")
    (folder / "metadata.jsonl").write_text(json.dumps(metadata) + "\n", encoding="utf-8")
    return folder


def export_geneval(out_dir: str | Path, prompts: Sequence[dict],
                   generate: Callable[[dict], object], images_per_prompt: int = 4) -> list[int]:
    """Fill `out_dir` in GenEval's layout; resumable.

    generate(metadata) returns the images of one prompt ([S,3,H,W] in [-1,1], or [S,H,W,3] uint8);
    S must equal `images_per_prompt` (GenEval's default is 4). Prompt folders already complete
    (metadata written and `images_per_prompt` samples) are skipped. Returns the indices written now.
    """
    if images_per_prompt < 1:
        raise ConfigError("images_per_prompt", f"must be >= 1, got {images_per_prompt}")
    written = []
    for index, metadata in enumerate(prompts):
        if _complete(prompt_folder(out_dir, index), metadata, images_per_prompt):
            continue
        images = generate(metadata)
        n = len(images)
        if n != images_per_prompt:
            raise ConfigError("images_per_prompt",
                              f"generate() returned {n} images for prompt {index}, expected {images_per_prompt}")
        write_geneval_prompt_folder(out_dir, index, metadata, images)
        written.append(index)
    return written


def _complete(folder: Path, metadata: dict, n: int) -> bool:
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return False
    if json.loads(meta.read_text(encoding="utf-8")) != metadata:
        raise DataError(f"{meta}: holds another prompt than the one at this index; "
                        "use a fresh output folder for another prompt file")
    return len(_sample_files(folder)) >= n


def _sample_files(folder: Path) -> list[Path]:
    samples = folder / "samples"
    if not samples.is_dir():
        return []
    return sorted(p for p in samples.iterdir() if p.is_file() and _SAMPLE_NAME.fullmatch(p.name))


def read_geneval_folder(out_dir: str | Path) -> list[tuple[dict, list[Path]]]:
    """Read a GenEval image folder back: (metadata, sample paths) per prompt folder, in index order.

    Checks what GenEval's evaluator relies on: each sub-folder has a ``metadata.jsonl`` holding one
    JSON object and at least one ``samples/<digits>.png``.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: GenEval image folder not found")
    folders = sorted(p for p in out_dir.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{out_dir}: no prompt folders (expected 00000/, 00001/, ...)")
    result = []
    for folder in folders:
        meta = folder / "metadata.jsonl"
        if not meta.is_file():
            raise DataError(f"{meta}: missing; every prompt folder needs its metadata line")
        try:
            metadata = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{meta}: not one JSON object ({e.msg})") from e
        samples = _sample_files(folder)
        if not samples:
            raise DataError(f"{folder / 'samples'}: no <digits>.png images")
        result.append((metadata, samples))
    return result


def prompts_by_tag(prompts: Iterable[dict]) -> dict[str, int]:
    """Number of prompts per GenEval task tag."""
    counts: dict[str, int] = {}
    for row in prompts:
        counts[row["tag"]] = counts.get(row["tag"], 0) + 1
    return counts


def export_geneval_samples(model: str, out_dir: str | Path, *, weights: Optional[str] = None,
                           prompts_file: Optional[str | Path] = None, images_per_prompt: int = 4,
                           cfg_scale: float = 5.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                           seed: int = 0, batch_size: int = 32, precision: str = "fp32", device: str = "auto",
                           runs_dir: Optional[str | Path] = None, progress: Optional[ProgressFn] = None,
                           should_stop: Optional[Callable[[], bool]] = None, sampler=None,
                           sampling_dir: Optional[str | Path] = None, compile: str = "auto") -> Optional[Path]:
    """GenEval's image folder for a text-to-image model: `images_per_prompt` images of each prompt.

    The images are drawn as one sample set (resumable, shardable) in `sampling_dir` (default: the
    sibling folder "<out_dir>.sampling", since GenEval reads every sub-folder of out_dir as a
    prompt), image j of prompt p being sample p + j*P; then they are laid out as GenEval's
    evaluator reads them (out_dir/00000/metadata.jsonl, out_dir/00000/samples/0000.png, ...).
    Returns out_dir, or None when stopped or on a process other than the main one.
    """
    from core.eval.reference import read_npz
    from core.eval.sampling import SamplingSpec, run_sampling
    from core.models import registry

    if registry.get_generator(model).task != "t2i":
        raise ConfigError("model", f"{model} is class-conditional; GenEval needs a text-to-image preset")
    if isinstance(images_per_prompt, bool) or not isinstance(images_per_prompt, int) or images_per_prompt < 1:
        raise ConfigError("images_per_prompt", f"must be a positive integer, got {images_per_prompt!r}")
    rows = read_geneval_prompts(prompts_file or paths.ASSETS_DIR / "geneval" / "evaluation_metadata.jsonl")
    ref = resolve_weights(weights, runs_dir)
    spec = SamplingSpec(model=model, weights=ref.path, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, batch_size=batch_size, precision=precision,
                        prompts=tuple(r["prompt"] for r in rows))
    out_dir = Path(out_dir)
    sampling_dir = Path(sampling_dir) if sampling_dir is not None else out_dir.with_name(out_dir.name + ".sampling")
    count = len(rows)
    sampled = run_sampling(spec, count * images_per_prompt, sampling_dir, device=device, sampler=sampler,
                           progress=progress, should_stop=should_stop, compile=compile)
    if not sampled.complete or sampled.npz is None:
        return None
    pixels = read_npz(sampled.npz)  # [P * S, H, W, 3]
    index = {id(row): p for p, row in enumerate(rows)}
    export_geneval(out_dir, rows, lambda row: np.asarray(pixels[index[id(row)]::count]), images_per_prompt)
    return out_dir

