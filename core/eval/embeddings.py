"""Embedding-shift analysis: how far base and aligned samples sit from real images in feature space.

Input: three feature sets, ``real``, ``base`` and ``aligned`` (features [N, D] from one extractor,
with class ids or prompts as labels [N]). Output (`EmbeddingShift`, JSON-serialisable):

- numbers, on the full features: Fréchet distance and k-NN precision/recall of each model set against
  the real set, overall and per label (labels present in real and the model set, with > k samples);
- joint 2-D projections fitted on all three sets together (PCA to `pca_dim`, then t-SNE and UMAP),
  so the three sets share one map;
- Gaussian KDE densities of each set on that map: along each axis and on a 2-D grid (contours).

Plotly figures draw it with one colour per set, the same everywhere (`SET_COLORS`).
Everything is deterministic given `seed` (sub-sampling, PCA, t-SNE and UMAP).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.errors import ConfigError, DataError
from core.eval.metrics import fid_from_features, precision_recall

SET_NAMES = ("real", "base", "aligned")
MODEL_SETS = ("base", "aligned")
# far apart in hue and lightness (the earlier green / blue / vermilion read as one teal-blue-orange blob), and a
# marker shape per set so the sets part without colour too
SET_COLORS = {"real": "#3a3a3a", "base": "#0072B2", "aligned": "#E69F00"}  # Okabe-Ito: near-black, blue, orange
SET_SYMBOLS = {"real": "circle-open", "base": "circle", "aligned": "diamond"}
METHODS = ("tsne", "umap")


@dataclass
class FeatureSet:
    features: np.ndarray              # [N, D]
    labels: np.ndarray | None = None  # [N] class ids or prompts; None: no per-label numbers


@dataclass
class Distance:
    """One model set against the real set."""
    frechet: float    # Fréchet distance of Gaussian fits to the features
    precision: float  # share of model samples on the real manifold
    recall: float     # share of real samples on the model manifold
    n_real: int
    n_model: int


@dataclass
class Projection:
    """A joint 2-D map of the three sets and their KDE densities on it."""
    method: str
    coords: dict[str, np.ndarray]      # set -> [n_s, 2] map coordinates of its plotted points
    labels: dict[str, list]            # set -> [n_s] labels of those points (empty list: unlabelled)
    grid_x: np.ndarray                 # [G] points along map axis 1 (1-D KDE)
    grid_y: np.ndarray                 # [G] points along map axis 2
    density_x: dict[str, np.ndarray]   # set -> [G] density of the set's axis-1 coordinate
    density_y: dict[str, np.ndarray]   # set -> [G] density of the set's axis-2 coordinate
    grid2d_x: np.ndarray               # [G2]
    grid2d_y: np.ndarray               # [G2]
    density_2d: dict[str, np.ndarray]  # set -> [G2 (y), G2 (x)] 2-D density


@dataclass
class EmbeddingShift:
    seed: int
    k: int
    feature_dim: int
    counts: dict[str, int]                       # set -> number of samples
    overall: dict[str, Distance]                 # "base" / "aligned" -> distance to real
    per_label: dict[str, dict[str, Distance]]    # str(label) -> model set -> distance to real
    skipped_labels: dict[str, str] = field(default_factory=dict)  # str(label) -> why no numbers
    projections: dict[str, Projection] = field(default_factory=dict)  # method -> map

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict())
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddingShift:
        def dist(x):
            return Distance(**x)

        def proj(p):
            arrays = {k: np.asarray(v, dtype=np.float64) for k, v in p.items()
                      if k in ("grid_x", "grid_y", "grid2d_x", "grid2d_y")}
            per_set = {k: {s: np.asarray(v, dtype=np.float64) for s, v in p[k].items()}
                       for k in ("coords", "density_x", "density_y", "density_2d")}
            for s, c in per_set["coords"].items():
                per_set["coords"][s] = c.reshape(-1, 2)
            return Projection(method=p["method"], labels=p["labels"], **arrays, **per_set)

        return cls(seed=d["seed"], k=d["k"], feature_dim=d["feature_dim"], counts=d["counts"],
                   overall={m: dist(x) for m, x in d["overall"].items()},
                   per_label={lab: {m: dist(x) for m, x in v.items()} for lab, v in d["per_label"].items()},
                   skipped_labels=d["skipped_labels"],
                   projections={m: proj(p) for m, p in d["projections"].items()})

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> EmbeddingShift:
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        return cls.from_dict(json.loads(p.read_text(encoding="utf-8") if p else str(text_or_path)))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _as_set(name: str, s) -> FeatureSet:
    if isinstance(s, tuple):
        s = FeatureSet(*s)
    elif not isinstance(s, FeatureSet):
        s = FeatureSet(s)
    feats = s.features.detach().cpu().numpy() if hasattr(s.features, "detach") else np.asarray(s.features)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise DataError(f"{name}: expected features [N >= 2, D], got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise DataError(f"{name}: features contain NaN or inf")
    labels = None
    if s.labels is not None:
        labels = np.asarray(s.labels.tolist() if hasattr(s.labels, "tolist") else list(s.labels))
        if labels.shape != (feats.shape[0],):
            raise DataError(f"{name}: labels must have shape [{feats.shape[0]}], got {labels.shape}")
    return FeatureSet(feats.astype(np.float64), labels)


def _distance(real: np.ndarray, model: np.ndarray, k: int) -> Distance:
    pr = precision_recall(real, model, k=k)
    fd = fid_from_features(real, model)
    return Distance(frechet=fd, precision=pr.precision, recall=pr.recall,
                    n_real=int(real.shape[0]), n_model=int(model.shape[0]))


def _label_key(label) -> str:
    return str(label.item() if isinstance(label, np.generic) else label)


def _per_label(sets: dict[str, FeatureSet], k: int):
    real = sets["real"]
    per_label: dict[str, dict[str, Distance]] = {}
    skipped: dict[str, str] = {}
    if real.labels is None:
        return per_label, skipped
    for label in np.unique(real.labels):
        key = _label_key(label)
        r = real.features[real.labels == label]
        row = {}
        for m in MODEL_SETS:
            if sets[m].labels is None:
                continue
            g = sets[m].features[sets[m].labels == label]
            if min(len(r), len(g)) <= k:
                skipped[key] = f"needs more than k={k} samples in real and {m}, has {len(r)} and {len(g)}"
                row = {}
                break
            row[m] = _distance(r, g, k)
        if row:
            per_label[key] = row
    for m in MODEL_SETS:
        if sets[m].labels is not None:
            for label in np.setdiff1d(np.unique(sets[m].labels), real.labels):
                skipped.setdefault(_label_key(label), f"no real samples with this label ({m} has some)")
    return per_label, skipped


def _embed(method: str, x: np.ndarray, seed: int, perplexity: float, n_neighbors: int) -> np.ndarray:
    n = x.shape[0]
    if method == "tsne":
        from sklearn.manifold import TSNE

        perp = min(perplexity, (n - 1) / 3.0)
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        nn = max(2, min(n_neighbors, n - 1))
        return umap.UMAP(n_components=2, n_neighbors=nn, random_state=seed, n_jobs=1).fit_transform(x)
    raise ConfigError("methods", f"unknown projection '{method}'; choose from {METHODS}")


def _fit_kde(points: np.ndarray, name: str, bw_scale: float):
    """Gaussian KDE of points [d, n] with `bw_scale` times Scott's bandwidth.

    Scott's rule assumes one Gaussian; a map of several classes is multi-modal, where it oversmooths
    the clusters into one blob, hence the default scale of 0.5.
    """
    from scipy.stats import gaussian_kde

    try:
        return gaussian_kde(points, bw_method=lambda kde: bw_scale * kde.scotts_factor())
    except np.linalg.LinAlgError as e:
        raise DataError(f"{name}: its projected points are degenerate (all on a line or a point); "
                        "a density needs more varied samples") from e


def _projection(method: str, coords: dict[str, np.ndarray], labels: dict[str, list],
                grid: int, grid2d: int, bw_scale: float) -> Projection:
    kde_x = {s: _fit_kde(c[:, 0][None], f"{s} ({method})", bw_scale) for s, c in coords.items()}
    kde_y = {s: _fit_kde(c[:, 1][None], f"{s} ({method})", bw_scale) for s, c in coords.items()}
    kde_2d = {s: _fit_kde(c.T, f"{s} ({method})", bw_scale) for s, c in coords.items()}
    everything = np.concatenate(list(coords.values()))
    # the grid reaches 3 kernel widths past the outermost points, so each density integrates to ~1
    pad = 3.0 * np.array([max(np.sqrt(k.covariance[0, 0]) for k in kde_x.values()),
                          max(np.sqrt(k.covariance[0, 0]) for k in kde_y.values())])
    lo, hi = everything.min(axis=0) - pad, everything.max(axis=0) + pad
    gx, gy = np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid)
    g2x, g2y = np.linspace(lo[0], hi[0], grid2d), np.linspace(lo[1], hi[1], grid2d)
    mesh_x, mesh_y = np.meshgrid(g2x, g2y)                         # [G2 (y), G2 (x)]
    mesh = np.stack([mesh_x.ravel(), mesh_y.ravel()])              # [2, G2*G2]
    return Projection(method=method, coords=coords, labels=labels, grid_x=gx, grid_y=gy,
                      density_x={s: k(gx[None]) for s, k in kde_x.items()},
                      density_y={s: k(gy[None]) for s, k in kde_y.items()},
                      grid2d_x=g2x, grid2d_y=g2y,
                      density_2d={s: k(mesh).reshape(mesh_x.shape) for s, k in kde_2d.items()})


def analyze_embedding_shift(real, base, aligned, *, methods=METHODS, seed: int = 0, k: int = 3,
                            pca_dim: int = 50, max_points_per_set: int = 2000, tsne_perplexity: float = 30.0,
                            umap_neighbors: int = 15, kde_grid: int = 200, kde_grid2d: int = 60,
                            kde_bw_scale: float = 0.5) -> EmbeddingShift:
    """Distances of base and aligned to real, and joint maps with KDEs.

    real, base, aligned: `FeatureSet`, a (features [N, D], labels [N]) tuple, or features alone.
    max_points_per_set: the maps use at most this many points per set (seeded sub-sample; t-SNE is
    quadratic-ish); the numbers always use every sample.
    kde_bw_scale: KDE bandwidth as a multiple of Scott's rule.
    t-SNE starts from PCA, so `seed` changes the UMAP layout and the sub-sample, not the t-SNE map.
    """
    if k < 1:
        raise ConfigError("k", f"must be >= 1, got {k}")
    if pca_dim < 2:
        raise ConfigError("pca_dim", f"must be >= 2, got {pca_dim}")
    if kde_bw_scale <= 0:
        raise ConfigError("kde_bw_scale", f"must be > 0, got {kde_bw_scale}")
    if max_points_per_set < 3:
        raise ConfigError("max_points_per_set", f"must be >= 3, got {max_points_per_set}")
    for m in methods:
        if m not in METHODS:
            raise ConfigError("methods", f"unknown projection '{m}'; choose from {METHODS}")
    sets = {n: _as_set(n, s) for n, s in zip(SET_NAMES, (real, base, aligned))}
    dims = {n: s.features.shape[1] for n, s in sets.items()}
    if len(set(dims.values())) != 1:
        raise DataError(f"feature dimensions differ between sets: {dims}; use one extractor for all three")
    for n, s in sets.items():
        if s.features.shape[0] <= k:
            raise DataError(f"{n}: needs more than k={k} samples, has {s.features.shape[0]}")

    overall = {m: _distance(sets["real"].features, sets[m].features, k) for m in MODEL_SETS}
    per_label, skipped = _per_label(sets, k)

    rng = np.random.default_rng(seed)
    picked = {}
    for n, s in sets.items():
        count = s.features.shape[0]
        picked[n] = np.sort(rng.choice(count, size=max_points_per_set, replace=False)) \
            if count > max_points_per_set else np.arange(count)
    stacked = np.concatenate([sets[n].features[picked[n]] for n in SET_NAMES])   # [n_all, D]
    bounds = np.cumsum([0] + [len(picked[n]) for n in SET_NAMES])
    n_comp = min(pca_dim, stacked.shape[1], stacked.shape[0] - 1)
    if n_comp < stacked.shape[1]:
        from sklearn.decomposition import PCA

        stacked = PCA(n_components=n_comp, svd_solver="full").fit_transform(stacked)
    labels = {n: ([] if sets[n].labels is None else _jsonable(sets[n].labels[picked[n]].tolist()))
              for n in SET_NAMES}

    projections = {}
    for method in methods:
        xy = _embed(method, stacked, seed, tsne_perplexity, umap_neighbors).astype(np.float64)
        coords = {n: xy[bounds[i]:bounds[i + 1]] for i, n in enumerate(SET_NAMES)}
        projections[method] = _projection(method, coords, labels, kde_grid, kde_grid2d, kde_bw_scale)

    return EmbeddingShift(seed=seed, k=k, feature_dim=dims["real"],
                          counts={n: int(s.features.shape[0]) for n, s in sets.items()},
                          overall=overall, per_label=per_label, skipped_labels=skipped,
                          projections=projections)


# ------------------------------------------------------------------------------------------------ figures

def _hex_rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _get_projection(result: EmbeddingShift, method: str) -> Projection:
    if method not in result.projections:
        raise ConfigError("method", f"no '{method}' projection in this result; has {sorted(result.projections)}")
    return result.projections[method]


def label_colors(labels) -> dict[str, str]:
    """One colour per class (or prompt group) label, in sorted order, from a 24-colour qualitative palette."""
    from plotly.colors import qualitative

    def order(v: str) -> tuple:  # class ids by number, then names
        return (0, int(v), v) if v.isdigit() else (1, 0, v)

    ordered = sorted({str(v) for v in labels}, key=order)
    return {lab: qualitative.Dark24[i % len(qualitative.Dark24)] for i, lab in enumerate(ordered)}


def scatter_figure(result: EmbeddingShift, method: str = "tsne", contours: bool = True):
    """The joint map: one marker trace per set (its symbol; its 2-D KDE contours under it, in the set's colour),
    the points coloured by their class (or prompt group) where the sets carry labels, with one legend entry per
    class (legendgroup "labels", named by the label); without labels the points take their set's colour."""
    import plotly.graph_objects as go

    p = _get_projection(result, method)
    colors = label_colors(v for s in SET_NAMES for v in (p.labels[s] or []))
    fig = go.Figure()
    if contours:
        for s in SET_NAMES:
            c = SET_COLORS[s]
            fig.add_trace(go.Contour(x=p.grid2d_x, y=p.grid2d_y, z=p.density_2d[s], name=f"{s} density",
                                     legendgroup=s, showlegend=False, showscale=False, ncontours=6,
                                     contours_coloring="lines", colorscale=[[0, c], [1, c]],
                                     line_width=1, opacity=0.6, hoverinfo="skip"))
    for s in SET_NAMES:
        labels = [str(v) for v in p.labels[s]] if p.labels[s] else None
        hover = f"%{{text}}<extra>{s}</extra>" if labels else None
        color = [colors[v] for v in labels] if labels else _hex_rgba(SET_COLORS[s], 0.7)
        fig.add_trace(go.Scatter(x=p.coords[s][:, 0], y=p.coords[s][:, 1], mode="markers", name=s,
                                 legendgroup=s, text=labels, hovertemplate=hover,
                                 marker=dict(color=color, size=6, symbol=SET_SYMBOLS[s], opacity=0.8,
                                             line=dict(color=SET_COLORS[s], width=1))))
    for label, color in colors.items():  # the legend of the class colours (no points of their own)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label, legendgroup="labels",
                                 marker=dict(color=color, size=8, symbol="square"), hoverinfo="skip"))
    fig.update_layout(title=f"{method.upper()} of real, base and aligned features", template="plotly_white",
                      xaxis_title=f"{method} 1", yaxis_title=f"{method} 2")
    return fig


