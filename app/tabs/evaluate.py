"""Evaluate tab: FID / IS / precision / recall / CLIP score of a preset or a run checkpoint as a background
job, its progress, and every finished evaluation per checkpoint with the base model beside it.

A job is a run of the store (`core.runs.kinds.submit`, kind "eval"): it survives a closed
browser, shows in the Runs tab too, and its progress is the number of samples on disk. Nothing is
sampled or measured in a request handler. Every input is checked before a job is queued (paths
confined to the app's roots, class names, the extractor's and the model's weights); an error is shown
under the input it belongs to and no job is created. The results table comes from
`evaluation_summary`, which pairs each checkpoint with the base model evaluated under the same
setting. A Fréchet distance is named by the features it was measured in: "FID (Inception)" only for
Inception features, "FD (demo evaluator)" and so on otherwise.

Helpers this tab shares with the Embeddings tab (extractors, form numbers, field errors) are in
`app.tabs.shared`.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from app import comparison, fields, form, jobform, views
from app.safety import confine
from app.tabs import BuildContext, diagnose
from app.tabs.launch import device_choices
from app.tabs.shared import (refused, EXTRACTORS, check_extractor, check_hub_model, class_items, default_devices,
                             extractor_path_of, field_updates, parse_device_set, progress_bar,
                             renamed, roots_text, signature)
from core.errors import ConfigError, DataError, MissingWeightsError, UserError
from core.eval.configs import NO_FEATURES
from core.eval.summary import SUMMARY_METRICS, metric_label
from core.eval.verdict import change_text, mean_std, verdict_change
from core.models.registry import DEFAULT_GENERATOR
from core.runs.store import ACTIVE, FAILED, FINISHED, QUEUED, STOPPED, RunNotFoundError

TAB_ID = "evaluate"
LABEL = "Evaluate"
METRIC_CHOICES = [("FID / FD", "fid"), ("Inception Score", "isc"), ("precision / recall", "prc"),
                  ("CLIP score", "clip"), ("prompt adherence (demo T2I)", "adherence")]
REFERENCE_CHOICES = [("demo shapes (held-out reference split)", "shapes"), ("image folder", "folder"),
                     (".npz batch (ADM layout)", "npz")]
JOB_HEADERS = ["job", "label", "model", "weights", "status", "samples", "message"]
SUMMARY_HEADERS = ["model", "setting", "checkpoint", "metric", "base", "checkpoint value", "Δ (checkpoint − base)",
                   "95% interval of Δ", "verdict"]
FEATURE_DIMS = {"inception": 2048, "clip": 768, "dinov2": 768}  # the default models' (for the sample-size warning)
MAX_JOBS = 30  # rows of the jobs table, newest first
KEYS = ["source", "label", "num_samples", "classes", "prompts", "cfg", "cfg_scale", "temperature", "top_k", "top_p",
        "seed", "batch_size", "image_size", "precision", "metrics", "extractor", "extractor_path", "reference_kind",
        "reference", "clip_model", "with_base", "devices", "num_seeds"]  # the inputs, in the launch endpoint's order
ALIASES = {"model": "source", "weights": "source", "prompts_file": "prompts", "isc_splits": "num_samples",
           "device": "devices", "reference_count": "reference"}  # core field -> input


# ----------------------------------------------------------------------------- the evaluation job
@dataclass(frozen=True)
class EvalPlan:
    config: Any  # core.eval.configs.EvalConfig
    devices: str
    base: Any = None  # EvalConfig of the base model under the same setting, when it has no result yet
    warning: Optional[str] = None  # the sample size is too small for the numbers to mean much


def source_weights(app, value: Optional[str]) -> tuple[str, Optional[str]]:
    """A source ("preset:<name>" | "<run id>@<step>") -> (preset, weights for core.eval.eval_job: None for the
    preset's own weights, the checkpoint's "<run id>@<step>" otherwise). ConfigError("source")."""
    source = comparison.parse_source(value, app.store, "source")
    if source.tokenizer_weights is not None:
        raise ConfigError("source", f"{source.label} is a decoder-baseline checkpoint (a post-trained tokenizer); "
                                    "evaluating tokenizer checkpoints is not supported")
    if source.generator_weights is None:
        return source.preset, None
    return source.preset, source.value


def reference_of(app, kind: Optional[str], text: Optional[str], preset: str) -> str:
    """The reference set for FID / precision-recall: "shapes", or a folder / .npz confined to the data roots."""
    from core.models import registry

    if kind == "shapes":
        if not registry.get_generator(preset).is_demo:
            raise ConfigError("reference", f"the shapes domain is the demo's reference; for {preset} give an .npz "
                                           "batch (e.g. VIRTUAL_imagenet256_labeled.npz) or an image folder")
        return "shapes"
    if kind == "folder":
        return str(confine(text, app.data_roots, "reference", kind="dir"))
    if kind == "npz":
        path = confine(text, app.data_roots, "reference", kind="file")
        if path.suffix != ".npz":
            raise ConfigError("reference", f"{path.name} is not an .npz batch")
        return str(path)
    raise ConfigError("reference_kind", f"choose one of {', '.join(k for _, k in REFERENCE_CHOICES)}")


@functools.cache
def field_table() -> dict[str, fields.Field]:
    """The form's field table: EvalConfig's fields, with the bounds the page checks before a job is queued."""
    from core.eval.configs import EvalConfig

    at_least = {"num_samples": 1, "temperature": 0, "top_k": 0, "seed": 0, "num_seeds": 1, "batch_size": 1,
                "image_size": 8}
    return fields.table(EvalConfig, {"classes": "classes", "prompts": "lines"},
                        **{k: {"minimum": v} for k, v in at_least.items()})


def _eval_config(**values):
    from core.eval.configs import EvalConfig

    try:
        return EvalConfig(**values)
    except ConfigError as e:
        raise renamed(e, ALIASES) from None


def plan_eval(app, values: dict) -> EvalPlan:
    """Form values -> an EvalPlan whose every input and file was checked. Raises ConfigError(input)."""
    from core.eval import configs, eval_job
    from core.models import registry

    preset, weights = source_weights(app, values.get("source"))
    try:
        if weights is None or values.get("with_base"):
            registry.require_files(preset)
    except MissingWeightsError as e:
        raise ConfigError("source" if weights is None else "with_base",
                          str(e) if weights is None else f"the base model cannot be evaluated: {e}") from None
    task = registry.get_generator(preset).task
    classes = prompts = None
    if task == "c2i":
        items = class_items(values.get("classes"))
        classes = configs.class_ids_of(preset, items) if items else None
    else:
        prompts = [p.strip() for p in str(values.get("prompts") or "").splitlines() if p.strip()]
        if not prompts:
            raise ConfigError("prompts", f"{preset} is text-conditional: give at least one prompt (one per line)")
    table = field_table()
    num = lambda key: fields.parse(table[key], values.get(key, table[key].default))  # noqa: E731
    num_samples = num("num_samples")
    if values.get("cfg"):
        cfg_scale = num("cfg_scale")
        if cfg_scale <= 1.0:
            raise ConfigError("cfg_scale", "with CFG on the scale must be above 1 (1 = no guidance); "
                                           "untick CFG for none")
    else:
        cfg_scale = 1.0
    num_seeds = num("num_seeds")
    sampling = dict(cfg_scale=cfg_scale, num_seeds=num_seeds,
                    **{k: num(k) for k in ("temperature", "top_k", "top_p", "seed", "batch_size", "image_size")},
                    precision=values.get("precision") or "fp32")
    metrics = list(values.get("metrics") or [])
    if not metrics:
        raise ConfigError("metrics", "pick at least one metric")
    extractor = values.get("extractor") or "inception"
    features = any(m not in NO_FEATURES for m in metrics)
    extractor_path = extractor_path_of(app, extractor, values.get("extractor_path")) if features else None
    reference = (reference_of(app, values.get("reference_kind"), values.get("reference"), preset)
                 if ("fid" in metrics or "prc" in metrics) else None)
    clip_model = extractor_path_of(app, "clip", values.get("clip_model"), "clip_model") if "clip" in metrics else None
    device_set, device = parse_device_set(values.get("devices"))
    label = str(values.get("label") or "").strip()
    cfg = _eval_config(model=preset, weights=weights, label=label, num_samples=num_samples, classes=classes,
                       prompts=prompts, metrics=metrics, extractor=extractor, extractor_path=extractor_path,
                       reference=reference, clip_model=clip_model, device=device, **sampling)
    if features:
        check_extractor(extractor, extractor_path)
    if "clip" in metrics:
        from core.eval.extractors import DEFAULT_CLIP

        try:
            check_hub_model(clip_model or DEFAULT_CLIP, "CLIP model")
        except MissingWeightsError as e:
            raise ConfigError("clip_model", str(e)) from None
    try:
        eval_job.check_eval(cfg, app.runs_dir)
    except ConfigError as e:
        raise renamed(e, ALIASES) from None
    except DataError as e:
        raise ConfigError("reference", str(e)) from None
    base = None
    if weights is not None and values.get("with_base"):
        base_cfg = replace(cfg, weights=None, label="base")
        if not base_is_covered(app, base_cfg):
            base = base_cfg
    warning = None
    if features and ("fid" in metrics or "prc" in metrics):
        from core.eval.verdict import sample_size_warning

        warning = sample_size_warning(num_samples, feature_dim(extractor, extractor_path), num_seeds)
    return EvalPlan(cfg, device_set, base, warning)


def feature_dim(extractor: str, path: Optional[str]) -> int:
    """Dimensions of an extractor's features (the demo evaluator's from its file; the others' defaults)."""
    if extractor == "demo":
        from core.eval.inputs import build_metric_extractor

        return int(build_metric_extractor("demo", path).evaluator.config.feature_dim)
    return FEATURE_DIMS.get(extractor, 2048)


