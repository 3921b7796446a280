"""Training curves: one run's panels (`figure`) and several runs overlaid (`overlay_figure`, `metrics_csv`).

`Series` accumulates metric rows (only the new ones are read from the store each time); `figure`
draws the panels with optional EMA smoothing (debiased, as TensorBoard does), the raw values faint
behind the smoothed line, and the reward as a bold mean over a light ± std band. A panel that is
constant by construction for the run (clip fraction with one PPO iteration per rollout) says so
instead of drawing a flat line. Small values read in scientific notation (5e-08, not "50n").
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
CLIP_FRAC_NOTE = ("0 by construction: one PPO iteration per rollout (num_iterations = 1) and the policy loss on "
                  "the rollout's own eval-mode forward (rollout_mode {mode}), so the ratio is 1 and never clipped")
EXACT_RATIO_MODES = ("eval", "twice")  # the policy-loss forward is the rollout's: ratio 1 on the first update
# panels of the overlay, one colour per run: the run panels without clip fraction and throughput; the reward panel
# draws no ± std band there
OVERLAY_PANELS: list[tuple[str, tuple[str, ...]]] = [
    ("reward (mean over the group)" if names == ("reward_mean",) else title, names)
    for title, names in PANELS if names not in (("clip_frac",), ("samples_per_s",))
]
DASHES = ["solid", "dash", "dot", "dashdot"]  # several components of one run in one panel


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


def constant_panels(config: dict) -> dict[str, str]:
    """{panel title: why it is constant} for a run's resolved config. The clip fraction is 0 by construction only
    with one update per rollout whose policy loss is computed on the rollout's own forward (rollout_mode eval or
    twice); under "train" (the default) dropout and condition dropout make the ratio differ from 1 and the clip
    acts (README, Rollout modes)."""
    out = {}
    mode = config.get("rollout_mode", "train")
    if int(config.get("num_iterations", 1) or 1) == 1 and mode in EXACT_RATIO_MODES:
        out["clip fraction"] = CLIP_FRAC_NOTE.format(mode=mode)
    return out


def readable_axes(fig: go.Figure) -> None:
    """Scientific notation for small or large values (plotly's SI prefixes read "50n" for 5e-8)."""
    fig.update_yaxes(exponentformat="e", showexponent="all")


def figure(series: dict[str, list], smoothing: float = 0.0, title: str = "",
           notes: dict[str, str] | None = None) -> go.Figure:
    """The panels of PANELS as a 4 x 2 grid; empty panels say so, and panels named in `notes` show
    that note (why they are constant) instead of a flat line."""
    notes = notes or {}
    rows = math.ceil(len(PANELS) / 2)
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[p[0] for p in PANELS],
                        vertical_spacing=0.09, horizontal_spacing=0.08)
    for index, (_, patterns) in enumerate(PANELS):
        r, c = index // 2 + 1, index % 2 + 1
        names = [n for p in patterns for n in _names(series, p)]
        note = notes.get(PANELS[index][0])
        if note or not names:
            text = "<br>".join(_wrap(note, 48)) if note else "no data yet"
            fig.add_annotation(text=text, showarrow=False, font=dict(color="#4a4a4a", size=12),
                               **_panel_centre(fig, index))
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
                                             fillcolor="rgba(31,119,180,0.08)", hoverinfo="skip",
                                             name="± std", showlegend=False), row=r, col=c)
                    fig.add_trace(go.Scatter(x=x, y=upper, mode="lines", line=dict(color=color, width=0.6, dash="dot"),
                                             opacity=0.5, hoverinfo="skip", showlegend=False), row=r, col=c)
                    fig.add_trace(go.Scatter(x=x, y=lower, mode="lines", line=dict(color=color, width=0.6, dash="dot"),
                                             opacity=0.5, hoverinfo="skip", showlegend=False), row=r, col=c)
            if smoothing > 0:
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=dict(color=color, width=1), opacity=0.3,
                                         name=f"{name} (raw)", showlegend=False, hoverinfo="skip"), row=r, col=c)
            fig.add_trace(go.Scatter(x=x, y=smooth, mode="lines+markers" if len(x) < 30 else "lines",
                                     line=dict(color=color, width=2.5 if name == "reward_mean" else 2),
                                     marker=dict(size=4), name=name,
                                     showlegend=len(names) > 1, legendgroup=name), row=r, col=c)
    fig.update_layout(height=250 * rows, margin=dict(l=50, r=20, t=60 if title else 40, b=30),
                      template="plotly_white", title=dict(text=title, x=0.01) if title else None,
                      legend=dict(orientation="h", y=1.02 + 0.02 * bool(title), x=1, xanchor="right"),
                      hovermode="x unified")
    fig.update_annotations(font_size=12)
    fig.update_xaxes(title_text="step", row=rows, col=1)
    fig.update_xaxes(title_text="step", row=rows, col=2)
    readable_axes(fig)
    return fig


