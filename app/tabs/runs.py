"""Runs tab: every run (training runs and evaluation jobs, told apart by a "kind" column) with status,
progress, ETA and reward; for the selected run, live curves, the step x class sample grids, the log
tail, and stop / resume / continue to more steps / delete. A selected evaluation job shows its own results instead of the
training panels (a sweep: its table). Any training runs, and a sweep's variants, can be overlaid on
shared panels (one colour per run, x = step or wall time, log y), and their metrics exported as one CSV.

All of it is read from the run store, so a browser refresh or a restart of the UI loses nothing.
Each browser session keeps what it has already drawn in a gr.State (`view`): the curve points read
so far and signatures of what it last sent. Every timer tick reads only the metric rows after the
last step it has (`RunStore.read_metrics(run_id, after_step=last)`) and sends only what changed.
"""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict

import html
from typing import Any, Optional

import gradio as gr

from app import fields, plots, samples, views
from app.tabs import BuildContext
from core.errors import UserError
from core.runs.kinds import SWEEP as SWEEP_KIND
from core.runs.store import ACTIVE, FINISHED, QUEUED, RESUMABLE, RUNNING, RunNotFoundError, RunStore
from core.sweep.job import VARIANTS_DIR

TAB_ID = "runs"
LABEL = "Runs"
LOG_LINES = 60
DEFAULT_SMOOTHING = 0.6


def pick_default(store) -> Optional[str]:
    """The run a fresh page shows: the newest active (or queued) run, else the newest run."""
    runs = store.list_runs()
    for run in runs:
        if run.status in ACTIVE or run.status == QUEUED:
            return run.id
    return runs[0].id if runs else None


def new_view() -> dict[str, Any]:
    return {"run_id": None, "queued_at": None, "series": plots.new_series(), "smoothing": None, "table": None,
            "ids": None, "kinds": {}, "header": None, "log": None, "samples": None, "seed": None, "buttons": None,
            "latest": None, "notes": None, "job": None, "offer": None}


def _label(run) -> str:
    return run.id if run.name in run.id else f"{run.id} · {run.name}"


def sweep_variants(store, sweep) -> list:
    """The variant runs of a sweep (oldest first: the preset first), read from its own runs dir
    (SWEEP/variants, `core.sweep.job`); none before its first variant starts."""
    folder = store.run_dir(sweep.id) / VARIANTS_DIR
    if not folder.is_dir():
        return []
    return RunStore(folder).list_runs(newest_first=False)


def training_choices(store) -> list[tuple[str, str]]:
    """(label, ref) of the runs that have curves to overlay, newest first: training runs (ref: the run id), and
    for a sweep all its variants at once (ref: the sweep's id) or one of them (ref: "SWEEP/VARIANT")."""
    out = []
    for r in store.list_runs():
        if r.kind == views.TRAIN_KIND:
            out.append((_label(r), r.id))
        elif r.kind == SWEEP_KIND:
            children = sweep_variants(store, r)
            if children:
                out.append((f"{_label(r)} · all {len(children)} variants", r.id))
                out += [(f"{r.id}/{c.id} · {c.name}", f"{r.id}/{c.id}") for c in children]
    return out


def overlay_sources(store, refs: list[str]) -> dict[str, tuple[Any, str]]:
    """{label: (store, run id)} of the overlay's picks (`training_choices` refs): a sweep stands for its
    variants; deleted runs are skipped, a run picked twice (alone and through its sweep) shows once."""
    out = {}
    for ref in refs:
        sweep_id, _, child_id = ref.partition("/")
        try:
            run = store.get(sweep_id)
        except RunNotFoundError:
            continue
        if run.kind != SWEEP_KIND:
            out[_label(run)] = (store, run.id)
            continue
        for child in sweep_variants(store, run):
            if child_id in ("", child.id):
                out[f"{run.id}/{child.id} · {child.name}"] = (RunStore(store.run_dir(run.id) / VARIANTS_DIR), child.id)
    return out


