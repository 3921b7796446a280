"""The workbench UI through its own API: gradio_client against create_app(...).launch() on a free port.

A real demo run (tiny random weights from the `tiny_demo` fixture, tiny config) is launched through
the Launch tab's endpoint, followed through the Runs tab's refresh endpoint, stopped, resumed, killed
with SIGKILL (the app's ticker marks it failed), resumed again to the end, and read back by a fresh
app on the same runs dir. Bad inputs are rejected with the field named and no run created. The
Compare endpoint samples pairs with the same seeds.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gradio_client import Client
from PIL import Image

from app import create_app, form, safety
from app.tabs.launch import api_name_of
from core.errors import ConfigError
from core.runs.launcher import free_port
from core.runs.store import STOPPED
from core.vapi.config import parse_overrides, resolve
from tests.helpers import served_app, train_demo_run
from tests import helpers

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {"__type__": "update"}  # an output the handler left unchanged, as gradio_client returns it
TIMEOUT_S = 90.0  # a loaded 2-core machine starts worker processes slowly
# tiny run: 2 images x G 2 per step, about 20-60 ms a step on 2 cores; 160 steps leave time to stop it mid-run
TINY = dict(max_steps=160, per_device_train_batch_size=2, global_batch_size=2, num_generations=2, data_subset=20,
            save_steps=10, preview_steps=60, learning_rate=3e-3, kl_probe_size=2, preview_seeds="0, 1",
            preview_classes=[0, 1, 2])


def wait_for(predicate, what: str, timeout: float = TIMEOUT_S, poll: float = 0.1):
    return helpers.wait_for(predicate, what, timeout, poll=poll)


class UI:
    """gradio_client plus the label -> position maps of the endpoints' outputs."""

    def __init__(self, url: str):
        self.client = Client(url, verbose=False)
        self.api = self.client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        self._shown: dict = {}

    def out(self, endpoint: str, label: str) -> int:
        labels = [r["label"] for r in self.api[endpoint]["returns"]]
        assert labels.count(label) == 1, f"{endpoint}: outputs {labels}"
        return labels.index(label)

    def launch(self, **fields) -> tuple[str, str | None]:
        """Call the Launch tab's endpoint with the form's defaults and `fields`; (status text, new run id)."""
        result = self.client.predict(**{api_name_of(k): v for k, v in fields.items()}, api_name="/launch_run")
        status = result[self.out("/launch_run", "launch status")]
        run = result[self.out("/launch_run", "run")]
        run_id = run.get("value") if isinstance(run, dict) else None
        return status, run_id

    def refresh(self, run_id: str) -> dict:
        """The Runs tab's update for `run_id`, by output label (this client's session keeps the view state)."""
        result = self.client.predict(run_id, 0.0, None, api_name="/runs_refresh")
        return {r["label"]: result[i] for i, r in enumerate(self.api["/runs_refresh"]["returns"])}

    def shown(self, run_id: str) -> dict:
        """What the page shows after the Runs tab's update: an output the handler left as it was (a bare update,
        sent when nothing changed since this session's last refresh) keeps what it showed before, as the browser does."""
        for label, value in self.refresh(run_id).items():
            if not (isinstance(value, dict) and set(value) == {"__type__"}):
                self._shown[label] = value
        return dict(self._shown)


@pytest.fixture
def served(tiny_demo, tmp_path, monkeypatch):
    data_root = tmp_path / "data"
    data_root.mkdir()
    with served_app(tmp_path, monkeypatch, [data_root], page_timer_s=0.5) as (app, url):
        yield SimpleNamespace(app=app, ui=UI(url), store=app.ctx.store, data_root=data_root, tmp=tmp_path)


def latest_step(ui: UI, run_id: str) -> int:
    latest = ui.shown(run_id).get("latest metrics")
    return int(latest["step"]) if isinstance(latest, dict) and "step" in latest else -1


