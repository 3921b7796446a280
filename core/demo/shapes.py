"""The procedural demo domain: flat-coloured shapes, 10 classes, deterministic from (split, index).

It lets the workbench pretrain, align and evaluate small models end to end on a CPU, offline.

- Deterministic: ``render(split, index)`` seeds numpy's PCG64 with ``SeedSequence((DOMAIN_KEY,
  split id, index))`` (never Python's ``hash``), so the same pair renders the same bytes in every
  process. Scene parameters come from one ``Generator.random`` block (a stream numpy has kept
  stable); pixels use only correctly rounded elementwise float64 operations (+, *, sqrt, min, max),
  so machines agree too, up to libm's last bit in the scalar ``math.cos``/``math.sin`` of the
  rotations, which can flip a pixel only if it lands exactly on a rounding boundary. A test pins
  the digests of a few images.
- Splits are disjoint seed streams, indices are unlimited, and the label is ``index % 10``: any
  contiguous range of 10k indices is exactly class-balanced.
- Crisp on purpose (a measured probe found pixel noise made the tokenizer the bottleneck): a flat
  background, 1 or 2 flat shapes of the class in one colour, and a one-pixel anti-aliased edge
  computed analytically from a signed distance (exact box-filter coverage for straight edges).
- Scene geometry lives in normalised [0, 1] coordinates, so ``image_size=64`` renders the same
  scene as ``image_size=32``, only finer.

Caption (text-conditional variant): count, colour, shape, position of the shapes' centroid on a 3×3
grid, and background, e.g. ``"two red triangles at the top left on a black background"``.
"""
from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import DataError

DOMAIN_KEY = 0x5A9E_0001  # version of the domain: bump it whenever rendering changes any pixel
SPLITS: dict[str, int] = {  # name -> stable seed id; never renumber an existing split
    "train": 1,  # generator / tokenizer pretraining and VA-π alignment data
    "evaluator": 2,  # demo evaluator training
    "reference": 3,  # held-out real set for demo-FID
    "val": 4,  # held-out checks (evaluator accuracy, tests)
}
CLASS_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "cross", "ring", "star", "moon", "heart", "bar",
)
PLURALS: tuple[str, ...] = (
    "circles", "squares", "triangles", "diamonds", "crosses", "rings", "stars", "moons", "hearts",
    "bars",
)
NUM_CLASSES = len(CLASS_NAMES)
# Saturated shape colours; every one is far (RGB L2 > 100) from every background colour.
COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 38, 38)),
    ("orange", (245, 130, 20)),
    ("yellow", (245, 210, 30)),
    ("green", (34, 160, 60)),
    ("cyan", (20, 190, 210)),
    ("blue", (40, 80, 225)),
    ("purple", (135, 60, 200)),
    ("pink", (240, 100, 180)),
)
BACKGROUNDS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("white", (240, 240, 240)),
    ("gray", (128, 128, 128)),
    ("black", (24, 24, 24)),
)
COLOR_NAMES: tuple[str, ...] = tuple(name for name, _ in COLORS)
BACKGROUND_NAMES: tuple[str, ...] = tuple(name for name, _ in BACKGROUNDS)
POSITIONS: tuple[str, ...] = (  # 3×3 grid, row-major; index = 3 * row + column
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
    "bottom right",
)
POSITION_PHRASES: tuple[str, ...] = (
    "at the top left", "at the top", "at the top right", "on the left", "in the center",
    "on the right", "at the bottom left", "at the bottom", "at the bottom right",
)
COUNTS: tuple[int, ...] = (1, 2)
MIN_IMAGE_SIZE = 16  # below this the classes stop being distinguishable
MAX_IMAGE_SIZE = 1024  # float64 work arrays grow with the square of the size

# Scene layout, in units of the image side. A shape's "radius" bounds it: every class fits in the
# disc of that radius around its centre, so two shapes whose centres are r1 + r2 + _GAP apart never
# touch.
_MARGIN = 0.02
_GAP = 0.05
_RADIUS_ONE = (0.22, 0.34)  # one shape: 7–11 px radius at 32 px
_RADIUS_TWO = (0.16, 0.21)  # two shapes: 5–7 px; 4 * 0.21 + 2 * _MARGIN + _GAP <= 1 keeps every
# separation direction feasible
_MAX_ROTATION_DEG = (  # per class; small for classes a rotation would turn into another class
    0.0,  # circle
    12.0,  # square (at 45° it would read as a diamond)
    180.0,  # triangle
    12.0,  # diamond
    45.0,  # cross (4-fold symmetric)
    0.0,  # ring
    180.0,  # star
    180.0,  # moon
    20.0,  # heart (stays upright)
    90.0,  # bar (2-fold symmetric)
)