def setting_key(cfg) -> str:
    """What `evaluation_summary` groups results by, for a config."""
    return json.dumps(cfg.setting(cfg.sampling_spec(None, cfg.resolved_prompts())), sort_keys=True)


def base_is_covered(app, cfg) -> bool:
    """Whether the base model has a result, or a queued or running job, under `cfg`'s setting."""
    from core.eval.configs import EvalConfig
    from core.eval.summary import evaluation_summary

    key = setting_key(cfg)
    for row in evaluation_summary(app.runs_dir):
        if row["model"] == cfg.model and row["checkpoint"] == "base" and row["setting_key"] == key:
            return True
    for run in app.store.list_runs([QUEUED, *ACTIVE]):
        if run.kind != views.EVAL_KIND:
            continue
        try:
            other = EvalConfig.from_dict(app.store.read_config(run.id))
        except (OSError, ValueError, UserError):
            continue
        if other.weights is None and other.model == cfg.model and setting_key(other) == key:
            return True
    return False


# ----------------------------------------------------------------------------- tables
def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.4g}"


def _short(ref: Optional[str]) -> str:
    if not ref:
        return "—"
    return ref if ref.startswith("shapes") else Path(ref).name


def setting_text(s: dict) -> str:
    """One line for a summary setting: what the numbers depend on besides the weights."""
    parts = [f"{s['num_samples']} samples", f"cfg {s['cfg_scale']:g}", f"T {s['temperature']:g}"]
    if s.get("top_k"):
        parts.append(f"top-k {s['top_k']}")
    if s.get("top_p", 1.0) < 1.0:
        parts.append(f"top-p {s['top_p']:g}")
    seeds = int(s.get("num_seeds", 1))
    parts.append(f"seed {s['seed']}" if seeds == 1 else f"seeds {s['seed']}–{s['seed'] + seeds - 1}")
    if s.get("classes"):
        parts.append("classes " + ",".join(str(c) for c in s["classes"]))
    if isinstance(s.get("prompts"), dict):
        parts.append(f"{s['prompts']['count']} prompts")
    if s.get("image_size"):
        parts.append(f"{s['image_size']} px")
    if s.get("precision") and s["precision"] != "fp32":
        parts.append(s["precision"])
    if s.get("reference"):
        parts.append(f"vs {_short(s['reference'])}")
    return " · ".join(parts)