@pytest.mark.slow
def test_run_lifecycle_through_the_ui(served):
    ui, store = served.ui, served.store
    status, run_id = ui.launch(**TINY)
    assert status.startswith("✓") and run_id in status, status
    config = store.read_config(run_id)
    assert (config["num_generations"], config["max_steps"], config["reward_weights"]) == (2, 160, {"mse": 1.0})
    assert config["preview_classes"] == [0, 1, 2] and config["preview_seeds"] == [0, 1]

    # progresses: metric rows arrive through the Runs tab's endpoint
    seen = []
    wait_for(lambda: seen.append(latest_step(ui, run_id)) or seen[-1] >= 2, "the first metric rows")
    assert "**running**" in ui.shown(run_id)["run status"]
    # the worker process sees the test's folders, not this machine's checkpoints/ or torch hub
    worker = store.get(run_id)
    environ = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{worker.worker_pid or worker.pid}/environ").read_bytes()
                   .split(b"\0") if b"=" in kv)
    assert environ[b"VAPI_CHECKPOINTS"] == str(served.tmp / "checkpoints").encode()
    assert environ[b"TORCH_HOME"] == str(served.tmp / "torch").encode()

    # stopped: status stopped and a checkpoint of the step it stopped at
    assert "Stop requested" in ui.client.predict(run_id, api_name="/stop_run")
    wait_for(lambda: store.get(run_id).status == "stopped", "the run to stop")
    stopped = store.get(run_id)
    ckpt = store.last_checkpoint(run_id)
    assert ckpt is not None and ckpt.step == stopped.step and 0 < stopped.step < 160
    assert (ckpt.path / "model.pt").is_file()

    # resumed: continues after the checkpoint
    assert f"resumed from checkpoint step-{ckpt.step:06d}" in ui.client.predict(run_id, api_name="/resume_run")
    wait_for(lambda: latest_step(ui, run_id) > stopped.step + 2, "steps after the resume")
    assert store.read_metrics(run_id)[0]["step"] == 1

    # kill -9 of the worker: the app's ticker finds it gone and marks the run failed
    run = store.get(run_id)
    assert run.status == "running", run
    os.kill(run.worker_pid or run.pid, signal.SIGKILL)
    failed = wait_for(lambda: (r := store.get(run_id)).status == "failed" and r, "the ticker to mark the run failed")
    assert "gone" in failed.message or "exited" in failed.message, failed.message
    assert "**failed**" in ui.shown(run_id)["run status"]

    # resumed again: finishes, with every step's metrics exactly once
    ui.client.predict(run_id, api_name="/resume_run")
    wait_for(lambda: store.get(run_id).status == "finished", "the run to finish", timeout=120)
    steps = [row["step"] for row in store.read_metrics(run_id)]
    assert steps == list(range(1, 161))
    assert [c.step for c in store.checkpoints(run_id)][-1] == 160
    assert latest_step(ui, run_id) == 160

    # a fresh page (new client session) and a restarted UI see the whole run from the store
    served.app.close(verbose=False)
    again = create_app(served.tmp / "runs", data_roots=[served.data_root])
    _, url, _ = again.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        fresh = UI(url)
        view = fresh.refresh(run_id)
        assert view["latest metrics"]["step"] == 160
        grids = view["sample grids (rows: classes or prompts, columns: seeds; step 0 = base model)"]
        captions = [g["caption"] for g in grids]
        assert captions[0].startswith("base model") and any(c.startswith("step 160") for c in captions)
        board = view["step × class (or prompt): one row per preview step (base model first), one column per class or prompt"]
        with Image.open(board) as im:  # 4 preview steps (0, 60, 120, 160) x 3 classes of 96 px tiles
            assert im.width > 3 * 96 and im.height > 4 * 96
        # delete asks first, then removes the run and its folder
        shown = fresh.client.predict(run_id, api_name="/ask_delete")
        assert "cannot be undone" in shown[0]
        assert store.get(run_id).status == "finished"
        fresh.client.predict(run_id, api_name="/delete_run")
        assert store.list_runs() == [] and not (served.tmp / "runs" / run_id).exists()
    finally:
        again.close(verbose=False)


