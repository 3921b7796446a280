"""The Evaluate tab's diagnostics section: where an aligned demo generator moved, and whether it helps.

It queues `python -m core eval diagnose` as a background run (`core.runs.kinds.submit`, kind "diagnose";
worker entry `run_diagnose`, run kind "diagnose") and shows a finished run's results.json: per-position
KL(aligned || base) as a heat map over the token grid, the held-out teacher-forced reward, the off-manifold
rate and demo-FID / class accuracy vs CFG scale, each comparison with its spread over the sampling seeds and
a verdict ("within noise" unless the 95% interval of the paired change excludes 0). Not a tab of its own:
`build_section` runs inside the Evaluate tab.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Optional

import gradio as gr
import plotly.graph_objects as go

from app import fields, widgets
from app.plots import readable_axes
from app.tabs.shared import error_text, progress_bar
from core.errors import UserError

NUMBER_KEYS = ("num_images", "num_generations", "num_samples")
LIST_KEYS = ("seeds", "cfg_scales")


def checkpoint_choices(store) -> list[tuple[str, str]]:
    """(label, "RUN@STEP") of every checkpoint of a training run on the demo generator, newest run first."""
    from core.checkpoints import ref_text
    from core.eval import diagnostics
    from core.runs import kinds

    out = []
    for run in store.list_runs():
        if run.kind != kinds.TRAIN:
            continue
        try:
            model = json.loads((run.run_dir / "config.json").read_text()).get("model")
        except (OSError, ValueError):
            continue
        if model != diagnostics.MODEL:
            continue
        for ckpt in reversed(store.checkpoints(run.id)):
            out.append((f"run · {run.id} · step {ckpt.step}", ref_text(run.id, ckpt.step)))
    return out


@functools.cache
def field_table() -> dict[str, fields.Field]:
    """DiagnoseConfig's fields as the form's field table (its own checks need at least 2 of each count)."""
    from core.eval.diagnostics import DiagnoseConfig

    return fields.table(DiagnoseConfig, **{k: {"minimum": 2} for k in NUMBER_KEYS})


def plan(values: dict, app):
    """The form's values -> a checked DiagnoseConfig (a ConfigError names the input); the checkpoint confined
    to the app's weight roots before any file is looked at."""
    from app.safety import confine_weights
    from core.eval.diagnostics import DiagnoseConfig

    table = field_table()
    parsed = fields.parse_all([table[k] for k in (*NUMBER_KEYS, *LIST_KEYS)], values)
    checkpoint = confine_weights(values.get("checkpoint"), app.runs_dir, app.weight_roots, "checkpoint")
    return DiagnoseConfig(checkpoint=checkpoint, **parsed)


def run_choices(store) -> list[tuple[str, str]]:
    """(label, run id) of every diagnose run, newest first, with its status and progress."""
    from core.runs import kinds

    return [(f"{r.id} · {r.status} · {progress_bar(r.step, r.total_steps, 10, 'phases', markdown=False)}", r.id)
            for r in store.list_runs() if r.kind == kinds.DIAGNOSE]


def _verdict_text(v) -> str:
    return f"{v.delta_text()}, 95% interval {v.interval_text()}: **{v.verdict}**"


def results_markdown(out: dict) -> str:
    """The results of one diagnosis as a table: base, aligned, and the paired change with its verdict."""
    from core.eval.verdict import from_seed_values

    tf, rates = out["teacher_forced_reward"], out["off_manifold_rate"]
    kl = out["kl_per_position"]
    top = max(range(len(kl)), key=kl.__getitem__)
    w = out["grid"][1]
    reward = from_seed_values("reward", tf["per_seed"]["base"], tf["per_seed"]["aligned"])
    rows = [
        "| diagnostic | base | aligned | change (aligned − base) |", "|---|---|---|---|",
        f"| KL(aligned ‖ base) per position, teacher forced on {out['num_images']} held-out scenes | — | mean "
        f"{out['kl_mean']:.4g}; first token {out['kl_first_token']:.4g}; largest {kl[top]:.4g} at row {top // w}, "
        f"column {top % w} | which tokens moved: the heat map below |",
        f"| held-out teacher-forced reward (−MSE) | {reward.base.text()} | {reward.aligned.text()} | "
        f"{_verdict_text(reward)} |",
        off_manifold_row(rates),
    ]
    for r in out["cfg_sweep"]:
        for metric, name in (("demo_fid", "demo-FID ↓"), ("class_accuracy", "class accuracy ↑")):
            v = from_seed_values("fid" if metric == "demo_fid" else metric, r["base"][metric + "_per_seed"],
                                 r["aligned"][metric + "_per_seed"])
            rows.append(f"| {name}, CFG {r['cfg_scale']:g} | {v.base.text()} | {v.aligned.text()} | {_verdict_text(v)} |")
    seeds = len(out["seeds"])
    return ("\n".join(rows) + f"\n\nMean ± std over {seeds} sampling seed(s); base and aligned draw with the same "
            "random numbers per seed, so each change is paired by seed (a t-interval over the seeds).")


