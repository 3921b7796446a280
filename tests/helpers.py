"""Shared test helpers: tiny random models and a tiny demo folder that the presets can load."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from core.models import checkpoint
from core.models.llamagen import GPTConfig, Transformer
from core.models.vq import VQConfig, VQModel

TINY_VQ = dict(codebook_size=32, codebook_embed_dim=4, ch=32, encoder_ch_mult=[1, 2], decoder_ch_mult=[1, 2],
               z_channels=32, num_res_blocks=1, image_size=16)
TINY_GPT = dict(dim=64, n_layer=2, n_head=4, multiple_of=32, vocab_size=32, num_classes=10, block_size=64,
                class_dropout_prob=0.1, token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, model_type="c2i")


def tiny_gpt(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(GPTConfig(**{**TINY_GPT, **kw}))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m.eval()


def tiny_vq(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(VQConfig(**TINY_VQ)).eval()


def make_tiny_demo(folder: Path) -> Path:
    """A demo folder with random tiny weights in the committed demo's layout (manifest + safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save_safetensors(tiny_vq(), folder / "vq.safetensors")
    checkpoint.save_safetensors(tiny_gpt(), folder / "gpt_c2i.safetensors")
    manifest = {"tokenizer": {"file": "vq.safetensors", "config": TINY_VQ},
                "generator": {"file": "gpt_c2i.safetensors", "config": TINY_GPT}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


class ToyTokenizer:
    """Tokenizer protocol with an exactly known decoder: token t -> a pixel of grey level t / (V-1) in [-1, 1].

    A toy reward (MSE to the ground truth) then measures how far each sampled token is from x*, so a
    policy trained on it must move its mass toward x*."""

    def __init__(self, codebook_size: int = 32, grid: tuple[int, int] = (8, 8)):
        self.codebook_size, self.grid = codebook_size, grid

    def encode(self, images):
        grey = images.mean(dim=1).flatten(1)  # [B, h*w]
        return ((grey + 1) / 2 * (self.codebook_size - 1)).round().long().clamp(0, self.codebook_size - 1)

    def decode(self, tokens):
        h, w = self.grid
        grey = tokens.float() / (self.codebook_size - 1) * 2 - 1
        return grey.view(-1, 1, h, w).expand(-1, 3, h, w)


def train_tiny_evaluator(folder: Path, steps: int) -> Path:
    """A demo evaluator for the tiny demo's 16 px images, trained with the module's own function."""
    from core.demo import evaluator as de

    torch.set_num_threads(1)
    model, _ = de.train_evaluator(steps=steps, batch_size=10, seed=0, log=lambda _: None, val_count=10, image_size=16,
                                  config=de.EvaluatorConfig(channels=(8, 16, 16), feature_dim=8, hidden_dim=16,
                                                            image_size=16))
    path = folder / "evaluator.safetensors"
    de.save_evaluator(model, path)
    return path


@contextmanager
def served_app(tmp_path: Path, monkeypatch, data_roots: list[Path], **create_kw):
    """The workbench launched in this process on a free port, with no published weights (checkpoints/ and the
    torch hub point into tmp_path, for this process and through $VAPI_CHECKPOINTS / $TORCH_HOME for every worker
    it starts) and one thread per worker process. Yields (app, url); afterwards the app is closed, its active
    workers are killed and its queued runs are stopped."""
    from app import create_app
    from core import paths
    from core.runs.launcher import free_port, kill_process_tree
    from core.runs.store import ACTIVE, QUEUED, STOPPED

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # each worker process: one thread (2 cores, several processes)
    monkeypatch.setenv("VAPI_CHECKPOINTS", str(tmp_path / "checkpoints"))  # no published weights present (workers)
    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "checkpoints")  # ... and here (read once, at import)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no LPIPS / Inception backbone (torch.hub reads it per call)
    app = create_app(tmp_path / "runs", data_roots=data_roots, **create_kw)
    _, url, _ = app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield app, url
    finally:
        app.close(verbose=False)
        store = app.ctx.store
        for run in store.list_runs(ACTIVE):
            kill_process_tree(run.pid, run.pid_start, [(run.worker_pid, run.worker_start)])
        for run in store.list_runs([QUEUED]):
            store.try_set_status(run.id, STOPPED, expect={QUEUED})


