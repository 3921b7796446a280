"""Compare tab: what alignment changed, per class (or prompt), with the same seeds for both models.

Either side is any generator preset or any run checkpoint. Three views (`core.eval.alignment`):
teacher-forced on held-out images (ground truth | base | aligned, each with its reward terms: what
VA-π optimises), shared prefix (both continue the base's first k token rows), and free-running
(labelled as samples of two distributions). Every row ends with the pair's pixel-difference heat
map; tokens that differ between base and aligned are outlined; each image carries the judge's score
(demo evaluator class probability, or CLIP score where its weights exist). Per class, optional
distribution-level numbers of a larger sample (class accuracy, FD; 3 seeds, 95% interval, verdict).
Below: one ImageSlider per pair and a zip of the PNGs with their scores.json. Sampling runs in the
request, on the chosen device, holding that device's lock (see app.comparison).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import gradio as gr

from app import comparison, form
from app.tabs import BuildContext
from app.views import as_text
from core.errors import ConfigError, UserError
from core.eval.verdict import change_text, mean_std
from core.models.registry import DEFAULT_GENERATOR, is_demo_model

TAB_ID = "compare"
LABEL = "Compare"
MAX_SLIDERS = 24
ROWS_PER_LINE = 2  # gallery columns = panels per row x this, so a row never splits over two lines
DEMO_DEFAULT_CLASSES = 4
VIEW_CHOICES = [("teacher-forced (what VA-π optimises)", "teacher-forced"), ("shared prefix", "prefix"),
                ("free-running (two distributions)", "free")]
CLASS_HEADERS = ["class", "accuracy base", "accuracy aligned", "Δ accuracy [95% CI]", "accuracy verdict",
                 "FD base", "FD aligned", "Δ FD [95% CI]", "FD verdict"]
DEMO_CLASS_SAMPLES = 50


def default_classes(preset: str) -> list[int]:
    from core.vapi.trainer import DEFAULT_IMAGENET_PREVIEW

    n = len(form.class_names_of(preset))
    if n == 1000:
        return list(DEFAULT_IMAGENET_PREVIEW[:4])
    return list(range(min(n, DEMO_DEFAULT_CLASSES)))


def default_sources(store) -> tuple[str, str]:
    """(base, aligned): the newest run's latest checkpoint against its model preset; or the demo twice."""
    latest = comparison.latest_checkpoint(store)
    if latest is None:
        base = comparison.preset_value(DEFAULT_GENERATOR)
        return base, base
    model = store.read_config(latest[0]).get("model", DEFAULT_GENERATOR)
    return comparison.preset_value(model), comparison.run_value(*latest)


def refreshed_sources(base: Optional[str], aligned: Optional[str], offered: Optional[Sequence[str]],
                      defaults: tuple[str, str], known: set) -> tuple[str, str]:
    """(base, aligned) after a refresh: a side the user has not changed since the page offered it follows the new
    default (the newest run's last checkpoint, and its preset), as does a side whose source is gone or a pair of
    one model with itself (the default before any checkpoint existed); a side the user picked stays."""
    offered_base, offered_aligned = (list(offered or []) + [None, None])[:2]
    if base == aligned:
        return defaults
    new_base = defaults[0] if base == offered_base or base not in known else base
    new_aligned = defaults[1] if aligned == offered_aligned or aligned not in known else aligned
    return new_base, new_aligned


def preset_of(app, value: Optional[str]) -> Optional[str]:
    try:
        return comparison.parse_source(value, app.store, "base").preset
    except (ConfigError, UserError):
        return None


def heldout_prompt_choices(preset: Optional[str]) -> list[str]:
    """The demo's held-out prompts (core.demo.prompts) for an embedded text-to-image preset, else []."""
    if not preset or form.model_task(preset) != "t2i" or not is_demo_model(preset):
        return []
    from core.demo.prompts import heldout_prompts

    return list(heldout_prompts())