def _spread_text(spread: Optional[dict], metric: str, value: Optional[float]) -> str:
    """mean ± std over the seeds (the value alone for one seed)."""
    s = (spread or {}).get(metric)
    if s is None or len(s.get("values", [])) < 2:
        return _fmt(value)
    return mean_std(s["mean"], s["std"])


def _change(delta: Optional[float], verdict: Optional[dict]) -> tuple[str, str]:
    """(Δ, its 95% interval) as the table shows them: to the decimal place the interval supports."""
    if delta is None:
        return "—", "—"
    if not verdict:
        return change_text(delta)[0], "—"
    text, interval = verdict_change({**verdict, "delta": delta})
    if verdict["method"] == "none":
        return text, interval
    how = "bootstrap" if verdict["method"] == "bootstrap" else f"t, {verdict['seeds']} seeds"
    return text, f"{interval} ({how})"


def summary_rows(rows: Sequence[dict]) -> list[list[str]]:
    """`evaluation_summary` rows as the results table: per model and setting, one line per checkpoint and
    metric with the base model's value and the difference; a setting with only the base shows it alone."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["setting_key"]), []).append(row)
    out = []
    for (model, _), group in groups.items():
        checkpoints = [r for r in group if r["checkpoint"] != "base"]
        base = next((r for r in group if r["checkpoint"] == "base"), None)
        shown = checkpoints or [base]
        for row in shown:
            setting = row["setting"]
            extractor = setting.get("extractor")
            title = row["checkpoint"] + (f" [{row['label']}]" if row["label"] and row["label"] != "base" else "")
            for m in SUMMARY_METRICS:
                if m not in row["metrics"]:
                    continue
                value = row["metrics"][m]
                if row["checkpoint"] == "base":
                    out.append([model, setting_text(setting), "base (no checkpoint evaluated yet)",
                                metric_label(m, extractor), _spread_text(row.get("spread"), m, value), "—", "—", "—",
                                "—"])
                    continue
                base_value = (row["base_metrics"] or {}).get(m)
                delta = (row["delta"] or {}).get(m)
                verdict = (row.get("verdicts") or {}).get(m)
                out.append([model, setting_text(setting), title, metric_label(m, extractor),
                            _spread_text(row.get("base_spread"), m, base_value), _spread_text(row.get("spread"), m, value),
                            *_change(delta, verdict),
                            verdict["verdict"] if verdict else ("base not evaluated" if delta is None else "—")])
    return out


def job_row(store, run, info: list) -> list:
    first = run.message.splitlines()[0] if run.message else ""
    return [run.id, info[0], info[1], info[2], run.status, f"{run.step}/{run.total_steps}", first]


def job_info(store, run_id: str) -> list:
    """[label, model, weights] of an evaluation job, from its config."""
    try:
        config = store.read_config(run_id)
    except (OSError, ValueError):
        return ["", "?", "?"]
    return [config.get("label") or "", config.get("model") or "?", config.get("weights") or "base"]


def progress_text(store, run_ids: Sequence[str]) -> str:
    """Markdown about the jobs this page launched last."""
    lines = []
    for run_id in run_ids:
        try:
            run = store.get(run_id)
        except RunNotFoundError:
            lines.append(f"- `{run_id}`: deleted")
            continue
        if run.status == FINISHED:
            lines.append(f"- `{run.id}` ✓ **finished** — {run.total_steps} samples; results in the table below")
        elif run.status in (FAILED, STOPPED):
            why = run.message.splitlines()[0] if run.message else ""
            lines.append(f"- `{run.id}` ✗ **{run.status}** at {run.step}/{run.total_steps} samples"
                         + (f" — {views.as_text(why)}" if why else "") + " (log in the Runs tab; resume it there)")
        else:
            lines.append(f"- `{run.id}` **{run.status}** {progress_bar(run.step, run.total_steps)}")
    return "\n".join(lines)


def new_view() -> dict:
    return {"mine": [], "flagged": None, "kinds": {}, "info": {}, "jobs": None, "progress": None, "finished": None}


def refresh_view(app, view: Optional[dict]) -> tuple:
    """(jobs table, progress markdown, results table, view); gr.skip() where nothing changed."""
    from core.eval.summary import evaluation_summary

    app.ticker.tick_if_due()
    view = {**new_view(), **(view if isinstance(view, dict) else {})}
    store = app.store
    skip = gr.skip()
    runs = store.list_runs()
    kinds = {r.id: r.kind for r in runs}
    evals = [r for r in runs if kinds[r.id] == views.EVAL_KIND]
    info = {r.id: view["info"][r.id] if r.id in view["info"] else job_info(store, r.id) for r in evals}
    rows = [job_row(store, r, info[r.id]) for r in evals[:MAX_JOBS]]
    jobs_out = rows if rows != view["jobs"] else skip
    progress = progress_text(store, view["mine"]) if view["mine"] else ""
    progress_out = progress if progress != view["progress"] else skip
    finished = [[r.id, r.ended_at] for r in evals if r.status == FINISHED]
    summary_out = skip
    if finished != view["finished"]:
        summary_out = summary_rows(evaluation_summary(app.runs_dir))
    view.update(kinds=kinds, info=info, jobs=rows, progress=progress, finished=finished)
    return jobs_out, progress_out, summary_out, view


# ----------------------------------------------------------------------------- the tab


def infos(app) -> dict[str, str]:
    """Each input's help: an EvalConfig field's own (core/eval/configs.py), with what the page adds."""
    roots = roots_text(app)
    field = jobform.job_helps(field_table(), KEYS)
    return {**field,
        "source": "a generator preset (the base model) or a run checkpoint (run · step)",
        "classes": f"type to search; {field['classes']}",
        "prompts": f"one per line; {field['prompts']}",
        "cfg": "classifier-free guidance on (Table 2 reports both)",
        "reference_kind": "what the samples are measured against",
        "reference": f"{field['reference']}; a folder or .npz inside the data roots: {roots} (a relative path is "
                     "looked up in each)",
        "with_base": "also queue the base model (the preset's weights) under the same setting, unless it has a "
                     "result or a job already: the table puts the two side by side",
    }


def default_source(store) -> str:
    """The newest finished training run's last checkpoint (else any run's newest checkpoint, else the demo)."""
    for run in store.list_runs([FINISHED]):
        if run.kind == views.TRAIN_KIND and store.last_checkpoint(run.id) is not None:
            return comparison.latest_checkpoint_value(store, run.id)
    return comparison.latest_checkpoint_value(store) or comparison.preset_value(DEFAULT_GENERATOR)


def build(ctx: BuildContext) -> None:
    from core.models import registry

    app = ctx.app
    info = infos(app)
    source0 = default_source(app.store)
    try:
        preset0 = comparison.parse_source(source0, app.store, "source").preset
    except UserError:  # e.g. the newest checkpoint's run names no preset: the form opens on the demo
        source0, preset0 = comparison.preset_value(DEFAULT_GENERATOR), DEFAULT_GENERATOR
    embedded0 = registry.get_generator(preset0).is_demo
    comps: dict[str, Any] = {}

    form_inputs = jobform.FormInputs(field_table(), "eval", info)  # each EvalConfig field's input from the field
    common, field = form_inputs.common, form_inputs.field

    gr.Markdown("Measure a preset or a run checkpoint: FID (or FD in another feature space), Inception Score, "
                "precision/recall, CLIP score. The job runs in the background, like a training run; the table "
                "at the bottom puts each checkpoint beside its base model.", elem_classes=["tab-intro"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=420):
            with gr.Row(equal_height=False):
                comps["source"] = gr.Dropdown(choices=comparison.source_choices(app.store), value=source0,
                                              filterable=True, allow_custom_value=True, scale=3, **common("source"))
                comps["label"] = field("label", scale=2)
            with gr.Row(equal_height=False):
                # the demo's default: 1000 samples (10 classes x 100) measure in seconds on a CPU
                comps["num_samples"] = field("num_samples", scale=1, **({"value": 1000} if embedded0 else {}))
                comps["classes"] = gr.Dropdown(choices=form.class_choices(preset0), value=[], multiselect=True,
                                               filterable=True, allow_custom_value=True, scale=3,
                                               visible=form.model_task(preset0) != "t2i", **common("classes"))
                comps["prompts"] = gr.Textbox(value="", lines=3, scale=3, visible=form.model_task(preset0) == "t2i",
                                              **common("prompts"))
            with gr.Row(equal_height=False):
                comps["cfg"] = gr.Checkbox(value=False, min_width=120, **common("cfg"))
                # the scale used once "cfg" is ticked (unticked, the job samples at 1.0): GPT-XL's 2.0
                comps["cfg_scale"] = field("cfg_scale", value=2.0, min_width=120)
                comps["temperature"] = field("temperature", min_width=120)
                comps["top_k"] = field("top_k", min_width=120)
                comps["top_p"] = field("top_p", min_width=120)
            with gr.Row(equal_height=False):
                comps["metrics"] = field("metrics", choices=METRIC_CHOICES)
                comps["extractor"] = field("extractor", choices=list(EXTRACTORS),
                                           **({"value": "demo"} if embedded0 else {}))
                comps["extractor_path"] = field("extractor_path")
            with gr.Row(equal_height=False):
                comps["reference_kind"] = gr.Radio(choices=REFERENCE_CHOICES, value="shapes" if embedded0 else "npz",
                                                   **common("reference_kind"))
                comps["reference"] = field("reference")
            with gr.Accordion("Sampling and metric details", open=False):
                with gr.Row(equal_height=False):
                    for key in ("seed", "num_seeds", "batch_size", "image_size", "precision"):
                        comps[key] = field(key)
                comps["clip_model"] = field("clip_model")
        with gr.Column(scale=2, min_width=320):
            comps["devices"] = gr.CheckboxGroup(choices=device_choices(app), value=default_devices(),
                                                **common("devices"))
            comps["with_base"] = gr.Checkbox(value=True, label="with_base: evaluate the base model too",
                                             info=info["with_base"], elem_id="eval-with_base")
            launch_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-launch")
            status = gr.Markdown("", label="evaluate status", elem_id="eval-status")
            progress = gr.Markdown("", label="job progress", elem_id="eval-progress")
    jobs_table = gr.Dataframe(headers=JOB_HEADERS, value=[], interactive=False, wrap=True, max_height=240,
                              column_widths=["24%", "8%", "9%", "20%", "9%", "13%", "17%"],
                              label="evaluation jobs (progress = samples written / total)", elem_id="eval-jobs")
    gr.Markdown("**Results per checkpoint.** Each checkpoint beside the base model evaluated under the same "
                "setting, as mean ± std over the sampling seeds. The 95% interval of the change is a paired bootstrap "
                "(FD, precision, recall: samples and real images resampled, the same seeds paired) or a t-interval "
                "over the seeds (IS, CLIP score, Inception FID); the verdict is better/worse only when it excludes "
                "zero, otherwise *within noise*. FID is only called FID on Inception features; on the demo "
                "evaluator's (or CLIP / DINOv2) features it is an FD in that space, comparable only with itself. "
                "FD: lower is better; IS, precision, recall, CLIP score: higher.")
    summary = gr.Dataframe(headers=SUMMARY_HEADERS, value=[], interactive=False, wrap=True, max_height=420,
                           column_widths=["8%", "12%", "13%", "10%", "11%", "11%", "10%", "15%", "10%"],
                           label="results: base vs checkpoint", elem_id="eval-summary")
    view = gr.State(new_view())
    timer = gr.Timer(app.page_timer_s)
    inputs = [comps[k] for k in KEYS]

    def submit(cfg, devices: str):
        from core.runs import kinds

        name = f"eval {cfg.model} {cfg.label or ('base' if cfg.weights is None else cfg.weights)}"
        return kinds.submit(app.launcher, kinds.EVAL, cfg, devices, name)

    def launch(*args):
        """Check the form and queue the job (and the base model's, see with_base). Returns the status, an
        update per input (the error under its input) and the page's view."""
        values, state = dict(zip(KEYS, args[:-1])), {**new_view(), **(args[-1] or {})}
        try:
            plan = plan_eval(app, values)
            with app.launcher_lock:
                runs = [submit(plan.base, plan.devices)] if plan.base is not None else []
                runs.append(submit(plan.config, plan.devices))
        except UserError as e:  # a ConfigError's message goes under the input it names
            return refused(e, KEYS, info, ALIASES, state)
        names = ", ".join(f"`{r.id}`" for r in runs)
        waits = [r for r in runs if r.status == QUEUED]
        text = (f"✓ **Queued** {names} on `{plan.devices}`"
                + (" (the base model under the same setting first)" if plan.base is not None else "")
                + (f"; {len(waits)} waiting for the device" if waits else "") + ". Progress below and in the Runs tab."
                + (f"\n\n⚠ {plan.warning}." if plan.warning else ""))
        updates = field_updates(KEYS, info, None, "", state["flagged"])
        return (text, *updates, {**state, "flagged": None, "mine": [r.id for r in runs], "progress": None})

    launch.__signature__ = signature(KEYS, ["view"])
    launch_btn.click(launch, inputs=[*inputs, view], outputs=[status, *inputs, view], api_name="launch_eval",
                     concurrency_limit=1)

    def refresh(state):
        return refresh_view(app, state)

    timer.tick(refresh, inputs=view, outputs=[jobs_table, progress, summary, view], api_name="eval_refresh",
               show_progress="hidden", queue=False, trigger_mode="once")

    def on_source(value, classes, extractor, reference_kind, prompts, metrics):
        """The classes (or prompts) input, the extractor, the reference kind and the metrics follow the model;
        the demo T2I starts from its held-out prompts and adds prompt adherence."""
        try:
            preset = comparison.parse_source(value, app.store, "source").preset
        except UserError:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        task = form.model_task(preset)
        choices = form.class_choices(preset)
        valid = {v for _, v in choices}
        kept = [c for c in class_items(classes) if c in valid]
        embedded = registry.get_generator(preset).is_demo
        if embedded:
            extractor, reference_kind = "demo", "shapes"
        else:
            extractor = "inception" if extractor == "demo" else extractor
            reference_kind = "npz" if reference_kind == "shapes" else reference_kind
        demo_t2i = embedded and task == "t2i"
        metrics = [m for m in (metrics or []) if m != "adherence" or demo_t2i]
        if demo_t2i and "adherence" not in metrics:
            metrics = metrics + ["adherence"]
        prompts_update = gr.update(visible=task == "t2i")
        if demo_t2i and not (prompts or "").strip():
            from core.demo.prompts import heldout_prompts

            prompts_update = gr.update(visible=True, value="\n".join(heldout_prompts()))
        return (gr.update(choices=choices, value=kept, visible=task != "t2i"), prompts_update,
                extractor, reference_kind, metrics)

    comps["source"].change(on_source, inputs=[comps["source"], comps["classes"], comps["extractor"],
                                              comps["reference_kind"], comps["prompts"], comps["metrics"]],
                           outputs=[comps["classes"], comps["prompts"], comps["extractor"], comps["reference_kind"],
                                    comps["metrics"]],
                           api_visibility="private", show_progress="hidden")

    offered = gr.State(source0)  # the default the page last put in `source`

    def refresh_sources(value, offered_value):
        """New checkpoints into the list; a source the user has not changed follows the newest finished run."""
        fresh = comparison.source_choices(app.store)
        known = {v for _, v in fresh}
        default = default_source(app.store)
        keep = value in known and value != offered_value
        return gr.update(choices=fresh, value=value if keep else default), default

    ctx.get(f"{TAB_ID}.tab").select(refresh_sources, inputs=[comps["source"], offered],
                                    outputs=[comps["source"], offered], api_visibility="private",
                                    show_progress="hidden")
    diagnose.build_section(ctx)  # where a demo run moved the generator (core.eval.diagnostics)
