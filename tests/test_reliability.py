"""Issue 14: runs never hurt anything else and never lose anything.

Process scope of a stop, crashed foreground runs, Ctrl-C / SIGTERM, the run index rebuilt from the
folders, resume cleaning only its own leftovers, a full disk, clear errors. Fake workers
(tests/fake_worker.py) where the trainer does not matter; the tiny demo where it does."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs import FAILED, FINISHED, RUNNING, STOPPED, RunStore
from core.runs.launcher import kill_process_tree
from core.runs.store import process_alive, process_start_time
from tests import helpers

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "tests.fake_worker:run"
TIMEOUT_S = 60.0
TINY = ["--preset", "demo-c2i", "--set", "global_batch_size=2", "--set", "per_device_train_batch_size=2",
        "--set", "data_subset=20", "--set", 'reward_weights={"mse": 1}', "--set", "num_generations=2",
        "--set", "kl_probe_size=0", "--set", "device=cpu"]


@pytest.fixture(autouse=True)
def _fake_entry_allowed(monkeypatch):
    monkeypatch.setenv("VAPI_WORKER_ENTRIES", ENTRY)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "runs")
    yield store
    for run in store.list_runs([RUNNING, "stopping"]):
        if os.getpid() not in (run.pid, run.worker_pid):
            kill_process_tree(run.pid, run.pid_start, [(run.worker_pid, run.worker_start)])


def wait_for(predicate, what: str, timeout: float = TIMEOUT_S):
    return helpers.wait_for(predicate, what, timeout)


def core(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def alive(pid: int) -> bool:
    return process_alive(pid, None)


def wrapper_script(tmp_path: Path, run_dir: Path) -> subprocess.Popen:
    """A shell script (as under CI or nohup: no job control, so its children share its process group)
    that starts an unrelated `sleep`, then a foreground worker, then goes on."""
    script = tmp_path / "wrapper.sh"
    script.write_text(f"sleep 600 &\necho $! > {tmp_path}/sibling.pid\n"
                      f"{sys.executable} -m core.runs.worker --run-dir {run_dir} >> {run_dir}/log.txt 2>&1\n"
                      f"echo continued > {tmp_path}/after\nsleep 600\n")
    return subprocess.Popen(["bash", str(script)], cwd=ROOT, start_new_session=True)


# --- 1. a stop kills only what the run started ------------------------------------------------------


def test_forced_stop_of_a_foreground_run_spares_its_caller_and_the_callers_other_children(store, tmp_path):
    run = store.create_run("fg", {"entry": ENTRY, "fake": {"forever": True, "ignore_stop": True,
                                                           "spawn_child": True}}, "cpu", 10)
    wrapper = wrapper_script(tmp_path, run.run_dir)
    try:
        wait_for(lambda: (run.run_dir / "child.pid").exists() and store.get(run.id).status == RUNNING,
                 "the foreground worker and its child")
        worker = store.get(run.id).worker_pid
        child = int((run.run_dir / "child.pid").read_text())
        sibling = int((tmp_path / "sibling.pid").read_text())
        r = core("runs", "stop", run.id, "--grace", "0", "--runs-dir", str(store.runs_dir))
        assert r.returncode == 0, r.stdout + r.stderr
        assert store.get(run.id).status == STOPPED
        wait_for(lambda: not alive(worker) and not alive(child), "the worker and its child to be killed")
        wait_for(lambda: (tmp_path / "after").exists(), "the wrapper script to go on after its worker")
        assert wrapper.poll() is None and alive(sibling)  # the caller and its other child survive
    finally:
        os.killpg(wrapper.pid, signal.SIGKILL)
        wrapper.wait()


def test_kill_process_tree_never_signals_its_own_group_or_pid_1(store):
    # an old row (or a container where the run's group is 1) naming the caller's group as the run's pid
    victims, groups = kill_process_tree(os.getpgid(0), process_start_time(os.getpgid(0)))
    assert os.getpid() not in victims and not groups
    victims, groups = kill_process_tree(1, process_start_time(1))
    assert not victims and not groups


# --- 2. a crashed foreground run does not block the queue ------------------------------------------


@pytest.mark.slow
def test_train_refuses_busy_devices_and_starts_once_a_killed_foreground_worker_is_gone(store, tmp_path, tiny_demo):
    run = store.create_run("fg", {"entry": ENTRY, "fake": {"forever": True}}, "cpu", 10)
    wrapper = wrapper_script(tmp_path, run.run_dir)
    try:
        wait_for(lambda: store.get(run.id).status == RUNNING and store.get(run.id).worker_pid, "the foreground run")
        before = sorted(p.name for p in store.runs_dir.iterdir() if p.is_dir())  # run folders (not runs.db-wal / -shm)
        r = core("train", *TINY, "--set", "max_steps=1", "--runs-dir", str(store.runs_dir))
        assert r.returncode == 3, r.stdout + r.stderr
        assert f"devices cpu are used by run {run.id}" in r.stderr and "--wait" in r.stderr
        assert sorted(p.name for p in store.runs_dir.iterdir() if p.is_dir()) == before  # nothing queued, no folder
        assert [r.id for r in store.list_runs()] == [run.id]  # and no row in the index

        waiting = subprocess.Popen([sys.executable, "-m", "core", "train", *TINY, "--set", "max_steps=1",
                                    "--runs-dir", str(store.runs_dir), "--wait"], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        assert waiting.poll() is None and len(store.list_runs()) == 1  # waits without queueing a run
        os.kill(store.get(run.id).worker_pid, signal.SIGKILL)  # the caller (wrapper) lives on
        out, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, out + err
        assert "waiting: " in err and "finished at step 1/1" in out
        crashed = store.get(run.id)
        assert crashed.status == FAILED and "is gone" in crashed.message
        assert wrapper.poll() is None
    finally:
        os.killpg(wrapper.pid, signal.SIGKILL)
        wrapper.wait()


# --- 6. Ctrl-C and SIGTERM stop with a checkpoint ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_a_foreground_train_stops_it_with_a_checkpoint_and_resume_finishes(tmp_path, tiny_demo, signum):
    run_dir = tmp_path / "runs" / "sig"
    # as from a terminal: Ctrl-C's default action, also when this suite runs as a background job (which
    # starts with SIGINT ignored, and the CLI then rightly keeps ignoring it)
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", *TINY, "--set", "max_steps=200",
                             "--set", "save_steps=1000", "--set", "preview_steps=1000", "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        metrics = run_dir / "metrics.jsonl"
        wait_for(lambda: metrics.exists() and metrics.read_text().strip(), "the first step", timeout=120)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    name = signal.Signals(signum).name
    assert proc.returncode == 0, out + err
    run = RunStore(run_dir.parent).get("sig")
    assert run.status == STOPPED and f"stopped by {name}" in run.message
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts and (ckpts[-1] / "model.pt").is_file() and (ckpts[-1] / "optimizer.pt").is_file()
    step = int(ckpts[-1].name.split("-")[1])
    assert 1 <= step < 200 and run.step == step

    r = core("train", "--resume", str(run_dir), "--set", f"max_steps={step + 1}")
    assert r.returncode == 0, r.stdout + r.stderr
    done = RunStore(run_dir.parent).get("sig")
    assert done.status == FINISHED and done.step == step + 1 == done.total_steps
    assert json.loads((run_dir / "config.json").read_text())["max_steps"] == step + 1
    assert (run_dir / "checkpoints" / f"step-{step + 1:06d}" / "model.pt").is_file()


def test_sigterm_to_a_launcher_started_worker_stops_it_with_a_checkpoint(store):
    from core.runs import Launcher

    launcher = Launcher(store)
    run = launcher.submit("bg", {"entry": ENTRY, "fake": {"forever": True, "checkpoint_every": 0}}, "cpu", 10)
    wait_for(lambda: store.get(run.id).step >= 2 and store.get(run.id).worker_pid, "the worker to make progress")
    os.kill(store.get(run.id).worker_pid, signal.SIGTERM)
    wait_for(lambda: store.get(run.id).status == STOPPED, "the worker to stop")
    stopped = store.get(run.id)
    assert "stopped by SIGTERM" in stopped.message and f"checkpoint step-{stopped.step:06d}" in stopped.message
    assert store.last_checkpoint(run.id).step == stopped.step >= 2


# --- 3. the run index is rebuilt from the folders ----------------------------------------------------


@pytest.mark.slow
def test_deleting_runs_db_during_a_run_loses_no_run(store, tmp_path):
    from core.runs import Launcher

    launcher = Launcher(store)
    first = launcher.submit("first", {"entry": ENTRY, "fake": {"steps": 3, "step_s": 0.01}}, "cpu", 3)
    wait_for(lambda: store.get(first.id).status == FINISHED, "the first run", timeout=TIMEOUT_S)
    live = launcher.submit("live", {"entry": ENTRY, "fake": {"steps": 30, "step_s": 0.05}}, "cpu", 30)
    wait_for(lambda: store.get(live.id).step >= 2, "the live run to make progress")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.db_path}{suffix}").unlink(missing_ok=True)
    status = live.run_dir / "status.json"
    wait_for(lambda: json.loads(status.read_text())["status"] == FINISHED, "the live run to finish")
    assert len(store.read_metrics(live.id)) == 30 and "no such table" not in (live.run_dir / "log.txt").read_text()

    store.db_path.unlink()
    r = core("runs", "list", "--runs-dir", str(store.runs_dir))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows[first.id][1:3] == [FINISHED, "3/3"] and rows[live.id][1:3] == [FINISHED, "30/30"]
    assert len(RunStore(store.runs_dir).read_metrics(first.id)) == 3

    store.db_path.write_bytes(b"this is not a database" * 200)
    r = core("runs", "list", "--runs-dir", str(store.runs_dir))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(store.db_path) in r.stderr and "runs reindex" in r.stderr
    r = core("runs", "reindex", "--runs-dir", str(store.runs_dir))
    assert r.returncode == 0 and "moved to" in r.stdout and "indexed 2 runs" in r.stdout, r.stdout + r.stderr
    r = core("runs", "list", "--runs-dir", str(store.runs_dir))
    assert first.id in r.stdout and live.id in r.stdout and "30/30" in r.stdout


# --- 4. resume deletes only its own leftovers ------------------------------------------------------


def test_resume_deletes_only_its_own_partial_checkpoints_and_never_through_a_link(store, tmp_path):
    from core.runs import Launcher

    def failed_run(name):
        run = store.create_run(name, {"entry": ENTRY}, "cpu", 10)
        store.set_status(run.id, RUNNING)
        store.set_status(run.id, FAILED)
        return run

    run = failed_run("own")
    ckpts = run.run_dir / "checkpoints"
    (ckpts / ".tmp-step-000004-123").mkdir()
    (ckpts / ".old-step-000002-77").mkdir()
    (ckpts / ".git").mkdir()
    (ckpts / ".notes").mkdir()
    (ckpts / ".notes" / "keep.txt").write_text("mine")
    Launcher(store).resume_in_place(run.id)
    assert sorted(p.name for p in ckpts.iterdir()) == [".git", ".notes"]

    linked = failed_run("linked")
    outside = tmp_path / "elsewhere"
    (outside / ".tmp-step-000001-1").mkdir(parents=True)
    (outside / ".cache").mkdir()
    (linked.run_dir / "checkpoints").rmdir()
    (linked.run_dir / "checkpoints").symlink_to(outside)
    Launcher(store).resume_in_place(linked.id)
    assert sorted(p.name for p in outside.iterdir()) == [".cache", ".tmp-step-000001-1"]


# --- 5. a full disk is reported, the last good checkpoint kept ---------------------------------------


def test_full_disk_during_a_checkpoint_fails_the_run_with_the_reason_and_keeps_the_last_checkpoint(store):
    run = store.create_run("full", {"entry": ENTRY, "fake": {"steps": 10, "step_s": 0.01, "checkpoint_every": 2,
                                                             "disk_full_at": 4}}, "cpu", 10)
    with open(run.run_dir / "log.txt", "ab") as log:
        rc = subprocess.run([sys.executable, "-m", "core.runs.worker", "--run-dir", str(run.run_dir)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, timeout=TIMEOUT_S).returncode
    failed = store.get(run.id)
    assert rc == 1 and failed.status == FAILED
    first = failed.message.splitlines()[0]
    assert first.startswith("DiskFullError: no space left on ") and "needed ~" in first and "step-000002" in first
    names = sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())
    assert names == ["step-000002"]  # the partial step-4 folder is gone, step 2 intact


def test_a_write_error_on_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    from collections import namedtuple

    from core import checkpoints
    from core.runs import recorder as rec

    store = RunStore(tmp_path / "runs")
    run = store.create_run("full", {"entry": ENTRY}, "cpu", 10)
    recorder = rec.RunRecorder(run.run_dir, is_main=True)
    with recorder.save_checkpoint(1) as d:
        (d / "model.pt").write_bytes(b"x" * 3 * 2**20)
    usage = namedtuple("usage", "total used free")
    with monkeypatch.context() as m:
        m.setattr(checkpoints.shutil, "disk_usage", lambda p: usage(10 * 2**30, 10 * 2**30, 4096))
        with pytest.raises(checkpoints.DiskFullError, match=r"no space left on .* \(needed ~3 MB for a checkpoint"):
            with recorder.save_checkpoint(2) as d:
                (d / "model.pt").write_bytes(b"x" * 1000)
                raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1024 vs 960")
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with free space it is some other error
        with recorder.save_checkpoint(2):
            raise RuntimeError("unexpected pos 1 vs 2")
    assert [c.step for c in store.checkpoints(run.id)] == [1]
    assert [p.name for p in recorder.checkpoints_dir.iterdir()] == ["step-000001"]


def test_a_failure_that_cannot_be_written_to_runs_db_is_kept_in_status_json(store, monkeypatch):
    import sqlite3

    from core.runs import Launcher
    from core.runs import worker
    from core.checkpoints import DiskFullError

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = store.create_run("full", {"entry": ENTRY}, "cpu", 10)
    store.set_status(run.id, RUNNING, worker_pid=dead.pid, worker_start=None)

    def disk_io_error(*a, **k):
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as m:
        m.setattr(store, "try_set_status", disk_io_error)
        worker._fail(store, run.id, run.run_dir, DiskFullError("no space left on /dev/x (needed ~3 MB for a checkpoint)"))
    assert json.loads((run.run_dir / "status.json").read_text())["status"] == FAILED
    Launcher(store).mark_orphans()  # the worker is gone: its own account of the failure wins
    assert store.get(run.id).status == FAILED
    assert store.get(run.id).message.startswith("DiskFullError: no space left on /dev/x")


# --- 7. clear errors, no half-made runs -------------------------------------------------------------


def run_core(capsys, *argv: str) -> tuple[int, str]:
    """`python -m core ...` in this process (torch is already imported here): (exit code, stderr)."""
    from core.cli import main

    rc = main(list(argv))
    return rc, capsys.readouterr().err


def one_line_error(rc: int, err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_unreadable_checkpoints_are_one_line_errors_that_name_the_file(tmp_path):
    import torch

    from core.errors import CheckpointError
    from core.models import checkpoint

    text = tmp_path / "notes.pt"
    text.write_text("e" * 101 + "\nthis is not a checkpoint\n")
    empty = tmp_path / "empty.pt"
    empty.touch()
    evil = tmp_path / "optimizer.pt"
    torch.save({"optimizer": {"lr": Path("/etc/passwd")}}, evil)
    for path, needle in ((text, "is not a PyTorch checkpoint"), (empty, "is empty (0 bytes)"),
                         (evil, "holds pickled objects that are not allowed")):
        for load in (checkpoint.read_file, checkpoint.load_object):
            with pytest.raises(CheckpointError) as e:
                load(path)
            message = str(e.value)
            assert message.startswith(str(path)) and needle in message and "weights_only=False" not in message
            assert "\n" not in message


def test_weights_of_the_wrong_kind_are_an_error_at_load(tmp_path):
    import torch

    from core.errors import CheckpointError
    from core.models import checkpoint
    from tests.helpers import tiny_gpt, tiny_vq

    model = tiny_gpt()
    sd = model.state_dict()
    with pytest.raises(CheckpointError, match=r"^.*vq\.pt: not a LlamaGen GPT state dict .*pass a LlamaGen GPT"):
        checkpoint.check_gpt_architecture(model, tiny_vq().state_dict(), tmp_path / "vq.pt")
    with pytest.raises(CheckpointError) as e:
        checkpoint.check_gpt_architecture(tiny_gpt(dim=128, n_head=4), sd, "small.pt")
    assert str(e.value).count("(dim 128 x 2 layers)") == 1 and "found dim 64 x 2 layers" in str(e.value)
    ints = {k: v.to(torch.int32) for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=r"w\.safetensors: .* is int32, the model needs floating-point"):
        checkpoint.load_strict(tiny_gpt(), ints, "w.safetensors")
    nans = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in sd.items()}
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN/inf\)"):
        checkpoint.load_strict(tiny_gpt(), nans, "w.safetensors")
    checkpoint.load_strict(target := tiny_gpt(seed=1), {k: v.half() for k, v in sd.items()}, "w.safetensors")
    assert torch.allclose(target.state_dict()["tok_embeddings.weight"], sd["tok_embeddings.weight"].half().float())


@pytest.mark.parametrize("override, field", [
    ("learning_rate=fast", "learning_rate: must be a number, got 'fast'"),
    ("max_steps=-3", "max_steps: must be >= 1"),
    ("beta=-1", "beta: must be >= 0"),
    ("learning_rate=Infinity", "learning_rate: must be a finite number"),
    ("cache_tokens=no", "cache_tokens: must be true or false"),
    ("reward_chunk_size=2.5", "reward_chunk_size: must be a whole number"),
    ("num_workers=2", "num_workers: is no longer a setting"),
    ('preview_seeds=["a"]', "preview_seeds: must be a list of whole numbers"),
    ("preview_classes=[99]", "preview_classes: class ids [99] out of range"),
])
def test_bad_values_are_one_line_errors_and_create_no_run(tiny_demo, tmp_path, capsys, override, field):
    runs = tmp_path / "runs"
    rc, err = run_core(capsys, "train", *TINY, "--set", override, "--runs-dir", str(runs))
    one_line_error(rc, err, field)
    assert not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


def test_inputs_the_machine_cannot_run_are_refused_before_a_run_exists(tiny_demo, tmp_path, capsys):
    import torch

    runs = tmp_path / "runs"
    if not torch.cuda.is_available():
        rc, err = run_core(capsys, "train", *TINY, "--set", "device=cuda", "--runs-dir", str(runs))
        one_line_error(rc, err, "device: cuda requested but CUDA is not available", "device=cpu")
        rc, err = run_core(capsys, "train", *TINY, "--devices", "cuda:0", "--runs-dir", str(runs))
        one_line_error(rc, err, "--devices: cuda:0: this machine has no CUDA GPU")
    rc, err = run_core(capsys, "train", *TINY, "--set", "data=imagefolder", "--set", f"data_path={tmp_path}/absent",
                       "--runs-dir", str(runs))
    one_line_error(rc, err, f"{tmp_path}/absent")
    images = tmp_path / "images"
    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
        (images / cls / "0.jpg").write_text("not a jpeg")  # below the dataset's own threshold of 3 bad files
    rc, err = run_core(capsys, "train", *TINY, "--set", "data=imagefolder", "--set", f"data_path={images}",
                       "--set", "data_subset=null", "--set", "preview_classes=[0, 1]", "--runs-dir", str(runs))
    one_line_error(rc, err, str(images), "can be read as an image")
    assert not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_resume_refuses_broken_run_files_with_one_line_and_leaves_the_run_as_it_was(tiny_demo, tmp_path, capsys):
    runs = tmp_path / "runs"
    rc, _ = run_core(capsys, "train", *TINY, "--set", "max_steps=2", "--set", "save_steps=1",
                     "--run-dir", str(runs / "r"))
    assert rc == 0
    store = RunStore(runs)
    store.update("r", step=1)
    with store._write() as con:  # as if stopped after step 1 (the run finished; resume needs stopped/failed)
        con.execute("UPDATE runs SET status = 'stopped' WHERE id = 'r'")
    run_dir = runs / "r"
    config_text = (run_dir / "config.json").read_text()
    state = run_dir / "checkpoints" / "step-000002" / "trainer_state.json"
    state_text = state.read_text()

    (run_dir / "config.json").write_text(config_text[:-20])
    rc, err = run_core(capsys, "train", "--resume", str(run_dir))
    one_line_error(rc, err, str(run_dir / "config.json"), "is not valid JSON")
    (run_dir / "config.json").write_text(config_text.replace('"learning_rate": 1e-05', '"learning_rate": "fast"'))
    rc, err = run_core(capsys, "train", "--resume", str(run_dir))
    one_line_error(rc, err, str(run_dir / "config.json"), "learning_rate: must be a number", "fix the file")
    (run_dir / "config.json").write_text(config_text)
    rc, err = run_core(capsys, "train", "--resume", str(run_dir), "--set", "max_steps=-3")
    one_line_error(rc, err, "max_steps: must be >= 1")
    state.write_text(json.dumps({**json.loads(state_text), "step": "2"}))
    rc, err = run_core(capsys, "train", "--resume", str(run_dir))
    one_line_error(rc, err, str(state), "\"step\" is '2'")
    run = store.get("r")
    assert run.status == STOPPED and json.loads((run_dir / "config.json").read_text())["max_steps"] == 2


# --- 8. an exposed server ------------------------------------------------------------------------------


def test_login_is_rate_limited_with_a_lockout():
    import asyncio

    from app.safety import LoginGuard

    now = [0.0]
    slept = []

    async def sleep(s):
        slept.append(s)

    guard = LoginGuard([("ada", "secret")], clock=lambda: now[0], sleep=sleep)

    async def scenario():
        assert await guard.check("ada", "secret")
        results = [await guard.check("ada", f"guess{i}") for i in range(100)]
        assert not any(results) and sum(slept) >= 100 * LoginGuard.FAILURE_DELAY_S  # 100 wrong passwords: >= 100 s
        assert not await guard.check("ada", "secret") and guard.locked("ada") > 0  # locked out, even with the password
        now[0] += LoginGuard.MAX_LOCKOUT_S + 1
        assert await guard.check("ada", "secret")

    asyncio.run(scenario())


def test_job_sizes_are_bounded(store):
    from core.errors import ConfigError
    from core.runs import Launcher

    with pytest.raises(ConfigError, match="num_samples: 1e\\+12 is more than"):
        Launcher(store).submit("huge", {"entry": ENTRY, "num_samples": 10**12}, "cpu", 10**12)
    assert store.list_runs() == []


def test_worker_entry_must_be_a_project_entry_point(store, monkeypatch):
    monkeypatch.delenv("VAPI_WORKER_ENTRIES")
    run = store.create_run("evil", {"entry": "os:system"}, "cpu", 1)
    r = subprocess.run([sys.executable, "-m", "core.runs.worker", "--run-dir", str(run.run_dir)], cwd=ROOT,
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    failed = store.get(run.id)
    assert r.returncode == 1 and failed.status == FAILED
    assert failed.message.startswith("ConfigError: entry: 'os:system' is not a worker entry point of this project")


# --- 9. CPU jobs take turns, or share the cores ---------------------------------------------------------


def test_a_queued_run_says_what_it_waits_for(store):
    from core.runs import Launcher, QUEUED

    launcher = Launcher(store, grace_s=30)
    first = launcher.submit("first", {"entry": ENTRY, "fake": {"forever": True}}, "cpu", 10)
    second = launcher.submit("eval job", {"entry": ENTRY, "fake": {"steps": 1}}, "cpu", 1)
    waiting = store.get(second.id)
    assert waiting.status == QUEUED and waiting.message == f"waiting for run {first.id} (running) to free cpu"
    launcher.stop(first.id)
    wait_for(lambda: launcher.tick() or store.get(second.id).status == FINISHED, "the second run to start and end")
    assert not store.get(second.id).message.startswith("waiting")


def test_torch_work_beside_a_cpu_run_gets_a_share_of_the_cores_and_the_run_gives_it_up(store, monkeypatch):
    import torch

    from core.runs import Launcher
    from core.runs.threads import cpu_cores, cpu_share

    if cpu_cores() < 2:
        pytest.skip("needs 2 cores")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    run = Launcher(store).submit("cpu run", {"entry": ENTRY, "fake": {"forever": True, "report_threads": True}},
                                 "cpu", 10)
    threads = run.run_dir / "threads.txt"
    read = lambda: threads.exists() and threads.read_text()  # noqa: E731
    wait_for(lambda: read() == "2", "the run to report 2 threads")
    before = torch.get_num_threads()
    with cpu_share(store, "cpu") as mine:  # as the Compare tab samples beside the run
        assert mine == max(1, cpu_cores() // 2) == torch.get_num_threads()
        wait_for(lambda: read() == str(cpu_cores() - mine), "the run to give up the leased threads")
    assert torch.get_num_threads() == before
    wait_for(lambda: read() == "2", "the run to take its threads back")
    with cpu_share(store, "cuda:0") as mine:
        assert mine == 0


def test_an_index_recreated_empty_beside_run_folders_is_filled_again(store):
    import sqlite3

    run = store.create_run("kept", {"entry": ENTRY}, "cpu", 7)
    with sqlite3.connect(store.db_path) as con:  # what an older version left: the schema, no rows
        con.execute("DELETE FROM runs")
    assert [r.id for r in RunStore(store.runs_dir).list_runs()] == [run.id]