@dataclass(frozen=True)
class ShapeSample:
    """One rendered scene."""

    image: np.ndarray  # [H, W, 3] uint8
    label: int  # class id, == index % 10
    caption: str
    attrs: dict  # shape, color, background (names), count (1|2), position (one of POSITIONS)


@dataclass(frozen=True)
class _Scene:
    label: int
    count: int
    color: int  # index into COLORS
    background: int  # index into BACKGROUNDS
    centers: tuple[tuple[float, float], ...]  # (x, y) per shape, image-side units, y down
    radii: tuple[float, ...]  # per shape, image-side units
    angles: tuple[float, ...]  # per shape, radians
    position: int  # index into POSITIONS


def _convex(vertices: list[tuple[float, float]]) -> tuple[tuple[float, float, float], ...]:
    """Half-planes (nx, ny, offset) of a convex polygon: inside where nx*x + ny*y - offset <= 0."""
    cx = sum(v[0] for v in vertices) / len(vertices)
    cy = sum(v[1] for v in vertices) / len(vertices)
    planes = []
    for (ax, ay), (bx, by) in zip(vertices, vertices[1:] + vertices[:1]):
        nx, ny = by - ay, ax - bx
        norm = math.hypot(nx, ny)
        nx, ny = nx / norm, ny / norm
        if nx * (cx - ax) + ny * (cy - ay) > 0:  # make the normal point away from the polygon
            nx, ny = -nx, -ny
        planes.append((nx, ny, nx * ax + ny * ay))
    return tuple(planes)


def _regular(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


_UP = -math.pi / 2  # y points down: this angle points to the top of the image
_TRIANGLE = _convex(_regular(3, 1.0, _UP))
_DIAMOND = _convex([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)])
_STAR_TIPS = _regular(5, 1.0, _UP)
_STAR_INNER = _regular(5, 0.45, _UP + math.pi / 5)
# Kites (centre, inner_{k-1}, tip_k, inner_k) partition the star; their coverages add up exactly
# along the shared edges, where a max or a min of distances would leave a half-covered seam.
_STAR_KITES = tuple(
    _convex([(0.0, 0.0), _STAR_INNER[k - 1], _STAR_TIPS[k], _STAR_INNER[k]]) for k in range(5)
)
# Heart: a square standing on a corner with a disc on the midpoint of each upper edge, then scaled
# and shifted so that it is centred and fits the unit disc.
_HEART_SCALE = 0.96
_HEART_SHIFT = -0.1225
_HEART_BODY = _convex([
    (0.0, _HEART_SCALE * (-0.55 + _HEART_SHIFT)), (_HEART_SCALE * 0.75, _HEART_SCALE * (0.2 + _HEART_SHIFT)),
    (0.0, _HEART_SCALE * (0.95 + _HEART_SHIFT)), (-_HEART_SCALE * 0.75, _HEART_SCALE * (0.2 + _HEART_SHIFT)),
])
_HEART_LOBE_X = _HEART_SCALE * 0.375
_HEART_LOBE_Y = _HEART_SCALE * (-0.175 + _HEART_SHIFT)
_HEART_LOBE_R = _HEART_SCALE * 0.53


