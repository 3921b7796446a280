"""Launch tab: model, data, paper preset and every VA-π hyperparameter, checked before launch.

The form is generated from app.form.FIELDS (one input per VapiConfig field, labelled with the field's
name, its config.py comment as help). Each edit re-validates the config and refreshes the equivalent
CLI command; "Check inputs" and "Launch" also run the trainer's preflight (model files, LPIPS
weights, data folder). An error is shown under the input it belongs to, and its section opens.
The launch endpoint's API parameters are the config field names ("." and "-" written as "__" and
"_"), so `client.predict(beta=0.2, api_name="/launch_run")` launches the form's defaults with beta 0.2.
"""
from __future__ import annotations

import inspect
from typing import Any

import gradio as gr

from app import fields, form, widgets
from app import sweep as sweep_ui
from app.tabs import BuildContext
from app.views import as_text, run_choices
from core.demo.presets import PRESETS as DEMO_PRESETS
from core.device import parse_devices
from core.errors import ConfigError, MissingWeightsError, UserError
from core.models.registry import is_demo_model
from core.runs import kinds
from core.runs.store import ACTIVE
from core.vapi import config as C
from core.vapi.config import DEFAULT_PRESET

TAB_ID = "launch"
LABEL = "Launch"
EXTRA_INFO = {
    "preset": "fills every field below with a preset: the paper's settings (Table 7) or the CPU demo",
    "name": "shown in the Runs tab; the run id adds a timestamp",
    "devices": "CPU, one GPU, or several GPUs (accelerate). A run waits in the queue while another active "
               "run uses one of its devices",
}
DATA_LABELS = {"shapes": "demo shapes domain", "imagefolder": "ImageNet-layout folder", "captions": "caption folder"}
LAYOUT = {  # inputs per row in each section, in order; fields not named here follow one per row
    "model": [["method", "init_weights"]],
    "data": [["data_path", "data_subset"], ["cache_tokens"]],
    "rollout": [["num_generations", "temperature"], ["xi", "xi_schedule"], ["cond_drop_prob"]],
    "reward": [["reward_weights.mse", "reward_weights.lpips"], ["reward_weights.l1", "reward_weights.lpips-alex"],
               ["reward_chunk_size"]],
    "objective": [["beta", "prior"], ["epsilon", "advantage_clip"], ["num_iterations", "rollout_mode"]],
    "optimisation": [["learning_rate", "weight_decay"], ["adam_beta1", "adam_beta2"], ["max_grad_norm", "lr_scheduler"],
                     ["global_batch_size", "per_device_train_batch_size"], ["max_steps", "warmup_steps"],
                     ["mixed_precision", "seed"], ["gradient_checkpointing"]],
    "checkpoints": [["save_steps", "logging_steps", "preview_steps"], ["preview_classes"], ["preview_prompts"],
                    ["preview_seeds", "preview_cfg_scale"], ["kl_probe_size", "report_to"]],
}
KEYS = ["preset", "name", "devices", *form.FIELD_NAMES]  # every input of the form, in the endpoint's order
SWEEP_PARAMS = ("vary", "one_at_a_time", "eval", "num_samples", "num_seeds")  # the sweep's inputs, after the form's
SAVED_KEY = "vapi-launch-form"  # the browser's localStorage key of the form (gr.BrowserState): a reload keeps it


def api_name_of(key: str) -> str:
    """The launch endpoint's parameter name for a form key."""
    return key.replace(".", "__").replace("-", "_")


def field_info(key: str, app, data_kind: str) -> str:
    """The help line under an input (also what an error message is replaced by once fixed)."""
    if key in EXTRA_INFO:
        return EXTRA_INFO[key]
    if key == "data_path":
        return data_path_info(data_kind, app)
    f = form.BY_NAME[key]
    return f.info + ("; empty = the trainer's default" if f.kind == "classes" else fields.HINTS.get(f.kind, ""))