def overlay(store, run_ids: list[str], x_axis: str, log_y: bool, smoothing: float):
    """The overlay figure of runs (`training_choices` refs; deleted ones are skipped), labelled "<id> · <name>"."""
    series = {}
    for label, (source, run_id) in overlay_sources(store, run_ids).items():
        s = plots.new_series()
        plots.add_points(s, source.read_metrics(run_id))
        series[html.escape(label)] = s  # plotly draws tags in trace names (<a href>, <b>): the name as text
    return plots.overlay_figure(series, x_axis, log_y, smoothing)


def latest_metrics(series: dict, extractor: Optional[str] = None) -> dict:
    """The newest metrics row as the page shows it: the step first, the wall-clock time as a local date and time
    (the row holds seconds since the epoch); with an evaluation job's `extractor`, its metrics named as Evaluate
    names them ("FD (demo evaluator)", not "fid")."""
    import time

    from core.eval.summary import metric_label

    n = len(series["steps"]) - 1
    row = {k: v[n] for k, v in series.items() if k != "steps" and v[n] is not None}
    if isinstance(row.get("time"), (int, float)):
        row["time"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"]))
    if extractor is not None:
        row = {metric_label(k, extractor): v for k, v in row.items()}
    return {"step": series["steps"][n], **row}


SELECTED_ROW_STYLE = "background: var(--color-accent-soft); font-weight: 600"


def selected_table(rows: list[list], ids: list[str], run_id: Optional[str]) -> dict:
    """The runs table with the selected run's row marked: the row the page shows is the run it marks, whatever
    row was clicked last (Gradio's own highlight stays on a row index while new runs push the rows down)."""
    styling = [[SELECTED_ROW_STYLE if i == run_id else ""] * len(views.TABLE_HEADERS) for i in ids]
    return {"headers": views.TABLE_HEADERS, "data": rows, "metadata": {"styling": styling, "display_value": None}}


def continue_default(run) -> int:
    """The step a "continue to step" box offers: twice the run's planned steps."""
    return 2 * max(int(run.total_steps or 0), int(run.step or 0), 1)


def _buttons(status: Optional[str], kind: Optional[str] = None, offer: Optional[int] = None) -> tuple:
    """stop, resume, delete, and the continue box and button: a stopped, failed or finished training run can
    continue to more steps (its max_steps raised, `Launcher.resume` with overrides). `offer`: a new value for the
    box (None: keep what it holds, e.g. what the user typed)."""
    can_stop = status in (QUEUED, RUNNING)
    can_resume = status in RESUMABLE
    can_delete = status is not None and status not in ACTIVE
    can_continue = kind == views.TRAIN_KIND and (status in RESUMABLE or status == FINISHED)
    steps = gr.update(interactive=can_continue, **({"value": offer} if offer is not None else {}))
    return (gr.update(interactive=can_stop), gr.update(interactive=can_resume), gr.update(interactive=can_delete),
            steps, gr.update(interactive=can_continue))


_buttons_sent: "OrderedDict[str, tuple]" = OrderedDict()  # page session -> (run id, status, offer) sent last
_buttons_guard = threading.Lock()


def buttons_once(session: Optional[str], state: tuple) -> bool:
    """Whether the page `session` is still to get the buttons and continue box for `state` (run id, status, the
    box's offer; recorded now). A page's refreshes that run at once (its load, the run's selection, a timer tick)
    each start from the view state as it was before any answered, so each would send them again, the last one over
    what its user has typed in the box meanwhile (an update reaching a gradio box puts back the value it held a
    moment before); this record is shared by them. A page that selects another run and comes back gets them again."""
    if session is None:
        return True
    with _buttons_guard:
        if _buttons_sent.get(session) == state:
            return False
        _buttons_sent[session] = state
        _buttons_sent.move_to_end(session)
        while len(_buttons_sent) > 1024:  # pages closed long ago
            _buttons_sent.popitem(last=False)
        return True


def refresh_view(app, run_id: Optional[str], smoothing: float, seed: Any, view: Optional[dict],
                 session: Optional[str] = None) -> tuple:
    """One update of the tab (for the page `session`). Returns values (or gr.skip() where nothing changed) for:
    table, run selector, header, plot, latest metrics, log, message, gallery, seed, board, stop, resume,
    delete, continue steps, continue, training panels (visibility), job results, view."""
    app.ticker.tick_if_due()
    view = view if isinstance(view, dict) and "series" in view else new_view()
    store = app.store
    runs = store.list_runs()
    ids = [r.id for r in runs]
    skip = gr.skip()

    kinds = {r.id: r.kind for r in runs}
    rows = [views.table_row(store, r, kinds[r.id]) for r in runs]

    gone = run_id is not None and run_id not in ids
    if gone:
        run_id = None
    table = skip
    if (rows, run_id) != view["table"]:
        table = selected_table(rows, ids, run_id)
    view["table"], view["kinds"] = (rows, run_id), kinds
    selector = skip
    if ids != view["ids"]:
        # new choices only: this refresh's run_id may be older than what the page just selected (a launch selects
        # its new run while a timer refresh that read the previous selection is on its way); a deleted one clears
        selector = gr.update(choices=views.run_choices(store), **({"value": None} if gone else {}))
        view["ids"] = ids
    if run_id is None:
        fresh = view["run_id"] is not None or view["header"] is None
        view.update(new_view(), table=(rows, run_id), ids=ids, kinds=kinds, header="none")
        if not fresh:
            return (table, selector, *([skip] * 15), view)
        empty = plots.figure(plots.new_series(), 0.0)
        return (table, selector, "### No run selected\nLaunch one in the **Launch** tab, or pick one above.", empty,
                {}, "", "", [], gr.update(choices=[], value=None), None, *_buttons(None), gr.update(visible=True),
                gr.update(value="", visible=False), view)

    try:
        run = store.get(run_id)
    except RunNotFoundError:
        return (table, selector, *([skip] * 15), view)
    if view["run_id"] != run_id or view["queued_at"] != run.queued_at:
        # another run, or this one was resumed (metrics past its checkpoint were dropped): start over
        keep = {"table": view["table"], "ids": view["ids"], "kinds": view["kinds"]}
        view = {**new_view(), **keep, "run_id": run_id, "queued_at": run.queued_at}
    series = view["series"]
    last = series["steps"][-1] if series["steps"] else -1
    added = plots.add_points(series, store.read_metrics(run_id, after_step=last))

    kind = kinds.get(run_id, views.TRAIN_KIND)
    if view["notes"] is None:
        try:
            view["notes"] = plots.constant_panels(store.read_config(run_id)) if kind == views.TRAIN_KIND else {}
        except (OSError, ValueError):
            view["notes"] = {}
    plot = skip
    if added or view["smoothing"] != smoothing:
        plot = plots.figure(series, smoothing, notes=view["notes"])
        view["smoothing"] = smoothing
    job_out = train_box = skip
    job = views.job_results(store, run) if kind != views.TRAIN_KIND else None
    if job != view["job"] or view["header"] is None:
        train_box = gr.update(visible=job is None)
        job_out = gr.update(value=job or "", visible=job is not None)
        view["job"] = job
    latest = skip
    if added:
        extractor = None
        if kind == views.EVAL_KIND:
            with contextlib.suppress(OSError, ValueError):
                extractor = store.read_config(run_id).get("extractor") or "inception"
        latest = view["latest"] = latest_metrics(series, extractor)

    recent = [{"step": s, "time": t} for s, t in zip(series["steps"][-views.ETA_WINDOW:],
                                                        series.get("time", [])[-views.ETA_WINDOW:]) if t is not None]
    text = views.header(run, views.eta_seconds(run, recent))
    head = text if text != view["header"] else skip
    view["header"] = text

    log_text = store.log_tail(run_id, LOG_LINES)
    log_out = log_text if log_text != view["log"] else skip
    message_out = skip
    if log_out is not skip or head is not skip:
        message_out = run.message
    view["log"] = log_text

    items = samples.grids(store, run_id)
    sig = samples.signature(items)
    gallery = seed_out = board = skip
    if sig != view["samples"] or seed != view["seed"]:
        seeds = samples.seeds_of(items)
        chosen = seed if seed in seeds else (seeds[0] if seeds else None)
        if sig != view["samples"]:
            gallery = [(str(g.path), g.caption) for g in items]
            seed_out = gr.update(choices=seeds, value=chosen)
        board = samples.step_class_board(items, chosen) if chosen is not None else None
        view["samples"], view["seed"] = sig, chosen

    buttons = (skip,) * 5
    offer = continue_default(run) if kind == views.TRAIN_KIND else None
    if (view["buttons"] != run.status or view["offer"] != offer) and buttons_once(session, (run.id, run.status, offer)):
        # the continue box gets a new offer only when the run's length changed: a refused value stays to be fixed
        buttons = _buttons(run.status, kind, offer if view["offer"] != offer else None)
        view["buttons"], view["offer"] = run.status, offer
    return (table, selector, head, plot, latest, log_out, message_out, gallery, seed_out, board, *buttons, train_box,
            job_out, view)


def build(ctx: BuildContext) -> None:
    app = ctx.app
    with gr.Row(equal_height=True):
        run = gr.Dropdown(choices=views.run_choices(app.store), value=pick_default(app.store), label="run",
                          filterable=True, scale=4, elem_id="runs-run", allow_custom_value=True)
        refresh_btn = gr.Button("Refresh", size="sm", scale=0, min_width=90)
    table = gr.Dataframe(headers=views.TABLE_HEADERS, value=[], interactive=False, label="runs (click a row to select it)",
                         max_height=260, wrap=True, elem_id="runs-table",
                         column_widths=["17%", "19%", "7%", "8%", "9%", "8%", "8%", "10%", "14%"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            head = gr.Markdown("", label="run status", elem_id="runs-header")
        with gr.Column(scale=2, min_width=280):
            with gr.Row():
                stop_btn = gr.Button("Stop", variant="stop", size="sm", interactive=False, elem_id="runs-stop")
                resume_btn = gr.Button("Resume", size="sm", interactive=False, elem_id="runs-resume")
                delete_btn = gr.Button("Delete…", size="sm", interactive=False, elem_id="runs-delete")
            with gr.Row(equal_height=True):
                continue_steps = gr.Number(value=None, label="continue to step (max_steps)",  # checked by fields.number
                                           interactive=False, scale=2, elem_id="runs-continue-steps",
                                           info="a stopped, failed or finished training run trains on from its last "
                                                "checkpoint to this step")
                continue_btn = gr.Button("Continue", size="sm", interactive=False, scale=1, min_width=90,
                                         elem_id="runs-continue")
            action = gr.Markdown("", elem_id="runs-action")
            with gr.Group(visible=False) as confirm_box:
                confirm_text = gr.Markdown("")
                with gr.Row():
                    confirm_btn = gr.Button("Yes, delete it", variant="stop", size="sm", elem_id="runs-confirm-delete")
                    cancel_btn = gr.Button("Cancel", size="sm")
    smoothing = gr.Slider(0.0, 0.99, value=DEFAULT_SMOOTHING, step=0.01, label="smoothing (EMA)",
                          info="0 = raw values; the raw curve stays faint behind the smoothed one")
    job_md = gr.Markdown("", visible=False, label="job results", elem_id="runs-job")
    with gr.Accordion("Overlay runs: curves of several runs on shared panels, CSV export", open=False,
                      elem_id="runs-overlay-section"):
        with gr.Row(equal_height=False):
            overlay_runs = gr.Dropdown(choices=training_choices(app.store), value=[], multiselect=True,
                                       label="runs to overlay", filterable=True, scale=4, elem_id="runs-overlay-runs",
                                       allow_custom_value=True,
                                       info="one colour per run; any training runs of the store, and a sweep's variants")
            x_axis = gr.Radio(choices=["step", "wall time"], value="step", label="x axis", scale=2,
                              elem_id="runs-overlay-x")
            log_y = gr.Checkbox(value=False, label="log y", scale=1, elem_id="runs-overlay-logy")
            csv_btn = gr.Button("Export CSV", size="sm", scale=1, min_width=110, elem_id="runs-overlay-csv")
        overlay_plot = gr.Plot(label="overlaid curves", elem_id="runs-overlay")
        csv_file = gr.File(label="metrics of the overlaid runs (CSV)", interactive=False, elem_id="runs-overlay-file")
    with gr.Column() as train_box:
        plot = gr.Plot(label="training curves", elem_id="runs-plot")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                gr.Markdown("**step × class (or prompt)** — one row per preview step (base model first), one column per class or prompt (P1, P2, ... with the prompts listed under the board)")
                board = gr.Image(label="step × class (or prompt): one row per preview step (base model first), one column per class or prompt",
                                 show_label=False, type="numpy", format="png", interactive=False, elem_id="runs-board")
            with gr.Column(scale=1, min_width=200):
                seed = gr.Dropdown(choices=[], value=None, label="seed", elem_id="runs-seed", allow_custom_value=True,
                                   info="the board shows this seed's samples")
        gallery = gr.Gallery(label="sample grids (rows: classes or prompts, columns: seeds; step 0 = base model)",
                             columns=6, height=320, object_fit="contain", elem_id="runs-gallery", format="png")
    with gr.Accordion("log and latest metrics", open=False):
        with gr.Row(equal_height=False):
            log = gr.Textbox(value="", label=f"log.txt (last {LOG_LINES} lines)", interactive=False, lines=12,
                             max_lines=30, autoscroll=True, elem_id="runs-log", elem_classes=["log-box"])
            with gr.Column():
                latest = gr.JSON(value={}, label="latest metrics", elem_id="runs-latest")
                message = gr.Textbox(value="", label="status message", lines=4, max_lines=20, interactive=False)
    view = gr.State(new_view())
    timer = gr.Timer(app.page_timer_s)

    outputs = [table, run, head, plot, latest, log, message, gallery, seed, board, stop_btn, resume_btn, delete_btn,
               continue_steps, continue_btn, train_box, job_md, view]

    def refresh(run_id, smoothing_value, seed_value, view_state, request: gr.Request):
        return refresh_view(app, run_id, float(smoothing_value or 0.0), seed_value, view_state,
                            session=getattr(request, "session_hash", None))

    refresh_inputs = [run, smoothing, seed, view]
    timer.tick(refresh, inputs=refresh_inputs, outputs=outputs, api_name="runs_refresh", show_progress="hidden",
               queue=False, trigger_mode="once")
    refresh_btn.click(refresh, inputs=refresh_inputs, outputs=outputs, api_visibility="private", show_progress="hidden",
                      concurrency_limit=None)
    gr.on([run.change, smoothing.change, seed.change], refresh, inputs=refresh_inputs, outputs=outputs,
          api_visibility="private", show_progress="hidden", concurrency_limit=None, trigger_mode="always_last")

    def select_row(evt: gr.SelectData):
        row = evt.row_value if evt is not None else None
        return row[0] if row else gr.skip()

    table.select(select_row, outputs=run, api_visibility="private", show_progress="hidden")

    def draw_overlay(run_ids, x_value, log_value, smoothing_value):
        """The selected runs' curves on shared panels (hidden when none is selected)."""
        ids = [r for r in (run_ids or []) if r]
        return overlay(app.store, ids, x_value or "step", bool(log_value), float(smoothing_value or 0.0))

    def export_csv(run_ids):
        sources = overlay_sources(app.store, [r for r in (run_ids or []) if r])
        if not sources:
            return None
        path = app.new_scratch("runs-csv-") / "metrics.csv"
        plots.metrics_csv({label.split(" · ", 1)[0]: source.read_metrics(run_id)
                           for label, (source, run_id) in sources.items()}, path)
        return str(path)

    gr.on([overlay_runs.change, x_axis.change, log_y.change, smoothing.change], draw_overlay,
          inputs=[overlay_runs, x_axis, log_y, smoothing], outputs=overlay_plot, api_name="overlay_runs",
          show_progress="hidden", trigger_mode="always_last")
    csv_btn.click(export_csv, inputs=overlay_runs, outputs=csv_file, api_name="export_runs_csv")
    gr.on([refresh_btn.click, overlay_runs.focus], lambda: gr.update(choices=training_choices(app.store)),
          outputs=overlay_runs, api_visibility="private", show_progress="hidden")

    # --- actions (each acts on the store through the launcher, then the view refreshes)
    def on_run(run_id, action):
        """A launcher action on the picked run -> (the run after it, None) or (None, what to show instead)."""
        if not run_id:
            return None, "Pick a run first."
        try:
            with app.launcher_lock:
                return action(run_id), None
        except UserError as e:
            return None, f"✗ {e}"

    def stop(run_id):
        r, problem = on_run(run_id, app.launcher.stop)
        if problem:
            return problem
        if r.status == "stopped":
            return f"`{run_id}` was cancelled before it started."
        return (f"Stop requested for `{run_id}`: it writes a checkpoint at its next step boundary "
                f"(killed after {app.launcher.grace_s:g} s if it does not).")

    def resume(run_id):
        r, problem = on_run(run_id, app.launcher.resume)
        if problem:
            return problem
        return f"`{run_id}` is {r.status}: {views.as_text(r.message)}"

    def continue_run(run_id, steps):
        """Continue the run to step `steps` (its max_steps raised, checked as a launch is); a bad value queues
        nothing and leaves its folder as it was."""
        try:
            n = fields.number("max_steps", steps, whole=True, minimum=1)
        except UserError as e:
            return f"✗ {e}"
        r, problem = on_run(run_id, lambda i: app.launcher.resume(i, {"max_steps": n}))
        if problem:
            return problem
        return f"`{run_id}` continues to step {n}: {r.status}, {views.as_text(r.message)}"

    def ask_delete(run_id):
        if not run_id:
            return gr.update(visible=False), "", "Pick a run first."
        try:
            r = app.store.get(run_id)
        except RunNotFoundError as e:
            return gr.update(visible=False), "", f"✗ {e}"
        if r.is_active:
            return gr.update(visible=False), "", f"✗ `{run_id}` is {r.status}; stop it before deleting it."
        n = len(app.store.checkpoints(run_id))
        text = (f"**Delete `{run_id}`?** Its folder goes too: {n} checkpoint(s), sample grids, metrics and log. "
                "This cannot be undone.")
        return gr.update(visible=True), text, ""

    def confirm_delete(run_id):
        if not run_id:
            return gr.update(visible=False), "Pick a run first."
        try:
            with app.launcher_lock:
                app.store.delete_run(run_id)
        except UserError as e:
            return gr.update(visible=False), f"✗ {e}"
        return gr.update(visible=False), f"Deleted `{run_id}`."

    def after_action(run_id, smoothing_value, seed_value, view_state, request: gr.Request):
        view_state = dict(view_state or new_view())
        view_state["buttons"] = None
        view_state["header"] = None
        return refresh_view(app, run_id, float(smoothing_value or 0.0), seed_value, view_state,
                            session=getattr(request, "session_hash", None))

    stop_btn.click(stop, inputs=run, outputs=action, api_name="stop_run", concurrency_limit=4) \
        .then(after_action, inputs=refresh_inputs, outputs=outputs, api_visibility="private", show_progress="hidden")
    resume_btn.click(resume, inputs=run, outputs=action, api_name="resume_run", concurrency_limit=4) \
        .then(after_action, inputs=refresh_inputs, outputs=outputs, api_visibility="private", show_progress="hidden")
    continue_btn.click(continue_run, inputs=[run, continue_steps], outputs=action, api_name="continue_run",
                       concurrency_limit=4) \
        .then(after_action, inputs=refresh_inputs, outputs=outputs, api_visibility="private", show_progress="hidden")
    delete_btn.click(ask_delete, inputs=run, outputs=[confirm_box, confirm_text, action], api_name="ask_delete")
    confirm_btn.click(confirm_delete, inputs=run, outputs=[confirm_box, action], api_name="delete_run",
                      concurrency_limit=4) \
        .then(after_action, inputs=refresh_inputs, outputs=outputs, api_visibility="private", show_progress="hidden")
    cancel_btn.click(lambda: (gr.update(visible=False), ""), outputs=[confirm_box, action], api_visibility="private")

    def on_load():
        return (gr.update(choices=views.run_choices(app.store), value=pick_default(app.store)),
                gr.update(choices=training_choices(app.store)))

    ctx.blocks.load(on_load, outputs=[run, overlay_runs], api_visibility="private", show_progress="hidden") \
        .then(refresh, inputs=refresh_inputs, outputs=outputs, api_visibility="private", show_progress="hidden")
    ctx.export("runs.run", run)