def default_prompts(preset: Optional[str]) -> str:
    """Two held-out prompts to start from on the demo T2I ("" elsewhere: the user types them)."""
    held = heldout_prompt_choices(preset)
    return "\n".join(held[:: max(1, len(held) // 2)][:2])


def add_prompt(current: Optional[str], picked: Optional[str]) -> tuple:
    """Append a picked held-out prompt to the prompts box (once) and clear the picker."""
    lines = [line for line in (current or "").splitlines() if line.strip()]
    if picked and picked not in lines:
        lines.append(picked)
    return "\n".join(lines), gr.update(value=None)


def view_choices(task: Optional[str]) -> list[tuple[str, str]]:
    """The views a model offers: teacher-forced needs held-out images of a class, so not for prompts."""
    return [c for c in VIEW_CHOICES if task != "t2i" or c[1] != "teacher-forced"]


def condition_inputs(app, base_value: Optional[str], current: Optional[list], typed: Optional[str] = None,
                     view: Optional[str] = None) -> tuple:
    """Updates for the classes dropdown, the prompts box, the held-out prompt picker, the per-class sample and the
    view after the base side changed (prompts: no teacher-forced view and no per-class numbers)."""
    preset = preset_of(app, base_value)
    task = form.model_task(preset) if preset else None
    choices = form.class_choices(preset) if preset else []
    valid = {v for _, v in choices}
    kept = [c for c in (current or []) if c in valid] or (default_classes(preset) if preset and choices else [])
    held = heldout_prompt_choices(preset)
    prompts = gr.update(visible=task == "t2i") if (typed or "").strip() else gr.update(visible=task == "t2i",
                                                                                       value=default_prompts(preset))
    samples = 0 if task == "t2i" or not preset or not is_demo_model(preset) else DEMO_CLASS_SAMPLES
    offered = view_choices(task)
    keep = view if view in {v for _, v in offered} else offered[0][1]
    return (gr.update(choices=choices, value=kept, visible=task != "t2i"), prompts,
            gr.update(choices=held, value=None, visible=bool(held)), gr.update(value=samples, visible=task != "t2i"),
            gr.update(choices=offered, value=keep))


def panels_per_row(view: str) -> int:
    return 4 if view == "teacher-forced" else 3  # [ground truth,] base, aligned, difference


def gallery_items(result) -> list[tuple[str, str]]:
    """(file, caption) per panel, row after row."""
    from core.eval.alignment import caption_of

    view = result.view
    return [(str(result.folder / f"{i:03d}_{panel}.png"), caption_of(view.view, panel, row, view.reward_terms))
            for i, row in enumerate(view.rows) for panel in row.panels]


def _mean(values) -> float:
    values = [v for v in values if v is not None and v == v]  # a judge's None (nothing it can check) is left out
    return sum(values) / len(values) if values else float("nan")


def judge_change(rows) -> str:
    """"; change +0.050, 95% interval [...] over N rows: within noise": a t-interval of the paired (same condition
    and seed) changes of the judge's score; "" with fewer than 2 rows the judge could score."""
    from core.eval.verdict import from_seed_values

    pairs = [(r.scores["base"].get("judge"), r.scores["aligned"].get("judge")) for r in rows]
    pairs = [(b, a) for b, a in pairs if b is not None and a is not None]
    if len(pairs) < 2:
        return ""
    v = from_seed_values("judge", [b for b, _ in pairs], [a for _, a in pairs])
    return f"; change {v.delta_text()}, 95% interval {v.interval_text()} over {len(pairs)} paired rows: {v.verdict}"


def judge_parts(rows) -> dict[str, tuple[float, float, int]]:
    """{attribute: (base share seen, aligned share seen, rows naming it)} over the rows whose judge reports parts
    (the demo T2I's prompt adherence: shape, colour, count, position, background)."""
    seen: dict[str, list[tuple[bool, bool]]] = {}
    for r in rows:
        b, a = r.scores.get("base", {}).get("judge_parts"), r.scores.get("aligned", {}).get("judge_parts")
        for name in (b or {}):
            if a is not None and name in a:
                seen.setdefault(name, []).append((b[name], a[name]))
    return {name: (sum(x for x, _ in v) / len(v), sum(y for _, y in v) / len(v), len(v)) for name, v in seen.items()}


def status_text(result) -> str:
    """What the rows show and their averages: tokens that differ, reward terms (teacher-forced), judge."""
    view = result.view
    rows = view.rows
    same = sum(p.identical for p in result.pairs)
    lines = [f"✓ **{view.title}** — {len(rows)} rows, **{as_text(result.base.label)}** vs **{as_text(result.aligned.label)}**, "
             f"{same} identical."]
    changed = _mean(r.scores["changed_tokens"] for r in rows)
    firsts = [r.scores["first_difference"] for r in rows if r.scores["first_difference"] is not None]
    lines.append(f"Tokens that differ: {changed:.1f} of {rows[0].scores['tokens'] if rows else 0} on average"
                 + (f", first at token {_mean(firsts):.1f} on average." if firsts else "."))
    for term in view.reward_terms:
        b = _mean(r.scores["base"][term] for r in rows)
        a = _mean(r.scores["aligned"][term] for r in rows)
        lines.append(f"Reward term {term} (teacher-forced, lower is better): base {b:.4f}, aligned {a:.4f} "
                     f"(mean of {len(rows)} rows, no verdict from so few).")
    if rows and "judge" in rows[0].scores.get("base", {}):
        b = _mean(r.scores["base"]["judge"] for r in rows)
        a = _mean(r.scores["aligned"]["judge"] for r in rows)
        lines.append(f"Judge ({view.judge}): base {b:.3f}, aligned {a:.3f} on average{judge_change(rows)}.")
        parts = judge_parts(rows)
        if parts:
            lines.append("Per attribute (share of the rows naming it where it is seen): " + "; ".join(
                f"{name} base {b:.2f}, aligned {a:.2f} ({n} rows)" for name, (b, a, n) in parts.items()) + ".")
    elif view.judge:
        lines.append(f"Judge: {view.judge}.")
    for note in result.notes:
        lines.append(f"⚠ {note}")
    if view.view == "free":  # what to judge them by: only what this model's page offers
        prompts = form.model_task(result.base.preset) == "t2i"
        lines.append("Free-running pairs are samples of two distributions: " + (
            "judge them by the prompt adherence above, or use the shared-prefix view for one image." if prompts else
            "judge them by the per-class numbers, or use the teacher-forced / shared-prefix views for one image."))
    return "  \n".join(lines)


DIFF_TICKS = (0.0, 0.01, 0.05, 0.25, 1.0)  # mean |Δ| over RGB marked on the colour scale


def diff_scale_html() -> str:
    """The difference maps' colour scale: the heat map's colours (core.eval.alignment.HEAT_STOPS) with the mean |Δ|
    each stands for, at the positions the map puts them."""
    from core.eval.alignment import HEAT_STOPS, heat_position

    stops = ", ".join(f"{c} {100 * p:.1f}%" for p, c in HEAT_STOPS)
    ticks = "".join(f'<span style="left:{100 * heat_position(d):.1f}%">{d:g}</span>' for d in DIFF_TICKS)
    return ('<div class="diff-scale"><span class="diff-scale-title">colour of |base − aligned| (mean |Δ| over RGB, '
            f'0 = equal, 1 = 255 apart)</span><div class="diff-scale-bar" style="background: linear-gradient(to right, '
            f'{stops})"></div><div class="diff-scale-ticks">{ticks}</div></div>')


def row_label(view) -> str:
    """The per-row table's caption: only what this view's table has."""
    scores = view.rows[0].scores.get("base", {}) if view.rows else {}
    parts = ["tokens that differ"] + ["reward terms (lower is better)"] * bool(view.reward_terms) \
        + ["the judge's score"] * ("judge" in scores) + ["the prompt's attributes seen"] * ("judge_parts" in scores)
    return "per row: " + ", ".join(parts)


def row_table(view) -> dict:
    """The rows' numbers as a table: {"headers": [...], "data": [[...], ...]}."""
    terms = list(view.reward_terms)
    judged = bool(view.rows) and "judge" in view.rows[0].scores.get("base", {})
    headers = ["row", "tokens that differ", "first difference"]
    headers += [f"{who} {t}" for t in terms for who in ("base", "aligned")]
    if judged:
        headers += ["judge: ground truth"] * (view.view == "teacher-forced") + ["judge: base", "judge: aligned"]
    parts = judged and "judge_parts" in view.rows[0].scores.get("base", {})
    if parts:
        headers += ["attributes seen: base", "attributes seen: aligned"]
    data = []
    for row in view.rows:
        s = row.scores
        cells = [row.caption, f"{s['changed_tokens']}/{s['tokens']}",
                 "—" if s["first_difference"] is None else s["first_difference"]]
        cells += [f"{s[who][t]:.4f}" for t in terms for who in ("base", "aligned")]
        if judged:
            if view.view == "teacher-forced":
                cells.append(f"{s['truth']['judge']:.3f}")
            cells += ["—" if s[who]["judge"] is None else f"{s[who]['judge']:.3f}" for who in ("base", "aligned")]
        if parts:
            cells += [", ".join(f"{k} {'✓' if v else '✗'}" for k, v in s[who].get("judge_parts", {}).items()) or "—"
                      for who in ("base", "aligned")]
        data.append(cells)
    return {"headers": headers, "data": data}


def class_rows(rows: list[dict]) -> list[list[str]]:
    """core.eval.alignment.class_numbers rows as the per-class table."""
    out = []
    for row in rows:
        cells = [row["class"]]
        for key, digits in (("accuracy", 3), ("fd", 4)):
            v = row.get(key)
            if v is None:
                cells += ["—"] * 4
                continue
            cells += [mean_std(v["base"]["mean"], v["base"]["std"], digits),
                      mean_std(v["aligned"]["mean"], v["aligned"]["std"], digits),
                      " ".join(change_text(v["delta"], v["low"], v["high"], digits)), v["verdict"]]
        out.append(cells)
    return out


def device_names() -> list[str]:
    from core import device

    return [d["name"] for d in device.report()]


def build(ctx: BuildContext) -> None:
    app = ctx.app
    base0, aligned0 = default_sources(app.store)
    preset0 = preset_of(app, base0) or DEFAULT_GENERATOR
    choices = comparison.source_choices(app.store)
    names = device_names()
    gr.Markdown("Pick two models (a preset or any run checkpoint), classes or prompts and seeds, and a view. "
                "**Teacher-forced**: held-out real images, each model samples every token given the image's own "
                "tokens (the rollout VA-π scores), with the same random numbers; the reward terms are under each "
                "image. **Shared prefix**: both continue the base's first k token rows. **Free-running**: "
                "independent samples of the two distributions (one early token sends the rest elsewhere, so "
                "pairs are rarely alike). Tokens that differ are outlined in magenta; the last image of a row "
                "is |base − aligned|.", elem_classes=["tab-intro"])
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
        with gr.Column(scale=3, visible=True, min_width=240):
            prompts = gr.Textbox(value=default_prompts(preset0), lines=3, label="prompts",
                                 info="one per line (text-conditional models); pairs are labelled by prompt",
                                 visible=form.model_task(preset0) == "t2i", elem_id="compare-prompts")
            heldout = gr.Dropdown(choices=heldout_prompt_choices(preset0), value=None, label="add a held-out prompt",
                                  info="the demo's held-out prompts: combinations the demo T2I never saw in training",
                                  filterable=True, visible=bool(heldout_prompt_choices(preset0)),
                                  elem_id="compare-heldout")
        seeds = gr.Textbox(value="0, 1, 2, 3", label="seeds", info="comma-separated; one image per seed and class",
                           scale=2, elem_id="compare-seeds")
    with gr.Row(equal_height=False):
        cfg_scale = gr.Number(value=1.0, label="cfg_scale", info="classifier-free guidance (1 = off)", min_width=120)
        temperature = gr.Number(value=1.0, label="temperature", info="0 = greedy", min_width=120)
        top_k = gr.Number(value=0, precision=0, label="top_k", info="0 = off", min_width=120)
        top_p = gr.Number(value=1.0, label="top_p", info="1 = off", min_width=120)
        device = gr.Dropdown(choices=names, value="cuda:0" if "cuda:0" in names else "cpu", label="device",
                             info="sampling holds this device's lock", min_width=140)
    with gr.Row(equal_height=False):
        task0 = form.model_task(preset0)
        view = gr.Radio(choices=view_choices(task0), value=view_choices(task0)[0][1], label="view",
                        elem_id="compare-view", scale=3,
                        info="teacher-forced and shared prefix compare one image; free-running compares distributions")
        prefix_rows = gr.Slider(0, 16, value=2, step=1, label="prefix rows k (prefix_rows)", elem_id="compare-prefix",
                                info="shared prefix: token rows taken from the base's sample", scale=2)
        class_samples = gr.Number(value=DEMO_CLASS_SAMPLES if is_demo_model(preset0) and form.model_task(preset0) != "t2i" else 0, precision=0,
                                  label="per-class sample (class_samples)", elem_id="compare-class-samples", scale=2,
                                  visible=task0 != "t2i",
                                  info="samples per class and seed (3 seeds) for class accuracy and FD; 0 = off")
    generate_btn = gr.Button("Compare", variant="primary", elem_id="compare-generate")
    status = gr.Markdown("", elem_id="compare-status")
    gallery = gr.Gallery(label="rows: [ground truth |] base | aligned | difference",
                         columns=panels_per_row("teacher-forced") * ROWS_PER_LINE,
                         height="auto", object_fit="contain", elem_id="compare-gallery", format="png", preview=False)
    gr.HTML(diff_scale_html(), elem_id="compare-diff-scale")
    rows_table = gr.Dataframe(value=None, interactive=False, wrap=True, max_height=320, elem_id="compare-rows",
                              label="per row")
    class_table = gr.Dataframe(headers=CLASS_HEADERS, value=[], interactive=False, wrap=True, visible=False,
                               label="per class: a larger free-running sample (mean ± std over 3 seeds)",
                               column_widths=["10%", "10%", "10%", "15%", "9%", "10%", "10%", "16%", "10%"],
                               elem_id="compare-classes-table")
    zip_file = gr.File(label="download the PNGs and their scores (zip)", interactive=False, elem_id="compare-zip")
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

    def compare(base, aligned, classes, prompts, seeds, cfg_scale, temperature, top_k, top_p, device,
                view="teacher-forced", prefix_rows=2, class_samples=0, progress=gr.Progress()):
        """One view of base vs aligned with the same seeds. Returns the status, the gallery (per row:
        [ground truth,] base, aligned, difference), the pairs for the sliders, the zip of PNGs with
        scores.json, and the per-class numbers."""
        try:
            result = comparison.compare(app, base, aligned, classes=classes, prompts=prompts, seeds=seeds,
                                        cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                                        device=device, view=view, prefix_rows=prefix_rows,
                                        class_samples=class_samples,
                                        progress=lambda share, what: progress(share, desc=what))
        except UserError as e:  # the error replaces the previous comparison: no stale images under it
            text = (f"✗ `{e.field}`: {as_text(str(e)[len(e.field) + 2:])}" if isinstance(e, ConfigError)
                    else f"✗ {as_text(e)}")
            return text, [], [], None, gr.update(value=None, visible=False), None
        return (status_text(result), gallery_items(result),
                [[p.caption, str(p.base), str(p.aligned)] for p in result.pairs], str(result.zip_path),
                gr.update(value=class_rows(result.per_class), visible=bool(result.per_class)),
                gr.update(value=row_table(result.view), label=row_label(result.view)))

    # the button is disabled while a comparison runs (one click, one comparison), then enabled again
    generate_btn.click(lambda: gr.update(interactive=False, value="Comparing…"), outputs=generate_btn, queue=False,
                       api_visibility="private", show_progress="hidden") \
        .then(compare, inputs=[base, aligned, classes, prompts, seeds, cfg_scale, temperature, top_k, top_p,
                               device, view, prefix_rows, class_samples],
              outputs=[status, gallery, pairs_state, zip_file, class_table, rows_table], api_name="compare",
              concurrency_limit=2, show_progress="full") \
        .then(lambda: gr.update(interactive=True, value="Compare"), outputs=generate_btn, queue=False,
              api_visibility="private", show_progress="hidden")
    view.change(lambda v: gr.update(columns=panels_per_row(v) * ROWS_PER_LINE), inputs=view, outputs=gallery,
                api_visibility="private", show_progress="hidden")
    base.change(lambda value, current, typed, shown: condition_inputs(app, value, current, typed, shown),
                inputs=[base, classes, prompts, view], outputs=[classes, prompts, heldout, class_samples, view],
                api_visibility="private",
                show_progress="hidden")
    heldout.input(add_prompt, inputs=[prompts, heldout], outputs=[prompts, heldout], api_visibility="private",
                  show_progress="hidden")

    offered = gr.State([base0, aligned0])  # the defaults the page last put in the two lists

    def refresh_lists(base_value, aligned_value, offered_pair):
        """New runs and checkpoints into the lists (see `refreshed_sources`)."""
        fresh = comparison.source_choices(app.store)
        defaults = default_sources(app.store)
        b, a = refreshed_sources(base_value, aligned_value, offered_pair, defaults, {v for _, v in fresh})
        return gr.update(choices=fresh, value=b), gr.update(choices=fresh, value=a), list(defaults)

    refresh_btn.click(refresh_lists, inputs=[base, aligned, offered], outputs=[base, aligned, offered],
                      api_visibility="private")
    ctx.get(f"{TAB_ID}.tab").select(refresh_lists, inputs=[base, aligned, offered], outputs=[base, aligned, offered],
                                    api_visibility="private", show_progress="hidden")

    def on_load():
        b, a = default_sources(app.store)
        fresh = comparison.source_choices(app.store)
        return gr.update(choices=fresh, value=b), gr.update(choices=fresh, value=a), [b, a]

    ctx.blocks.load(on_load, outputs=[base, aligned, offered], api_visibility="private", show_progress="hidden")
