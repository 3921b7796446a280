"""Two real processes on CPU (gloo): README's multi-process CLI route, the UI's multi-device worker route,
and the trainer under DDP and FSDP (2 ranks) against one process."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.runs.launcher import Launcher, free_port, worker_command
from core.runs.store import RunStore
from core.vapi.config import resolve
from core.runs.kinds import TRAIN_ENTRY as ENTRY

ROOT = Path(__file__).resolve().parents[1]
TINY = {"device": "cpu", "max_steps": 2, "global_batch_size": 4, "per_device_train_batch_size": 2, "data_subset": 20,
        "reward_weights": {"mse": 1}, "num_generations": 2, "save_steps": 2, "preview_steps": 2, "kl_probe_size": 2}


def env_for(tmp_path) -> dict:
    # HF_HOME: a user's default accelerate config lives there; the launcher must not read it (see below)
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}


def sets(over: dict) -> list[str]:
    return [a for k, v in over.items() for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, dict) else v}")]


def one_finished_run(runs: Path, steps: int):
    store = RunStore(runs)
    found = store.list_runs()
    assert len(found) == 1 and len([p for p in runs.iterdir() if p.is_dir()]) == 1, [r.id for r in found]
    run = found[0]
    assert run.status == "finished" and run.step == steps, (run.status, run.message)
    assert [m["step"] for m in store.read_metrics(run.id)] == list(range(1, steps + 1))  # every step once
    return run


@pytest.mark.slow
def test_readme_cli_route_with_two_processes_makes_one_finished_run(tiny_demo, tmp_path):
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "core", "train", "--preset", "demo-c2i", "--runs-dir", str(runs), *sets(TINY)],
                       cwd=ROOT, env=env_for(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    run = one_finished_run(runs, 2)
    log = (run.run_dir / "log.txt").read_text()
    assert "on 2 process(es)" in log and log.count("[step 2/2]") == 1
    assert (run.run_dir / "checkpoints" / "step-000002" / "model.pt").is_file()


@pytest.mark.slow
def test_ui_multi_device_route_runs_accelerate_launch_with_its_own_config(tiny_demo, tmp_path, monkeypatch):
    # a user's default accelerate config that must not apply: it asks for 3 processes and dynamo
    default = tmp_path / "hf" / "accelerate" / "default_config.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 3\n"
                       "dynamo_config:\n  dynamo_backend: INDUCTOR\nmixed_precision: fp16\n")
    argv, _ = worker_command(tmp_path / "r", "cuda:0,1")
    assert argv[argv.index("--config_file") + 1].endswith("accelerate_multi_gpu.json")
    # the launcher's real route: a queued run on a 2-GPU device set becomes `accelerate launch --multi_gpu
    # --num_processes 2 -m core.runs.worker`; on this CPU machine accelerate starts 2 gloo ranks
    cfg = resolve("demo-c2i", TINY)
    runs = tmp_path / "runs"
    store = RunStore(runs)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = Launcher(store).submit("ui", {**cfg.to_dict(), "entry": ENTRY}, "cuda:0,1", cfg.max_steps)
    run = Launcher(store).wait(run.id, timeout=300)
    log = (run.run_dir / "log.txt").read_text()
    assert run.status == "finished", log[-3000:]
    one_finished_run(runs, 2)
    assert "on 2 process(es)" in log and "dynamo" not in log.lower()



def _processes_naming(run_dir: Path) -> list[int]:
    """Live processes whose command line names `run_dir` (the accelerate launcher and its ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(run_dir).encode() in (entry / "cmdline").read_bytes():
                if "Z" not in (entry / "stat").read_text().rsplit(")", 1)[1].split()[:1]:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _two_rank_run(tmp_path, monkeypatch):
    """A 40-step tiny demo-c2i run the UI's launcher started on 2 ranks (accelerate launch, gloo), two steps in:
    (store, launcher, run)."""
    from tests.helpers import wait_for

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = resolve("demo-c2i", {**TINY, "max_steps": 40, "save_steps": 100, "preview_steps": 100})
    store = RunStore(tmp_path / "runs")
    launcher = Launcher(store)
    run = launcher.submit("ui", {**cfg.to_dict(), "entry": ENTRY}, "cuda:0,1", cfg.max_steps)
    wait_for(lambda: store.get(run.id).step >= 2, "two steps on 2 ranks", 300, poll=0.2, tick=launcher)
    return store, launcher, run


@pytest.mark.slow
def test_ui_multi_device_route_stops_and_resumes_its_rank_group(tiny_demo, tmp_path, monkeypatch):
    """The Runs tab's Stop and Resume on a run launched as 2 ranks (accelerate launch, gloo): every rank stops at
    the same step boundary with one checkpoint, no process of the group is left, and the resumed group finishes
    with every step recorded once."""
    from tests.helpers import wait_for

    store, launcher, run = _two_rank_run(tmp_path, monkeypatch)
    assert len(_processes_naming(run.run_dir)) >= 3  # the launcher and its two ranks
    launcher.stop(run.id)
    stopped = launcher.wait(run.id, timeout=120)
    assert stopped.status == "stopped" and 2 <= stopped.step < 40, (stopped.status, stopped.message)
    assert [c.name for c in (run.run_dir / "checkpoints").iterdir()] == [f"step-{stopped.step:06d}"]
    wait_for(lambda: not _processes_naming(run.run_dir), "no process of the rank group left", 30, poll=0.2)
    launcher.resume(run.id)
    done = launcher.wait(run.id, timeout=300)
    assert done.status == "finished" and done.step == 40, (done.status, done.message)
    assert [m["step"] for m in store.read_metrics(run.id)] == list(range(1, 41))  # every step once
    # ... in the folder too (the index keeps one row per step: a group started over would pass above), and the
    # group went on from the stop's checkpoint
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))
    assert f"[resume] from {run.run_dir / 'checkpoints' / f'step-{stopped.step:06d}'} (step {stopped.step})" in \
        (run.run_dir / "log.txt").read_text()