def test_refresh_reads_only_new_metric_rows(served, monkeypatch):
    store = served.store
    run = store.create_run("external", {"entry": "core.vapi.trainer:run_worker"}, "cpu", 50)
    store.set_status(run.id, STOPPED)  # cancelled: nothing starts it; the test writes its metrics
    calls = []
    real = store.read_metrics

    def spy(run_id, after_step=-1):
        if run_id == run.id:
            calls.append(after_step)
        return real(run_id, after_step)

    monkeypatch.setattr(store, "read_metrics", spy)
    for step in (1, 2, 3):
        store.append_metrics(run.id, step, {"reward_mean": -1.0 / step, "reward_std": 0.1, "loss_pg": 0.5})
    view = served.ui.refresh(run.id)
    assert view["latest metrics"]["step"] == 3 and calls[-1] == -1
    plot = json.loads(view["training curves"]["plot"])
    reward = [t for t in plot["data"] if t.get("name") == "reward_mean"][0]
    assert reward["x"] == [1, 2, 3] and reward["y"] == pytest.approx([-1.0, -0.5, -1 / 3])
    store.append_metrics(run.id, 4, {"reward_mean": -0.2, "reward_std": 0.1, "loss_pg": 0.4})
    view = served.ui.refresh(run.id)
    assert view["latest metrics"]["step"] == 4 and calls[-1] == 3  # only the row after step 3 was read
    plot = json.loads(view["training curves"]["plot"])
    reward = [t for t in plot["data"] if t.get("name") == "reward_mean"][0]
    assert reward["x"] == [1, 2, 3, 4]
    view = served.ui.refresh(run.id)  # nothing new: nothing re-sent (gr.skip() reaches the client as a bare update)
    assert calls[-1] == 4
    assert view["latest metrics"] == SKIPPED and view["training curves"] == SKIPPED


def bad_cases(tmp: Path, data_root: Path, runs_dir: Path) -> list[tuple[dict, str]]:
    outside = tmp / "elsewhere"
    outside.mkdir()
    (data_root / "escape").symlink_to(outside, target_is_directory=True)
    (data_root / "empty").mkdir()
    (outside / "w.pt").write_bytes(b"")
    return [
        (dict(beta=-1), "beta"),
        (dict(num_generations=1), "num_generations"),
        (dict(learning_rate=-1e-3), "learning_rate"),
        (dict(max_steps=0), "max_steps"),
        (dict(xi=1.5), "xi"),
        (dict(temperature=0), "temperature"),
        (dict(epsilon=0), "epsilon"),
        (dict(advantage_clip=-1), "advantage_clip"),
        (dict(cond_drop_prob=1.0), "cond_drop_prob"),
        (dict(weight_decay=-1), "weight_decay"),
        (dict(adam_beta1=1.5), "adam_beta1"),
        (dict(max_grad_norm=0), "max_grad_norm"),
        (dict(warmup_steps=500), "warmup_steps"),
        (dict(global_batch_size=3), "global_batch_size"),
        (dict(per_device_train_batch_size=0), "per_device_train_batch_size"),
        (dict(num_iterations=0), "num_iterations"),
        (dict(reward_chunk_size=0), "reward_chunk_size"),
        (dict(policy_coef=-1), "policy_coef"),
        (dict(kl_probe_size=-1), "kl_probe_size"),
        (dict(save_steps=0), "save_steps"),
        (dict(preview_cfg_scale=0.5), "preview_cfg_scale"),
        (dict(preview_seeds="a, b"), "preview_seeds"),
        (dict(preview_seeds=""), "preview_seeds"),
        (dict(max_steps=2.5), "max_steps"),
        (dict(data_subset=0.5), "data_subset"),
        (dict(data_path="nosuchsplit"), "data_path"),
        (dict(**{"reward_weights.mse": 0}), "reward_weights"),
        (dict(**{"reward_weights.mse": -1}), "reward_weights.mse"),
        (dict(**{"reward_weights.lpips": 1}), "reward_weights.lpips"),  # no VGG backbone offline
        (dict(data="imagefolder", data_path=""), "data_path"),
        (dict(data="imagefolder", data_path=str(outside)), "data_path"),  # absolute, outside the roots
        (dict(data="imagefolder", data_path="../elsewhere"), "data_path"),  # '..'
        (dict(data="imagefolder", data_path="escape"), "data_path"),  # a symlink out of the root
        (dict(data="imagefolder", data_path="empty"), "data_path"),  # inside, but no images
        (dict(data="imagefolder", data_path="empty", model="llamagen-c2i-b-256"), "data_path"),
        (dict(model="llamagen-c2i-b-256"), "data"),  # shapes only fit the demo models
        (dict(init_weights=str(outside / "w.pt")), "init_weights"),  # outside the weight roots
        (dict(init_weights=str(runs_dir / "none.pt")), "init_weights"),  # missing
        (dict(devices=[]), "devices"),
        (dict(name="x" * 200), "name"),
    ]