def off_manifold_row(rates: dict) -> str:
    """The off-manifold rate's row: base and aligned as mean ± std, the change with its t-interval over the seeds
    (results written before the per-seed values were kept show the change alone)."""
    from core.eval.verdict import from_seed_values, mean_std

    what = f"| off-manifold rate (tokens changed by decode → re-encode; real scenes {rates['real']:.3f}) | "
    lower = " (lower = closer to what the tokenizer reproduces)"
    if "base_per_seed" in rates and "aligned_per_seed" in rates:
        v = from_seed_values("off_manifold", rates["base_per_seed"], rates["aligned_per_seed"])
        return (f"{what}{v.base.text()} | {v.aligned.text()} | {v.delta_text()}, 95% interval "
                f"{v.interval_text()}{lower} |")
    return (f"{what}{mean_std(rates['base'], rates['base_std'])} | {mean_std(rates['aligned'], rates['aligned_std'])}"
            f" | {rates['aligned'] - rates['base']:+.3f}{lower} |")


def kl_figure(out: dict) -> go.Figure:
    """Per-position KL(aligned ‖ base) on the token grid (row-major, the first token top left)."""
    h, w = out["grid"]
    kl = out["kl_per_position"]
    z = [kl[r * w:(r + 1) * w] for r in range(h)]
    fig = go.Figure(go.Heatmap(z=z, colorscale="Viridis", colorbar=dict(title="KL (nats)"),
                               hovertemplate="row %{y}, column %{x}: KL %{z:.4g}<extra></extra>"))
    fig.update_layout(title="KL(aligned ‖ base) per token position", height=360, margin=dict(l=50, r=20, t=50, b=40),
                      yaxis=dict(autorange="reversed", title="token row"), xaxis=dict(title="token column"))
    readable_axes(fig)
    return fig


def show(store, run_id: Optional[str]) -> tuple[str, Any]:
    """The view of one diagnose run: its results (table + heat map), or what it is doing."""
    from core.eval.job_io import RESULTS_FILE
    from core.runs.store import RunNotFoundError

    if not run_id:
        return "Pick a diagnosis above (or queue one).", None
    try:
        run = store.get(run_id)
    except RunNotFoundError:
        return f"Run `{run_id}` is gone (deleted?).", None
    path = run.run_dir / RESULTS_FILE
    if not path.is_file():
        return (f"`{run.id}` is {run.status} ({run.step}/{run.total_steps} phases)"
                + (f": {run.message.splitlines()[0]}" if run.message else "") + "; this view follows it."), None
    out = json.loads(path.read_text())
    return f"**`{run.id}`**: `{out['config']['checkpoint']}` vs the committed base\n\n" + results_markdown(out), kl_figure(out)


