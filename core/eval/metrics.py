"""Sample-quality metrics on features: Fréchet distance, k-NN precision/recall, Inception Score.

Pure numpy/torch, no networks: the features come from any extractor (`core.eval.extractors`).
Shapes: N, M samples, D feature dimensions, C classes. Inputs may be numpy arrays or torch tensors.

- Fréchet distance (Heusel et al., 2017): ``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)``. FID when the
  features are Inception-v3 pool3 [N, 2048].
- Precision / recall (Kynkäänniemi et al., 2019): each set's manifold is the union of balls around its
  points reaching their k-th nearest neighbour; precision = share of generated points inside the real
  manifold, recall = share of real points inside the generated manifold.
- Inception Score (Salimans et al., 2016): ``exp(E_x KL(p(y|x) || p(y)))``, averaged over splits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from core.errors import ConfigError, DataError


def _features(name: str, x, min_rows: int = 1) -> np.ndarray:
    """Validate a [N, D] feature matrix and return it as a float numpy array."""
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{name}: expected features [N, D], got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise DataError(f"{name}: needs at least {min_rows} samples, got {x.shape[0]}")
    if x.shape[1] < 1:
        raise DataError(f"{name}: features have no dimensions (shape {x.shape})")
    if x.dtype.kind not in "fiu":
        raise DataError(f"{name}: expected numeric features, got dtype {x.dtype}")
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise DataError(f"{name}: features contain NaN or inf")
    return x


def feature_stats(feats, chunk_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2.

    Accumulated over row chunks of centred features, so 50k x 2048 float32 never needs a float64 copy.
    Equals ``np.mean(f, 0), np.cov(f, rowvar=False)``.
    """
    x = _features("feats", feats, min_rows=2)
    n = x.shape[0]
    mu = np.zeros(x.shape[1], dtype=np.float64)
    for s in range(0, n, chunk_size):
        mu += x[s:s + chunk_size].sum(axis=0, dtype=np.float64)
    mu /= n
    sigma = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for s in range(0, n, chunk_size):
        c = x[s:s + chunk_size].astype(np.float64) - mu        # [n_chunk, D]
        sigma += c.T @ c
    sigma /= n - 1
    return mu, sigma


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; rounding-level negative eigenvalues -> 0."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^½) for covariances S1, S2 [D, D].

    S1 S2 is similar to the symmetric PSD matrix L^T S2 L (S1 = L L^T, Cholesky), so its eigenvalues
    are real and non-negative and come from ``eigvalsh``; a rank-deficient S1 (fewer samples than
    dimensions, per-class statistics) has no Cholesky factor and uses its PSD square root R instead
    (R S2 R, same spectrum). The usual route (pytorch-fid, ADM's evaluator) takes
    ``scipy.linalg.sqrtm`` of the non-symmetric product, which for near-singular covariances returns
    complex or non-finite results and needs an ``eps * I`` retry; here rank deficiency only clips
    rounding-level negative eigenvalues. Cost at D = 2048: one eigvalsh, ~2 s on 2 cores.
    """
    try:
        factor = np.linalg.cholesky(sigma1)                       # [D, D] lower, S1 = L L^T
        m = factor.T @ sigma2 @ factor
    except np.linalg.LinAlgError:                                # S1 singular: not positive definite
        root = _sqrt_psd(sigma1)
        m = root @ sigma2 @ root
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2). mu: [D], sigma: [D, D]."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise DataError(f"means must both be [D], got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise DataError(f"{name}: expected covariance [{d}, {d}], got {s.shape}")
        if not np.isfinite(s).all():
            raise DataError(f"{name}: covariance contains NaN or inf")
        if not np.allclose(s, s.T, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(s).max()))):
            raise DataError(f"{name}: covariance is not symmetric")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(fd, 0.0))  # >= 0 in exact arithmetic; clip rounding below zero


def _fid_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance from features a [N, D], b [M, D] without D x D matrices (for N * M <= D²).

    With S1 = A^T A, S2 = B^T B (A, B the centred features over sqrt(N-1), sqrt(M-1)), the non-zero
    eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T, so tr((S1 S2)^½) is the nuclear norm of the
    [N, M] matrix A B^T: exact, and O(N M D) instead of an eigendecomposition of D x D.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    ca = (a - mu1) / np.sqrt(a.shape[0] - 1)                      # [N, D]
    cb = (b - mu2) / np.sqrt(b.shape[0] - 1)                      # [M, D]
    tr_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.sum(ca * ca) + np.sum(cb * cb) - 2.0 * tr_sqrt
    return float(max(fd, 0.0))


def fid_from_features(a, b) -> float:
    """Fréchet distance between the Gaussians fitted to features a [N, D] and b [M, D].

    Few samples in many dimensions (per-class sets: N * M <= D²) take the exact low-rank route, which
    needs no D x D eigendecomposition; otherwise covariances as `feature_stats` + `frechet_distance`.
    """
    fa, fb = _features("a", a, 2), _features("b", b, 2)
    if fa.shape[1] != fb.shape[1]:
        raise DataError(f"feature dimensions differ: a has {fa.shape[1]}, b has {fb.shape[1]}")
    if fa.shape[0] * fb.shape[0] <= fa.shape[1] ** 2:
        return _fid_low_rank(fa, fb)
    return frechet_distance(*feature_stats(fa), *feature_stats(fb))


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float  # share of generated samples inside the real manifold
    recall: float     # share of real samples inside the generated manifold
    k: int            # neighbourhood size of the manifold balls


def _knn_radii(x: torch.Tensor, k: int, chunk_size: int) -> torch.Tensor:
    """Distance of each row of x [N, D] to its k-th nearest other row -> [N]."""
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk_size):
        d = torch.cdist(x[s:s + chunk_size], x)                  # [n_chunk, N], self at ~0
        radii[s:s + chunk_size] = d.kthvalue(k + 1, dim=1).values
    return radii


def _share_inside(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk_size: int) -> float:
    """Share of queries [Q, D] within radii[j] of some support[j] ([M, D], radii [M])."""
    inside = 0
    for s in range(0, queries.shape[0], chunk_size):
        d = torch.cdist(queries[s:s + chunk_size], support)      # [n_chunk, M]
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real, generated, k: int = 3, chunk_size: int = 1024,
                     device: str | torch.device = "cpu") -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of generated [M, D] against real [N, D].

    Distances are computed for `chunk_size` rows at a time, so memory is chunk_size x max(N, M) floats
    (1024 x 50k float32 = 200 MB) rather than N x M. float64 inputs stay float64; others run in float32.
    Ties count as inside (``<=``), as in the reference implementation.
    """
    if k < 1:
        raise ConfigError("k", f"must be >= 1, got {k}")
    if chunk_size < 1:
        raise ConfigError("chunk_size", f"must be >= 1, got {chunk_size}")
    r = _features("real", real, min_rows=k + 1)
    g = _features("generated", generated, min_rows=k + 1)
    if r.shape[1] != g.shape[1]:
        raise DataError(f"feature dimensions differ: real has {r.shape[1]}, generated has {g.shape[1]}")
    dtype = torch.float64 if (r.dtype == np.float64 and g.dtype == np.float64) else torch.float32
    rt = torch.as_tensor(r, dtype=dtype, device=device)
    gt = torch.as_tensor(g, dtype=dtype, device=device)
    precision = _share_inside(gt, rt, _knn_radii(rt, k, chunk_size), chunk_size)
    recall = _share_inside(rt, gt, _knn_radii(gt, k, chunk_size), chunk_size)
    return PrecisionRecall(precision=precision, recall=recall, k=k)


def manifold_indicators(real, generated, k: int = 3, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-point terms of `precision_recall`: (inside_real [M] bool, one per generated sample: inside the
    real manifold; inside_generated [N] bool, one per real sample). Their means are precision and recall."""
    r = _features("real", real, min_rows=k + 1)
    g = _features("generated", generated, min_rows=k + 1)
    dtype = torch.float64 if (r.dtype == np.float64 and g.dtype == np.float64) else torch.float32
    rt, gt = torch.as_tensor(r, dtype=dtype), torch.as_tensor(g, dtype=dtype)

    def inside(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> np.ndarray:
        out = []
        for s in range(0, queries.shape[0], chunk_size):
            out.append((torch.cdist(queries[s:s + chunk_size], support) <= radii[None, :]).any(dim=1))
        return torch.cat(out).numpy()

    return inside(gt, rt, _knn_radii(rt, k, chunk_size)), inside(rt, gt, _knn_radii(gt, k, chunk_size))


class InceptionScore(NamedTuple):
    mean: float  # over splits
    std: float   # over splits (population std, as improved-GAN and torch-fidelity)


def _split_scores(p: np.ndarray, log_p: np.ndarray, splits: int) -> InceptionScore:
    """p, log_p: [N, C] float64, log_p finite (0 where p == 0)."""
    n = p.shape[0]
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        q = p[rows].mean(axis=0)                                   # [C] marginal p(y) of the split
        log_q = np.log(np.where(q > 0, q, 1.0))
        kl = (p[rows] * (log_p[rows] - log_q)).sum(axis=1)         # [n_split]
        scores.append(np.exp(kl.mean()))
    return InceptionScore(float(np.mean(scores)), float(np.std(scores)))


def _check_splits(splits: int, n: int) -> None:
    if not 1 <= splits <= n:
        raise ConfigError("splits", f"must be in [1, N={n}], got {splits}")


def inception_score(probs, splits: int = 10) -> InceptionScore:
    """Inception Score from class probabilities p(y|x) [N, C] (rows sum to 1).

    The samples are split in order into `splits` contiguous parts (no shuffling; torch-fidelity
    shuffles with a fixed seed first); each part's score is exp(mean_x KL(p(y|x) || mean_x p(y|x))).
    0 * log 0 counts as 0.
    """
    p = _features("probs", probs).astype(np.float64)
    _check_splits(splits, p.shape[0])
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise DataError("probs: rows must be probabilities (non-negative, summing to 1); "
                        "pass logits to inception_score_from_logits")
    p = p / p.sum(axis=1, keepdims=True)
    return _split_scores(p, np.log(np.where(p > 0, p, 1.0)), splits)


def inception_score_from_logits(logits, splits: int = 10) -> InceptionScore:
    """Inception Score from logits [N, C] (log-softmax in float64).

    For the FID Inception network these are the unbiased logits (pool3 @ W without the bias), as in
    the original improved-GAN code and torch-fidelity's ``logits_unbiased``.
    """
    z = torch.as_tensor(_features("logits", logits), dtype=torch.float64)
    _check_splits(splits, z.shape[0])
    log_p = torch.log_softmax(z, dim=1)
    return _split_scores(log_p.exp().numpy(), log_p.numpy(), splits)
