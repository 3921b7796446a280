"""Training curves of a run as one plotly figure, from the points a session has read so far.

`Series` accumulates metric rows (only the new ones are read from the store each time); `figure`
draws the panels with optional EMA smoothing (debiased, as TensorBoard does), the raw values faint
behind the smoothed line, and the reward as mean +- std band.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

# (title, metric names drawn in it); a name ending in "*" is a prefix (all reward components)
PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("reward (mean ± std over the group)", ("reward_mean",)),
    ("reward components: distances d (lower is better)", ("dist_*",)),
    ("policy loss L_pg", ("loss_pg", "loss_recon")),
    ("prior loss L_prior", ("loss_prior",)),
    ("clip fraction", ("clip_frac",)),
    ("KL(π ‖ π_base) on the probe", ("kl_base",)),
    ("gradient norm (before clipping)", ("grad_norm",)),
    ("samples / s", ("samples_per_s",)),
]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def ema(values: Sequence[float], smoothing: float) -> list[float]:
    """Debiased exponential moving average; smoothing 0 returns the values unchanged."""
    if smoothing <= 0:
        return list(values)
    out, acc, weight = [], 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        acc = smoothing * acc + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out.append(acc / weight)
    return out


def new_series() -> dict[str, list]:
    """The per-session store of curve points: {"steps": [...], metric or "time": [...]} (None where missing)."""
    return {"steps": []}


def add_points(series: dict[str, list], rows: Iterable[dict]) -> int:
    """Append metric rows (from RunStore.read_metrics) to `series`; returns how many were added."""
    steps = series["steps"]
    added = 0
    for row in rows:
        step = int(row["step"])
        if steps and step <= steps[-1]:
            continue
        n = len(steps)
        steps.append(step)
        for key, value in row.items():
            if key == "step" or not isinstance(value, (int, float)):
                continue
            column = series.setdefault(key, [None] * n)
            column.append(float(value))
        for key, column in series.items():
            if key != "steps" and len(column) < n + 1:
                column.append(None)
        added += 1
    return added


def _names(series: dict[str, list], pattern: str) -> list[str]:
    if pattern.endswith("*"):
        return sorted(k for k in series if k.startswith(pattern[:-1]))
    return [pattern] if pattern in series else []


def _xy(series: dict[str, list], name: str) -> tuple[list[int], list[float]]:
    pairs = [(s, v) for s, v in zip(series["steps"], series[name]) if v is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def figure(series: dict[str, list], smoothing: float = 0.0, title: str = "") -> go.Figure:
    """The panels of PANELS as a 4 x 2 grid; empty panels say so."""
    rows = math.ceil(len(PANELS) / 2)
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[p[0] for p in PANELS],
                        vertical_spacing=0.09, horizontal_spacing=0.08)
    for index, (_, patterns) in enumerate(PANELS):
        r, c = index // 2 + 1, index % 2 + 1
        names = [n for p in patterns for n in _names(series, p)]
        if not names:
            fig.add_annotation(text="no data yet", showarrow=False, font=dict(color="#999"),
                               xref="x domain" if index == 0 else f"x{index + 1} domain",
                               yref="y domain" if index == 0 else f"y{index + 1} domain", x=0.5, y=0.5)
            continue
        for k, name in enumerate(names):
            x, y = _xy(series, name)
            color = COLORS[k % len(COLORS)]
            smooth = ema(y, smoothing)
            if name == "reward_mean" and "reward_std" in series:
                _, std = _xy(series, "reward_std")
                if len(std) == len(y):
                    std_s = ema(std, smoothing)
                    upper = [m + s for m, s in zip(smooth, std_s)]
                    lower = [m - s for m, s in zip(smooth, std_s)]
                    fig.add_trace(go.Scatter(x=x + x[::-1], y=upper + lower[::-1], fill="toself", line=dict(width=0),
                                             fillcolor="rgba(31,119,180,0.18)", hoverinfo="skip",
                                             name="± std", showlegend=False), row=r, col=c)
            if smoothing > 0:
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=dict(color=color, width=1), opacity=0.3,
                                         name=f"{name} (raw)", showlegend=False, hoverinfo="skip"), row=r, col=c)
            fig.add_trace(go.Scatter(x=x, y=smooth, mode="lines+markers" if len(x) < 30 else "lines",
                                     line=dict(color=color, width=2), marker=dict(size=4), name=name,
                                     showlegend=len(names) > 1, legendgroup=name), row=r, col=c)
    fig.update_layout(height=250 * rows, margin=dict(l=50, r=20, t=60 if title else 40, b=30),
                      template="plotly_white", title=dict(text=title, x=0.01) if title else None,
                      legend=dict(orientation="h", y=1.02 + 0.02 * bool(title), x=1, xanchor="right"),
                      hovermode="x unified")
    fig.update_annotations(font_size=12)
    fig.update_xaxes(title_text="step", row=rows, col=1)
    fig.update_xaxes(title_text="step", row=rows, col=2)
    return fig