# ----------------------------------------------------------------------------- status texts
def model_status(model: str) -> tuple[str, bool]:
    """(markdown about the preset's weight files, whether a download can fetch what is missing)."""
    from core.models import registry

    try:
        g = registry.get_generator(model)
    except ConfigError as e:
        return f"⚠ {e}", False
    lines = [f"**{g.name}** · {g.task} · {g.size} · {g.image_size} px — {g.description}"]
    missing_published = False
    for f in registry.files_of(model):  # generator, tokenizer, and a LlamaGen T2I preset's text encoder
        if f.present:
            lines.append(f"- {f.role} `{f.path.name}` ✓ present")
        elif f.source is None:
            lines.append(f"- {f.role} `{f.path.name}` ✗ missing — {f.hint}")
        else:
            missing_published = True
            lines.append(f"- {f.role} `{f.path.name}` ✗ missing — published at huggingface.co/{f.source}; "
                         f"**Download** fetches it into `{f.path.parent}`")
    return "\n".join(lines), missing_published


DEMO_NOTE = ("**Demo preset.** The reward here is pixel-only: MSE between decoded samples and the ground truth. "
             "Offline there are no VGG weights for LPIPS, so the paper's perceptual term is off; where "
             "torchvision's `vgg16-397923af.pth` is installed, set `reward_weights.lpips` to 1 to add it back.")


XI_NOTE = ("**Context noise ξ 0.5** is Table 7's T2I value, which this preset keeps; on the demo T2I it made every "
           "measure worse beyond its interval (prompt adherence, demo-FID: README, *The demo text-to-image model*), while ξ 0 left "
           "them within noise. Set `xi` to 0 in *Rollout* to try that.")


def demo_note(preset: str, model: str) -> str:
    """The demo note, with what ξ does on the demo T2I when the preset or model is demo-t2i."""
    return DEMO_NOTE + ("\n\n" + XI_NOTE if "demo-t2i" in (preset, model) else "")


def shows_demo_note(preset: str, model: str) -> bool:
    """For a demo run preset (core.demo.presets) or a demo model (GeneratorPreset.is_demo)."""
    return preset in DEMO_PRESETS or is_demo_model(model)


def device_choices(ctx) -> list[tuple[str, str]]:
    from core import device

    busy: dict[str, str] = {}
    for run in ctx.store.list_runs(ACTIVE):
        for d in parse_devices(run.devices):
            busy[d] = run.id
    out = []
    for d in device.report():
        note = f" — busy: run {busy[d['name']]}" if d["name"] in busy else ""
        out.append((f"{d['name']} · {d['detail']}{note}", d["name"]))
    return out


def default_devices(preset: str) -> list[str]:
    import torch

    if C.preset(preset).get("device") == "cpu" or not torch.cuda.is_available():
        return ["cpu"]
    return ["cuda:0"]


def data_path_info(kind: str, ctx) -> str:
    if kind == "shapes":
        from core.demo.shapes import SPLITS

        return f"for the shapes domain: the split ({', '.join(SPLITS)}; empty = train)"
    roots = ", ".join(str(r) for r in ctx.data_roots) or "(none: start the app with --data-root)"
    if kind == "imagefolder":
        return (f"a folder (root/<class>/<image>) inside the data roots: {roots}. A relative path is looked up in "
                f"each root")
    return (f"caption data inside the data roots ({roots}): a folder with images + captions.jsonl, a .tsv, .tar shards "
            f"or a pattern like shards/{{00000..00127}}.tar, a saved HF dataset, .parquet files, or LlamaGen .jsonl "
            f"lists (`python -m core data inspect PATH` shows what is found). A relative path is looked up in each root")


# ----------------------------------------------------------------------------- checking
def _flags(flagged: Any) -> dict[str, str | None]:
    """The flags shown before, as {form key: message}: the tab keeps a dict; a list of keys (or one key) from an
    API caller means flags of unknown text, sent again."""
    if isinstance(flagged, dict):
        return {str(k): v for k, v in flagged.items()}
    return {k: None for k in (flagged if isinstance(flagged, list) else [flagged] if flagged else [])}