@pytest.mark.slow
def test_ui_multi_device_route_kill_leaves_no_rank_of_the_group_and_the_run_resumes(tiny_demo, tmp_path, monkeypatch):
    """A rank group that hangs (frozen by SIGSTOP) when its stop's grace period ends (grace 0) is killed: the accelerate
    launcher and both ranks (torch's elastic agent puts each in a session of its own), none left; the run reads stopped and
    killed, and the resumed group finishes with every step once."""
    from tests.helpers import wait_for

    store, launcher, run = _two_rank_run(tmp_path, monkeypatch)
    group = _processes_naming(run.run_dir)
    assert len(group) >= 3  # the launcher and its two ranks
    try:
        for pid in group:  # a hung group: frozen, it never reaches the step boundary where a stop is honoured
            os.kill(pid, signal.SIGSTOP)
        launcher.stop(run.id, grace_s=0)
        killed = launcher.enforce_deadlines()
        assert [r.id for r in killed] == [run.id] and "its processes were killed" in killed[0].message, killed
        assert store.get(run.id).status == "stopped"
        wait_for(lambda: not _processes_naming(run.run_dir), "no process of the rank group left", 30, poll=0.2)
    finally:
        for pid in _processes_naming(run.run_dir):  # what a failed kill left: never a frozen process after the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert launcher.resume(run.id).message == "resumed without a checkpoint: starts again from step 0"
    done = launcher.wait(run.id, timeout=300)
    assert done.status == "finished" and done.step == 40, (done.status, done.message)
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41))  # no checkpoint: from step 0, once


# ---------------------------------------------------------------------------------------------- the trainer
# demo-c2i is LlamaGen's Transformer (core.models.llamagen) at a tiny size and without dropout, so condition
# dropout (0.3) makes some ranks run the extra eval forward of the dropped rows and others not: under FSDP that
# forward gathers weights (a collective) and hung before every rank ran it
TRAIN = dict(model="demo-c2i", data="shapes", data_subset=40, reward_weights={"mse": 1.0}, num_generations=4,
             global_batch_size=4, per_device_train_batch_size=2, max_steps=4, learning_rate=3e-3, save_steps=2,
             preview_steps=2, device="cpu", kl_probe_size=2, cond_drop_prob=0.3, xi=0.2, lr_scheduler="cosine",
             warmup_steps=1)