def test_bad_inputs_are_rejected_with_the_field_and_no_run(served, tmp_path):
    ui, store = served.ui, served.store
    for fields, field in bad_cases(tmp_path, served.data_root, served.tmp / "runs"):
        status, run_id = ui.launch(**{**TINY, **fields})
        assert status.startswith("✗") and f"`{field}`" in status, (fields, status)
        assert run_id is None and store.list_runs() == [], fields
    # a missing published checkpoint: a c2i LlamaGen preset on an ImageNet-layout folder
    folder = served.data_root / "imagenet"
    for cls in ("n01440764", "n01443537"):
        (folder / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), "red").save(folder / cls / "a.png")
    status, _ = ui.launch(**{**TINY, "data": "imagefolder", "data_path": "imagenet", "data_subset": None,
                            "model": "llamagen-c2i-b-256"})
    assert "`model`" in status and "missing weights" in status and "c2i_B_256.pt" in status, status
    # the form's Dropdowns only take their choices: Gradio itself refuses anything else
    with pytest.raises(Exception, match="not in the list of choices|choices"):
        ui.launch(**{**TINY, "method": "sft"})
    # "Check inputs" runs the same checks without launching
    check = ui.client.predict(**{api_name_of(k): v for k, v in {**TINY, "beta": -2}.items()}, api_name="/check_form")
    assert "`beta`" in check[ui.out("/check_form", "launch status")]
    ok = ui.client.predict(**{api_name_of(k): v for k, v in TINY.items()}, api_name="/check_form")
    assert ok[ui.out("/check_form", "launch status")].startswith("✓")
    assert store.list_runs() == []


def test_download_of_missing_weights_fails_fast_offline(served, monkeypatch):
    from tests.helpers import closed_port_endpoint

    hub = closed_port_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", hub)  # the app's hub endpoint refuses connections, as offline
    t0 = time.monotonic()
    text, message = served.ui.client.predict("llamagen-c2i-b-256", api_name="/download_weights")
    took = time.monotonic() - t0
    assert took < 10, f"{took:.1f} s"  # without the reachability check: the hub client's retries, 24 s
    assert "✗ missing" in text and "c2i_B_256.pt" in text
    assert "Download failed" in message and "cannot reach 127.0.0.1" in message and hub in message, message


def make_checkpoint(store, steps: int = 2) -> tuple[str, int]:
    """A real demo run of `steps` steps, trained in this process (test setup, not through the app)."""
    return train_demo_run(store, steps)


def gallery_images(gallery) -> list[tuple[str, np.ndarray]]:
    return [(g["caption"], np.asarray(Image.open(g["image"]).convert("RGB"))) for g in gallery]