def _error_outputs(flagged, error: ConfigError | None, app, values: dict) -> tuple[list, list, dict | None]:
    """Updates for every input and section: each new error under its input (several for form.FormProblems), the
    previous ones cleared, and the new flags ({form key: message}, for the next call). `flagged`: the flags shown
    before (see _flags). An input whose flag is unchanged gets no update at all: an update reaching a text box while
    its user types can put back the value the browser held a moment before (gradio 6 rebuilds the box's props), so
    only a flag that appears, changes or goes sends one."""
    problems = getattr(error, "problems", None) or ([(error.field, str(error)[len(error.field) + 2:])] if error else [])
    targets: dict[str, str] = {}
    for field, message in problems:
        key = form.form_field_of(field)
        if key is not None:
            targets[key] = f"{targets[key]} · {message}" if key in targets else message
    before = _flags(flagged)
    updates = []
    for key in KEYS:
        if key in targets and before.get(key) != targets[key]:
            updates.append(gr.update(info=f"⚠ {targets[key]}", elem_classes=["field-error"]))
        elif key in before and key not in targets:
            updates.append(gr.update(info=field_info(key, app, values.get("data") or "shapes"), elem_classes=[]))
        else:
            updates.append(gr.skip())
    groups = {form.BY_NAME[k].group for k in targets if k in form.BY_NAME and before.get(k) != targets[k]}
    sections = [gr.update(open=True) if g in groups else gr.skip() for g in form.GROUPS if g not in ("model", "data")]
    return updates, sections, (targets or None)


def _values(args: tuple) -> dict[str, Any]:
    return dict(zip(KEYS, args))


def check(ctx, values: dict[str, Any], *, full: bool) -> form.LaunchPlan:
    """Form values -> a plan; `full` also runs the trainer's preflight (its warnings in `plan.warnings`). Raises
    ConfigError(form key), or form.FormProblems with every problem found."""
    plan = form.build_plan(values["preset"], values, values["devices"], values["name"])
    plan = form.confine_paths(plan, ctx.data_roots, ctx.weight_roots)
    if full:
        plan.warnings = form.preflight(plan)
    return plan


def _error_text(error: ConfigError, what: str) -> str:
    problems = getattr(error, "problems", None)
    if problems:
        return f"✗ **{what}** — {len(problems)} problems:\n" + "\n".join(f"- `{f}`: {m}" for f, m in problems)
    message = str(error)[len(error.field) + 2:]
    return f"✗ **{what}** — `{error.field}`: {as_text(message)}"


def estimate_text(plan: form.LaunchPlan) -> str:
    """The estimate of a checked plan, for the status box: peak memory against the device, step time, warnings."""
    from core.vapi.estimate import estimate

    try:
        est = estimate(plan.cfg, devices=[d for d in plan.devices.split(",") if d] or None)
    except Exception as e:  # noqa: BLE001 (an estimate is advice: it never blocks the form)
        return f"(no estimate: {type(e).__name__}: {e})"
    lines = [f"**Estimate** — {est.arch.params / 1e9:.2f}B parameters; peak ≈ {est.peak / 2**30:.1f} GiB per device"
             + (f" of {est.device_bytes / 2**30:.0f} GiB ({est.device}): {'fits' if est.fits else '**does not fit**'}"
                if est.device_bytes else "")
             + (f"; ≈ {est.step_seconds:.1f} s/step, 100 steps ≈ {100 * est.step_seconds / 60:.0f} min"
                if est.step_seconds else "")]
    lines += [f"- to fit: {a}" for a in est.advice]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the form kept in the browser
def _allowed(component: Any) -> set | None:
    """The values a choice input accepts (None: any value)."""
    choices = getattr(component, "choices", None)
    if choices is None or getattr(component, "allow_custom_value", False):
        return None
    return {c[1] if isinstance(c, (tuple, list)) else c for c in choices}


def class_update(model: str, classes: Any) -> dict:
    """The preview-class picker for `model`: its classes offered, those of `classes` it has kept."""
    choices = form.class_choices(model)
    valid = {v for _, v in choices}
    return gr.update(choices=choices, value=[c for c in (classes or []) if c in valid])