def _halfplanes(planes: tuple[tuple[float, float, float], ...], qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Distance to a convex polygon: exact inside and on edges, a lower bound past its corners."""
    dist = None
    for nx, ny, off in planes:
        d = nx * qx + ny * qy - off  # [S, S]
        dist = d if dist is None else np.maximum(dist, d)
    return dist


def _box(qx: np.ndarray, qy: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    return np.maximum(np.abs(qx) - half_w, np.abs(qy) - half_h)  # [S, S]


def _coverage(dist: np.ndarray, px_per_unit: float) -> np.ndarray:
    """Pixel coverage in [0, 1] of the region dist <= 0 (dist in local units): a 1-px linear ramp."""
    return np.clip(0.5 - dist * px_per_unit, 0.0, 1.0)  # [S, S]


def _shape_coverage(label: int, qx: np.ndarray, qy: np.ndarray, px: float) -> np.ndarray:
    """Coverage [S, S] of one shape of class `label`; (qx, qy) are local coordinates (radius 1)."""
    if label == 0:  # circle
        return _coverage(np.sqrt(qx * qx + qy * qy) - 0.85, px)
    if label == 1:  # square
        return _coverage(_box(qx, qy, 0.7, 0.7), px)
    if label == 2:  # triangle
        return _coverage(_halfplanes(_TRIANGLE, qx, qy), px)
    if label == 3:  # diamond
        return _coverage(_halfplanes(_DIAMOND, qx, qy), px)
    if label == 4:  # cross
        return np.maximum(_coverage(_box(qx, qy, 0.95, 0.3), px), _coverage(_box(qx, qy, 0.3, 0.95), px))
    if label == 5:  # ring
        return _coverage(np.abs(np.sqrt(qx * qx + qy * qy) - 0.76) - 0.22, px)
    if label == 6:  # star
        total = _coverage(_halfplanes(_STAR_KITES[0], qx, qy), px)
        for kite in _STAR_KITES[1:]:
            total += _coverage(_halfplanes(kite, qx, qy), px)
        return np.minimum(total, 1.0)
    if label == 7:  # moon: a disc minus an offset disc
        cut_x = qx - 0.45
        outer = np.sqrt(qx * qx + qy * qy) - 0.95
        return _coverage(np.maximum(outer, 0.75 - np.sqrt(cut_x * cut_x + qy * qy)), px)
    if label == 8:  # heart
        lx, ly = np.abs(qx) - _HEART_LOBE_X, qy - _HEART_LOBE_Y
        return np.maximum(_coverage(_halfplanes(_HEART_BODY, qx, qy), px),
                          _coverage(np.sqrt(lx * lx + ly * ly) - _HEART_LOBE_R, px))
    return _coverage(_box(qx, qy, 0.97, 0.26), px)  # bar


def _lerp(lo: float, hi: float, u: float) -> float:
    return lo + (hi - lo) * u


def _pick(u: float, n: int) -> int:
    return min(int(u * n), n - 1)


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise DataError(f"split: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return SPLITS[split]


def _check_index(index: int, name: str = "index") -> int:
    if isinstance(index, bool):
        raise DataError(f"{name}: expected a non-negative integer, got {index!r}")
    try:
        value = operator.index(index)
    except TypeError:
        raise DataError(f"{name}: expected a non-negative integer, got {index!r}") from None
    if value < 0:
        raise DataError(f"{name}: must be >= 0, got {value}")
    return value


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(
            f"image_size: must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] "
            f"(the demo models use 32), got {image_size!r}"
        )
    return int(image_size)


def _scene(split_id: int, index: int) -> _Scene:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence((DOMAIN_KEY, split_id, index))))
    u = rng.random(10).tolist()  # a fixed block of draws: every scene consumes the same stream layout
    label = index % NUM_CLASSES
    count = COUNTS[_pick(u[0], len(COUNTS))]
    max_rot = math.radians(_MAX_ROTATION_DEG[label])
    angles = (max_rot * (2 * u[8] - 1), max_rot * (2 * u[9] - 1))
    if count == 1:
        r = _lerp(*_RADIUS_ONE, u[3])
        cx = _lerp(r + _MARGIN, 1 - r - _MARGIN, u[6])
        cy = _lerp(r + _MARGIN, 1 - r - _MARGIN, u[7])
        centers, radii, centroid = ((cx, cy),), (r,), (cx, cy)
    else:
        r1, r2 = _lerp(*_RADIUS_TWO, u[3]), _lerp(*_RADIUS_TWO, u[4])
        half = (r1 + r2 + _GAP) / 2
        phi = 2 * math.pi * u[5]
        offset = (half * math.cos(phi), half * math.sin(phi))
        centroid_xy = []
        for axis, ua in ((0, u[6]), (1, u[7])):  # feasible centroid interval, both shapes inside
            v = offset[axis]
            lo = max(r1 + _MARGIN - v, r2 + _MARGIN + v)
            hi = min(1 - r1 - _MARGIN - v, 1 - r2 - _MARGIN + v)
            centroid_xy.append(_lerp(lo, hi, ua))
        cx, cy = centroid_xy
        centers = ((cx + offset[0], cy + offset[1]), (cx - offset[0], cy - offset[1]))
        radii, centroid = (r1, r2), (cx, cy)
    position = 3 * _pick(centroid[1], 3) + _pick(centroid[0], 3)
    return _Scene(label, count, _pick(u[1], len(COLORS)), _pick(u[2], len(BACKGROUNDS)),
                  centers, radii, angles[:count], position)


def _rasterize(scene: _Scene, image_size: int) -> np.ndarray:
    grid = (np.arange(image_size, dtype=np.float64) + 0.5) / image_size  # [S] pixel centres
    alpha = None
    for (cx, cy), r, angle in zip(scene.centers, scene.radii, scene.angles):
        cos_a, sin_a = math.cos(angle) / r, math.sin(angle) / r
        dx = (grid - cx)[None, :]  # [1, S]
        dy = (grid - cy)[:, None]  # [S, 1]
        qx = cos_a * dx + sin_a * dy  # [S, S] local frame: rotated by -angle, radius 1
        qy = cos_a * dy - sin_a * dx  # [S, S]
        cov = _shape_coverage(scene.label, qx, qy, r * image_size)
        alpha = cov if alpha is None else np.maximum(alpha, cov)
    bg = np.asarray(BACKGROUNDS[scene.background][1], dtype=np.float64)  # [3]
    fg = np.asarray(COLORS[scene.color][1], dtype=np.float64)  # [3]
    image = bg + alpha[:, :, None] * (fg - bg)  # [S, S, 3]
    return np.rint(image).astype(np.uint8)


def _caption(scene: _Scene) -> str:
    color = COLOR_NAMES[scene.color]
    if scene.count == 1:
        article = "an" if color[0] in "aeiou" else "a"
        subject = f"{article} {color} {CLASS_NAMES[scene.label]}"
    else:
        subject = f"two {color} {PLURALS[scene.label]}"
    return f"{subject} {POSITION_PHRASES[scene.position]} on a {BACKGROUND_NAMES[scene.background]} background"


def render(split: str, index: int, image_size: int = 32) -> ShapeSample:
    """Render scene `index` of `split`; the same arguments always give the same bytes."""
    scene = _scene(_check_split(split), _check_index(index))
    image = _rasterize(scene, _check_image_size(image_size))
    attrs = {
        "shape": CLASS_NAMES[scene.label],
        "color": COLOR_NAMES[scene.color],
        "count": scene.count,
        "position": POSITIONS[scene.position],
        "background": BACKGROUND_NAMES[scene.background],
    }
    return ShapeSample(image=image, label=scene.label, caption=_caption(scene), attrs=attrs)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def images_tensor(split: str, indices: Iterable[int], image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, H, W] float32 in [-1, 1] and labels [B] long for `indices` of `split`."""
    split_id = _check_split(split)
    size = _check_image_size(image_size)
    idx = [_check_index(i, "indices") for i in indices]
    if not idx:
        raise DataError("indices: empty; pass at least one index")
    images = np.stack([_rasterize(_scene(split_id, i), size) for i in idx])  # [B, H, W, 3] uint8
    labels = torch.tensor([i % NUM_CLASSES for i in idx], dtype=torch.long)  # [B]
    return to_tensor(images), labels


class ShapesDataset(Dataset):
    """Indices start .. start + length - 1 of `split`, rendered on access (nothing is cached).

    Items are (image [3, H, W] float32 in [-1, 1], label) or, with captions, (image, label, caption).
    """

    def __init__(self, split: str, start: int = 0, length: int = 10_000, image_size: int = 32,
                 with_captions: bool = False):
        self._split_id = _check_split(split)
        self.split = split
        self.start = _check_index(start, "start")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length <= 0:
            raise DataError(f"length: must be a positive integer, got {length!r}")
        self.length = int(length)
        self.image_size = _check_image_size(image_size)
        self.with_captions = with_captions

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for a dataset of length {self.length}")
        index = self.start + (i % self.length)
        scene = _scene(self._split_id, index)
        image = to_tensor(_rasterize(scene, self.image_size)[None])[0]  # [3, H, W]
        if self.with_captions:
            return image, scene.label, _caption(scene)
        return image, scene.label


def write_class_names(path: Path) -> None:
    """Write CLASS_NAMES as a JSON list (class id order), the file the UI and CLI read."""
    path.write_text(json.dumps(list(CLASS_NAMES), indent=2) + "\n")


if __name__ == "__main__":
    from core.paths import ASSETS_DIR

    write_class_names(ASSETS_DIR / "demo_classes.json")
    print(f"wrote {ASSETS_DIR / 'demo_classes.json'}")