def test_compare_pairs_use_the_same_seeds(served):
    from core.imaging import to_uint8
    from core.models.generate import generate_images
    from core.models.load import load_pair

    store, client = served.store, served.ui.client
    run_id, step = make_checkpoint(store)
    aligned = f"{run_id}@{step}"
    status, gallery, zip_path, _, _ = client.predict("preset:demo-c2i", aligned, [0, 3], "", "0, 1", 1.0, 1.0, 0, 1.0,
                                                     "cpu", "free", 2, 0, api_name="/compare")
    assert status.startswith("✓ **free-running: samples of two distributions") and "4 rows" in status, status
    items = gallery_images(gallery)
    assert [c.split(" · ")[0] for c, _ in items] == ["base", "aligned", "|base − aligned|"] * 4
    assert [c.split(" · ")[1:3] for c, _ in items[::3]] == [[name, f"seed {s}"] for name in ("circle", "diamond")
                                                           for s in (0, 1)]
    # each side equals sampling its weights directly with the same (class, seed) list
    cond = torch.tensor([0, 0, 3, 3])
    seeds = [0, 1, 0, 1]
    for side, weights in (("base", None), ("aligned", store.run_dir(run_id) / "checkpoints" / f"step-{step:06d}" / "model.pt")):
        gen, tok = load_pair("demo-c2i", weights)
        expected = to_uint8(generate_images(gen, tok, cond, seeds=seeds))
        got = [img for caption, img in items if caption.startswith(side + " ·")]
        scale = got[0].shape[0] // expected.shape[1]
        for e, g in zip(expected, got):
            assert np.array_equal(e.repeat(scale, 0).repeat(scale, 1), g)
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read("manifest.json"))
    assert sum(n.startswith("base/") for n in names) == 4 and sum(n.startswith("difference/") for n in names) == 4
    assert manifest["seeds"] == [0, 1] and manifest["aligned"] == aligned and manifest["view"] == "free"

    # the same weights on both sides: identical pairs, in every view, and a black difference map
    for view in ("free", "teacher-forced", "prefix"):
        status, gallery, zip_path, _, _ = client.predict(aligned, aligned, [1, 2], "", "5, 6", 1.0, 1.0, 0, 1.0, "cpu",
                                                         view, 3, 0, api_name="/compare")
        assert "4 identical" in status and "differ: 0.0 of 64" in status, (view, status)
        images = gallery_images(gallery)
        width = 4 if view == "teacher-forced" else 3
        for r in range(0, len(images), width):
            row = images[r:r + width]
            assert np.array_equal(row[-3][1], row[-2][1]) and row[-1][1].max() == 0, (view, row[-1][0])

    # teacher-forced rows: the held-out image, then base and aligned with their reward terms
    status, gallery, zip_path, _, rows_out = client.predict("preset:demo-c2i", aligned, [0], "", "0, 1", 1.0, 1.0, 0,
                                                            1.0, "cpu", "teacher-forced", 2, 0, api_name="/compare")
    assert rows_out["label"] == "per row: tokens that differ, reward terms (lower is better)"  # no judge here
    rows_out = rows_out["value"]
    assert rows_out["headers"] == ["row", "tokens that differ", "first difference", "base mse", "aligned mse"]
    assert [r[0] for r in rows_out["data"]] == ["circle · seed 0", "circle · seed 1"]
    items = gallery_images(gallery)
    assert [c.split(" · ")[0] for c, _ in items] == ["ground truth", "base", "aligned", "|base − aligned|"] * 2
    assert all(" mse " in c for c, _ in items[1::4] + items[2::4]), [c for c, _ in items]
    assert "Reward term mse" in status
    from core.demo import shapes

    truth = shapes.render("val", 0, 16).image  # class 0, image 0 of the held-out split
    scale = items[0][1].shape[0] // 16
    assert np.array_equal(items[0][1], truth.repeat(scale, 0).repeat(scale, 1))
    with zipfile.ZipFile(zip_path) as zf:
        rows = json.loads(zf.read("manifest.json"))["rows"]
    assert all(set(r["scores"]["base"]) >= {"mse", "reward"} for r in rows)
    assert all(r["scores"]["base"]["reward"] == -r["scores"]["base"]["mse"] for r in rows)

    # shared prefix: both sides keep the base's first k rows (k x 8 tokens on the tiny demo's 8 x 8 grid)
    _, _, zip_path, _, _ = client.predict("preset:demo-c2i", aligned, [0, 3], "", "0, 1, 2", 1.0, 1.0, 0, 1.0, "cpu",
                                          "prefix", 2, 0, api_name="/compare")
    with zipfile.ZipFile(zip_path) as zf:
        rows = json.loads(zf.read("manifest.json"))["rows"]
    assert all(r["scores"]["first_difference"] is None or r["scores"]["first_difference"] >= 16 for r in rows), rows

    # bad inputs name the field
    for args, field in ((("preset:demo-c2i", aligned, [0], "", "x", 1.0, 1.0, 0, 1.0, "cpu"), "seeds"),
                        (("preset:demo-c2i", "nope@3", [0], "", "0", 1.0, 1.0, 0, 1.0, "cpu"), "aligned"),
                        (("preset:demo-c2i", f"{run_id}@999", [0], "", "0", 1.0, 1.0, 0, 1.0, "cpu"), "aligned"),
                        (("preset:demo-c2i", aligned, [0], "", "0", 0.5, 1.0, 0, 1.0, "cpu"), "cfg_scale"),
                        (("preset:demo-c2i", aligned, [0], "", "0", 1.0, 1.0, 0, 1.5, "cpu"), "top_p"),
                        (("preset:llamagen-c2i-b-256", aligned, [0], "", "0", 1.0, 1.0, 0, 1.0, "cpu"), "base"),
                        (("preset:demo-c2i", aligned, [], "", "0", 1.0, 1.0, 0, 1.0, "cpu"), "classes")):
        status, *_ = client.predict(*args, "free", 2, 0, api_name="/compare")
        assert status.startswith("✗") and f"`{field}`" in status, (args, status)
    status, *_ = client.predict("preset:demo-c2i", aligned, [0], "", "0", 1.0, 1.0, 0, 1.0, "cpu", "prefix", 9, 0,
                                api_name="/compare")
    assert "`prefix_rows`" in status and "between 0 and 8" in status, status


