"""Compare tab: base vs aligned side by side, per class (or prompt), with the same seeds.

Either side is any generator preset or any run checkpoint. The gallery shows each pair on one row
(base left, aligned right); below it one ImageSlider per pair, and a zip of the PNG pairs. Sampling
runs in the request, on the chosen device, holding that device's lock (see app.comparison).
"""
from __future__ import annotations

from typing import Optional

import gradio as gr

from app import comparison, form
from app.tabs import BuildContext
from core.errors import ConfigError, UserError

TAB_ID = "compare"
LABEL = "Compare"
MAX_SLIDERS = 24
PAIRS_PER_ROW = 4  # the gallery has an even number of columns, so a pair never splits over two rows
DEMO_DEFAULT_CLASSES = 4


def default_classes(preset: str) -> list[int]:
    from core.vapi.trainer import DEFAULT_IMAGENET_PREVIEW

    n = len(form.class_names_of(preset))
    if n == 1000:
        return list(DEFAULT_IMAGENET_PREVIEW[:4])
    return list(range(min(n, DEMO_DEFAULT_CLASSES)))


def default_sources(store) -> tuple[str, str]:
    """(base, aligned): the newest run's latest checkpoint against its model preset; or the demo twice."""
    aligned = comparison.latest_checkpoint_value(store)
    if aligned is None:
        base = comparison.preset_value("demo-c2i")
        return base, base
    run_id = aligned.split(":")[1]
    model = store.read_config(run_id).get("model", "demo-c2i")
    return comparison.preset_value(model), aligned


def preset_of(app, value: Optional[str]) -> Optional[str]:
    try:
        return comparison.parse_source(value, app.store, "base").preset
    except (ConfigError, UserError):
        return None


def condition_inputs(app, base_value: Optional[str], current: Optional[list]) -> tuple:
    """Updates for the classes dropdown and the prompts box after the base side changed."""
    preset = preset_of(app, base_value)
    task = form.model_task(preset) if preset else None
    choices = form.class_choices(preset) if preset else []
    valid = {v for _, v in choices}
    kept = [c for c in (current or []) if c in valid] or (default_classes(preset) if preset and choices else [])
    return (gr.update(choices=choices, value=kept, visible=task != "t2i"), gr.update(visible=task == "t2i"))


def device_names() -> list[str]:
    from core import device

    return [d["name"] for d in device.report()]


