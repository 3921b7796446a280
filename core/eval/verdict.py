"""Base vs aligned with its spread: several sampling seeds, a bootstrap interval, a verdict.

One function decides every "better / worse / within noise" the workbench shows (Evaluate's table,
Embeddings' numbers, Compare's per-class numbers), so two pages given the same samples and features
cannot disagree.

- Seeds: each model is sampled with S seeds (default 3) on the same conditions; sample i of seed s
  has the same uniforms for base and aligned (`core.eval.sampling`), so seed s of base and seed s of
  aligned are paired. A metric is reported per model as mean ± std over the seeds.
- Interval of the change: a paired bootstrap. A replicate resamples the real features once (shared
  by both models) and, within each seed, the base and the aligned samples; the replicate's change is
  the mean over seeds of metric(aligned) − metric(base). The 95% interval is the 2.5 / 97.5
  percentiles over `n_boot` replicates. FD is recomputed from the resampled features; precision and
  recall resample the per-point "inside the other manifold" indicators (resampling points with
  replacement would put duplicates at k-NN distance 0 and shrink the manifolds).
- Metrics without per-sample features (IS, CLIP score, FID through torch-fidelity) get a paired
  t-interval of the per-seed changes instead (wider with few seeds: t_0.975 = 4.30 at S = 3).
- Verdict: "better" / "worse" only when the interval excludes zero, else "within noise".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from core.errors import DataError
from core.eval import metrics as M

LOWER_IS_BETTER = frozenset({"fd", "fid", "demo_fid"})
WITHIN_NOISE = "within noise"
N_BOOT = 200  # replicates at D <= 256 (the demo's 64-d features: ~1 s for 3 seeds x 1000 samples)
N_BOOT_LARGE = 40  # at larger D (Inception 2048-d: one eigvalsh ~2 s on 2 cores, so ~5 min per comparison)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_std(mean: float, std: Optional[float], digits: int = 4) -> str:
    """"0.687 ± 0.012", "0.71 ± 0.10", "785 ± 12": the std to two significant digits and the mean to the same
    decimal place, so numbers side by side read alike; the mean alone (`digits` significant) without a spread."""
    if std is None or not math.isfinite(std) or std <= 0:
        return f"{mean:.{digits}g}"
    decimals = _decimals(std)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _decimals(spread: float) -> int:
    """The decimal places that show `spread` (> 0) to two significant digits."""
    return max(0, 1 - math.floor(math.log10(spread)))


def change_text(delta: float, low: Optional[float] = None, high: Optional[float] = None,
                digits: int = 4) -> tuple[str, str]:
    """("+0.0017", "[-0.0003, +0.0036]"): a change and its 95% interval to one decimal place, the one that shows
    the interval's half-width to two significant digits (as `mean_std` shows a std), so a change never carries
    more digits than its interval can support; a point interval and the change to `digits` significant, and without
    an interval the change alone and ""."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{delta:+.{digits}g}", ""
    half = (high - low) / 2
    if half <= 1e-9 * max(abs(low), abs(high)):  # a point interval (up to float rounding)
        return f"{delta:+.{digits}g}", f"[{low:+.{digits}g}, {high:+.{digits}g}]"
    decimals = _decimals(half)
    return f"{delta:+.{decimals}f}", f"[{low:+.{decimals}f}, {high:+.{decimals}f}]"


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample std over the seeds (0 with one seed)
    values: list[float]  # one per seed

    def text(self, digits: int = 4) -> str:
        return mean_std(self.mean, self.std if len(self.values) > 1 else None, digits)


@dataclass(frozen=True)
class Verdict:
    metric: str
    base: Spread
    aligned: Spread
    delta: float  # mean over seeds of aligned - base
    low: float  # 95% interval of delta
    high: float
    verdict: str  # "better" | "worse" | "within noise"
    method: str  # "bootstrap" | "t" (paired t over seeds) | "none" (one seed, no features)
    seeds: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        return cls(**{**d, "base": Spread(**d["base"]), "aligned": Spread(**d["aligned"])})

    def delta_text(self) -> str:
        return change_text(self.delta, self.low, self.high)[0]

    def interval_text(self) -> str:
        return verdict_change(self.to_dict())[1]


NO_INTERVAL = "no interval (one seed)"


def verdict_change(v: dict) -> tuple[str, str]:
    """(Δ, its 95% interval) of a verdict's dict, as every table writes them (change_text; a verdict of one seed,
    with no features to resample, has no interval)."""
    if v["method"] == "none":
        return change_text(v["delta"])[0], NO_INTERVAL
    return change_text(v["delta"], v["low"], v["high"])


def spread(values: Sequence[float]) -> Spread:
    v = [float(x) for x in values]
    return Spread(float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, v)


def call(metric: str, low: float, high: float) -> str:
    """The verdict of an interval of (aligned - base)."""
    if low <= 0.0 <= high:
        return WITHIN_NOISE
    improved = high < 0 if metric in LOWER_IS_BETTER else low > 0
    return "better" if improved else "worse"