def _panel_centre(fig: go.Figure, index: int) -> dict:
    """Paper coordinates of subplot `index`'s centre ("x5 domain" references are not drawn where they
    belong by the plotly.js Gradio ships: every such note landed on the first panel)."""
    n = "" if index == 0 else str(index + 1)
    xd, yd = fig.layout[f"xaxis{n}"].domain, fig.layout[f"yaxis{n}"].domain
    return dict(xref="paper", yref="paper", x=(xd[0] + xd[1]) / 2, y=(yd[0] + yd[1]) / 2, xanchor="center",
                yanchor="middle")


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def overlay_figure(runs: dict[str, dict[str, list]], x_axis: str = "step", log_y: bool = False,
                   smoothing: float = 0.0) -> go.Figure:
    """Several runs' curves on shared panels (OVERLAY_PANELS): one colour per run with a legend entry,
    x = step or wall time (minutes since the run's first metric row), optional log y."""
    if x_axis not in ("step", "wall time"):
        raise ValueError(f"x_axis: step or wall time, got {x_axis!r}")
    rows = math.ceil(len(OVERLAY_PANELS) / 2)
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[p[0] for p in OVERLAY_PANELS],
                        vertical_spacing=0.1, horizontal_spacing=0.08)
    for k, (label, series) in enumerate(runs.items()):
        color = COLORS[k % len(COLORS)]
        times = series.get("time") or [None] * len(series["steps"])
        t0 = next((t for t in times if t is not None), None)
        for index, (_, patterns) in enumerate(OVERLAY_PANELS):
            r, c = index // 2 + 1, index % 2 + 1
            names = [n for p in patterns for n in _names(series, p)]
            for j, name in enumerate(names):
                pts = [(s, t, v) for s, t, v in zip(series["steps"], times, series[name]) if v is not None]
                if x_axis == "wall time":
                    pts = [p for p in pts if p[1] is not None]
                    x = [(p[1] - t0) / 60 for p in pts]
                else:
                    x = [p[0] for p in pts]
                y = ema([p[2] for p in pts], smoothing)
                if log_y:
                    y = [v if v is not None and v > 0 else None for v in y]
                first = index == 0 and j == 0
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines",
                                         line=dict(color=color, width=2, dash=DASHES[j % len(DASHES)]),
                                         marker=dict(size=4), name=label if len(names) == 1 else f"{label} · {name}",
                                         legendgroup=label, showlegend=first or (len(names) > 1 and index == 1),
                                         hovertemplate=f"{label}<br>{name}: %{{y:.4g}}<extra></extra>"), row=r, col=c)
    if not runs:
        fig.add_annotation(text="pick runs to overlay", showarrow=False, font=dict(color="#595959"),
                           xref="paper", yref="paper", x=0.5, y=0.5)
    for index, (_, patterns) in enumerate(OVERLAY_PANELS):
        if runs and not any(_names(series, p) for series in runs.values() for p in patterns):
            fig.add_annotation(text="not logged by these runs", showarrow=False, font=dict(color="#4a4a4a", size=12),
                               **_panel_centre(fig, index))
    fig.update_layout(height=250 * rows + 40 + 22 * len(runs), margin=dict(l=50, r=20, t=50 + 22 * len(runs), b=30),
                      template="plotly_white", hovermode="closest",
                      legend=dict(orientation="v", yanchor="bottom", y=1.04, x=0, xanchor="left"))
    fig.update_annotations(font_size=12)
    title = "step" if x_axis == "step" else "wall time (minutes since the run's first metric)"
    fig.update_xaxes(title_text=title, row=rows, col=1)
    fig.update_xaxes(title_text=title, row=rows, col=2)
    if log_y:
        fig.update_yaxes(type="log")
    readable_axes(fig)
    return fig


def metrics_csv(runs: dict[str, list[dict]], path) -> int:
    """Write every metric row of the runs ({run id: store.read_metrics rows}) as one CSV: run, step,
    time (unix s), wall_s (since the run's first row), then one column per metric. Returns the rows."""
    import csv

    columns = sorted({k for rows in runs.values() for row in rows for k in row if k not in ("step", "time")})
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "time", "wall_s", *columns])
        for run_id, rows in runs.items():
            t0 = rows[0]["time"] if rows else 0.0
            for row in rows:
                w.writerow([run_id, row["step"], row["time"], round(row["time"] - t0, 3),
                            *[row.get(c, "") for c in columns]])
                n += 1
    return n