def train_demo_run(store, steps: int = 2, name: str = "trained", preset: str = "demo-c2i", **overrides) -> tuple[str, int]:
    """A real demo run (demo-c2i, or demo-t2i) of `steps` steps (tiny config), trained in this process and finished
    in `store`. Returns (run id, last step)."""
    from core.runs.store import process_start_time
    from core.runs.recorder import RunRecorder
    from core.vapi.config import resolve
    from core.runs.kinds import TRAIN_ENTRY as ENTRY
    from core.vapi.trainer import Trainer

    cfg = resolve(preset, dict(dict(max_steps=steps, per_device_train_batch_size=2, global_batch_size=2,
                                        num_generations=2, data_subset=20, save_steps=steps, preview_steps=steps,
                                        learning_rate=3e-2, kl_probe_size=0, preview_seeds=[0]), **overrides))
    run = store.create_run(name, {**cfg.to_dict(), "entry": ENTRY}, "cpu", steps)
    # this process is the run's worker: a served app's orphan check (no pid after the spawn grace) must not fail a
    # run that trains here for longer than the grace (the demo T2I loads its text encoder first)
    store.set_status(run.id, "running", pid=os.getpid(), pid_start=process_start_time(os.getpid()))
    Trainer(cfg, run.run_dir, RunRecorder(run.run_dir, is_main=True), log=lambda m: None).train()
    store.set_status(run.id, "finished")
    return run.id, steps


def wait_for(predicate, what: str, timeout: float, poll: float = 0.05, tick=None):
    """Poll `predicate` (after `tick.tick()` when a launcher is given) until it returns something true; return it.
    AssertionError naming `what` after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            tick.tick()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


# Tolerances of pinned ("golden") numbers of the deterministic demo. Measured: torch threads 1 vs 2 move the demo's
# losses and rewards by <= 1e-6 relative (the T2I's float sums; the C2I's are bitwise equal), loss_pg near 0 by
# <= 3e-7 absolute and the tiny kl_base (~1e-5) by <= 0.3 %. A changed learning rate, beta, noise, reward or sampler
# moves them by far more (the notes of test_demo.py / test_demo_t2i.py say which perturbations were checked).
PINNED_TOL = {"loss_pg": dict(rel=1e-4, abs=1e-5), "kl_base": dict(rel=1e-2, abs=1e-7)}
PINNED_DEFAULT_TOL = dict(rel=1e-4, abs=1e-6)


def assert_pinned(actual: dict, golden: dict, what: str, tol: dict | None = None) -> None:
    """Every key of `golden` (a number, or a dict of numbers per row key) equals `actual`'s within PINNED_TOL.
    Fails listing every value off its pin, so one run shows the whole change."""
    import pytest

    off = []

    def check(path, a, g):
        if isinstance(g, dict):
            for k, v in g.items():
                check(f"{path}.{k}" if path else str(k), a.get(k) if isinstance(a, dict) else None, v)
            return
        t = (tol or {}).get(path.rsplit(".", 1)[-1]) or PINNED_TOL.get(path.rsplit(".", 1)[-1], PINNED_DEFAULT_TOL)
        if a is None or a != pytest.approx(g, **t):
            off.append(f"  {path}: {a!r}, pinned {g!r}")

    check("", actual, golden)
    assert not off, f"{what} moved off the pinned numbers (a behaviour change; re-pin only on purpose):\n" + "\n".join(off)


def closed_port_endpoint() -> str:
    """An http endpoint on 127.0.0.1 where nothing listens (a port the kernel just handed out, then closed): a hub
    URL that refuses every connection at once, as a machine without internet (or a dead mirror) does."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