def build_section(ctx) -> None:
    """The section's inputs, buttons and views, inside the Evaluate tab."""
    app = ctx.app
    with gr.Accordion("Diagnostics: where a demo run moved the generator", open=False, elem_id="diag-section"):
        gr.Markdown("For a checkpoint of a run on the embedded demo: which token positions the run changed, whether "
                    "the reward VA-π optimises improves on held-out scenes, whether samples moved toward what the "
                    "tokenizer reproduces, and demo-FID vs CFG scale, base beside aligned. A background job (a few "
                    "minutes on 2 CPU cores at the defaults), as `python -m core eval diagnose`.")
        with gr.Row(equal_height=False):
            choices = checkpoint_choices(app.store)  # newest run's last checkpoint first: the default
            checkpoint = gr.Dropdown(choices=choices, value=choices[0][1] if choices else None, allow_custom_value=True,
                                     filterable=True, scale=3, label="checkpoint", elem_id="diag-checkpoint",
                                     info=field_table()["checkpoint"].info)
            numbers = {k: widgets.widget(field_table()[k], f"diag-{k}", scale=1) for k in NUMBER_KEYS}
        with gr.Row(equal_height=False):
            lists = {k: widgets.widget(field_table()[k], f"diag-{k}") for k in LIST_KEYS}
        launch_btn = gr.Button("Diagnose", variant="primary", elem_id="diag-launch")
        status = gr.Markdown("", elem_id="diag-status")
        with gr.Row(equal_height=False):
            runs = gr.Dropdown(choices=run_choices(app.store), value=None, label="diagnosis", scale=4,
                               elem_id="diag-run", info="a queued, running or finished diagnose run")
            refresh_btn = gr.Button("Refresh", scale=1, elem_id="diag-refresh")
        table = gr.Markdown("", elem_id="diag-results")
        heat = gr.Plot(label="KL per token position", elem_id="diag-kl")
    keys = ["checkpoint", *NUMBER_KEYS, *LIST_KEYS]
    inputs = [checkpoint, *numbers.values(), *lists.values()]

    def launch(*args):
        from core.runs import kinds

        values = dict(zip(keys, args))
        try:
            cfg = plan(values, app)
            with app.launcher_lock:
                run = kinds.submit(app.launcher, kinds.DIAGNOSE, cfg, "cpu")
        except UserError as e:
            target = getattr(e, "field", None)
            return error_text(e, target if target in keys else None, "Not queued"), gr.update()
        return (f"✓ **Queued** `{run.id}` ({run.status}): {cfg.total_steps} phases; its progress and results follow "
                "below.",
                gr.update(choices=run_choices(app.store), value=run.id))

    def refresh(run_id):
        text, fig = show(app.store, run_id)
        return gr.update(choices=run_choices(app.store), value=run_id), gr.update(choices=checkpoint_choices(app.store)), text, fig

    seen = gr.State(None)  # [status, step] of the picked run when the page last showed it
    timer = gr.Timer(app.page_timer_s)

    def follow(run_id, last):
        """The page follows the picked run: when its status or phase changes, its label, the status line and (once
        it has them) its results are updated; nothing is sent while it stands still."""
        from core.runs.store import RunNotFoundError

        skip = gr.skip()
        if not run_id:
            return skip, skip, skip, skip, last
        try:
            run = app.store.get(run_id)
        except RunNotFoundError:
            return skip, skip, skip, skip, last
        now = [run.status, run.step]
        if now == last:
            return skip, skip, skip, skip, last
        text, fig = show(app.store, run_id)
        line = f"`{run.id}` **{run.status}** {progress_bar(run.step, run.total_steps, unit='phases')}"
        return gr.update(choices=run_choices(app.store), value=run_id), text, fig, line, now

    timer.tick(follow, inputs=[runs, seen], outputs=[runs, table, heat, status, seen], api_name="diagnose_follow",
               show_progress="hidden", queue=False, trigger_mode="once")
    launch_btn.click(launch, inputs=inputs, outputs=[status, runs], api_name="launch_diagnose")

    def fresh_checkpoints(value):
        """New checkpoints into the list when the tab opens; an empty pick becomes the newest."""
        choices = checkpoint_choices(app.store)
        return gr.update(choices=choices, value=value or (choices[0][1] if choices else None))

    ctx.get("evaluate.tab").select(fresh_checkpoints, inputs=checkpoint, outputs=checkpoint,
                                   api_visibility="private", show_progress="hidden")
    refresh_btn.click(refresh, inputs=runs, outputs=[runs, checkpoint, table, heat], api_name="diagnose_refresh")
    runs.select(lambda r: show(app.store, r), inputs=runs, outputs=[table, heat], api_name="show_diagnosis")
