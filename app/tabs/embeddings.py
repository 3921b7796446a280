"""Embeddings tab: where base and aligned samples sit relative to real images in a feature space.

Pick a run checkpoint (the aligned model; its base is what the run started from: its init_weights,
else the preset's weights), classes, a feature extractor and projections; the comparison runs in the
background as a run of the store (`core.runs.kinds.submit`, kind "embeddings"), never
in a request handler. A page timer follows the job this page launched; when it finishes, the page
shows its figures (the joint t-SNE / UMAP map with KDE contours, the KDE along each map axis, the
distances per class) in one colour per set everywhere (`SET_COLORS`: real, base, aligned), and the
numbers, Fréchet distance and k-NN precision/recall in that feature space, per class and overall,
base beside aligned. Every finished comparison of the store can be reopened from the results list.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from app import fields, form, jobform, views
from app.safety import confine
from app.tabs import BuildContext
from app.tabs.shared import (refused, EXTRACTORS, check_extractor, class_items, default_devices, error_text,
                             extractor_path_of, field_updates, message, parse_device_set,
                             progress_bar, renamed, roots_text, signature)
from app.tabs.launch import device_choices
from core.eval.configs import PROMPT_ATTRIBUTES
from core.eval.summary import embedding_verdict_lines, feature_space
from core.errors import ConfigError, MissingWeightsError, UserError
from core.eval.verdict import change_text
from core.models.registry import DEFAULT_GENERATOR, is_demo_model
from core.runs.store import FAILED, FINISHED, QUEUED, STOPPED, RunNotFoundError

TAB_ID = "embeddings"
LABEL = "Embeddings"
DEFAULT_CLASSES = 10  # classes preselected for a run (the first ones of its model): all 10 of the demo
PROJECTION_CHOICES = [("t-SNE", "tsne"), ("UMAP", "umap")]
DISTANCE_CHOICES = [("Fréchet distance", "frechet"), ("precision", "precision"), ("recall", "recall")]
TABLE_HEADERS = ["class", "FD base", "FD aligned", "Δ FD (aligned − base)", "Δ FD 95% interval", "FD verdict",
                 "precision base", "precision aligned", "recall base", "recall aligned"]
KEYS = ["run", "step", "classes", "per_class", "real", "extractor", "extractor_path", "projections", "cfg_scale",
        "temperature", "top_k", "top_p", "seed", "batch_size", "devices", "num_seeds", "color_by"]  # the launch endpoint's inputs
ALIASES = {"model": "run", "aligned_weights": "step", "weights": "step", "base_weights": "run", "device": "devices",
           "methods": "projections"}


# ----------------------------------------------------------------------------- runs and checkpoints
def run_choices(store) -> list[tuple[str, str]]:
    """(label, run id) of every run with a checkpoint, newest first."""
    return [(r.id if r.name in r.id else f"{r.id} · {r.name}", r.id) for r in store.list_runs()
            if store.last_checkpoint(r.id) is not None]


def result_choices(store) -> list[tuple[str, str]]:
    """(label, run id) of every finished embedding comparison, newest first."""
    from core.eval.job_io import RESULTS_FILE

    out = []
    for r in store.list_runs([FINISHED]):
        if r.kind == views.EMBEDDINGS_KIND and (r.run_dir / RESULTS_FILE).is_file():
            out.append((f"{r.id} · {r.name}", r.id))
    return out


def run_model(store, run_id: Optional[str]) -> tuple[str, Optional[str], list[int]]:
    """(model preset, base weights file or None for the preset's, checkpoint steps) of a run.
    ConfigError("run") when it cannot be compared."""
    run_id = (run_id or "").strip()
    if not run_id:
        raise ConfigError("run", "pick a run with a checkpoint")
    try:
        store.get(run_id)
        config = store.read_config(run_id)
    except RunNotFoundError:
        raise ConfigError("run", f"run {run_id!r} does not exist (deleted?); pick one from the list") from None
    model = config.get("model")
    if not isinstance(model, str):
        raise ConfigError("run", f"run {run_id}: its config names no model preset (not a training run)")
    if config.get("method") == "decoder":
        raise ConfigError("run", f"run {run_id} post-trains the tokenizer (decoder baseline); the embedding shift "
                                 "compares generators")
    steps = [c.step for c in store.checkpoints(run_id)]
    if not steps:
        raise ConfigError("run", f"run {run_id} has no checkpoint yet")
    return model, config.get("init_weights") or None, steps


def base_text(store, run_id: Optional[str]) -> str:
    try:
        model, init, _ = run_model(store, run_id)
    except ConfigError as e:
        return f"⚠ {message(e)}"
    if init:
        return f"**base**: the run's starting weights `{init}` (preset `{model}`)"
    return f"**base**: preset `{model}` with its own weights — the model the run started from"


def default_classes(model: str) -> list[int]:
    return list(range(min(DEFAULT_CLASSES, len(form.class_names_of(model)))))


# ----------------------------------------------------------------------------- the job
def real_of(app, text: Optional[str], model: str) -> str:
    """The real images: "shapes[:split]" for the demo, else an ImageNet-layout folder inside the data roots."""
    from core.eval.inputs import shapes_split

    raw = (text or "").strip()
    if is_demo_model(model):
        if shapes_split(raw or "shapes", "real") is not None:
            return raw or "shapes"
    elif raw.partition(":")[0] == "shapes":
        raise ConfigError("real", f"the shapes domain is the demo's; for {model} give an ImageNet-layout folder "
                                  "(root/<class>/<image>) inside the data roots")
    return str(confine(raw, app.data_roots, "real", kind="dir"))


@functools.cache
def field_table() -> dict[str, fields.Field]:
    """The form's field table: EmbeddingConfig's fields, with the bounds the page checks before a job is queued."""
    from core.eval.configs import EmbeddingConfig

    at_least = {"per_class": 1, "cfg_scale": 1, "temperature": 0, "top_k": 0, "seed": 0, "num_seeds": 1,
                "batch_size": 1}
    return fields.table(EmbeddingConfig, {"classes": "classes"}, **{k: {"minimum": v} for k, v in at_least.items()})


def plan_embeddings(app, values: dict):
    """Form values -> (EmbeddingConfig, device set), every input and file checked. Raises ConfigError(input)."""
    from core.checkpoints import ref_text, resolve_weights
    from core.eval.configs import EmbeddingConfig
    from core.models import registry

    store = app.store
    run_id = str(values.get("run") or "").strip()
    model, init, steps = run_model(store, run_id)
    table = field_table()
    num = lambda key: fields.parse(table[key], values.get(key, table[key].default))  # noqa: E731
    step = fields.number("step", values.get("step"), whole=True, minimum=0)
    if step not in steps:
        raise ConfigError("step", f"run {run_id} has no checkpoint at step {step}; it has steps "
                                  f"{', '.join(map(str, steps))}")
    if init is not None and not Path(init).is_file():
        raise ConfigError("run", f"the run's starting weights {init} (its base model) are gone")
    text_conditional = form.model_task(model) == "t2i"
    items = [] if text_conditional else class_items(values.get("classes"))  # demo-t2i: grouped by color_by
    extractor = values.get("extractor") or ("demo" if is_demo_model(model) else "inception")
    projections = list(values.get("projections") or [])
    if not projections:
        raise ConfigError("projections", "pick t-SNE, UMAP or both")
    device_set, device = parse_device_set(values.get("devices"))
    settings = dict(model=model, base_weights=init, aligned_weights=ref_text(run_id, step), classes=items or None,
                  per_class=num("per_class"),
                  real=real_of(app, values.get("real"), model), extractor=extractor,
                  extractor_path=extractor_path_of(app, extractor, values.get("extractor_path")),
                  projections=projections,
                  **{k: num(k) for k in ("cfg_scale", "temperature", "top_k", "top_p", "seed", "num_seeds",
                                         "batch_size")},
                  device=device, color_by=values.get("color_by") or "shape")
    try:
        cfg = EmbeddingConfig(**settings)
        cfg.class_ids()  # names resolved, each class once
        resolve_weights(cfg.aligned_weights, app.runs_dir)
    except ConfigError as e:
        raise renamed(e, ALIASES) from None
    if init is None:
        try:
            registry.require_files(model)
        except MissingWeightsError as e:
            raise ConfigError("run", f"its base model cannot be sampled: {e}") from None
    check_extractor(cfg.extractor, cfg.extractor_path)
    return cfg, device_set


# ----------------------------------------------------------------------------- results
def load_result(store, run_id: Optional[str]):
    """(results.json as a dict, EmbeddingShift) of a finished comparison; ConfigError("result")."""
    from core.eval.embeddings import EmbeddingShift
    from core.eval.job_io import RESULTS_FILE
    from core.eval.shift_job import EMBEDDINGS_FILE, EMBEDDINGS_FORMAT

    if not run_id:
        raise ConfigError("result", "pick a finished comparison")
    try:
        run = store.get(run_id)
    except RunNotFoundError:
        raise ConfigError("result", f"run {run_id!r} does not exist (deleted?)") from None
    try:
        results = json.loads((run.run_dir / RESULTS_FILE).read_text())
        if not isinstance(results, dict) or results.get("format") != EMBEDDINGS_FORMAT:
            raise ConfigError("result", f"run {run_id} holds no embedding comparison")
        shift = EmbeddingShift.from_json(run.run_dir / EMBEDDINGS_FILE)
    except FileNotFoundError:
        raise ConfigError("result", f"run {run_id} has no finished comparison ({run.status})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("result", f"run {run_id}: unreadable results ({type(e).__name__}: {e})") from None
    return results, shift


def class_label(results: dict, key: str) -> str:
    name = results.get("class_names", {}).get(key)
    return f"{key} {name}" if name else key


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def _interval(v: Optional[dict]) -> str:
    return "—" if not v else change_text(v["delta"], v["low"], v["high"])[1]


def numbers_table(results: dict) -> list[list]:
    """Overall, then one row per class: FD (mean over the seeds), precision and recall (overall: mean over the
    seeds; per class: seeds pooled) of base and aligned against real, the 95% interval of the FD change and
    its verdict."""
    rows = []
    verdicts = {"overall": (results.get("verdicts") or {}).get("fid"), **(results.get("per_class_verdicts") or {})}
    cells = [("overall", "overall", results["overall"])] + [(k, class_label(results, k), v)
                                                            for k, v in results["per_class"].items()]
    for key, name, c in cells:
        b, a = c["base"], c["aligned"]
        v = verdicts.get(key)
        fd_b, fd_a = (v["base"]["mean"], v["aligned"]["mean"]) if v else (b["frechet"], a["frechet"])
        rows.append([name, _round(fd_b), _round(fd_a), _round(fd_a - fd_b), _interval(v),
                     v["verdict"] if v else "—", _round(b["precision"]), _round(a["precision"]), _round(b["recall"]),
                     _round(a["recall"])])
    return rows


def caption(results: dict, shift) -> str:
    extractor = results["config"]["extractor"]
    space = feature_space(extractor)
    counts = results["counts"]
    fd = "" if extractor == "inception" else f" (an FD in {space} features, not Inception FID)"
    lines = [f"**{results['aligned'].get('run_id') or 'aligned'} step {results['aligned'].get('step')}** vs base "
             f"`{'preset weights' if results['base'].get('path') is None else results['base']['path']}` · "
             f"**{space}** features ({shift.feature_dim}-d) · real {counts['real']}, base {counts['base']}, aligned "
             f"{counts['aligned']} samples · k = {shift.k}",
             f"Fréchet distance to the real images{fd}: lower is closer. Precision: share of samples on the real "
             "manifold; recall: share of the real manifold covered (k-NN balls)."]
    verdicts = embedding_verdict_lines(results)
    if verdicts:
        lines.append("\n".join(verdicts))
        lines.append("A change is called better/worse only when its 95% interval (paired bootstrap over samples, "
                     "real images and seeds) excludes zero. Per-class precision and recall pool the seeds.")
    lines.append(f"ⓘ {sample_size_note(results)}.")
    from core.eval.verdict import sample_size_warning

    warning = sample_size_warning(samples_per_seed(results), shift.feature_dim, len(results.get("seeds") or [0]))
    if warning:
        lines.append(f"⚠ {warning}.")
    if results.get("skipped_classes"):
        lines.append("No per-class numbers for: " + "; ".join(
            f"{class_label(results, k)} ({why})" for k, why in results["skipped_classes"].items()))
    return "\n\n".join(lines)


def spreads(results: dict, metric: str) -> dict[str, dict]:
    """Bar -> {"base"/"aligned": {"mean", "std"} over the sampling seeds}, where the results hold them: the FD
    overall and per class, precision and recall overall (per class they pool the seeds: one number, no spread)."""
    key = {"frechet": "fid", "precision": "precision", "recall": "recall"}[metric]
    out = {}
    if (results.get("verdicts") or {}).get(key):
        out["overall"] = results["verdicts"][key]
    if metric == "frechet":
        out.update(results.get("per_class_verdicts") or {})
    return out


def samples_per_seed(results: dict) -> int:
    """Samples of one model per seed, as the job drew them (demo-t2i: per_class x 10 captions, whatever groups
    colour them)."""
    n = ((results.get("overall") or {}).get("base") or {}).get("n_model")
    return int(n) if n else results["config"]["per_class"] * max(1, len(results.get("class_names") or {}))


def _text_conditional(model) -> bool:
    from core.models import registry

    try:
        return registry.get_generator(model).task != "c2i"
    except ConfigError:  # a model no longer registered (a plugin not loaded): its results still show
        return False


def sample_size_note(results: dict) -> str:
    """Why the overall FD and a class's FD are not comparable with each other: their sample sizes differ."""
    seeds = max(1, len(results.get("seeds") or [0]))
    sizes = sorted({round(row["base"]["n_model"] / seeds) for row in (results.get("per_class") or {}).values()
                    if "n_model" in (row.get("base") or {})}) or [results["config"]["per_class"]]
    grouped = _text_conditional(results["config"].get("model"))  # demo-t2i: groups of a prompt attribute
    each = f"each {'group' if grouped else 'class'} on " + (str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}")
    return (f"FD grows as the sample shrinks: overall is measured on {samples_per_seed(results)} samples per set and "
            f"seed, {each}; compare base with aligned within a group, not one group with another")


def figures(results: dict, shift, projection: str, metric: str) -> tuple:
    """(scatter with KDE contours, KDE per axis, distance bars) with class names and the feature space; the bars
    are means over the seeds with ± one std as error bars where the results hold the per-seed values."""
    from core.eval.embeddings import distance_figure, kde_figure, scatter_figure

    space = feature_space(results["config"]["extractor"])
    names = {k: class_label(results, k) for k in results.get("class_names", {})}
    scatter = scatter_figure(shift, projection)
    for trace in scatter.data:
        if trace.type == "scatter" and trace.text is not None:
            trace.text = [names.get(str(t), str(t)) for t in trace.text]
        if trace.legendgroup == "labels":
            trace.name = names.get(trace.name, trace.name)
    scatter.update_layout(title=f"{projection.upper()} of real, base and aligned ({space} features)", height=520)
    kde = kde_figure(shift, projection)
    kde.update_layout(title=f"Density along the {projection.upper()} axes ({space} features)", height=360)
    bars = distance_figure(shift, metric)
    spread = spreads(results, metric)
    for trace in bars.data:
        found = [spread.get(str(x), {}).get(trace.name) for x in trace.x]
        trace.y = [s["mean"] if s else y for s, y in zip(found, trace.y)]
        trace.error_y = dict(type="data", array=[s["std"] if s else None for s in found], visible=True, thickness=1.5)
        trace.x = [names.get(str(x), str(x)) for x in trace.x]
    note = f"<br><sup>{sample_size_note(results)}</sup>" if metric == "frechet" else ""
    bars.update_layout(title=f"{bars.layout.title.text}<br><sup>{space} features; bars: mean ± std over the seeds"
                             f"</sup>{note}", height=420, margin=dict(t=110))
    return scatter, kde, bars


def show(store, run_id: Optional[str], projection: Optional[str], metric: Optional[str]) -> tuple:
    """(caption, scatter, KDE, distances, table, projection choice) of a finished comparison."""
    results, shift = load_result(store, run_id)
    methods = list(shift.projections)
    projection = projection if projection in methods else methods[0]
    metric = metric if metric in dict((v, k) for k, v in DISTANCE_CHOICES) else "frechet"
    scatter, kde, bars = figures(results, shift, projection, metric)
    choices = [(label, value) for label, value in PROJECTION_CHOICES if value in methods]
    return (caption(results, shift), scatter, kde, bars, numbers_table(results),
            gr.update(choices=choices, value=projection))


def job_text(store, run_id: str) -> tuple[str, Optional[str]]:
    """(markdown about a job, its status)."""
    try:
        run = store.get(run_id)
    except RunNotFoundError:
        return f"`{run_id}` was deleted.", None
    if run.status == FINISHED:
        return f"✓ `{run.id}` **finished** — figures and numbers below.", run.status
    if run.status in (FAILED, STOPPED):
        why = run.message.splitlines()[0] if run.message else ""
        return (f"✗ `{run.id}` **{run.status}** at {run.step}/{run.total_steps} samples" + (f" — {views.as_text(why)}" if why else "")
                + " (log in the Runs tab; resume it there)"), run.status
    if run.status == QUEUED:
        return f"`{run.id}` **queued**: waits for `{run.devices}`.", run.status
    phase = ("then features and projections" if run.step < run.total_steps else "extracting features and projecting")
    bar = progress_bar(run.step, run.total_steps)
    return f"`{run.id}` **{run.status}**: base + aligned {bar} — {phase}", run.status


def new_view() -> dict:
    return {"pending": None, "shown": None, "flagged": None, "text": None}


# ----------------------------------------------------------------------------- the tab
def infos(app) -> dict[str, str]:
    """Each input's help: an EmbeddingConfig field's own (core/eval/configs.py), with what the page adds."""
    roots = roots_text(app)
    field = jobform.job_helps(field_table(), KEYS)
    return {**field,
        "run": "the aligned model: a run with a checkpoint",
        "step": "its checkpoint (default: the last)",
        "classes": f"type to search the class names; {field['classes']}",
        "real": f"{field['real']}; a folder inside the data roots: {roots}",
        "seed": f"{field['seed']}; base and aligned use the same seeds",
    }


def build(ctx: BuildContext) -> None:

    app = ctx.app
    store = app.store
    info = infos(app)
    runs0 = run_choices(store)
    run0 = runs0[0][1] if runs0 else None
    try:
        model0, _, steps0 = run_model(store, run0)
    except ConfigError:
        model0, steps0 = DEFAULT_GENERATOR, []
    comps: dict[str, Any] = {}

    form_inputs = jobform.FormInputs(field_table(), "emb", info)  # each EmbeddingConfig field's input from the field
    common, field = form_inputs.common, form_inputs.field

    gr.Markdown("Sample the same classes and seeds from a run's checkpoint (aligned) and its base model, embed "
                "them with real images in one feature space, and see where each set sits: the joint map with "
                "density contours, the density along each axis, and the distances to the real images.",
                elem_classes=["tab-intro"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=420):
            with gr.Row(equal_height=False):
                comps["run"] = gr.Dropdown(choices=runs0, value=run0, filterable=True, allow_custom_value=True,
                                           scale=3, **common("run"))
                comps["step"] = gr.Dropdown(choices=steps0, value=steps0[-1] if steps0 else None,
                                            allow_custom_value=True, scale=1, **common("step"))
            base_md = gr.Markdown(base_text(store, run0), elem_id="emb-base")
            with gr.Row(equal_height=False):
                t2i0 = bool(model0) and form.model_task(model0) == "t2i"
                comps["classes"] = gr.Dropdown(choices=form.class_choices(model0), value=default_classes(model0),
                                               multiselect=True, filterable=True, allow_custom_value=True, scale=3,
                                               visible=not t2i0, **common("classes"))
                comps["color_by"] = field("color_by", choices=list(PROMPT_ATTRIBUTES), scale=2, visible=t2i0)
                comps["per_class"] = field("per_class", scale=1)
            with gr.Row(equal_height=False):
                comps["real"] = field("real", value="shapes" if is_demo_model(model0) else "")
                comps["extractor"] = field("extractor", choices=list(EXTRACTORS),
                                           value="demo" if is_demo_model(model0) else "inception")
                comps["extractor_path"] = field("extractor_path")
            # t-SNE only by default: UMAP adds a second fit on every point
            comps["projections"] = field("projections", choices=PROJECTION_CHOICES, value=["tsne"])
            with gr.Accordion("Sampling", open=False):
                with gr.Row(equal_height=False):
                    for key in ("cfg_scale", "temperature", "top_k", "top_p", "seed", "num_seeds", "batch_size"):
                        comps[key] = field(key)
        with gr.Column(scale=2, min_width=320):
            comps["devices"] = gr.CheckboxGroup(choices=device_choices(app), value=default_devices(),
                                                **common("devices"))
            launch_btn = gr.Button("Compute embedding shift", variant="primary", elem_id="emb-launch")
            status = gr.Markdown("", label="embeddings status", elem_id="emb-status")
            with gr.Row(equal_height=True):
                result = gr.Dropdown(choices=result_choices(store), value=None, label="result", scale=4,
                                     allow_custom_value=True, elem_id="emb-result",
                                     info="a finished comparison of the store (newest first)")
                refresh_btn = gr.Button("Refresh list", size="sm", scale=0, min_width=110)
            with gr.Row():
                projection = gr.Radio(choices=PROJECTION_CHOICES, value="tsne", label="map", elem_id="emb-projection")
                metric = gr.Radio(choices=DISTANCE_CHOICES, value="frechet", label="distance", elem_id="emb-metric")
    about = gr.Markdown("", label="about these numbers", elem_id="emb-caption")
    with gr.Row(equal_height=False):
        scatter = gr.Plot(label="joint map with KDE contours", elem_id="emb-scatter", scale=3)
        with gr.Column(scale=2):
            kde = gr.Plot(label="KDE along each map axis", elem_id="emb-kde")
            bars = gr.Plot(label="distance to real, per class", elem_id="emb-distance")
    table = gr.Dataframe(headers=TABLE_HEADERS, value=[], interactive=False, wrap=True,
                         label="distances to the real images: base vs aligned", elem_id="emb-table")
    view = gr.State(new_view())
    timer = gr.Timer(app.page_timer_s)
    inputs = [comps[k] for k in KEYS]
    shown_outputs = [about, scatter, kde, bars, table, projection]

    def launch(*args):
        from core.runs import kinds

        values, state = dict(zip(KEYS, args[:-1])), {**new_view(), **(args[-1] or {})}
        try:
            cfg, devices = plan_embeddings(app, values)
            with app.launcher_lock:
                run = kinds.submit(app.launcher, kinds.EMBEDDINGS, cfg, devices)
        except UserError as e:  # a ConfigError's message goes under the input it names
            return refused(e, KEYS, info, ALIASES, state)
        text, _ = job_text(store, run.id)
        updates = field_updates(KEYS, info, None, "", state["flagged"])
        return (f"✓ **Queued** — {text}", *updates, {**state, "flagged": None, "pending": run.id, "text": None})

    launch.__signature__ = signature(KEYS, ["view"])
    launch_btn.click(launch, inputs=[*inputs, view], outputs=[status, *inputs, view], api_name="launch_embeddings",
                     concurrency_limit=1)

    def refresh(projection_value, metric_value, state):
        """Follow the job this page launched; once it finished, show it. (status, result list, caption,
        scatter, KDE, distances, table, projection, view); gr.skip() where nothing changed."""
        app.ticker.tick_if_due()
        state = {**new_view(), **(state or {})}
        skip = gr.skip()
        if not state["pending"]:
            return (skip,) * (2 + len(shown_outputs)) + (state,)
        text, job_status = job_text(store, state["pending"])
        if job_status == FINISHED:
            run_id = state["pending"]
            try:
                shown = show(store, run_id, projection_value, metric_value)
            except ConfigError as e:
                return (error_text(e, None, "Cannot show it"), skip, *([skip] * len(shown_outputs)),
                        {**state, "pending": None, "text": None})
            return (text, gr.update(choices=result_choices(store), value=run_id), *shown,
                    {**state, "pending": None, "shown": run_id, "text": text})
        done = job_status in (FAILED, STOPPED, None)
        out = text if text != state["text"] else skip
        return (out, skip, *([skip] * len(shown_outputs)),
                {**state, "pending": None if done else state["pending"], "text": text})

    timer.tick(refresh, inputs=[projection, metric, view], outputs=[status, result, *shown_outputs, view],
               api_name="embeddings_refresh", show_progress="hidden", queue=False, trigger_mode="once")

    def open_result(result_id, projection_value, metric_value, state):
        """Show a finished comparison: (status, caption, scatter, KDE, distances, table, projection, view)."""
        state = {**new_view(), **(state or {})}
        try:
            shown = show(store, result_id, projection_value, metric_value)
        except ConfigError as e:
            return (error_text(e, None, "Cannot show it"), *([gr.skip()] * len(shown_outputs)), state)
        return ("", *shown, {**state, "shown": result_id})

    open_inputs = [result, projection, metric, view]
    open_outputs = [status, *shown_outputs, view]
    gr.on([result.input, projection.input, metric.input], open_result, inputs=open_inputs, outputs=open_outputs,
          api_name="open_embeddings", show_progress="hidden", trigger_mode="always_last")

    def on_run(run_id, classes):
        """Another run (picked, or moved to by a list refresh): its steps (the last selected), base, classes,
        real images and extractor defaults."""
        try:
            model, _, steps = run_model(store, run_id)
        except ConfigError:
            return gr.skip(), base_text(store, run_id), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        choices = form.class_choices(model)
        valid = {v for _, v in choices}
        kept = [c for c in class_items(classes) if c in valid] or default_classes(model)
        embedded = is_demo_model(model)
        t2i = form.model_task(model) == "t2i"
        return (gr.update(choices=steps, value=steps[-1]), base_text(store, run_id),
                gr.update(choices=choices, value=kept, visible=not t2i), "shapes" if embedded else "",
                "demo" if embedded else "inception", gr.update(visible=t2i))

    comps["run"].change(on_run, inputs=[comps["run"], comps["classes"]],
                       outputs=[comps["step"], base_md, comps["classes"], comps["real"], comps["extractor"],
                                comps["color_by"]],
                       api_visibility="private", show_progress="hidden")

    def refresh_lists(run_id, step, result_id):
        """New runs, checkpoints and finished comparisons into the lists (the selections kept where they
        still exist)."""
        runs = run_choices(store)
        ids = [v for _, v in runs]
        run_id = run_id if run_id in ids else (ids[0] if ids else None)
        try:
            _, _, steps = run_model(store, run_id)
        except ConfigError:
            steps = []
        results = result_choices(store)
        return (gr.update(choices=runs, value=run_id),
                gr.update(choices=steps, value=step if step in steps else (steps[-1] if steps else None)),
                base_text(store, run_id),
                gr.update(choices=results, value=result_id if result_id in {v for _, v in results} else None))

    list_outputs = [comps["run"], comps["step"], base_md, result]
    refresh_btn.click(refresh_lists, inputs=[comps["run"], comps["step"], result], outputs=list_outputs,
                      api_visibility="private", show_progress="hidden")
    ctx.get(f"{TAB_ID}.tab").select(refresh_lists, inputs=[comps["run"], comps["step"], result], outputs=list_outputs,
                                    api_visibility="private", show_progress="hidden")