def restorable(component: Any, value: Any) -> bool:
    """Whether a value saved in the browser still fits `component`: a choice that is still offered (a removed
    preset or model is not), a number for a number box, a bool for a checkbox, text for a text box."""
    allowed = _allowed(component)
    if isinstance(component, gr.CheckboxGroup) or getattr(component, "multiselect", False):
        return isinstance(value, list) and (allowed is None or all(v in allowed for v in value))
    if allowed is not None:
        return value in allowed
    if isinstance(component, gr.Checkbox):
        return isinstance(value, bool)
    if isinstance(component, gr.Number):
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if isinstance(component, gr.Textbox):
        return isinstance(value, str)
    return True


def restored(components: dict[str, Any], saved: Any) -> list:
    """Updates restoring the saved values of `components` (key -> input): a key saved with a value that no longer
    fits keeps the input as it is (the default, as the page opened), as does a key not saved."""
    saved = saved if isinstance(saved, dict) else {}
    return [saved[k] if k in saved and restorable(c, saved[k]) else gr.skip() for k, c in components.items()]


# ----------------------------------------------------------------------------- the tab
def build(ctx: BuildContext) -> None:
    app = ctx.app
    defaults = form.preset_form_values(DEFAULT_PRESET)
    comps: dict[str, Any] = {}
    sections: dict[str, gr.Accordion] = {}

    def make(key: str) -> Any:
        f = form.BY_NAME[key]
        extra: dict[str, Any] = {}
        if f.kind == "model":
            extra["choices"] = form.model_names()
        elif f.kind == "classes":
            extra["choices"] = form.class_choices(defaults["model"])
        elif key == "data":
            extra["choices"] = [(DATA_LABELS.get(c, c), c) for c in f.choices]
        return widgets.widget(f, f"field-{api_name_of(key)}", value=defaults[key],
                              info=field_info(key, app, defaults["data"]), **extra)

    def place(group: str) -> None:
        placed = set()
        for row in LAYOUT.get(group, []):
            with gr.Row(equal_height=False):
                for key in row:
                    comps[key] = make(key)
                    placed.add(key)
        for f in form.fields_in(group):
            if f.key not in placed and f.key != "model" and f.key != "data":
                comps[f.key] = make(f.key)

    gr.Markdown("Pick a model and data, a paper preset, adjust any hyperparameter, then **Launch**. "
                "The run starts in its own process; watch it in the **Runs** tab.", elem_classes=["tab-intro"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=420):
            with gr.Row(equal_height=False):
                comps["preset"] = gr.Dropdown(choices=C.preset_names(), value=DEFAULT_PRESET, label="preset",
                                              info=EXTRA_INFO["preset"], elem_id="field-preset")
                comps["name"] = gr.Textbox(value=DEFAULT_PRESET, label="name", info=EXTRA_INFO["name"],
                                           elem_id="field-name")
            note = gr.Markdown(demo_note(DEFAULT_PRESET, defaults["model"]), visible=shows_demo_note(DEFAULT_PRESET, defaults["model"]),
                               elem_classes=["demo-note"], elem_id="demo-note")
            with gr.Group():
                gr.Markdown("#### Model", elem_classes=["section-title"])
                comps["model"] = make("model")
                status_text, downloadable = model_status(defaults["model"])
                model_md = gr.Markdown(status_text, elem_classes=["model-status"])
                download_btn = gr.Button("Download missing weights", visible=downloadable, size="sm")
                place("model")
            with gr.Group():
                gr.Markdown("#### Data", elem_classes=["section-title"])
                comps["data"] = make("data")
                place("data")
            for group in form.GROUPS:
                if group in ("model", "data"):
                    continue
                with gr.Accordion(form.GROUP_TITLES[group], open=False) as acc:
                    place(group)
                sections[group] = acc
        with gr.Column(scale=2, min_width=320, elem_id="launch-side"):
            comps["devices"] = gr.CheckboxGroup(choices=device_choices(app), value=default_devices(DEFAULT_PRESET),
                                                label="devices", info=EXTRA_INFO["devices"], elem_id="field-devices")
            refresh_devices = gr.Button("Refresh devices", size="sm")
            with gr.Row():
                check_btn = gr.Button("Check inputs")
                launch_btn = gr.Button("Launch run", variant="primary", elem_id="launch-button")
            status = gr.Markdown("", label="launch status", elem_id="launch-status")
            start = form.build_plan(DEFAULT_PRESET, defaults, default_devices(DEFAULT_PRESET), DEFAULT_PRESET)
            cli = gr.Code(value=start.cli, language="shell", label="equivalent command", interactive=False,
                          elem_id="launch-cli", wrap_lines=True)
            with gr.Accordion("Sweep: several values, one table with verdicts", open=False,
                              elem_id="sweep-section") as sections["sweep"]:
                sweep_in = [gr.Textbox(label="vary", lines=3, info=sweep_ui.VARY_HELP, elem_id="sweep-vary"),
                            gr.Checkbox(value=True, label="one at a time", elem_id="sweep-one-at-a-time"),
                            gr.Dropdown(choices=["demo", "fid", "adherence"], value="demo", label="evaluation",
                                        elem_id="sweep-eval"),
                            gr.Number(value=1000, step=1, label="samples per seed", elem_id="sweep-num-samples"),
                            gr.Number(value=3, step=1, label="sampling seeds", elem_id="sweep-num-seeds")]
                with gr.Row():
                    sweep_plan_btn = gr.Button("Plan sweep", size="sm")
                    sweep_queue_btn = gr.Button("Queue sweep", variant="primary", size="sm", elem_id="sweep-queue")
                sweep_status = gr.Markdown("", elem_id="sweep-status")
            reset_btn = gr.Button("Reset form", size="sm", elem_id="launch-reset")
    flagged = gr.State(None)
    inputs = [comps[k] for k in KEYS]
    section_list = [sections[g] for g in form.GROUPS if g in sections]
    check_outputs = [*inputs, *section_list, status, cli, flagged]

    # --- validation and the CLI command as the form changes (no files are read)
    def checked(args, full: bool):
        """(the form's outputs, the plan): with an error the outputs are complete and the plan is None;
        otherwise the fields' cleared states, for the caller to add the status, CLI and flag."""
        values, prev = _values(args[:-1]), args[-1]
        try:
            plan = check(app, values, full=full)
        except ConfigError as e:
            updates, opened, target = _error_outputs(prev, e, app, values)
            title = "Check failed" if full else "needs a fix"
            return (*updates, *opened, _error_text(e, title), f"# not valid yet: {e}", target), None
        updates, opened, _ = _error_outputs(prev, None, app, values)
        return (*updates, *opened), plan

    def live(*args):
        out, plan = checked(args, full=False)
        if plan is not None:  # a status with no problem shown before is left alone: it may hold "Launched ..."
            return (*out, "" if args[-1] else gr.skip(), plan.cli, None)
        return out

    live.__signature__ = inspect.Signature([inspect.Parameter(api_name_of(k), inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                            for k in [*KEYS, "flagged"]])
    # a choice is checked as it is picked; a typed field once its user leaves it (Tab, a click elsewhere) or presses
    # Enter, so no check's answer lands in a box while it is being typed into (see _error_outputs)
    typed = (gr.Textbox, gr.Number)
    triggers = [t for k in KEYS if k != "preset"
                for t in ([comps[k].blur, comps[k].submit] if isinstance(comps[k], typed) else [comps[k].input])]
    gr.on(triggers, live, inputs=[*inputs, flagged], outputs=check_outputs, trigger_mode="always_last",
          show_progress="hidden", api_name="validate_form", concurrency_limit=None)

    def full_check(*args):
        out, plan = checked(args, full=True)
        if plan is None:
            return out
        warnings = "".join(f"\n\n⚠ {w}" for w in plan.warnings)
        return (*out, f"✓ Inputs look good: {plan.cfg.max_steps} steps of {plan.cfg.global_batch_size} images "
                      f"x G={plan.cfg.num_generations} on {plan.devices}. Data: {plan.data_summary}.{warnings}\n\n"
                      f"{estimate_text(plan)}",
                plan.cli, None)

    full_check.__signature__ = live.__signature__
    check_btn.click(full_check, inputs=[*inputs, flagged], outputs=check_outputs, api_name="check_form",
                    concurrency_limit=4)

    # --- preset: fill every field, then validate
    def fill(preset):
        try:
            values = form.preset_form_values(preset)
        except ConfigError:
            return [gr.skip()] * len(KEYS)
        out = []
        for key in KEYS:
            if key == "preset":
                out.append(gr.skip())
            elif key == "name":
                out.append(preset)
            elif key == "devices":
                out.append(default_devices(preset))
            else:
                out.append(values[key])
        return out

    comps["preset"].input(fill, inputs=comps["preset"], outputs=inputs, api_name="fill_preset", show_progress="hidden") \
        .then(live, inputs=[*inputs, flagged], outputs=check_outputs, api_visibility="private", show_progress="hidden")

    # --- model: its files, its classes; the demo note
    def on_model(model, preset, classes):
        text, downloadable = model_status(model)
        return (text, gr.update(visible=downloadable), class_update(model, classes),
                gr.update(visible=shows_demo_note(preset, model), value=demo_note(preset, model)))

    comps["model"].change(on_model, inputs=[comps["model"], comps["preset"], comps["preview_classes"]],
                          outputs=[model_md, download_btn, comps["preview_classes"], note], api_visibility="private",
                          show_progress="hidden")

    def download(model, progress=gr.Progress(track_tqdm=True)):
        from core.models import registry

        try:
            missing = [f for f in registry.files_of(model) if not f.present]
            for i, f in enumerate(missing):
                progress(i / len(missing), desc=f"downloading {f.name}")
                if f.source is None:
                    raise MissingWeightsError(f"{f.name} is not published on the hub: {f.hint}")
                registry.download(f.name)
            message = "✓ all weight files present" if not missing else f"✓ downloaded {', '.join(f.name for f in missing)}"
        except (MissingWeightsError, ConfigError, UserError) as e:
            message = f"✗ **Download failed** — {e}"
        except OSError as e:
            message = f"✗ **Download failed** — {type(e).__name__}: {e}"
        text, downloadable = model_status(model)
        return text, gr.update(visible=downloadable), message

    download_btn.click(download, inputs=comps["model"], outputs=[model_md, download_btn, status],
                       api_name="download_weights", concurrency_limit=1)

    # --- data kind: what the path means
    comps["data"].change(lambda kind: gr.update(info=field_info("data_path", app, kind)), inputs=comps["data"],
                         outputs=comps["data_path"], api_visibility="private", show_progress="hidden")

    refresh_devices.click(lambda: gr.update(choices=device_choices(app)), outputs=comps["devices"],
                          api_visibility="private")

    # --- launch (wired once the Runs tab exists: a launch selects the new run there)
    def wire_launch() -> None:
        run_select = ctx.get("runs.run")

        def launch_run(*args):
            values, prev = _values(args[:-1]), args[-1]
            try:
                plan = check(app, values, full=True)
                with app.launcher_lock:
                    run = kinds.submit(app.launcher, kinds.TRAIN, plan.cfg, plan.devices, plan.name)
            except ConfigError as e:
                updates, opened, target = _error_outputs(prev, e, app, values)
                return (*updates, *opened, _error_text(e, "Not launched"), f"# not valid yet: {e}", target,
                        gr.skip(), gr.skip())
            except UserError as e:  # e.g. the runs dir refused the run
                updates, opened, _ = _error_outputs(prev, None, app, values)
                return (*updates, *opened, f"✗ **Not launched** — {as_text(e)}", gr.skip(), None, gr.skip(), gr.skip())
            updates, opened, _ = _error_outputs(prev, None, app, values)
            where = "running" if run.status == "running" else f"{run.status} (waits for {run.devices})"
            message = (f"✓ **Launched** run `{run.id}` — {where}. Follow it in the Runs tab."
                       + "".join(f"\n\n⚠ {w}" for w in plan.warnings))
            choices = run_choices(app.store)
            return (*updates, *opened, message, plan.cli, None, gr.update(selected="runs"),
                    gr.update(choices=choices, value=run.id))

        launch_run.__signature__ = live.__signature__
        launch_btn.click(launch_run, inputs=[*inputs, flagged], outputs=[*check_outputs, ctx.tabs, run_select],
                         api_name="launch_run", concurrency_limit=1)

    # --- sweep: the form's run as the preset, the typed fields varied (queued like a run, one row in Runs)
    def _sweep(args):
        values = _values(args[:len(KEYS)])
        plan = check(app, values, full=False)
        return plan, sweep_ui.sweep_of(plan, *args[len(KEYS):])

    def plan_sweep(*args):
        try:
            _, (cfg, variants) = _sweep(args)
        except UserError as e:
            return f"✗ **Not a valid sweep** — {e}"
        return sweep_ui.summary(app.store, cfg, variants)

    plan_sweep.__signature__ = inspect.Signature(
        [inspect.Parameter(api_name_of(k), inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in [*KEYS, *SWEEP_PARAMS]])
    sweep_plan_btn.click(plan_sweep, inputs=[*inputs, *sweep_in], outputs=sweep_status, api_name="plan_sweep")

    def wire_sweep() -> None:
        run_select = ctx.get("runs.run")

        def queue_sweep(*args):
            try:
                plan, (cfg, variants) = _sweep(args)
                run = sweep_ui.queue(app, plan, cfg)
            except UserError as e:
                return f"✗ **Not queued** — {e}", gr.skip(), gr.skip()
            message = (f"✓ **Queued** sweep `{run.id}` ({len(variants)} runs) — {run.status}. Its table fills in "
                       "the Runs tab as variants finish.")
            return message, gr.update(selected="runs"), gr.update(choices=run_choices(app.store), value=run.id)

        queue_sweep.__signature__ = plan_sweep.__signature__
        sweep_queue_btn.click(queue_sweep, inputs=[*inputs, *sweep_in], outputs=[sweep_status, ctx.tabs, run_select],
                              api_name="queue_sweep", concurrency_limit=1)

    # --- the form kept in the browser (localStorage): saved on each change, restored as the page opens; a stored
    # value that no longer fits (a removed preset, a model no longer offered) leaves that input at its default
    kept = {**comps, **{f"sweep.{p}": c for p, c in zip(SWEEP_PARAMS, sweep_in)}}
    kept_defaults = {k: c.value for k, c in kept.items()}
    saved = gr.BrowserState(None, storage_key=SAVED_KEY, secret=SAVED_KEY)  # not secret: the form holds no keys
    opened = gr.BrowserState([], storage_key=f"{SAVED_KEY}-sections", secret=SAVED_KEY)
    gr.on([c.change for c in kept.values()], lambda *vals: dict(zip(kept, vals)), inputs=list(kept.values()),
          outputs=saved, trigger_mode="always_last", show_progress="hidden", api_visibility="private",
          concurrency_limit=None, queue=False)
    for name, acc in sections.items():
        acc.expand(lambda now, name=name: sorted({*(now or []), name}), inputs=opened, outputs=opened,
                   api_visibility="private", show_progress="hidden", queue=False)
        acc.collapse(lambda now, name=name: sorted(set(now or []) - {name}), inputs=opened, outputs=opened,
                     api_visibility="private", show_progress="hidden", queue=False)

    def restore(values, open_now):
        values = values if isinstance(values, dict) else {}
        out = restored(kept, values)
        model = values.get("model")
        if model != kept_defaults["model"] and restorable(comps["model"], model):  # offer the restored model's classes
            classes = values.get("preview_classes") if isinstance(values.get("preview_classes"), list) else []
            out[list(kept).index("preview_classes")] = class_update(model, classes)
        return (*out, *[gr.update(open=True) if n in (open_now or []) else gr.skip() for n in sections])

    ctx.blocks.load(restore, inputs=[saved, opened], outputs=[*kept.values(), *sections.values()],
                    api_visibility="private", show_progress="hidden") \
        .then(live, inputs=[*inputs, flagged], outputs=check_outputs, api_visibility="private", show_progress="hidden")

    def reset():
        return (*kept_defaults.values(), *[gr.update(open=False)] * len(sections), [])

    reset_btn.click(reset, outputs=[*kept.values(), *sections.values(), opened], api_visibility="private",
                    show_progress="hidden") \
        .then(live, inputs=[*inputs, flagged], outputs=check_outputs, api_visibility="private", show_progress="hidden")

    ctx.after_build(wire_launch)
    ctx.after_build(wire_sweep)
    ctx.export("launch.status", status)
    ctx.export("launch.cli", cli)
    ctx.export("launch.inputs", comps)
