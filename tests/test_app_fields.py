"""The one field table (app.fields): every form's optional number is a text box that can be empty (Gradio's
number box shows and sends 0 for empty), every typed number or list goes through one parser, and every config
field of every form has a kind, a widget and a label beside its help."""
from __future__ import annotations

import gradio as gr
import pytest

from app import fields as F
from app import form, widgets
from app.tabs import diagnose, embeddings, evaluate
from core.errors import ConfigError


def all_tables() -> dict[str, list[F.Field]]:
    return {"launch": form.FIELDS, "evaluate": list(evaluate.field_table().values()),
            "embeddings": list(embeddings.field_table().values()), "diagnose": list(diagnose.field_table().values())}


def test_every_optional_number_is_a_box_that_can_be_empty():
    optional = [(tab, f) for tab, table in all_tables().items() for f in table
                if f.kind in ("optional_int", "optional_float")]
    assert {f.key for _, f in optional} >= {"image_size", "data_subset", "reference_count"}
    for tab, f in optional:
        assert F.KINDS[f.kind].widget == "Textbox", (tab, f.key)
        assert F.parse(f, "") is None and F.parse(f, None) is None and F.show(f, None) == ""
        box = widgets.widget(f, f"t-{f.key}")
        assert isinstance(box, gr.Textbox) and box.value == "" and box.placeholder.startswith("empty")
    image_size = evaluate.field_table()["image_size"]
    assert widgets.widget(image_size, "x").placeholder == "empty = native size"
    assert F.parse(image_size, " 256 ") == 256
    with pytest.raises(ConfigError, match=r"^image_size: must be >= 8, got '0'"):
        F.parse(image_size, "0")
    with pytest.raises(ConfigError, match="^image_size: expected a whole number"):
        F.parse(image_size, "2.5")


def test_required_numbers_are_number_boxes_and_refuse_empty():
    for tab, table in all_tables().items():
        for f in table:
            if f.kind in ("int", "float"):
                assert F.KINDS[f.kind].widget == "Number", (tab, f.key)
                if f.blank is F.REQUIRED:
                    with pytest.raises(ConfigError, match=f"^{f.key}: expected a"):
                        F.parse(f, "")


def test_one_list_parser_reads_commas_and_spaces_and_names_the_field():
    assert F.numbers("seeds", "0, 1 2;3", whole=True) == [0, 1, 2, 3]
    assert F.numbers("cfg_scales", [1, 1.5], whole=False) == [1.0, 1.5]
    with pytest.raises(ConfigError, match=r"^seeds: expected a whole number, got '1\.5'"):
        F.numbers("seeds", "0 1.5", whole=True)
    with pytest.raises(ConfigError, match="^seeds: each value once"):
        F.numbers("seeds", "1, 1", whole=True, distinct=True)
    with pytest.raises(ConfigError, match="^seeds: give one or more whole numbers"):
        F.numbers("seeds", " ", whole=True)
    table = diagnose.field_table()
    assert F.show(table["cfg_scales"], [1.0, 1.5, 2.5]) == "1, 1.5, 2.5"
    assert F.parse(table["cfg_scales"], F.show(table["cfg_scales"], [1.0, 1.5, 2.5])) == [1.0, 1.5, 2.5]


def test_every_field_has_a_widget_and_labels_sit_with_the_help():
    from core import configmeta
    from core.vapi.config import VapiConfig

    for tab, table in all_tables().items():
        for f in table:
            assert f.kind in F.KINDS, (tab, f.key)
    spec = configmeta.spec_of(VapiConfig, "learning_rate")
    assert spec.label == "learning rate" and form.label_of("learning_rate") == "learning rate (learning_rate)"
    # every value the Launch form shows for a preset reads back as the preset's own value: nothing differs
    for preset in ("demo-c2i", "demo-t2i"):
        plan = form.build_plan(preset, form.preset_form_values(preset), ["cpu"], preset)
        assert set(plan.overrides) <= {"device"}, plan.overrides


def test_compare_lists_follow_the_newest_checkpoint_unless_the_user_picked_one():
    from app.tabs.compare import refreshed_sources

    known = {"preset:demo-c2i", "r@16", "r@24", "old@5"}
    offered, newest = ["preset:demo-c2i", "r@16"], ("preset:demo-c2i", "r@24")
    # the page offered step 16 while the run trained; after it finished at 24 a refresh moves to 24
    assert refreshed_sources("preset:demo-c2i", "r@16", offered, newest, known) == newest
    # a checkpoint the user picked stays
    assert refreshed_sources("preset:demo-c2i", "old@5", offered, newest, known) == ("preset:demo-c2i", "old@5")
    # a source that is gone moves to the default; one model against itself too
    assert refreshed_sources("preset:demo-c2i", "gone@1", offered, newest, known)[1] == "r@24"
    assert refreshed_sources("preset:demo-c2i", "preset:demo-c2i", None, newest, known) == newest


def test_compare_for_prompts_offers_no_teacher_forced_view_and_no_per_class_numbers(tiny_demo):
    from app.tabs.compare import condition_inputs, view_choices

    assert [v for _, v in view_choices("t2i")] == ["prefix", "free"]
    assert [v for _, v in view_choices("c2i")] == ["teacher-forced", "prefix", "free"]

    class App:  # condition_inputs reads only the store of the app, for a run checkpoint
        store = None

    *_, samples, view = condition_inputs(App(), "preset:demo-t2i", [], "", "teacher-forced")
    assert samples["visible"] is False and view["value"] == "prefix"
    assert [v for _, v in view["choices"]] == ["prefix", "free"]
    *_, samples, view = condition_inputs(App(), "preset:demo-c2i", [], "", "free")
    assert samples["visible"] is True and view["value"] == "free"


def test_a_float_box_steps_by_its_defaults_order_of_magnitude():
    lr = widgets.widget(form.BY_NAME["learning_rate"], "lr")
    assert lr.step == pytest.approx(1e-6)  # the arrow used to step by 1: 1e-05 -> 1
    assert widgets.widget(form.BY_NAME["xi"], "xi").step == pytest.approx(0.01)
    assert widgets.widget(form.BY_NAME["beta"], "beta").step == pytest.approx(0.1)
    assert widgets.widget(form.BY_NAME["num_generations"], "g").step == 1


def test_the_root_error_names_the_flag(tmp_path):
    from app import safety

    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ConfigError, match="--data-root DIR"):
        safety.confine(str(tmp_path / "elsewhere"), [tmp_path / "root"], "data_path", kind="dir")
