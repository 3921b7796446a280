"""Issue 14: runs never hurt anything else and never lose anything.

Process scope of a stop, crashed foreground runs, Ctrl-C / SIGTERM, the run index rebuilt from the
folders, resume cleaning only its own leftovers, a full disk, clear errors. Fake workers
(tests/fake_worker.py) where the trainer does not matter; the tiny demo where it does."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import sys
import time
from contextlib import ExitStack, contextmanager
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


def crafted_run_folder(runs_dir: Path, name: str, pid: int, pid_start: int | None, started_ago: float) -> Path:
    """A run folder as anyone who can write into the runs dir could make it (or copy it in from another
    machine): status `stopping` on this host, past its stop deadline, naming another process."""
    folder = runs_dir / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"entry": ENTRY}))
    now = time.time()
    status = dict(id=name, name=name, status="stopping", devices="cpu", host=socket.gethostname(), total_steps=10,
                  step=3, queue_seq=1, resume=0, created_at=now - started_ago, queued_at=now - started_ago,
                  started_at=now - started_ago, ended_at=None, updated_at=now, pid=pid, pid_start=pid_start,
                  worker_pid=pid, worker_start=pid_start, stop_requested_at=now - started_ago,
                  stop_deadline=now - started_ago / 2, message="stop requested", ran_before=0, kind="train")
    (folder / "status.json").write_text(json.dumps(status))
    return folder


def test_a_crafted_run_folder_never_gets_a_foreign_process_killed(tmp_path):
    from app.context import Ticker
    from core.runs import Launcher

    runs_dir = tmp_path / "runs"
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)  # leads a session, like a launched worker
    try:
        start = process_start_time(sleeper.pid)
        crafted_run_folder(runs_dir, "copied-start", sleeper.pid, start, 100.0)  # pid_start copied from /proc
        crafted_run_folder(runs_dir, "null-start", sleeper.pid, None, 100.0)
        crafted_run_folder(runs_dir, "just-started", sleeper.pid, start, 1.0)  # inside the spawn grace period
        r = core("runs", "reindex", "--runs-dir", str(runs_dir))
        assert r.returncode == 0 and "indexed 3 runs" in r.stdout, r.stdout + r.stderr
        r = core("runs", "stop", "copied-start", "--grace", "0", "--runs-dir", str(runs_dir))
        assert sleeper.poll() is None, r.stdout + r.stderr
        store = RunStore(runs_dir)
        ticker = Ticker(Launcher(store), threading.RLock(), interval=0.1)  # the UI's background scheduler
        ticker.start()
        try:
            time.sleep(2.0)
        finally:
            ticker.stop()
        assert ticker.last_error == ""
        assert sleeper.poll() is None and process_alive(sleeper.pid, start)
        for name in ("copied-start", "null-start"):
            run = store.get(name)
            assert run.status == FAILED and "is not this run's worker" in run.message
            assert "nothing was signalled" in run.message
        assert store.get("just-started").status == "stopping"  # not proven ours: waited for, never killed
    finally:
        sleeper.kill()
        sleeper.wait()


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

        errors = tmp_path / "stderr.txt"
        with open(errors, "w") as stderr:
            waiting = subprocess.Popen([sys.executable, "-m", "core", "train", *TINY, "--set", "max_steps=1",
                                        "--runs-dir", str(store.runs_dir), "--wait"], cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=stderr, text=True)
        wait_for(lambda: "waiting: " in errors.read_text(), "the second train to wait", timeout=120)
        time.sleep(1.0)
        assert waiting.poll() is None and len(store.list_runs()) == 1  # waits without queueing a run
        os.kill(store.get(run.id).worker_pid, signal.SIGKILL)  # the caller (wrapper) lives on
        out, _ = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, out + errors.read_text()
        assert "finished at step 1/1" in out
        crashed = store.get(run.id)
        assert crashed.status == FAILED and "is gone" in crashed.message
        assert wrapper.poll() is None
    finally:
        os.killpg(wrapper.pid, signal.SIGKILL)
        wrapper.wait()


# --- device claims are per machine, not per runs dir ---------------------------------------------


def test_two_runs_dirs_never_share_a_device_and_the_queue_waits_for_the_other(tmp_path):
    from core.runs import Launcher

    first, second = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    holder = Launcher(first).submit("holder", {"entry": ENTRY, "fake": {"forever": True}}, "cpu", 10)
    wait_for(lambda: first.get(holder.id).step >= 1, "the first runs dir's run to step")
    try:
        queued = Launcher(second).submit("queued", {"entry": ENTRY, "fake": {"steps": 2, "step_s": 0.01}}, "cpu", 2)
        assert queued.status == "queued", queued
        assert queued.message.startswith(f"waiting for cpu, used by run {holder.run_dir} of another runs dir")
        time.sleep(1.0)
        Launcher(second).tick()
        assert second.get(queued.id).status == "queued"  # still waits: the device is held machine-wide
    finally:
        Launcher(first, grace_s=10).stop(holder.id)
    wait_for(lambda: first.get(holder.id).status == STOPPED, "the holder to stop")
    wait_for(lambda: Launcher(second).tick() is not None and second.get(queued.id).status == FINISHED,
             "the second runs dir's run to start once the device is free")


@pytest.mark.slow
def test_train_in_another_runs_dir_is_refused_or_waits_for_the_device(tmp_path, tiny_demo):
    from core.runs import Launcher

    first = RunStore(tmp_path / "a")
    holder = Launcher(first).submit("holder", {"entry": ENTRY, "fake": {"forever": True}}, "cpu", 10)
    wait_for(lambda: first.get(holder.id).step >= 1, "the first runs dir's run to step")
    other = tmp_path / "b"
    try:
        r = core("train", *TINY, "--set", "max_steps=1", "--runs-dir", str(other))
        assert r.returncode == 3, r.stdout + r.stderr
        assert f"used by run {holder.run_dir}" in r.stderr and "--wait" in r.stderr
        assert f"runs stop {holder.id} --runs-dir {first.runs_dir}" in r.stderr
        assert not [p for p in other.iterdir() if p.is_dir()]  # nothing made
        errors = tmp_path / "stderr.txt"
        with open(errors, "w") as stderr:
            waiting = subprocess.Popen([sys.executable, "-m", "core", "train", *TINY, "--set", "max_steps=1",
                                        "--runs-dir", str(other), "--wait"], cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=stderr, text=True)
        wait_for(lambda: "waiting: " in errors.read_text(), "the second train to wait for the device", timeout=120)
        time.sleep(1.0)
        assert waiting.poll() is None and not [p for p in other.iterdir() if p.is_dir()]
    finally:
        Launcher(first, grace_s=10).stop(holder.id)
    out, _ = waiting.communicate(timeout=300)
    assert waiting.returncode == 0 and "finished at step 1/1" in out, out + errors.read_text()


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


@pytest.mark.slow
def test_closing_the_terminal_stops_a_foreground_train_with_a_checkpoint_and_resume_below_it_is_refused(tmp_path, tiny_demo):
    """A real SIGHUP, as when the terminal or SSH session closes: the terminal is gone too (its pipes
    closed), and the run stops at the next step boundary with a checkpoint, like SIGTERM."""
    run_dir = tmp_path / "runs" / "hup"
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", *TINY, "--set", "max_steps=5000",
                             "--set", "save_steps=10000", "--set", "preview_steps=10000", "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        wait_for(lambda: steps_done(run_dir) >= 3, "the first steps", timeout=120)
        proc.stdout.close()
        proc.stderr.close()
        proc.send_signal(signal.SIGHUP)
        rc = proc.wait(timeout=120)
    finally:
        proc.kill()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == STOPPED and "stopped by SIGHUP" in status["message"], (rc, status)
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert ckpts and (ckpts[-1] / "model.pt").is_file() and (ckpts[-1] / "optimizer.pt").is_file()
    assert int(ckpts[-1].name.split("-")[1]) == status["step"] >= 3
    assert "SIGHUP: stopping at the next step boundary" in (run_dir / "log.txt").read_text()
    assert rc == 0

    # resuming it with max_steps below the step it resumes from is refused, naming the field; nothing changes
    before = {name: (run_dir / name).read_text() for name in ("config.json", "status.json", "metrics.jsonl")}
    r = core("train", "--resume", str(run_dir), "--set", f"max_steps={status['step'] - 1}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: max_steps: "), r.stdout + r.stderr
    assert f"below step {status['step']}" in lines[0]
    assert {name: (run_dir / name).read_text() for name in before} == before


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

    store.db_path.write_bytes(b"this is not a database" * 200)  # a reader rebuilds a corrupt index by itself
    r = core("runs", "list", "--runs-dir", str(store.runs_dir))
    assert r.returncode == 0 and first.id in r.stdout and live.id in r.stdout and "30/30" in r.stdout, r.stderr
    assert "moved to runs.db.corrupt-" in r.stderr and list(store.runs_dir.glob("runs.db.corrupt-*"))
    store.db_path.write_bytes(b"this is not a database" * 200)
    r = core("runs", "reindex", "--runs-dir", str(store.runs_dir))
    assert r.returncode == 0 and "moved to" in r.stdout and "indexed 2 runs" in r.stdout, r.stdout + r.stderr


def train_in_background(run_dir: Path, steps: int, *extra: str) -> subprocess.Popen:
    """A real foreground `train` of the tiny demo (a checkpoint every 50 steps), as a subprocess."""
    return subprocess.Popen([sys.executable, "-m", "core", "train", *TINY, "--set", f"max_steps={steps}",
                             "--set", "save_steps=50", "--set", "preview_steps=1000", "--run-dir", str(run_dir),
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def steps_done(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _until_done(cmd: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess:
    """`cmd` again until it succeeds or `timeout` passes: a remount read-only or an unmount is refused ("busy")
    while the live worker has the file open for writing, which it does for a moment at every step."""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0 or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


@contextmanager
def read_only(path: Path):
    """`path` read-only for every process, root included (a read-only bind mount over the file)."""
    r = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"a read-only bind mount needs mount permission (root): {r.stderr.strip()}")
    try:  # in two steps: `mount --bind -o ro` once left a writable bind mount behind when its second half failed
        r = _until_done(["mount", "-o", "remount,bind,ro", str(path)])
        assert r.returncode == 0, f"{path}: the bind mount could not be made read-only: {r.stderr.strip()}"
        yield
    finally:
        if _until_done(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], check=True)  # detached now, gone when the worker lets go


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["garbage", "truncated", "read-only"])
def test_a_broken_index_mid_run_never_stops_the_worker(tmp_path, tiny_demo, fault):
    """The real fault on the real trainer: runs.db overwritten with garbage, truncated, or made read-only
    while the worker steps. The run finishes with its checkpoint; the folder says so; the index follows."""
    runs = tmp_path / "runs"
    run_dir = runs / "live"
    db = runs / "runs.db"
    proc = train_in_background(run_dir, 200)
    with ExitStack() as stack:
        try:
            wait_for(lambda: steps_done(run_dir) >= 3, "the first steps", timeout=120)
            if fault == "garbage":
                with open(db, "r+b") as f:
                    f.write(b"\xde\xad garbage, not SQLite " * 400)
            elif fault == "truncated":
                os.truncate(db, 0)
            else:
                stack.enter_context(read_only(db))
            assert steps_done(run_dir) < 200  # the fault struck while the run was stepping
            out, err = proc.communicate(timeout=300)
            if fault == "read-only":  # a reader rebuilds the index from the folders, privately
                r = core("runs", "list", "--runs-dir", str(runs))
                assert r.returncode == 0 and "cannot be written (read-only)" in r.stderr, r.stdout + r.stderr
                assert r.stdout.splitlines()[1].split()[:3] == ["live", FINISHED, "200/200"], r.stdout
        finally:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert "finished at step 200/200" in out
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == FINISHED and status["step"] == 200
    assert (run_dir / "checkpoints" / "step-000200" / "model.pt").is_file()
    assert steps_done(run_dir) == 200
    assert "Traceback" not in (run_dir / "log.txt").read_text()
    if fault == "read-only":
        assert "run index not written" in err and "readonly" in err
    r = core("runs", "list", "--runs-dir", str(runs))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].split()[:3] == ["live", FINISHED, "200/200"], r.stdout
    assert len(RunStore(runs).read_metrics("live")) == 200


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


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_kb) -> a real, small tmpfs: a disk that really fills up (needs root; skipped otherwise)."""
    mounted = []

    def mount(size_kb: int) -> Path:
        where = tmp_path / "disk"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"a real full disk needs a tmpfs mount (root): {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave_bytes: int) -> None:
    """Fill the file system of `disk` up, then give back `leave_bytes`."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "metrics"])
def test_a_full_disk_is_recorded_in_the_run_folder_and_named_and_the_last_checkpoint_kept(small_disk, tiny_demo, where):
    """The real trainer, its runs dir (runs.db included) on a real tmpfs that fills up after the checkpoint
    of step 50: room for some steps but not another checkpoint, or none left at all."""
    runs = small_disk(8192)
    run_dir = runs / "full"
    proc = train_in_background(run_dir, 400)
    try:
        wait_for(lambda: (run_dir / "checkpoints" / "step-000050" / "model.pt").is_file(), "the first checkpoint",
                 timeout=120)
        fill(runs, 1_000_000 if where == "checkpoint" else 0)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == FAILED, status
    first = status["message"].splitlines()[0]
    assert "no space left on tmpfs (mounted at " in first, first
    if where == "checkpoint":
        assert first.startswith("DiskFullError: ") and "needed ~" in first and "step-000050 is kept" in first
    else:
        assert "(writing metrics.jsonl)" in first or "(writing status.json)" in first, first
    last = out.strip().splitlines()[-1]
    assert last.startswith("run full: failed at step ") and "no space left on " in last, out + err
    assert "reindex" not in out + err and "is gone" not in status["message"]
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names[0] == "step-000050" and not any(n.startswith(".tmp") for n in names)
    assert (run_dir / "checkpoints" / "step-000050" / "optimizer.pt").is_file()

    (runs / "filler").unlink()  # space again: the index takes the run's end from its folder
    r = core("runs", "show", "full", "--runs-dir", str(runs))
    assert r.returncode == 0 and "failed" in r.stdout and "no space left on tmpfs" in r.stdout, r.stdout + r.stderr


def test_torch_s_write_error_on_a_real_full_disk_is_named_as_such(small_disk):
    """torch.save into a checkpoint on a real full tmpfs: torch's own write error ("file write failed" /
    "unexpected pos") becomes a DiskFullError naming the file system; the earlier checkpoint stays."""
    import torch

    from core import checkpoints
    from core.runs import recorder as rec

    store = RunStore(small_disk(3072))
    run = store.create_run("full", {"entry": ENTRY}, "cpu", 10)
    recorder = rec.RunRecorder(run.run_dir, is_main=True)
    with recorder.save_checkpoint(1) as d:
        torch.save({"w": torch.zeros(2**17)}, d / "model.pt")  # 512 KiB
    with pytest.raises(checkpoints.DiskFullError, match=r"no space left on tmpfs \(mounted at .*\) \(needed ~\d+ MB"):
        with recorder.save_checkpoint(2) as d:
            torch.save({"w": torch.zeros(2**20)}, d / "model.pt")  # 4 MiB on a 3 MiB disk
    assert [c.step for c in store.checkpoints(run.id)] == [1]
    assert [p.name for p in recorder.checkpoints_dir.iterdir()] == ["step-000001"]


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


def test_login_is_throttled_per_client_and_never_locks_the_owner_out():
    import asyncio

    from app.safety import LoginGuard

    now = [0.0]
    slept = []

    async def sleep(s):
        slept.append(s)
        now[0] += s

    guard = LoginGuard([("ada", "secret")], clock=lambda: now[0], sleep=sleep)

    async def scenario():
        assert await guard.check("ada", "secret", client="owner")
        results = [await guard.check(f"name{i % 10}", f"guess{i}", client="attacker") for i in range(30)]
        assert not any(results)
        assert now[0] >= 20 * LoginGuard.MAX_DELAY_S  # 30 wrong passwords from one address: backoff to a minute each
        start = now[0]
        assert await guard.check("ada", "secret", client="owner") and now[0] == start  # another client: at once
        assert guard.wait("attacker") > 0 and await guard.check("ada", "secret", client="attacker")  # after its wait
        assert now[0] - start <= LoginGuard.MAX_DELAY_S

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