def train_run(tmp_path, name, procs, *, over=None, stop_after=None, resume=None):
    """Run tests/multiproc_train.py on `procs` processes (1: plain python); returns the run folder."""
    store = RunStore(tmp_path / "runs")
    if resume is None:
        cfg = resolve(None, {**TRAIN, **(over or {})})
        run_dir = store.run_dir(store.create_run(name, {**cfg.to_dict(), "entry": ENTRY}, "cpu", cfg.max_steps).id)
    else:
        run_dir = resume
    script = [str(ROOT / "tests" / "multiproc_train.py"), str(run_dir)]
    script += (["--stop-after", str(stop_after)] if stop_after else []) + (["--resume"] if resume else [])
    launch = ([sys.executable] if procs == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(free_port())])
    r = subprocess.run(launch + script, cwd=ROOT, env=env_for(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    (run_dir / "driver.out").write_text(r.stdout + r.stderr)
    return run_dir


def final(run_dir, step=4, name="model.pt"):
    from core.models import checkpoint

    return checkpoint.read_file(run_dir / "checkpoints" / f"step-{step:06d}" / name)[0]


def metrics(run_dir):
    return RunStore(run_dir.parent).read_metrics(run_dir.name)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_ranks_train_like_one_process(tiny_demo, tmp_path, sharding):
    one = train_run(tmp_path, "one", 1)
    two = train_run(tmp_path, "two", 2, over={"sharding": sharding})
    assert f"on 2 process(es) ({sharding.upper()})" in (two / "driver.out").read_text()
    from tests.helpers import tiny_gpt

    a, b, base = final(one), final(two), tiny_gpt().state_dict()
    assert set(a) == set(b) == set(base)
    moved = max((a[k] - base[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-3 and diff < 1e-4 * moved, (moved, diff)
    ma, mb = metrics(one), metrics(two)
    assert [m["step"] for m in mb] == [1, 2, 3, 4]
    # the cosine schedule advances once per optimizer step, whatever the number of processes
    assert [m["lr"] for m in mb] == pytest.approx([m["lr"] for m in ma]) and mb[-1]["lr"] < mb[1]["lr"]
    # the KL probe (after setup, on the base weights) and the previews work on 2 ranks
    assert [m["kl_base"] for m in mb] == pytest.approx([m["kl_base"] for m in ma], rel=1e-3, abs=1e-7)
    assert mb[-1]["kl_base"] > 0
    assert sorted(p.name for p in (two / "samples").glob("*.png")) == [f"step-{s:06d}.png" for s in (0, 2, 4)]


@pytest.mark.slow
def test_fsdp_save_then_resume_equals_uninterrupted(tiny_demo, tmp_path):
    over = {"sharding": "fsdp", "save_steps": 100}
    whole = train_run(tmp_path, "whole", 2, over=over)
    part = train_run(tmp_path, "part", 2, over=over, stop_after=2)
    assert [p.name for p in (part / "checkpoints").iterdir()] == ["step-000002"]
    train_run(tmp_path, "part", 2, resume=part)
    a, b = final(whole), final(part)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    oa = torch.load(whole / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=True)
    ob = torch.load(part / "checkpoints" / "step-000004" / "optimizer.pt", weights_only=True)
    assert oa["scheduler"] == ob["scheduler"] and set(oa["optimizer"]["state"]) == set(ob["optimizer"]["state"])
    for k, st in oa["optimizer"]["state"].items():
        assert torch.allclose(st["exp_avg_sq"], ob["optimizer"]["state"][k]["exp_avg_sq"], rtol=1e-5, atol=1e-12), k


@pytest.mark.slow
def test_fsdp_decoder_baseline_prepares_and_trains_only_the_decoder(tiny_demo, tmp_path):
    from tests.helpers import tiny_vq

    run = train_run(tmp_path, "dec", 2, over={"sharding": "fsdp", "method": "decoder", "max_steps": 2})
    sd, base = final(run, 2, "tokenizer.pt"), tiny_vq().state_dict()
    assert set(sd) == set(base)
    changed = {k for k in sd if not torch.equal(sd[k], base[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed), changed


JANUS_FSDP = '''
import torch, torch.distributed as dist
from tests.test_janus import tiny_janus_model, tiny_text_tokenizer, PROMPTS, V, N
from core.models.janus import JanusPolicy
from core.vapi.trainer import fsdp_shard, gathered
dist.init_process_group("gloo")
ref = JanusPolicy(tiny_janus_model(seed=1), tiny_text_tokenizer()).train()
pol = JanusPolicy(tiny_janus_model(seed=1), tiny_text_tokenizer()).train()
ids, mask = pol.encode_prompts(PROMPTS)
tokens = torch.randint(0, V, (3, N), generator=torch.Generator().manual_seed(0))
fsdp_shard(pol)  # the language model's layers each a unit; vision tower, aligner and VQ outside every unit
frozen = [p for p in pol.parameters() if not p.requires_grad]
assert frozen and not any(hasattr(p, "full_tensor") for p in frozen)
with torch.no_grad():
    with gathered(pol):  # the KL probe's and the previews' calls, on every rank
        a = pol.teacher_forced_logits(ids, tokens[:, :-1], cond_mask=mask)
        g = pol.generate(ids, cond_mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, ref.teacher_forced_logits(ids, tokens[:, :-1], cond_mask=mask))
    assert torch.equal(g.tokens, ref.generate(ids, cond_mask=mask, generator=torch.Generator().manual_seed(0)).tokens)
ce = lambda m: torch.nn.functional.cross_entropy(m(ids, tokens[:, :-1], cond_mask=mask).reshape(-1, V), tokens.reshape(-1))
ce(pol).backward(), ce(ref).backward()
norm = lambda m: torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1e9)
assert abs(norm(pol).full_tensor().item() - norm(ref).item()) < 1e-5
print("janus fsdp ok", dist.get_rank())
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_janus_under_fsdp_on_two_ranks_keeps_frozen_modules_out_and_samples_gathered(tmp_path):
    script = tmp_path / "janus_fsdp.py"
    script.write_text(JANUS_FSDP)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), str(script)], cwd=ROOT, env=env_for(tmp_path), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.count("janus fsdp ok") == 2, r.stdout[-2000:] + r.stderr[-3000:]
