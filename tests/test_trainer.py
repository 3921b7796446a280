"""The trainer: run folders, checkpoints, resume equality, multi-process equality, NaN guard, baselines."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError, DataError, MissingWeightsError
from core.models import checkpoint
from core.runs.launcher import free_port
from core.runs.recorder import RunRecorder
from core.runs.store import RunStore
from core.vapi import rewards
from core.vapi.config import resolve
from core.vapi.preflight import preflight
from core.runs.kinds import TRAIN_ENTRY as ENTRY
from core.vapi.trainer import NonFiniteError, Trainer
from tests.helpers import tiny_gpt

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(model="demo-c2i", data="shapes", data_subset=40, reward_weights={"mse": 1.0}, num_generations=4,
             global_batch_size=4, per_device_train_batch_size=2, max_steps=4, learning_rate=3e-3, save_steps=2,
             preview_steps=2, device="cpu", kl_probe_size=2)


def new_run(tmp_path, **over):
    cfg = resolve(None, {**SMALL, **over})
    store = RunStore(tmp_path / "runs")
    run = store.create_run("t", {**cfg.to_dict(), "entry": ENTRY}, "cpu", cfg.max_steps)
    run_dir = store.run_dir(run.id)
    return cfg, store, run, run_dir


def weights(path):
    sd, extras = checkpoint.read_file(path)
    return sd, extras


@pytest.mark.slow
def test_run_writes_metrics_checkpoints_and_previews(tiny_demo, tmp_path):
    cfg, store, run, run_dir = new_run(tmp_path)
    last = Trainer(cfg, run_dir, RunRecorder(run_dir, is_main=True)).train()
    rows = store.read_metrics(run.id)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward_std", "dist_mse", "loss_pg", "loss_prior", "clip_frac", "kl_base", "entropy",
                "grad_norm", "lr", "step_time", "samples_per_s"):
        assert key in rows[-1], key
    assert [c.step for c in store.checkpoints(run.id)] == [2, 4]
    sd, extras = weights(run_dir / "checkpoints" / "step-000004" / "model.pt")
    raw = torch.load(run_dir / "checkpoints" / "step-000004" / "model.pt", weights_only=True)
    assert set(raw) == {"model", "config"} and json.loads(raw["config"])["max_steps"] == 4  # upstream layout + config
    base = tiny_gpt()
    assert any(not torch.equal(sd[k], base.state_dict()[k]) for k in sd)  # the weights moved
    fresh = tiny_gpt(seed=5)
    checkpoint.load_gpt(fresh, run_dir / "checkpoints" / "step-000004" / "model.pt")
    assert [s for s, _ in store.samples(run.id)] == [0, 2, 4]
    meta = json.loads((run_dir / "samples" / "step-000000.json").read_text())
    assert meta["seeds"] == [0, 1, 2, 3] and len(meta["rows"]) == 10
    assert last["kl_base"] > 0 and rows[0]["kl_base"] >= 0


class StopAfter(RunRecorder):
    def __init__(self, run_dir, after):
        super().__init__(run_dir, is_main=True)
        self.after = after
        self.calls = 0

    def should_stop(self):
        self.calls += 1
        return self.calls > self.after


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_demo, tmp_path):
    over = dict(save_steps=100, cond_drop_prob=0.3, xi=0.2)
    cfg, _, _, run_a = new_run(tmp_path, **over)
    Trainer(cfg, run_a, RunRecorder(run_a, is_main=True)).train()
    cfg, store, run, run_b = new_run(tmp_path, **over)
    Trainer(cfg, run_b, StopAfter(run_b, after=2)).train()  # 2 steps, then a stop request: checkpoint step 2
    assert [c.step for c in store.checkpoints(run.id)] == [2]
    Trainer(cfg, run_b, RunRecorder(run_b, is_main=True)).train(resume=True)
    a, _ = weights(run_a / "checkpoints" / "step-000004" / "model.pt")
    b, _ = weights(run_b / "checkpoints" / "step-000004" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa = torch.load(run_a / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=True)["optimizer"]
    ob = torch.load(run_b / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=True)["optimizer"]
    assert all(torch.equal(oa["state"][i]["exp_avg_sq"], ob["state"][i]["exp_avg_sq"]) for i in oa["state"])
    # KL to the BASE model after the resume (the probe is captured before the checkpoint is loaded)
    ka = {r["step"]: r["kl_base"] for r in RunStore(tmp_path / "runs").read_metrics(run_a.name)}
    kb = {r["step"]: r["kl_base"] for r in store.read_metrics(run.id)}
    assert kb[3] > 0 and kb[3] == pytest.approx(ka[3], rel=1e-4) and kb[4] == pytest.approx(ka[4], rel=1e-4)


@pytest.mark.slow
def test_a_stop_request_ends_training_through_the_distributed_teardown(tiny_demo, tmp_path, monkeypatch):
    cfg, store, run, run_dir = new_run(tmp_path)
    trainer = Trainer(cfg, run_dir, StopAfter(run_dir, after=1))
    ended = []
    real_setup = trainer.setup

    def setup():
        real_setup()
        monkeypatch.setattr(trainer.accelerator, "end_training", lambda: ended.append(True))

    trainer.setup = setup
    trainer.train()
    assert ended == [True]  # a stop returns through wait_for_everyone + end_training, like a finished run
    assert [c.step for c in store.checkpoints(run.id)] == [1]


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one AcceleratorState per process; a test that changes the precision resets it around itself."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_cpu_bf16_autocast_path_keeps_fp32_tokens_and_rewards(tiny_demo, tmp_path, fresh_accelerator_state):
    from core.vapi import objective

    cfg, store, run, run_dir = new_run(tmp_path, mixed_precision="bf16", mixed_precision_on_cpu=True, max_steps=2,
                                       reward_weights={"mse": 1.0, "l1": 0.5})
    trainer = Trainer(cfg, run_dir, RunRecorder(run_dir, is_main=True))
    trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16"
    idx = sorted(trainer.token_cache)
    images = torch.stack([trainer.dataset[i][0] for i in idx])
    tok = trainer.unwrap(trainer.tokenizer)
    with torch.no_grad():
        fp32_tokens = tok.encode(images)  # outside any autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_tokens = tok.encode(images)
    assert torch.equal(torch.stack([trainer.token_cache[i] for i in idx]), fp32_tokens)
    assert not torch.equal(bf16_tokens, fp32_tokens)  # what encoding under the autocast would have given
    # rewards of the same samples: fp32 inside the bf16 autocast, equal to a plain fp32 computation (tolerance 1e-6)
    samples = fp32_tokens[:4].view(2, 2, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r_amp, _ = objective.score_samples(tok, samples, images[:2], cfg.reward_weights, 3)
    r_ref, _ = objective.score_samples(tok, samples, images[:2], cfg.reward_weights, 3)
    assert torch.allclose(r_amp, r_ref, rtol=1e-6, atol=1e-7)
    rows = store.read_metrics(run.id)
    assert [r["step"] for r in rows] == [1, 2] and all("tied_groups" in r for r in rows)


def test_nan_guard_keeps_the_last_good_checkpoint_and_names_the_terms(tiny_demo, tmp_path, monkeypatch):
    cfg, store, run, run_dir = new_run(tmp_path, reward_weights={"mse": 1.0, "l1": 1.0})
    calls = {"n": 0}
    real = rewards.REWARDS["l1"]

    def flaky(pred, ref, item):
        calls["n"] += 1
        out = real(pred, ref, item)
        return out * float("nan") if calls["n"] > 4 else out  # poison from step 3 on

    monkeypatch.setitem(rewards.REWARDS, "l1", flaky)
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 3: .*dist_l1=nan"):
        Trainer(cfg, run_dir, RunRecorder(run_dir, is_main=True)).train()
    assert [c.step for c in store.checkpoints(run.id)] == [2]


def test_worker_marks_a_nan_run_failed_with_the_terms(tiny_demo, tmp_path):
    cfg, store, run, run_dir = new_run(tmp_path, learning_rate=1e6, max_grad_norm=1e30, save_steps=1)
    r = subprocess.run([sys.executable, "-m", "core.runs.worker", "--run-dir", str(run_dir)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ})
    run = store.get(run.id)
    assert run.status == "failed" and "non-finite" in run.message, r.stdout[-2000:] + r.stderr[-2000:]
    assert store.last_checkpoint(run.id) is not None  # the steps before the blow-up are kept


@pytest.mark.slow
def test_two_processes_equal_one_process(tiny_demo, tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(
        "import sys, torch\n"
        "from core.vapi.config import resolve\n"
        "from core.vapi.trainer import Trainer\n"
        "from core.runs.recorder import RunRecorder\n"
        f"cfg = resolve(None, {dict(SMALL, max_steps=2, save_steps=2, preview_steps=100, kl_probe_size=0, cond_drop_prob=0.3)!r})\n"
        "out = sys.argv[1]\n"
        "class R(RunRecorder):\n"
        "    def log_metrics(self, *a): pass\n"
        "    def set_progress(self, *a, **k): pass\n"
        "t = Trainer(cfg, out, R(out, is_main=False))\n"
        "t.train()\n"
        "if t.accelerator.is_main_process:\n"
        "    torch.save(t.accelerator.unwrap_model(t.policy).state_dict(), out + '/final.pt')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    r1 = subprocess.run([sys.executable, str(script), str(one)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                         str(script), str(two)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "on 2 process(es)" in r2.stdout + r2.stderr
    a, b = torch.load(one / "final.pt"), torch.load(two / "final.pt")
    base = tiny_gpt().state_dict()
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-3 and diff < 1e-5 * max(1.0, moved) + 1e-6, (moved, diff)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ste", "decoder"])
def test_baselines_run_and_train_the_right_module(tiny_demo, tmp_path, method):
    cfg, store, run, run_dir = new_run(tmp_path, method=method, max_steps=2, save_steps=2)
    Trainer(cfg, run_dir, RunRecorder(run_dir, is_main=True)).train()
    ck = run_dir / "checkpoints" / "step-000002"
    rows = store.read_metrics(run.id)
    assert "loss_recon" in rows[-1] and "dist_mse" in rows[-1]
    if method == "ste":
        sd, _ = weights(ck / "model.pt")
        assert any(not torch.equal(sd[k], tiny_gpt().state_dict()[k]) for k in sd)
    else:
        from tests.helpers import tiny_vq

        sd, _ = weights(ck / "tokenizer.pt")
        base = tiny_vq().state_dict()
        changed = {k for k in sd if not torch.equal(sd[k], base[k])}
        assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)


def test_bad_inputs_are_rejected_before_any_work(tiny_demo, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="data_path"):
        resolve(None, {**SMALL, "data": "imagefolder"})
    cfg = resolve(None, {**SMALL, "data": "imagefolder", "data_path": str(tmp_path / "absent")})
    with pytest.raises(DataError, match="absent"):
        Trainer(cfg, tmp_path).setup()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="vgg16"):
        preflight(resolve(None, {**SMALL, "reward_weights": {"mse": 1.0, "lpips": 1.0}}))
    with pytest.raises(ConfigError, match="init_weights"):
        preflight(resolve(None, {**SMALL, "init_weights": str(tmp_path / "nope.pt")}))


def test_cli_train_and_resume(tiny_demo, tmp_path):
    run_dir = tmp_path / "runs" / "my-run"
    args = ["--set", "max_steps=2", "--set", "save_steps=1", "--set", "global_batch_size=2", "--set", "per_device_train_batch_size=2",
            "--set", "data_subset=20", "--set", "reward_weights={\"mse\": 1}", "--set", "num_generations=2"]
    r = subprocess.run([sys.executable, "-m", "core", "train", "--preset", "demo-c2i", *args, "--run-dir", str(run_dir)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "finished at step 2/2" in r.stdout and (run_dir / "checkpoints" / "step-000002" / "model.pt").is_file()
    assert "[step 2/2]" in (run_dir / "log.txt").read_text()
    r = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is finished" in r.stderr


@pytest.mark.slow
def test_cli_continues_a_finished_run_for_more_steps(tiny_demo, tmp_path):
    run_dir = tmp_path / "runs" / "extend"
    args = ["--set", "global_batch_size=2", "--set", "per_device_train_batch_size=2", "--set", "data_subset=20",
            "--set", "reward_weights={\"mse\": 1}", "--set", "num_generations=2", "--set", "save_steps=100"]
    r = subprocess.run([sys.executable, "-m", "core", "train", "--preset", "demo-c2i", "--set", "max_steps=3", *args,
                        "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "finished at step 3/3" in r.stdout, r.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(run_dir), "--set", "max_steps=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "max_steps" in bad.stderr
    fixed = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(run_dir), "--set", "model=other"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 2 and "model" in fixed.stderr and "cannot change on resume" in fixed.stderr
    r = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(run_dir), "--set", "max_steps=5"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "finished at step 5/5" in r.stdout, r.stderr[-2000:]
    store = RunStore(run_dir.parent)
    assert [m["step"] for m in store.read_metrics("extend")] == [1, 2, 3, 4, 5]
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 5
    assert [c.step for c in store.checkpoints("extend")] == [3, 5]


@pytest.mark.slow
def test_launcher_continues_a_finished_run_to_more_steps_and_refuses_a_step_it_has_done(tiny_demo, tmp_path, monkeypatch):
    """The path the Runs tab's "continue to step" takes (Launcher.resume with max_steps): a bad value is refused
    naming the field, with nothing queued and the folder as it was; a good one queues the run, whose worker trains
    from step k+1 to N, every step once, keeping its checkpoints."""
    from core.runs.launcher import Launcher
    from core.runs.store import FINISHED
    from tests.helpers import train_demo_run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = RunStore(tmp_path / "runs")
    run_id, k = train_demo_run(store, 2, name="short", save_steps=1)
    run_dir = store.run_dir(run_id)
    launcher = Launcher(store)

    def folder():
        return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
                if p.is_file() and p.name not in ("runs.db", "worker.lock")}

    before = folder()
    for bad, why in ((k, f"max_steps: {k} is at or below step {k}"), (1, "max_steps: 1 is at or below step 2"),
                     (0, "max_steps: must be >= 1")):
        with pytest.raises(ConfigError, match=why):
            launcher.resume(run_id, {"max_steps": bad})
        run = store.get(run_id)
        assert run.status == FINISHED and run.total_steps == k and folder() == before

    run = launcher.resume(run_id, {"max_steps": 4})
    assert run.status in ("queued", "running") and run.total_steps == 4
    done = launcher.wait(run_id, timeout=300)
    assert done.status == FINISHED and done.step == 4, done.message
    assert [m["step"] for m in store.read_metrics(run_id)] == [1, 2, 3, 4]
    assert [c.step for c in store.checkpoints(run_id)] == [1, 2, 3, 4]
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == 4
    assert "[step 3/4]" in (run_dir / "log.txt").read_text()


def test_each_method_object_says_what_it_trains_and_the_loop_has_no_method_branches():
    """The trainer's loop is method-free: what differs between VA-π, STE and the decoder baseline is in
    core/vapi/methods.py (the trained module, the loss, the checkpoint file)."""
    import ast
    import inspect

    from core.vapi import methods
    from core.vapi.config import METHODS

    assert tuple(methods.REGISTRY) == METHODS
    pol, tok = tiny_gpt(), __import__("tests.helpers", fromlist=["tiny_vq"]).tiny_vq()
    for name, expect_file, expect_trained in (("vapi", "model.pt", pol), ("ste", "model.pt", pol),
                                              ("decoder", "tokenizer.pt", tok)):
        m = methods.method_of(resolve(None, {"method": name}))
        trained = m.trainable(pol, tok)
        assert trained is expect_trained and m.weights_file == expect_file
        grads = {n for n, p in trained.named_parameters() if p.requires_grad}
        if name == "decoder":
            assert grads and all(n.startswith(("decoder.", "post_quant_conv.")) for n in grads)
            assert not any(p.requires_grad for p in pol.parameters()) and not pol.training
        else:
            assert grads == {n for n, _ in pol.named_parameters()} and pol.training
            assert not any(p.requires_grad for p in tok.parameters())
    assert methods.method_of(resolve(None, {"prior": "kl"})).uses_reference(resolve(None, {"prior": "kl"}))
    src = inspect.getsource(__import__("core.vapi.trainer", fromlist=["Trainer"]))
    def branches_on_a_method_name(n):
        sides = [n.left, *n.comparators]
        return (any(isinstance(x, ast.Attribute) and x.attr == "method" for x in sides)
                and any(isinstance(x, (ast.Constant, ast.Tuple)) for x in sides))

    found = [n.lineno for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Compare) and branches_on_a_method_name(n)]
    assert found == [], f"trainer.py lines {found} compare cfg.method with a name: move that into core/vapi/methods.py"