def test_ui_start_marks_runs_whose_worker_died(tiny_demo, tmp_path):
    from core.runs.store import RunStore

    store = RunStore(tmp_path / "runs")
    run = store.create_run("orphan", {"entry": "core.vapi.trainer:run_worker"}, "cpu", 10)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists
    store.set_status(run.id, "running", pid=gone.pid, pid_start=None)
    app = create_app(tmp_path / "runs", data_roots=[tmp_path])
    app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        failed = store.get(run.id)
        assert failed.status == "failed" and f"worker process {gone.pid} is gone" in failed.message
    finally:
        app.close(verbose=False)


# --- the pieces without a server ----------------------------------------------------------------


def test_paths_are_confined_to_the_roots(tmp_path):
    root = tmp_path / "root"
    (root / "ok" / "deep").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "inner-link").symlink_to(root / "ok", target_is_directory=True)
    assert safety.confine("ok", [root], "f", kind="dir") == (root / "ok").resolve()
    assert safety.confine(str(root / "ok" / "deep"), [root], "f", kind="dir") == (root / "ok" / "deep").resolve()
    assert safety.confine("inner-link", [root], "f", kind="dir") == (root / "ok").resolve()
    for text, why in (("ok/../../outside", "'..'"), ("link", "not found inside the allowed roots"),
                      (str(outside), "not found inside the allowed roots"), ("", "empty"),
                      ("absent", "not found inside the allowed roots"), ("/etc", "not found inside the allowed roots")):
        with pytest.raises(ConfigError, match=why) as e:
            safety.confine(text, [root], "data_path", kind="dir")
        assert e.value.field == "data_path"
    with pytest.raises(ConfigError, match="not a file"):
        safety.confine("ok", [root], "init_weights", kind="file")