def kde_figure(result: EmbeddingShift, method: str = "tsne"):
    """1-D KDE of each set along each map axis (two panels)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    p = _get_projection(result, method)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{method} axis 1", f"{method} axis 2"))
    for s in SET_NAMES:
        for col, (grid, dens) in enumerate(((p.grid_x, p.density_x[s]), (p.grid_y, p.density_y[s])), start=1):
            fig.add_trace(go.Scatter(x=grid, y=dens, mode="lines", name=s, legendgroup=s, showlegend=col == 1,
                                     line=dict(color=SET_COLORS[s], width=2), fill="tozeroy",
                                     fillcolor=_hex_rgba(SET_COLORS[s], 0.15)), row=1, col=col)
    fig.update_layout(title=f"Density along the {method.upper()} axes", template="plotly_white")
    fig.update_yaxes(title_text="density", row=1, col=1)
    return fig


def contour_figure(result: EmbeddingShift, method: str = "tsne"):
    """2-D KDE contours only, one colour per set."""
    fig = scatter_figure(result, method, contours=True)
    fig.data = tuple(t for t in fig.data if t.type == "contour")
    for t in fig.data:
        t.showlegend = True
        t.name = t.legendgroup
    fig.update_layout(title=f"2-D density on the {method.upper()} map")
    return fig


def distance_figure(result: EmbeddingShift, metric: str = "frechet"):
    """Bars of one metric for base and aligned: overall, then per label."""
    import plotly.graph_objects as go

    if metric not in ("frechet", "precision", "recall"):
        raise ConfigError("metric", f"must be frechet, precision or recall, got '{metric}'")
    names = ["overall", *result.per_label]
    fig = go.Figure()
    for m in MODEL_SETS:
        values = [getattr(result.overall[m], metric)]
        values += [getattr(result.per_label[lab][m], metric) if m in result.per_label[lab] else None
                   for lab in result.per_label]
        fig.add_trace(go.Bar(x=names, y=values, name=m, marker_color=SET_COLORS[m]))
    title = {"frechet": "Fréchet distance to real (lower is closer)",
             "precision": "Precision against real (higher: more samples on the real manifold)",
             "recall": "Recall against real (higher: more of the real manifold covered)"}[metric]
    fig.update_layout(title=title, barmode="group", template="plotly_white", yaxis_title=metric)
    return fig
