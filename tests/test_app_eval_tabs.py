"""The Evaluate and Embeddings tabs through gradio_client against create_app(...).launch() on the tiny demo.

A demo evaluator for 16 px images is trained here (20 steps) and saved where the demo's lives; an
"aligned" run has one checkpoint of other random weights. The Evaluate endpoint queues the checkpoint
and the base model under the same setting as background jobs; both finish and the results table puts
them side by side with the difference, FD named by its feature space. The Embeddings endpoint queues a
comparison whose figures (real, base, aligned in their fixed colours) and finite numbers come back
through the page timer's endpoint, and a fresh page reopens it. Bad inputs are rejected with the input
named, the error under that input, and no job created.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gradio_client import Client

from app.tabs import embeddings, evaluate
from core.eval.embeddings import SET_COLORS, SET_NAMES
from core.eval.verdict import change_text, mean_std
from core.runs.store import FINISHED, RUNNING
from tests.helpers import served_app, tiny_gpt, train_tiny_evaluator

SKIPPED = {"__type__": "update"}  # an output the handler left unchanged
TIMEOUT_S = 150.0  # worker start, sampling and metrics on a loaded 2-core machine
STEP = 5
EVAL = dict(num_samples=12, batch_size=4, image_size="", metrics=["fid", "isc", "prc"], extractor="demo",
            reference_kind="shapes", devices=["cpu"], num_seeds=2)
EMB = dict(step=STEP, classes=["circle", "square", 2], per_class=6, batch_size=6, projections=["tsne"], devices=["cpu"],
           num_seeds=2)


@pytest.fixture(scope="module")
def evaluator_file(tmp_path_factory):
    """A demo evaluator for the tiny demo's 16 px images, trained with the module's own function."""
    return train_tiny_evaluator(tmp_path_factory.mktemp("evaluator"), steps=20)


def aligned_run(store) -> str:
    """A finished demo training run with one checkpoint (other random weights than the base)."""
    from core.runs.kinds import TRAIN_ENTRY as ENTRY

    run = store.create_run("align", {"entry": ENTRY, "model": "demo-c2i"}, "cpu", STEP)
    store.set_status(run.id, RUNNING)
    folder = run.run_dir / "checkpoints" / f"step-{STEP:06d}"
    folder.mkdir(parents=True)
    torch.save({"model": tiny_gpt(seed=1).state_dict()}, folder / "model.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"step": STEP}))
    store.set_status(run.id, FINISHED)
    return run.id


def finished_job(store, name: str, cfg, entry: str, work) -> str:
    """A finished job's run folder (what the worker of an eval / embeddings job leaves), computed in this process by
    `work(cfg, run_dir, runs_dir=..., log=...)` (the job's own function)."""
    run = store.create_run(name, {**cfg.to_dict(), "entry": entry}, "cpu", cfg.total_samples)
    store.set_status(run.id, RUNNING)
    assert work(cfg, run.run_dir, runs_dir=store.runs_dir, log=lambda *a: None) is not None
    store.set_status(run.id, FINISHED)
    return run.id


def browser_store(tiny_demo, evaluator_file, tmp_path):
    """Chromium present, the evaluator where the demo keeps it, and a runs store in `tmp_path`."""
    from core.runs.store import RunStore
    from tests.test_app_browser import require_chromium

    require_chromium()
    shutil.copy(evaluator_file, tiny_demo / "evaluator.safetensors")  # the demo evaluator's default place
    return RunStore(tmp_path / "runs")


class UI:
    """gradio_client plus outputs by label; `poll` keeps the last value an endpoint sent for each output."""

    def __init__(self, url: str):
        self.client = Client(url, verbose=False)
        self.api = self.client.view_api(return_format="dict", print_info=False)["named_endpoints"]

    def call(self, endpoint: str, *args, **kwargs) -> dict:
        result = self.client.predict(*args, **kwargs, api_name=endpoint)
        result = result if isinstance(result, (list, tuple)) else [result]
        labels = [r["label"] for r in self.api[endpoint]["returns"]]
        assert len(labels) == len(set(labels)) == len(result), labels
        return dict(zip(labels, result))

    def poll(self, endpoint: str, done, what: str, *args, timeout: float = TIMEOUT_S) -> dict:
        seen: dict = {}
        deadline = time.monotonic() + timeout
        while True:
            for label, value in self.call(endpoint, *args).items():
                if value != SKIPPED:
                    seen[label] = value
            if done(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {seen}")
            time.sleep(0.5)


def table_rows(value) -> list[list]:
    """A Dataframe output's rows (gradio_client returns {"headers", "data", ...})."""
    return value["data"] if isinstance(value, dict) else value


def run_kinds(ui: UI) -> dict[str, str]:
    """Run id -> the Runs tab's "kind" column."""
    rows = table_dicts(ui.call("/runs_refresh", None, 0.0, None)["runs (click a row to select it)"])
    return {row["run"]: row["kind"] for row in rows}


def table_dicts(value) -> list[dict]:
    return [dict(zip(value["headers"], row)) for row in value["data"]]


@pytest.fixture
def served(tiny_demo, evaluator_file, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from core.models import registry
    from core.runs.store import RunStore

    shutil.copy(evaluator_file, tiny_demo / "evaluator.safetensors")  # the demo evaluator's default place
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # no CLIP / DINOv2 weights
    monkeypatch.setattr(registry, "hub_reachable", lambda *a, **k: False)  # and offline
    data_root = tmp_path / "data"
    data_root.mkdir()
    aligned = aligned_run(RunStore(tmp_path / "runs"))
    with served_app(tmp_path, monkeypatch, [data_root], page_timer_s=0.5) as (app, url):
        yield SimpleNamespace(app=app, url=url, ui=UI(url), store=app.ctx.store, aligned=aligned, data_root=data_root,
                              tmp=tmp_path)


@pytest.mark.slow
def test_an_evaluation_job_and_its_base_land_side_by_side_in_the_results_table(served):
    from core.eval.summary import evaluation_summary

    ui, store, aligned = served.ui, served.store, served.aligned
    out = ui.call("/launch_eval", source=f"{aligned}@{STEP}", label="aligned", **EVAL)
    status = out["evaluate status"]
    assert status.startswith("✓ **Queued**") and "base model under the same setting" in status, status
    jobs = [r for r in store.list_runs() if r.id != aligned]
    assert len(jobs) == 2 and all(f"`{r.id}`" in status for r in jobs)
    configs = {store.read_config(r.id)["label"]: store.read_config(r.id) for r in jobs}
    assert configs["base"]["weights"] is None and configs["aligned"]["weights"] == f"{aligned}@{STEP}"
    assert configs["aligned"]["reference"] == "shapes" and configs["aligned"]["extractor"] == "demo"

    def finished(seen):
        rows = table_rows(seen.get("results: base vs checkpoint") or {"data": []})
        return any(row[2].startswith(f"{aligned}@{STEP}") and row[4] != "—" for row in rows)

    seen = ui.poll("/eval_refresh", finished, "both jobs and the results table")
    assert all(store.get(r.id).status == FINISHED for r in jobs), [store.log_tail(r.id, 30) for r in jobs]
    job_rows = table_dicts(seen["evaluation jobs (progress = samples written / total)"])
    assert sorted(r["job"] for r in job_rows) == sorted(r.id for r in jobs)
    assert all(r["samples"] == "24/24" and r["status"] == FINISHED for r in job_rows)  # 12 samples x 2 seeds
    assert seen["job progress"].count("✓ **finished**") == 2

    # one line per metric: base and checkpoint as mean ± std over the seeds, the change, its interval and the
    # verdict; FD named by its features
    rows = table_dicts(seen["results: base vs checkpoint"])
    assert [r["metric"] for r in rows] == ["FD (demo evaluator)", "IS (demo evaluator)", "precision (demo evaluator)",
                                           "recall (demo evaluator)"]
    (summary,) = [r for r in evaluation_summary(served.tmp / "runs") if r["checkpoint"] != "base"]
    for row, key in zip(rows, ("fid", "is_mean", "precision", "recall")):
        assert row["model"] == "demo-c2i" and row["checkpoint"] == f"{aligned}@{STEP} [aligned]"
        assert "12 samples" in row["setting"] and "seeds 0–1" in row["setting"] and "vs shapes" in row["setting"]
        base, value = summary["base_metrics"][key], summary["metrics"][key]
        assert math.isfinite(base) and math.isfinite(value)
        b_std, a_std = summary["base_spread"][key]["std"], summary["spread"][key]["std"]
        assert (row["base"], row["checkpoint value"]) == (mean_std(base, b_std), mean_std(value, a_std))
        verdict = summary["verdicts"][key]
        delta, interval = change_text(value - base, verdict["low"], verdict["high"])
        assert row["verdict"] == verdict["verdict"] and row["verdict"] in ("better", "worse", "within noise")
        assert row["Δ (checkpoint − base)"] == delta and row["95% interval of Δ"].startswith(interval + " (")
        assert ("bootstrap" in row["95% interval of Δ"]) == (key != "is_mean")
    assert summary["metrics"]["fid"] != summary["base_metrics"]["fid"]  # other weights, other samples

    # the base now has a result under this setting: a second launch would queue the checkpoint alone
    values = {**{k: None for k in evaluate.KEYS}, "source": f"{aligned}@{STEP}", "with_base": True, "cfg": False,
              "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0, "precision": "fp32", "label": "aligned",
              **EVAL}
    assert evaluate.plan_eval(served.app.ctx, values).base is None
    # the Runs tab lists the jobs with their kind
    assert run_kinds(ui) == {aligned: "train", **{r.id: "eval" for r in jobs}}


@pytest.mark.slow
def test_an_embedding_job_draws_real_base_and_aligned_and_a_fresh_page_reopens_it(served):
    ui, store, aligned = served.ui, served.store, served.aligned
    out = ui.call("/launch_embeddings", run=aligned, **EMB)
    assert out["embeddings status"].startswith("✓ **Queued**"), out["embeddings status"]
    (job,) = [r for r in store.list_runs() if r.id != aligned]
    config = store.read_config(job.id)
    assert config["aligned_weights"] == f"{aligned}@{STEP}" and config["base_weights"] is None
    assert (config["per_class"], config["projections"], config["extractor"]) == (6, ["tsne"], "demo")

    seen = ui.poll("/embeddings_refresh", lambda s: "finished" in s.get("embeddings status", "")
                   or "failed" in s.get("embeddings status", ""), "the embedding job", "tsne", "frechet")
    assert "finished" in seen["embeddings status"], store.log_tail(job.id, 40)
    assert seen["result"]["value"] == job.id

    def check(shown: dict, metric: str) -> list[dict]:
        scatter = json.loads(shown["joint map with KDE contours"]["plot"])
        points = [t for t in scatter["data"] if t["type"] == "scatter" and t.get("legendgroup") != "labels"]
        assert [t["name"] for t in points] == list(SET_NAMES)
        assert all(len(set(t["marker"]["color"])) == 3 for t in points)  # coloured by class, 3 classes
        legend = [t["name"] for t in scatter["data"] if t.get("legendgroup") == "labels"]
        assert legend == ["0 circle", "1 square", "2 triangle"]
        contours = [t for t in scatter["data"] if t["type"] == "contour"]
        assert [t["legendgroup"] for t in contours] == list(SET_NAMES)
        assert [t["colorscale"][0][1] for t in contours] == [SET_COLORS[s] for s in SET_NAMES]
        assert {name for t in points for name in t["text"]} == {"0 circle", "1 square", "2 triangle"}
        kde = json.loads(shown["KDE along each map axis"]["plot"])
        assert {t["name"]: t["line"]["color"] for t in kde["data"]} == SET_COLORS
        bars = json.loads(shown["distance to real, per class"]["plot"])
        assert [t["name"] for t in bars["data"]] == ["base", "aligned"]
        assert bars["data"][0]["x"] == ["overall", "0 circle", "1 square", "2 triangle"]
        assert "<sup>demo evaluator features; bars: mean ± std over the seeds</sup>" in bars["layout"]["title"]["text"]
        spread = [[e is not None for e in t["error_y"]["array"]] for t in bars["data"]]
        # FD: overall and each class over the seeds; precision and recall pool the seeds per class
        assert spread == [[True] * 4] * 2 if metric == "frechet" else [[True, False, False, False]] * 2
        assert ("FD grows as the sample shrinks" in bars["layout"]["title"]["text"]) == (metric == "frechet")
        if metric == "precision":
            assert all(0.0 <= y <= 1.0 for t in bars["data"] for y in t["y"])
        assert "demo evaluator" in shown["about these numbers"] and "not Inception FID" in shown["about these numbers"]
        rows = table_dicts(shown["distances to the real images: base vs aligned"])
        assert [r["class"] for r in rows] == ["overall", "0 circle", "1 square", "2 triangle"]
        for r in rows:
            assert all(math.isfinite(v) for k, v in r.items() if k not in ("class", "Δ FD 95% interval", "FD verdict"))
            assert r["Δ FD (aligned − base)"] == pytest.approx(r["FD aligned"] - r["FD base"], rel=1e-3, abs=1e-3)
            assert r["FD verdict"] in ("better", "worse", "within noise") and r["Δ FD 95% interval"].startswith("[")
        assert "mean ± std over 2 seeds" in shown["about these numbers"]
        return rows

    rows = check(seen, "frechet")
    results = json.loads((job.run_dir / "results.json").read_text())
    assert rows[0]["FD base"] == pytest.approx(results["overall"]["base"]["frechet"], rel=1e-3)
    assert rows[0]["recall aligned"] == pytest.approx(results["overall"]["aligned"]["recall"], rel=1e-3)

    fresh = UI(served.url)  # another page: lists the result and shows it on request
    shown = fresh.call("/open_embeddings", job.id, "tsne", "precision")
    assert shown["embeddings status"] == "" and check(shown, "precision") == rows
    assert job.id in [v for _, v in embeddings.result_choices(store)]
    assert run_kinds(fresh) == {aligned: "train", job.id: "embeddings"}


def bad_paths(tmp: Path, data_root: Path) -> Path:
    outside = tmp / "elsewhere"
    outside.mkdir()
    (outside / "w.pt").write_bytes(b"")
    (data_root / "escape").symlink_to(outside, target_is_directory=True)
    (data_root / "folder").mkdir()
    return outside


def test_bad_inputs_are_rejected_with_the_input_named_and_no_job(served):
    ui, store, aligned = served.ui, served.store, served.aligned
    outside = bad_paths(served.tmp, served.data_root)
    source = f"{aligned}@{STEP}"
    eval_cases = [
        (dict(reference_kind="folder", reference=str(outside)), "reference", "not found inside the allowed roots"),
        (dict(reference_kind="folder", reference="../elsewhere"), "reference", "'..' is not allowed"),
        (dict(reference_kind="folder", reference="escape"), "reference", "not found inside the allowed roots"),
        (dict(reference_kind="npz", reference="folder"), "reference", "is not a file"),
        (dict(classes=["no such class"]), "classes", "no class named"),
        (dict(extractor="inception"), "extractor", "Inception-v3 FID weights"),
        (dict(extractor="dinov2", metrics=["fid"]), "extractor", "hf download facebook/dinov2-base"),
        (dict(metrics=["clip"]), "clip_model", "not in the Hugging Face cache"),
        (dict(extractor_path=str(outside / "w.pt")), "extractor_path", "not found inside the allowed roots"),
        (dict(metrics=["isc"], extractor="clip"), "metrics", "needs class logits"),
        (dict(metrics=[]), "metrics", "at least one"),
        (dict(num_samples=0), "num_samples", ">= 1"),
        (dict(num_samples=2.5), "num_samples", "whole number"),
        (dict(cfg=True, cfg_scale=1.0), "cfg_scale", "above 1"),
        (dict(top_p=1.5), "top_p", "(0, 1]"),
        (dict(image_size=4), "image_size", ">= 8"),
        (dict(image_size=0), "image_size", ">= 8"),  # what a number box sent for "empty": the box is text now
        (dict(devices=[]), "devices", "pick cpu"),
        (dict(source="nope@3"), "source", "not found inside the allowed roots"),
        (dict(source=f"{aligned}@9"), "source", "no checkpoint at step 9"),
        (dict(source="preset:llamagen-c2i-b-256", with_base=False), "source", "c2i_B_256.pt"),
    ]
    for fields, field, why in eval_cases:
        out = ui.call("/launch_eval", **{"source": source, **EVAL, **fields})
        status = out["evaluate status"]
        assert status.startswith("✗") and f"`{field}`" in status and why in status, (fields, status)
        flagged = out[field]
        assert flagged["info"].startswith("⚠") and why in flagged["info"], (fields, flagged)
        assert flagged["elem_classes"] == ["field-error"]
        assert [r.id for r in store.list_runs()] == [aligned], fields
    # the last error was under `source`; the next one moves there, and the fixed input gets its help back
    moved = ui.call("/launch_eval", **{"source": source, **EVAL, "devices": []})
    assert moved["devices"]["info"].startswith("⚠") and moved["classes"] == SKIPPED
    assert moved["source"]["elem_classes"] == [] and moved["source"]["info"] == evaluate.infos(served.app.ctx)["source"]

    emb_cases = [
        (dict(classes=["no such class"]), "classes", "no class named"),
        (dict(classes=["circle", 0]), "classes", "more than once"),
        (dict(extractor="inception"), "extractor", "Inception-v3 FID weights"),
        (dict(extractor="clip"), "extractor", "hf download openai/clip-vit-large-patch14"),
        (dict(real=str(outside)), "real", "not found inside the allowed roots"),
        (dict(real="../elsewhere"), "real", "'..' is not allowed"),
        (dict(real="shapes:test"), "real", "unknown shapes split"),
        (dict(run="nope"), "run", "does not exist"),
        (dict(step=9), "step", "no checkpoint at step 9"),
        (dict(per_class=3), "per_class", "must be an integer > k=3"),
        (dict(projections=[]), "projections", "pick t-SNE"),
        (dict(cfg_scale=0.5), "cfg_scale", ">= 1"),
        (dict(devices=[]), "devices", "pick cpu"),
    ]
    for fields, field, why in emb_cases:
        out = ui.call("/launch_embeddings", **{"run": aligned, **EMB, **fields})
        status = out["embeddings status"]
        assert status.startswith("✗") and f"`{field}`" in status and why in status, (fields, status)
        flagged = out[field]
        assert flagged["info"].startswith("⚠") and flagged["elem_classes"] == ["field-error"], (fields, flagged)
        assert [r.id for r in store.list_runs()] == [aligned], fields
    missing = ui.call("/open_embeddings", aligned, "tsne", "frechet")
    assert missing["embeddings status"].startswith("✗") and "`result`" in missing["embeddings status"]


def test_metric_names_follow_the_feature_space():
    assert evaluate.metric_label("fid", "inception") == "FID (Inception)"
    assert evaluate.metric_label("fid", "demo") == "FD (demo evaluator)"
    assert evaluate.metric_label("fid", "dinov2") == "FD (DINOv2)"
    assert evaluate.metric_label("is_mean", "inception") == "IS (Inception)"
    assert evaluate.metric_label("precision", "clip") == "precision (CLIP)"
    assert evaluate.metric_label("clip_score", None) == "CLIP score"
    from core.eval.verdict import from_seed_values

    fid = from_seed_values("fid", [3.1, 2.9, 3.0], [2.0, 2.1, 1.9]).to_dict()  # clearly lower: better
    recall = from_seed_values("recall", [0.2, 0.3, 0.25], [0.5, 0.1, 0.9]).to_dict()  # inside the spread
    spread = {"fid": {"mean": 2.0, "std": 0.1, "values": [2.0, 2.1, 1.9]},
              "recall": {"mean": 0.5, "std": 0.4, "values": [0.5, 0.1, 0.9]}}
    base_spread = {"fid": {"mean": 3.0, "std": 0.1, "values": [3.1, 2.9, 3.0]},
                   "recall": {"mean": 0.25, "std": 0.05, "values": [0.2, 0.3, 0.25]}}
    row = dict(model="m", setting_key="s", checkpoint="r@5", label="", metrics={"fid": 2.0, "recall": 0.5},
               base_metrics={"fid": 3.0, "recall": 0.25}, delta={"fid": -1.0, "recall": 0.25}, spread=spread,
               base_spread=base_spread, verdicts={"fid": fid, "recall": recall},
               setting=dict(num_samples=10, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, seed=0, classes=None,
                            prompts=None, image_size=None, precision="fp32", reference="/data/ref.npz",
                            extractor="inception", num_seeds=3))
    base = {**row, "checkpoint": "base", "base_metrics": None, "delta": None, "metrics": {"fid": 3.0, "recall": 0.25},
            "spread": base_spread, "verdicts": None}
    setting = "10 samples · cfg 1 · T 1 · seeds 0–2 · vs ref.npz"
    assert evaluate.summary_rows([base, row]) == [
        ["m", setting, "r@5", "FID (Inception)", "3.00 ± 0.10", "2.00 ± 0.10", "-1.00", "[-1.43, -0.57] (t, 3 seeds)",
         "better"],  # the change to its interval's decimal place: half-width 4.303 * 0.1 = 0.43
        ["m", setting, "r@5", "recall (Inception)", "0.250 ± 0.050", "0.50 ± 0.40", "+0.2", "[-0.8, +1.3] (t, 3 seeds)",
         "within noise"]]
    only_base = evaluate.summary_rows([base])
    assert [r[2:6] for r in only_base] == [["base (no checkpoint evaluated yet)", "FID (Inception)", "3.00 ± 0.10", "—"],
                                           ["base (no checkpoint evaluated yet)", "recall (Inception)", "0.250 ± 0.050",
                                            "—"]]


def test_the_sample_size_note_gives_the_sizes_the_job_drew():
    """demo-c2i: classes x per_class per seed, each class per_class. demo-t2i: 10 x per_class captions per seed,
    grouped by a prompt attribute into groups of unequal size (the per-group sizes are pooled over the seeds)."""
    from app.tabs.embeddings import sample_size_note, samples_per_seed

    def results(model, per_class, n_model, groups, seeds=2):
        return {"config": {"model": model, "per_class": per_class}, "seeds": list(range(seeds)),
                "class_names": {str(g): f"g{g}" for g in groups},
                "overall": {"base": {"n_model": n_model}},
                "per_class": {str(g): {"base": {"n_model": n * seeds}} for g, n in groups.items()}}

    c2i = results("demo-c2i", 6, 18, {0: 6, 1: 6, 2: 6})
    assert samples_per_seed(c2i) == 18
    assert "measured on 18 samples per set and seed, each class on 6;" in sample_size_note(c2i)
    t2i = results("demo-t2i", 4, 40, {0: 4, 1: 16, 2: 20})  # e.g. color_by=count: 40 captions, 3 groups
    assert samples_per_seed(t2i) == 40
    assert "measured on 40 samples per set and seed, each group on 4–20;" in sample_size_note(t2i)
