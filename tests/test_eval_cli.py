"""Evaluation jobs and `python -m core eval ...` on the tiny random demo: a job through the worker,
stop and resume, the summary per checkpoint, weights by run id, the embeddings/fid/clip commands,
and missing weights reported before any sampling."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core import checkpoints
from core.cli import main
from core.errors import ConfigError, DataError, MissingWeightsError
from core.eval import configs, eval_job, inputs, job_io, shift_job, summary
from core.eval.cli import add_eval_command, register
from core.runs import FINISHED, RUNNING, Launcher, RunStore, kinds
from tests.helpers import tiny_gpt, train_tiny_evaluator

SAMPLES, BATCH = 12, 4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # Tiny models, many small ops: a second OpenMP thread only waits on a shared 2-core machine.
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for worker subprocesses
    yield


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    """A demo evaluator for 16 px images, trained with the module's own function at a tiny budget."""
    return str(train_tiny_evaluator(tmp_path_factory.mktemp("evaluator"), steps=3))


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs")


def _aligned_run(store: RunStore, step: int = 5, seed: int = 1) -> str:
    """A finished training run of the store with one checkpoint of other (random) weights."""
    run = store.create_run("align", {"entry": "core.vapi.trainer:run_worker"}, "cpu", step)
    store.set_status(run.id, RUNNING)
    folder = run.run_dir / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True)
    torch.save({"model": tiny_gpt(seed=seed).state_dict()}, folder / "model.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    store.set_status(run.id, FINISHED)
    return run.id


def _config(evaluator, **change) -> configs.EvalConfig:
    return configs.EvalConfig(**{**dict(num_samples=SAMPLES, batch_size=BATCH, extractor="demo", extractor_path=evaluator,
                                     reference="shapes", device="cpu", num_seeds=1), **change})


def _finite(metrics: dict, names=("fid", "is_mean", "is_std", "precision", "recall")) -> bool:
    return all(name in metrics and math.isfinite(metrics[name]) for name in names)


def test_eval_jobs_run_through_the_worker_and_the_summary_puts_base_beside_each_checkpoint(
        tiny_demo, evaluator, store):
    from core.runs import worker

    aligned_id = _aligned_run(store)
    launcher = Launcher(store)
    base = kinds.submit(launcher, "eval", _config(evaluator, label="base"), "cpu")  # a detached worker process
    done = launcher.wait(base.id, timeout=120)
    assert done.status == FINISHED, store.log_tail(base.id, 40)
    assert (done.step, done.total_steps) == (SAMPLES, SAMPLES)
    results = json.loads((done.run_dir / job_io.RESULTS_FILE).read_text())
    assert _finite(results["metrics"]) and results["checkpoint"] == "base"
    assert store.latest_metrics(base.id)["fid"] == results["metrics"]["fid"]
    assert (done.run_dir / eval_job.SAMPLING_DIR / "seed-0" / "samples.npz").is_file()
    assert "[eval] sampling: 12/12 samples" in store.log_tail(base.id, 40)

    # the aligned checkpoint named by run id and step, run by the worker in this process
    aligned = store.create_run("eval aligned", {"entry": kinds.EVAL_ENTRY,
                                                **_config(evaluator, weights=f"{aligned_id[-8:]}@5").to_dict()},
                               "cpu", SAMPLES)
    assert worker.main(["--run-dir", str(aligned.run_dir)]) == 0
    assert store.get(aligned.id).status == FINISHED

    rows = summary.evaluation_summary(store.runs_dir)
    assert [r["checkpoint"] for r in rows] == ["base", f"{aligned_id}@5"]
    base_row, aligned_row = rows
    assert base_row["base_metrics"] is None and (aligned_row["run_id"], aligned_row["step"]) == (aligned_id, 5)
    assert aligned_row["base_metrics"] == base_row["metrics"]
    assert aligned_row["delta"]["fid"] == pytest.approx(aligned_row["metrics"]["fid"] - base_row["metrics"]["fid"])
    assert aligned_row["metrics"]["fid"] != base_row["metrics"]["fid"]  # other weights, other samples
    table = summary.summary_table(rows)
    assert f"{aligned_id}@5" in table and f"({base_row['metrics']['fid']:.4g})" in table


def test_a_stopped_eval_job_resumes_from_its_samples(tiny_demo, evaluator, tmp_path):
    class Recorder:
        def __init__(self, stop_after: int | None):
            self.stop_after, self.progress, self.metrics = stop_after, [], []

        def set_progress(self, step, total=None):
            self.progress.append((step, total))

        def log_metrics(self, step, metrics):
            self.metrics.append((step, metrics))

        def should_stop(self):
            return self.stop_after is not None and self.progress[-1][0] >= self.stop_after

    config = {"entry": kinds.EVAL_ENTRY, **_config(evaluator).to_dict()}
    first = Recorder(stop_after=BATCH)
    eval_job.run_eval(config, tmp_path, first, resume=False)
    assert not (tmp_path / job_io.RESULTS_FILE).exists() and first.metrics == []
    stopped_at = first.progress[-1][0]
    assert BATCH <= stopped_at < SAMPLES  # a block in flight when the stop came is still written
    second = Recorder(stop_after=None)
    eval_job.run_eval(config, tmp_path, second, resume=True)
    assert second.progress[0] == (stopped_at, SAMPLES) and second.progress[-1] == (SAMPLES, SAMPLES)
    assert [step for step, _ in second.metrics] == [SAMPLES] and _finite(second.metrics[0][1])


def test_missing_inception_weights_fail_before_any_sampling(tiny_demo, tmp_path, monkeypatch, capsys, store):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "fid"
    rc = main(["eval", "fid", "--reference", "shapes", "--num-samples", "20", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "weights-inception-2015-12-05-6726825d.pth not found" in err and "curl" in err
    assert not out.exists()
    with pytest.raises(MissingWeightsError, match="Inception-v3 FID weights"):
        kinds.submit(Launcher(store), "eval", configs.EvalConfig(num_samples=20, reference="shapes", device="cpu"), "cpu")
    assert store.list_runs() == []


def test_inception_metrics_go_through_torch_fidelity_with_a_shapes_reference(tiny_demo, tmp_path):
    """Random Inception weights (the real file is not on CI): the route, not the numbers. FID is left
    out: torch-fidelity's 2048 x 2048 eigendecomposition alone takes ~20 s on two cores."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    weights = tmp_path / "random-inception.pth"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "inception"
    assert main(["eval", "fid", "--num-samples", "10", "--batch-size", "5", "--reference", "shapes",
                 "--extractor-path", str(weights), "--metrics", "isc", "prc", "--device", "cpu", "--num-seeds", "1",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert _finite(results["metrics"], ("is_mean", "is_std", "precision", "recall"))
    assert results["setting"]["extractor"] == "inception" and "fid" not in results["metrics"]


def test_eval_config_errors_name_the_field(tiny_demo):
    for change, name in [({"metrics": ["fid", "kid"]}, "metrics"), ({"reference": None}, "reference"),
                         ({"extractor": "clip", "metrics": ["isc"]}, "metrics"), ({"num_samples": 0}, "num_samples"),
                         ({"cfg_scale": 0.0}, "cfg_scale"), ({"classes": ["no such class"]}, "classes"),
                         ({"model": "gpt-9"}, "model"), ({"clip_template": "a photo"}, "clip_template")]:
        with pytest.raises(ConfigError, match=f"^{name}:"):
            configs.EvalConfig(**{**dict(reference="shapes"), **change})
    with pytest.raises(ConfigError, match="^steps:"):
        configs.EvalConfig.from_dict({"entry": kinds.EVAL_ENTRY, "steps": 3})
    with pytest.raises(ConfigError, match="^reference: 'shapes:test'"):
        inputs.reference_input("shapes:test", 16, 4)


def test_weights_are_found_by_file_checkpoint_run_folder_and_run_id(tiny_demo, store, tmp_path):
    run_id = _aligned_run(store, step=5)
    run_dir = store.runs_dir / run_id
    later = run_dir / "checkpoints" / "step-000009"
    later.mkdir()
    (later / "tokenizer.pt").write_bytes(b"")  # a decoder-baseline checkpoint
    (later / "trainer_state.json").write_text('{"step": 9}')
    model = str(run_dir / "checkpoints" / "step-000005" / "model.pt")
    assert checkpoints.resolve_weights(None) == checkpoints.WeightsRef() and checkpoints.resolve_weights("base").checkpoint == "base"
    assert checkpoints.resolve_weights(model) == checkpoints.WeightsRef(model, run_id, 5)
    assert checkpoints.resolve_weights(run_dir / "checkpoints" / "step-000005").checkpoint == f"{run_id}@5"
    assert checkpoints.resolve_weights(f"{run_id}@5", store.runs_dir).path == model
    with pytest.raises(ConfigError, match="^weights: .*decoder baseline"):
        checkpoints.resolve_weights(run_dir)  # the last checkpoint holds a tokenizer
    with pytest.raises(ConfigError, match="^weights: .*no checkpoint at step 7; it has steps 5, 9"):
        checkpoints.resolve_weights(f"{run_id}@7", store.runs_dir)
    with pytest.raises(ConfigError, match="^weights: 'nothing-like-this'"):
        checkpoints.resolve_weights("nothing-like-this", store.runs_dir)
    with pytest.raises(ConfigError, match="no run store"):
        checkpoints.resolve_weights("abc", tmp_path / "elsewhere")


def test_real_images_and_references_from_folders_npz_and_prompt_files(tiny_demo, tmp_path):
    from PIL import Image

    from core.eval.reference import write_npz

    rng = np.random.default_rng(0)
    for c, name in enumerate(["n001", "n002", "n003"]):
        (tmp_path / "real" / name).mkdir(parents=True)
        for j in range(5):
            Image.fromarray(rng.integers(0, 256, (20 + j, 24, 3), dtype=np.uint8)).save(tmp_path / "real" / name / f"{j}.png")
    images, labels = inputs.real_images(str(tmp_path / "real"), [0, 2], 4, 16)
    assert images.shape == (8, 3, 16, 16) and labels.tolist() == [0] * 4 + [2] * 4
    with pytest.raises(DataError, match="class 1 has 5 images, fewer than per_class=6"):
        inputs.real_images(str(tmp_path / "real"), [1], 6, 16)
    shapes_x, shapes_y = inputs.real_images("shapes:val", [3, 7], 2, 16)
    assert shapes_x.shape == (4, 3, 16, 16) and shapes_y.tolist() == [3, 7, 3, 7]  # scenes 3, 7, 13, 17: index order

    folder = inputs.reference_input(str(tmp_path / "real"), 16, 6)
    assert len(folder) == 6 and folder[0].dtype == torch.uint8 and folder[0].shape == (3, 16, 16)
    (tmp_path / "real" / "n001" / "9.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="9.png: unreadable image"):
        inputs.reference_input(str(tmp_path / "real"), 16, None)[5]
    npz = write_npz(tmp_path / "ref.npz", np.zeros((4, 16, 16, 3), np.uint8))
    assert inputs.reference_input(str(npz), 16, 2) == npz
    assert len(inputs.reference_input("shapes", 16, 3)) == 3

    (tmp_path / "p.txt").write_text("a red circle\n\n two stars \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle"}\n{"caption": "two stars"}\n')
    assert configs.read_prompts(tmp_path / "p.txt") == configs.read_prompts(tmp_path / "p.jsonl") == ["a red circle", "two stars"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{"label": 3}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        configs.read_prompts(tmp_path / "bad.jsonl")


def test_cli_fid_writes_json_and_a_second_call_only_measures(tiny_demo, evaluator, tmp_path, capsys):
    out = tmp_path / "fid"
    argv = ["eval", "fid", "--num-samples", "10", "--batch-size", "4", "--reference", "shapes", "--extractor", "demo",
            "--extractor-path", evaluator, "--device", "cpu", "--classes", "circle", "2", "--num-seeds", "2",
            "--out", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    assert _finite(first["metrics"]) and first["setting"]["classes"] == [0, 2]
    assert "fid" in capsys.readouterr().out
    assert len(first["spread"]["fid"]["values"]) == 2 and first["metrics"]["fid"] == first["spread"]["fid"]["mean"]
    stamps = [(out / "sampling" / f"seed-{s}" / name).stat().st_mtime_ns for s in (0, 1)
              for name in ("samples/000000.png", "samples.npz")]
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["metrics"] == first["metrics"]
    assert [(out / "sampling" / f"seed-{s}" / name).stat().st_mtime_ns for s in (0, 1)
            for name in ("samples/000000.png", "samples.npz")] == stamps
    assert main([*argv[:-2], "--cfg-scale", "2", "--out", str(out)]) == 2  # another setting, same folder
    assert "cfg_scale was 1.0, now 2.0" in capsys.readouterr().err
    assert len(summary.evaluation_summary(tmp_path / "no-runs", [out])) == 1


def test_two_processes_under_torch_distributed_share_the_samples_of_one(tiny_demo, evaluator, tmp_path):
    from core.runs.launcher import free_port

    common = ["eval", "fid", "--num-samples", "10", "--batch-size", "2", "--reference", "shapes", "--extractor",
              "demo", "--extractor-path", evaluator, "--metrics", "fid", "--num-seeds", "2"]
    assert main([*common, "--device", "cpu", "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "-m", "core", *common, "--out", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[eval] demo-c2i (base)") == 2  # both ranks sampled ...
    assert done.stdout.count("[eval] fid ") == 1 and done.stdout.count("results: ") == 1  # ... rank 0 measured
    one, two = (np.load(tmp_path / name / "sampling" / "seed-1" / "samples.npz") for name in ("one", "two"))
    assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])


def test_cli_embeddings_draws_the_three_sets_with_finite_numbers(tiny_demo, evaluator, store, tmp_path, capsys):
    from core.eval.embeddings import SET_NAMES, EmbeddingShift, scatter_figure

    aligned = _aligned_run(store)
    out = tmp_path / "emb"
    rc = main(["eval", "embeddings", "--aligned-weights", aligned, "--runs-dir", str(store.runs_dir),
               "--classes", "0", "square", "2", "--per-class", "6", "--batch-size", "6", "--extractor-path", evaluator,
               "--projection", "tsne", "--device", "cpu", "--num-seeds", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["per_class"]) == {"0", "1", "2"} and results["counts"] == {"real": 18, "base": 18, "aligned": 18}
    for cells in [results["overall"], *results["per_class"].values()]:
        for model in ("base", "aligned"):
            assert all(math.isfinite(cells[model][k]) for k in ("frechet", "precision", "recall"))
    assert results["overall"]["base"]["frechet"] != results["overall"]["aligned"]["frechet"]
    shift = EmbeddingShift.from_json(out / "embeddings.json")
    traces = [t for t in scatter_figure(shift, "tsne").data if t.type == "scatter"]
    assert [t.name for t in traces if t.legendgroup != "labels"] == list(SET_NAMES)  # one marker trace per set
    assert [t.name for t in traces if t.legendgroup == "labels"] == ["0", "1", "2"]  # a legend entry per class
    assert {p.name for p in (out / "figures").iterdir()} == {
        "tsne_scatter.html", "tsne_kde.html", "distance_frechet.html", "distance_precision.html",
        "distance_recall.html", "plotly.min.js"}
    html = (out / "figures" / "tsne_scatter.html").read_text()
    assert all(f'"name":"{s}"' in html for s in SET_NAMES) and 'src="plotly.min.js"' in html
    assert "1 square" in printed and "overall" in printed
    base = np.load(out / "base" / "seed-0" / "samples.npz")["arr_1"]
    assert base.tolist() == [0, 1, 2] * 6
    with pytest.raises(ConfigError, match="^classes: class 0 is listed more than once"):
        configs.EmbeddingConfig(aligned_weights=aligned, classes=["0", "circle"]).class_ids()

    # the same analysis as a background run of the run manager
    config = configs.EmbeddingConfig(aligned_weights=f"{aligned}@5", classes=[4, 5], per_class=4, batch_size=4,
                                  extractor_path=evaluator, projections=["tsne"], device="cpu", num_seeds=1)
    launcher = Launcher(store)
    run = launcher.wait(kinds.submit(launcher, "embeddings", config, "cpu").id, timeout=120)
    assert run.status == FINISHED and run.step == run.total_steps == 16, store.log_tail(run.id, 40)
    logged = store.latest_metrics(run.id)
    job = json.loads((run.run_dir / "results.json").read_text())
    assert logged["aligned_frechet"] == job["overall"]["aligned"]["frechet"] and set(job["per_class"]) == {"4", "5"}
    assert (run.run_dir / "figures" / "tsne_scatter.html").is_file()


def _tiny_clip_folder(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "a", "photo", "of", "circle", "square", "triangle"]
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8, pad_token_id=0, bos_token_id=1,
                         eos_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=12))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    return str(folder)


def test_cli_clip_scores_class_samples_against_their_texts(tiny_demo, tmp_path, capsys):
    from core.eval.extractors import build_extractor, extract

    clip_dir = _tiny_clip_folder(tmp_path / "clip")
    out = tmp_path / "clip-eval"
    rc = main(["eval", "clip", "--classes", "circle", "square", "--images-per-prompt", "3", "--batch-size", "4",
               "--clip-model", clip_dir, "--device", "cpu", "--out", str(out)])
    assert rc == 0 and "CLIP score (100 x cosine" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["clip_per_text"]) == {"a photo of a circle", "a photo of a square"}
    clip = build_extractor("clip", name_or_path=clip_dir)
    npz = out / "sampling" / "seed-0" / "samples.npz"  # the first of the 3 default seeds
    images = extract(clip, npz).features
    texts = clip.text_features(["a photo of a circle", "a photo of a square"])
    labels = np.load(npz)["arr_1"]  # class 0, 1, 0, 1, ...
    expected = 100 * torch.nn.functional.cosine_similarity(images, texts[torch.as_tensor(labels)], dim=-1)
    values = results["spread"]["clip_score"]["values"]
    assert len(values) == 3 and values[0] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert results["metrics"]["clip_score"] == pytest.approx(float(np.mean(values)), rel=1e-9)
    assert -100 <= results["metrics"]["clip_score"] <= 100


def test_geneval_export_and_prompts_refuse_class_conditional_models(tiny_demo, tmp_path, capsys):
    assert main(["eval", "geneval-export", "--model", "demo-c2i", "--out", str(tmp_path / "g")]) == 2
    assert "demo-c2i is class-conditional; GenEval needs a text-to-image preset" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert main(["eval", "clip", "--prompts", str(prompts), "--out", str(tmp_path / "c")]) == 2
    assert "prompts: demo-c2i is class-conditional" in capsys.readouterr().err


def test_every_eval_command_has_help_and_other_modules_can_add_commands(capsys):
    for command in ("fid", "embeddings", "geneval-export", "clip", "summary"):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", command, "--help"])
        assert exit_info.value.code == 0 and f"usage: python -m core eval {command}" in capsys.readouterr().out

    def configure(parser):
        parser.add_argument("--steps", type=int, default=1)
        parser.set_defaults(func=lambda args: args.steps)

    parser = argparse.ArgumentParser(prog="python -m core")
    sub = parser.add_subparsers(dest="command")
    add_eval_command(sub, "demo", "before/after report of the demo", configure)  # before this module's ...
    register(sub)  # ... and this module's commands join the same `eval` table
    args = parser.parse_args(["eval", "demo", "--steps", "3"])
    assert args.func(args) == 3 and parser.parse_args(["eval", "summary"]).func.__name__ == "cmd_summary"