def build(ctx: BuildContext) -> None:
    app = ctx.app
    base0, aligned0 = default_sources(app.store)
    preset0 = preset_of(app, base0) or "demo-c2i"
    choices = comparison.source_choices(app.store)
    names = device_names()
    gr.Markdown("Pick two models (a preset or any run checkpoint), classes or prompts and seeds. Both sides use "
                "the same seeds, so with equal weights the images are equal and any difference comes from "
                "the alignment.", elem_classes=["tab-intro"])
    with gr.Row(equal_height=True):
        base = gr.Dropdown(choices=choices, value=base0, label="base", filterable=True, scale=3, elem_id="compare-base",
                           allow_custom_value=True,
                           info="usually the preset the run started from")
        aligned = gr.Dropdown(choices=choices, value=aligned0, label="aligned", filterable=True, scale=3,
                              elem_id="compare-aligned", allow_custom_value=True, info="a run checkpoint (run · step)")
        refresh_btn = gr.Button("Refresh lists", size="sm", scale=0, min_width=110)
    with gr.Row(equal_height=False):
        classes = gr.Dropdown(choices=form.class_choices(preset0), value=default_classes(preset0), multiselect=True,
                              filterable=True, label="classes", scale=3, elem_id="compare-classes",
                              info="type to search the class names")
        prompts = gr.Textbox(value="", lines=3, label="prompts", info="one per line (text-conditional models)",
                             visible=form.model_task(preset0) == "t2i", scale=3, elem_id="compare-prompts")
        seeds = gr.Textbox(value="0, 1, 2, 3", label="seeds", info="comma-separated; one image per seed and class",
                           scale=2, elem_id="compare-seeds")
    with gr.Row(equal_height=False):
        cfg_scale = gr.Number(value=1.0, label="cfg_scale", info="classifier-free guidance (1 = off)", min_width=120)
        temperature = gr.Number(value=1.0, label="temperature", info="0 = greedy", min_width=120)
        top_k = gr.Number(value=0, precision=0, label="top_k", info="0 = off", min_width=120)
        top_p = gr.Number(value=1.0, label="top_p", info="1 = off", min_width=120)
        device = gr.Dropdown(choices=names, value="cuda:0" if "cuda:0" in names else "cpu", label="device",
                             info="sampling holds this device's lock", min_width=140)
    generate_btn = gr.Button("Generate pairs", variant="primary", elem_id="compare-generate")
    status = gr.Markdown("", elem_id="compare-status")
    gallery = gr.Gallery(label="pairs, base then aligned (same class and seed side by side)", columns=PAIRS_PER_ROW * 2,
                         height="auto", object_fit="contain", elem_id="compare-gallery", format="png", preview=False)
    zip_file = gr.File(label="download the PNG pairs (zip)", interactive=False, elem_id="compare-zip")
    pairs_state = gr.State([])

    @gr.render(inputs=pairs_state)
    def sliders(pairs):
        if not pairs:
            return
        gr.Markdown(f"**Slide to compare** (left: base, right: aligned){'' if len(pairs) <= MAX_SLIDERS else f'; the first {MAX_SLIDERS} pairs'}")
        with gr.Row():
            for caption, base_path, aligned_path in pairs[:MAX_SLIDERS]:
                gr.ImageSlider(value=(base_path, aligned_path), label=caption, format="png", type="filepath",
                               scale=0, min_width=220, max_height=260, interactive=False, elem_classes=["pair-slider"])

    def compare(base, aligned, classes, prompts, seeds, cfg_scale, temperature, top_k, top_p, device):
        """Sample base and aligned with the same seeds. Returns the status, the gallery (base, aligned,
        base, aligned, ...), the pairs for the sliders and the zip of PNG pairs."""
        try:
            result = comparison.compare(app, base, aligned, classes=classes, prompts=prompts, seeds=seeds,
                                        cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                                        device=device)
        except ConfigError as e:
            message = str(e)[len(e.field) + 2:]
            return f"✗ `{e.field}`: {message}", gr.skip(), gr.skip(), gr.skip()
        except UserError as e:
            return f"✗ {e}", gr.skip(), gr.skip(), gr.skip()
        items = []
        for p in result.pairs:
            items += [(str(p.base), f"base · {p.caption}"), (str(p.aligned), f"aligned · {p.caption}")]
        same = sum(p.identical for p in result.pairs)
        text = (f"✓ {len(result.pairs)} pairs: **{result.base.label}** vs **{result.aligned.label}**"
                f" — {same} identical.")
        pairs = [[p.caption, str(p.base), str(p.aligned)] for p in result.pairs]
        return text, items, pairs, str(result.zip_path)

    generate_btn.click(compare, inputs=[base, aligned, classes, prompts, seeds, cfg_scale, temperature, top_k, top_p,
                                        device],
                       outputs=[status, gallery, pairs_state, zip_file], api_name="compare", concurrency_limit=2)
    base.change(lambda value, current: condition_inputs(app, value, current), inputs=[base, classes],
                outputs=[classes, prompts], api_visibility="private", show_progress="hidden")

    def refresh_lists(base_value, aligned_value):
        """New runs and checkpoints into the lists; a side whose source is gone (or a pair of one model
        with itself, the default before any checkpoint existed) moves to the newest checkpoint."""
        fresh = comparison.source_choices(app.store)
        values = {v for _, v in fresh}
        default_base, default_aligned = default_sources(app.store)
        if base_value == aligned_value:
            base_value, aligned_value = default_base, default_aligned
        return (gr.update(choices=fresh, value=base_value if base_value in values else default_base),
                gr.update(choices=fresh, value=aligned_value if aligned_value in values else default_aligned))

    refresh_btn.click(refresh_lists, inputs=[base, aligned], outputs=[base, aligned], api_visibility="private")
    ctx.get(f"{TAB_ID}.tab").select(refresh_lists, inputs=[base, aligned], outputs=[base, aligned],
                                    api_visibility="private", show_progress="hidden")

    def on_load():
        b, a = default_sources(app.store)
        fresh = comparison.source_choices(app.store)
        return gr.update(choices=fresh, value=b), gr.update(choices=fresh, value=a)

    ctx.blocks.load(on_load, outputs=[base, aligned], api_visibility="private", show_progress="hidden")