def from_seed_values(metric: str, base: Sequence[float], aligned: Sequence[float]) -> Verdict:
    """A verdict from per-seed values alone (paired by seed): a t-interval of the per-seed changes."""
    if len(base) != len(aligned) or not base:
        raise DataError(f"{metric}: {len(base)} base seeds vs {len(aligned)} aligned seeds; pair them by seed")
    d = np.asarray(aligned, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    delta = float(d.mean())
    if len(d) < 2:
        return Verdict(metric, spread(base), spread(aligned), delta, float("nan"), float("nan"),
                       WITHIN_NOISE, "none", len(d))
    half = T_975.get(len(d) - 1, 1.96) * float(d.std(ddof=1)) / np.sqrt(len(d))
    low, high = delta - half, delta + half
    return Verdict(metric, spread(base), spread(aligned), delta, low, high, call(metric, low, high), "t", len(d))


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return M.feature_stats(x)


def compare_features(real, base: Sequence, aligned: Sequence, *, k: int = 3, n_boot: Optional[int] = None,
                     seed: int = 0, metrics: Sequence[str] = ("fd", "precision", "recall")) -> dict[str, Verdict]:
    """FD / precision / recall of base and aligned against real features, per seed, with the paired
    bootstrap interval of the change. real [R, D]; base, aligned: one [n_s, D] array per seed (paired).
    Deterministic for given inputs and `seed` (the bootstrap's generator)."""
    real = M._features("real", real, min_rows=k + 1)
    base = [M._features("base", b, min_rows=k + 1) for b in base]
    aligned = [M._features("aligned", a, min_rows=k + 1) for a in aligned]
    if len(base) != len(aligned) or not base:
        raise DataError(f"{len(base)} base seeds vs {len(aligned)} aligned seeds; pair them by seed")
    S, D = len(base), real.shape[1]
    n_boot = n_boot if n_boot is not None else (N_BOOT if D <= 256 else N_BOOT_LARGE)
    out: dict[str, Verdict] = {}
    rng = np.random.default_rng(seed)
    if "fd" in metrics:
        mu_r, sig_r = _stats(real)
        stats_b = [_stats(b) for b in base]
        stats_a = [_stats(a) for a in aligned]
        fd_b = [M.frechet_distance(mu_r, sig_r, *s) for s in stats_b]
        fd_a = [M.frechet_distance(mu_r, sig_r, *s) for s in stats_a]
        deltas = np.empty(n_boot)
        for i in range(n_boot):
            mr, sr = _stats(real[rng.integers(0, len(real), len(real))])
            d = 0.0
            for b, a in zip(base, aligned):
                d += (M.frechet_distance(mr, sr, *_stats(a[rng.integers(0, len(a), len(a))]))
                      - M.frechet_distance(mr, sr, *_stats(b[rng.integers(0, len(b), len(b))])))
            deltas[i] = d / S
        out["fd"] = _verdict("fd", fd_b, fd_a, deltas)
    if "precision" in metrics or "recall" in metrics:
        inside = [(M.manifold_indicators(real, b, k), M.manifold_indicators(real, a, k)) for b, a in zip(base, aligned)]
        prec_d, rec_d = np.empty(n_boot), np.empty(n_boot)
        for i in range(n_boot):
            ri = rng.integers(0, len(real), len(real))  # one real resample, shared by both models
            p = r = 0.0
            for (pb, rb), (pa, ra) in inside:
                p += pa[rng.integers(0, len(pa), len(pa))].mean() - pb[rng.integers(0, len(pb), len(pb))].mean()
                r += ra[ri].mean() - rb[ri].mean()
            prec_d[i], rec_d[i] = p / S, r / S
        if "precision" in metrics:
            out["precision"] = _verdict("precision", [b[0].mean() for b, _ in inside],
                                        [a[0].mean() for _, a in inside], prec_d)
        if "recall" in metrics:
            out["recall"] = _verdict("recall", [b[1].mean() for b, _ in inside], [a[1].mean() for _, a in inside], rec_d)
    return out


def compare_indicators(metric: str, base: Sequence, aligned: Sequence, *, n_boot: int = N_BOOT,
                       seed: int = 0) -> Verdict:
    """A rate (e.g. class accuracy: one 0/1 per sample) of base vs aligned, per seed, with the paired
    bootstrap interval of the change (per-sample indicators resampled within each seed)."""
    base = [np.asarray(b, dtype=np.float64) for b in base]
    aligned = [np.asarray(a, dtype=np.float64) for a in aligned]
    if len(base) != len(aligned) or not base or any(len(x) == 0 for x in base + aligned):
        raise DataError(f"{metric}: {len(base)} base seeds vs {len(aligned)} aligned seeds; pair them by seed")
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        boot[i] = np.mean([a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean()
                           for b, a in zip(base, aligned)])
    return _verdict(metric, [b.mean() for b in base], [a.mean() for a in aligned], boot)


def _verdict(metric: str, base: Sequence[float], aligned: Sequence[float], boot: np.ndarray) -> Verdict:
    low, high = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    delta = float(np.mean(np.asarray(aligned) - np.asarray(base)))
    return Verdict(metric, spread(base), spread(aligned), delta, low, high, call(metric, low, high), "bootstrap",
                   len(base))


def sample_size_warning(n: int, dim: int, seeds: int) -> Optional[str]:
    """A warning when a per-seed sample is too small for the numbers to mean much, else None.

    FD's bias grows like D / n (Chong & Forsyth 2020): with fewer samples than ~10 D per set the
    estimate is dominated by it and differences of a few percent are noise; precision/recall need
    a few hundred points for their k-NN balls to be stable."""
    notes = []
    if n < 10 * dim:
        notes.append(f"{n} samples per seed in {dim}-d features: the Fréchet distance is biased upward by "
                     f"~D/n and its changes are mostly noise; use at least {10 * dim} per seed")
    if n < 200:
        notes.append(f"precision/recall from {n} samples are coarse (steps of {1 / max(n, 1):.3f})")
    if seeds < 3:
        notes.append(f"{seeds} seed{'s' if seeds != 1 else ''}: the spread needs at least 3")
    return "; ".join(notes) or None