@pytest.mark.slow
def test_public_bind_needs_auth(tmp_path):
    assert safety.is_loopback("127.0.0.1") and safety.is_loopback("localhost") and safety.is_loopback("::1")
    assert not safety.is_loopback("0.0.0.0")
    app = create_app(tmp_path / "runs", data_roots=[tmp_path])
    with pytest.raises(safety.UnsafeBindError, match="--auth"):
        app.launch(server_name="0.0.0.0", server_port=free_port(), prevent_thread_lock=True)
    assert not app.ctx.ticker.running
    r = subprocess.run([sys.executable, "app.py", "--host", "0.0.0.0", "--runs-dir", str(tmp_path / "r")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--auth" in r.stderr and "refusing to listen on 0.0.0.0" in r.stderr
    r = subprocess.run([sys.executable, "app.py", "--host", "0.0.0.0", "--auth", "nopassword"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "USER:PASSWORD" in r.stderr
    assert safety.parse_auth(["ann:pa:ss"]) == [("ann", "pa:ss")]


def test_the_form_covers_every_config_field_and_its_cli_is_equivalent():
    from dataclasses import fields

    from core.vapi.config import VapiConfig

    shown = {f.key.split(".")[0] for f in form.FIELDS}
    assert shown == {f.name for f in fields(VapiConfig)} - {"device"}
    assert all(f.help for f in form.FIELDS)
    values = form.preset_form_values("demo-c2i")
    values.update(beta=0.3, preview_seeds="3, 4", preview_classes=[1, 7], xi=0.25, method="ste",
                  **{"reward_weights.l1": 0.5})
    plan = form.build_plan("demo-c2i", values, ["cpu"], "my run")
    args = shlex.split(plan.cli.replace("\\\n", " "))
    assert args[:6] == ["python", "-m", "core", "train", "--preset", "demo-c2i"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert resolve("demo-c2i", parse_overrides(sets)) == plan.cfg
    assert plan.cfg.reward_weights == {"mse": 1.0, "l1": 0.5} and plan.cfg.preview_classes == [1, 7]
    # device: the demo preset leaves it "auto" (a GPU when there is one); choosing cpu is an override
    assert plan.overrides.keys() == {"beta", "preview_seeds", "preview_classes", "xi", "method", "reward_weights", "device"}


def test_runs_overlay_curves_export_csv_and_show_a_job_instead_of_training_panels(served, tmp_path):
    import csv

    from core.runs.kinds import EVAL_ENTRY
    from core.runs.kinds import TRAIN_ENTRY as ENTRY

    store, client = served.store, served.ui.client
    runs = []
    for k, name in enumerate(("lr 1e-5", "a run with a rather long descriptive name, beta 1")):
        mode = ("eval", "train")[k]  # eval: the ratio is 1 with one update per rollout; train: the clip acts
        run = store.create_run(name, {"entry": ENTRY, "model": "demo-c2i", "num_iterations": 1, "rollout_mode": mode},
                               "cpu", 3)
        for step in (1, 2, 3):
            store.append_metrics(run.id, step, {"reward_mean": -0.1 * (k + 1) / step, "reward_std": 0.01,
                                                "loss_pg": 5e-8 * step, "dist_mse": 0.01 * (k + 1)})
        runs.append(run.id)
    plot = json.loads(client.predict(runs, "step", False, 0.0, api_name="/overlay_runs")["plot"])
    reward = [t for t in plot["data"] if t["legendgroup"] and t["yaxis"] == "y"]
    assert len(reward) == 2 and {t["legendgroup"].split(" · ")[0] for t in reward} == set(runs)
    assert reward[0]["line"]["color"] != reward[1]["line"]["color"] and all(t["showlegend"] for t in reward)
    assert reward[0]["x"] == [1, 2, 3] and reward[0]["y"] == pytest.approx([-0.1, -0.05, -0.1 / 3])
    assert plot["layout"]["yaxis"]["exponentformat"] == "e"  # 5e-08, not "50n"
    timed = json.loads(client.predict(runs, "wall time", True, 0.0, api_name="/overlay_runs")["plot"])
    assert timed["layout"]["yaxis"]["type"] == "log" and "wall time" in timed["layout"]["xaxis5"]["title"]["text"]
    assert all(x >= 0 for t in timed["data"] for x in t["x"])

    path = client.predict(runs, api_name="/export_runs_csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["step"]) for r in rows] == [(r, str(s)) for r in runs for s in (1, 2, 3)]
    assert float(rows[3]["dist_mse"]) == pytest.approx(0.02) and float(rows[0]["wall_s"]) == 0.0

    # the training curves say why clip fraction is flat; an evaluation job shows its own view, not empty panels
    view = served.ui.refresh(runs[0])
    curves = json.loads(view["training curves"]["plot"])
    assert any("0 by construction" in a["text"] for a in curves["layout"]["annotations"])
    trained = json.loads(served.ui.refresh(runs[1])["training curves"]["plot"])
    assert not any("by construction" in a["text"] for a in trained["layout"]["annotations"])
    job = store.create_run("eval base", {"entry": EVAL_ENTRY, "model": "demo-c2i", "extractor": "demo"}, "cpu", 100)
    store.append_metrics(job.id, 100, {"fid": 1.25, "precision": 0.7})
    view = served.ui.refresh(job.id)
    assert view["job results"]["visible"] is True and "eval job" in view["job results"]["value"]
    latest = view["latest metrics"]  # named as Evaluate names them: a demo-feature FD is not "fid"
    assert latest["FD (demo evaluator)"] == 1.25 and latest["precision (demo evaluator)"] == 0.7 and "fid" not in latest
    assert "no training curves" in view["job results"]["value"]
    view = served.ui.refresh(runs[1])
    assert view["job results"]["visible"] is False
