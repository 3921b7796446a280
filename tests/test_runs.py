"""Run manager: status machine, queue per device set, stop (graceful and forced), orphans, resume,
delete, pid reuse, and the `python -m core runs` commands. Workers are real detached processes
running tests/fake_worker.py (about 50 ms per step); every wait polls with a timeout."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from accelerate.commands.launch import launch_command_parser

from core.errors import ConfigError, UserError
from core.runs import (
    ACTIVE, FAILED, FINISHED, QUEUED, RUNNING, STATUSES, STOPPED, STOPPING, Launcher, RunNotFoundError,
    RunRecorder, RunStateError, RunStore,
)
from core.runs.launcher import ACCELERATE_CONFIG, group_alive, kill_process_tree, worker_command
from core.runs.store import METRICS_FILE, STOP_FILE, process_alive, process_start_time
from tests import helpers

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "tests.fake_worker:run"
TIMEOUT_S = 60.0  # generous: a loaded 2-core machine starts Python processes slowly


def fake(**options) -> dict:
    return {"entry": ENTRY, "fake": options}


def wait_for(predicate, what: str, timeout: float = TIMEOUT_S, tick: Launcher | None = None):
    return helpers.wait_for(predicate, what, timeout, tick=tick)


def metrics_file_steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run.run_dir / METRICS_FILE).read_text().splitlines()]


@pytest.fixture(autouse=True)
def _fake_entry_allowed(monkeypatch):
    # the fake trainer is not one of the project's worker entry points: allow it for these workers
    monkeypatch.setenv("VAPI_WORKER_ENTRIES", f"{ENTRY},tests.fake_worker:nope")


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "runs")


@pytest.fixture
def launcher(store):
    launcher = Launcher(store, grace_s=60.0)
    yield launcher
    for run in store.list_runs([QUEUED]):
        store.try_set_status(run.id, STOPPED, expect={QUEUED})
    for run in store.list_runs(ACTIVE):
        if os.getpid() not in (run.pid, run.worker_pid):
            kill_process_tree(run.pid, run.pid_start, [(run.worker_pid, run.worker_start)])


# --- store -------------------------------------------------------------------------------------

LEGAL = {  # the status machine of the design, written out independently of store.TRANSITIONS
    (QUEUED, RUNNING), (QUEUED, STOPPED),
    (RUNNING, STOPPING), (RUNNING, FINISHED), (RUNNING, FAILED),
    (STOPPING, STOPPED), (STOPPING, FAILED),
    (STOPPED, QUEUED), (FAILED, QUEUED), (FINISHED, QUEUED),  # finished -> queued: continued for more steps
}
PATH_TO = {QUEUED: [], RUNNING: [RUNNING], STOPPING: [RUNNING, STOPPING], FINISHED: [RUNNING, FINISHED],
           STOPPED: [STOPPED], FAILED: [RUNNING, FAILED]}


def test_status_machine_allows_exactly_the_designed_transitions(store):
    for src in STATUSES:
        for dst in STATUSES:
            run = store.create_run(f"{src}-{dst}", fake(), "cpu", 5)
            for status in PATH_TO[src]:
                store.set_status(run.id, status)
            assert store.get(run.id).status == src
            if (src, dst) in LEGAL:
                assert store.set_status(run.id, dst).status == dst
            else:
                with pytest.raises(RunStateError, match=f"cannot go from {src} to {dst}"):
                    store.set_status(run.id, dst)
                assert store.get(run.id).status == src


def test_run_time_adds_up_over_resumes(store):
    run = store.create_run("a", fake(), "cpu", 5)
    now = time.time()
    store.set_status(run.id, RUNNING, started_at=now - 100)
    store.set_status(run.id, FAILED, ended_at=now)
    assert store.get(run.id).ran_seconds == pytest.approx(100)
    store.set_status(run.id, QUEUED)
    assert store.get(run.id).ran_before == pytest.approx(100)
    store.set_status(run.id, RUNNING, started_at=now - 30)
    assert store.get(run.id).ran_seconds == pytest.approx(130, abs=5)  # 100 s before the resume + 30 s since


def test_a_version_1_index_gains_the_run_time_column(tmp_path):
    import sqlite3

    from core.runs.store import RunStore

    con = sqlite3.connect(tmp_path / "runs.db")
    con.executescript("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, devices TEXT NOT NULL, "
                      "host TEXT NOT NULL, total_steps INTEGER NOT NULL, step INTEGER NOT NULL DEFAULT 0, queue_seq INTEGER NOT NULL, "
                      "resume INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, queued_at REAL, started_at REAL, ended_at REAL, "
                      "updated_at REAL NOT NULL, pid INTEGER, pid_start INTEGER, worker_pid INTEGER, worker_start INTEGER, "
                      "stop_requested_at REAL, stop_deadline REAL, message TEXT NOT NULL DEFAULT '');"
                      "PRAGMA user_version=1;")
    con.close()
    store = RunStore(tmp_path)
    run = store.create_run("a", fake(), "cpu", 5)
    assert store.get(run.id).ran_before == 0


def test_a_run_records_its_kind_and_a_version_2_index_gains_it_from_the_configs(tmp_path):
    from core.runs import kinds

    store = RunStore(tmp_path)
    made = {store.create_run("train", fake(), "cpu", 5).id: "train",
            store.create_run("old eval", {"entry": "core.eval.jobs:run_eval"}, "cpu", 5).id: "eval",
            store.create_run("shift", {"entry": kinds.EMBEDDINGS_ENTRY}, "cpu", 5).id: "embeddings",
            store.create_run("no entry", {}, "cpu", 5).id: "train"}
    assert {r.id: r.kind for r in store.list_runs()} == made
    assert json.loads((store.run_dir(next(iter(made))) / "status.json").read_text())["kind"] == "train"
    con = sqlite3.connect(store.db_path)  # the index as schema 2 left it: no kind column
    con.executescript("ALTER TABLE runs DROP COLUMN kind; PRAGMA user_version=2;")
    con.close()
    assert {r.id: r.kind for r in RunStore(tmp_path).list_runs()} == made  # migrated in place
    store.db_path.unlink()  # and rebuilt from the folders
    assert {r.id: r.kind for r in RunStore(tmp_path).list_runs()} == made


def test_each_kind_has_one_home_and_old_entry_names_still_resume():
    import importlib

    from core.eval import eval_job, shift_job
    from core.runs import kinds
    from core.runs.worker import ENTRY_POINTS, resolve_entry

    assert ENTRY_POINTS == set(kinds.ENTRY_KINDS) and set(kinds.RENAMED.values()) <= ENTRY_POINTS
    assert set(kinds.KINDS) == {"train", "eval", "embeddings", "diagnose", "sweep"}
    code = {p: p.read_text() for d in ("core", "app", "benchmarks") for p in (ROOT / d).rglob("*.py")}
    for kind in kinds.REGISTRY.values():
        module, func = kind.entry.split(":")
        assert callable(getattr(importlib.import_module(module), func)), kind.entry
        for spec in filter(None, (kind.config, kind.check)):
            module, name = spec.split(":")
            assert hasattr(importlib.import_module(module), name), spec
        homes = [str(p.relative_to(ROOT)) for p, text in code.items() if f'"{kind.entry}"' in text]
        assert homes == ["core/runs/kinds.py"], (kind.entry, homes)  # each entry string written once
    for old, new in kinds.RENAMED.items():
        assert kinds.current(old) == new and kinds.kind_of(old) == kinds.kind_of(new) != kinds.TRAIN
    assert kinds.current(ENTRY) == ENTRY and kinds.kind_of(ENTRY) == kinds.TRAIN
    # a run made before the split resumes with the moved function
    assert resolve_entry({"entry": "core.eval.jobs:run_eval"}) is eval_job.run_eval
    assert resolve_entry({"entry": "core.eval.jobs:run_embeddings"}) is shift_job.run_embeddings


def test_a_job_s_results_are_rendered_through_its_kind(store):
    from app import views
    from core.runs import kinds

    diagnosis = {"kl_mean": 0.25, "kl_first_token": 0.5, "teacher_forced_reward": {"paired_gain": 0.01,
                 "paired_gain_std": 0.002}, "off_manifold_rate": {"base": 0.1, "aligned": 0.08, "real": 0.05},
                 "cfg_sweep": [{"cfg_scale": 1.0, "base": {"demo_fid": 30.0}, "aligned": {"demo_fid": 28.0}}]}
    run = store.create_run("diag", {"entry": kinds.DIAGNOSE_ENTRY}, "cpu", 4)
    assert "diagnose job" in views.job_results(store, run) and "Evaluate" in views.job_results(store, run)
    (run.run_dir / "results.json").write_text(json.dumps(diagnosis))
    text = views.job_results(store, run)
    assert text.startswith("**diagnose job results** (also in the **Evaluate** tab)"), text
    assert "mean 0.25" in text and "+0.01" in text and "base 30 → aligned 28" in text and "Embeddings" not in text
    assert views.job_results(store, store.create_run("train", {"entry": kinds.TRAIN_ENTRY}, "cpu", 4)) is None


def test_requeue_clears_the_previous_attempt_and_joins_the_end_of_the_queue(store):
    a = store.create_run("a", fake(), "cpu", 5)
    b = store.create_run("b", fake(), "cpu", 5)
    store.set_status(a.id, RUNNING, pid=123, pid_start=456)
    store.set_status(a.id, FAILED, message="boom")
    again = store.set_status(a.id, QUEUED)
    assert (again.pid, again.pid_start, again.started_at, again.ended_at) == (None, None, None, None)
    assert again.queue_seq > b.queue_seq
    assert [r.id for r in store.claim_startable()] == [b.id]
    assert json.loads((a.run_dir / "status.json").read_text())["status"] == QUEUED


def test_claim_starts_free_runs_and_keeps_queue_order_per_device(store):
    busy = store.create_run("busy", fake(), "cuda:0", 5)
    store.set_status(busy.id, RUNNING)
    wide = store.create_run("wide", fake(), "cuda:0,1", 5)   # waits for cuda:0 ...
    narrow = store.create_run("narrow", fake(), "cuda:1", 5)  # ... and holds cuda:1 against later runs
    other = store.create_run("other", fake(), "cuda:2", 5)
    cpu = store.create_run("cpu", fake(), "cpu", 5)
    assert [r.id for r in store.claim_startable()] == [other.id, cpu.id]
    assert store.claim_startable() == []
    store.set_status(busy.id, FAILED)
    assert [r.id for r in store.claim_startable()] == [wide.id]
    assert store.get(narrow.id).status == QUEUED
    with pytest.raises(RunStateError, match="used by run"):
        store.claim(narrow.id)


def test_create_run_writes_the_folder_and_validates_its_inputs(store):
    config = fake(steps=3)
    run = store.create_run("My run: demo/c2i", config, "cuda:1,0", 3)
    assert re.fullmatch(r"\d{8}-\d{6}-my-run-demo-c2i-[0-9a-f]{4}", run.id)
    assert run.status == QUEUED and run.devices == "cuda:0,1" and run.total_steps == 3
    assert json.loads((run.run_dir / "config.json").read_text()) == config
    assert json.loads((run.run_dir / "status.json").read_text())["id"] == run.id
    for name in ("log.txt", "metrics.jsonl", "checkpoints", "samples"):
        assert (run.run_dir / name).exists(), name
    assert store.find(run.id[-4:]).id == run.id
    with sqlite3.connect(store.db_path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(RunNotFoundError):
        store.find("no-such-run")
    bad = [(dict(name=""), "name"), (dict(devices="gpu0"), "devices"), (dict(devices="cuda:x"), "devices"),
           (dict(total_steps=0), "total_steps"), (dict(config={"x": object()}), "config")]
    for change, field in bad:
        kwargs = dict(name="x", config=fake(), devices="cpu", total_steps=3) | change
        with pytest.raises(ConfigError) as e:
            store.create_run(**kwargs)
        assert e.value.field == field
    assert len(store.list_runs()) == 1


def test_worker_command_for_cpu_one_gpu_and_several_gpus(tmp_path):
    argv, env = worker_command(tmp_path, "cpu")
    assert argv == [sys.executable, "-m", "core.runs.worker", "--run-dir", str(tmp_path)]
    assert env == {"CUDA_VISIBLE_DEVICES": ""}
    argv, env = worker_command(tmp_path, "cuda:3", resume=True)
    assert argv == [sys.executable, "-m", "core.runs.worker", "--run-dir", str(tmp_path), "--resume"]
    assert env == {"CUDA_VISIBLE_DEVICES": "3"}
    argv, env = worker_command(tmp_path, "cuda:2,5", port=29611)
    assert argv == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
                    "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--gpu_ids", "2,5", "--main_process_port", "29611",
                    "-m", "core.runs.worker", "--run-dir", str(tmp_path)]
    assert env == {"CUDA_VISIBLE_DEVICES": "2,5"}
    argv, _ = worker_command(tmp_path, "cuda:0,1", resume=True)
    assert int(argv[argv.index("--main_process_port") + 1]) > 0
    parsed = launch_command_parser().parse_args(argv[3:])
    assert (parsed.multi_gpu, parsed.num_processes, parsed.gpu_ids, parsed.module) == (True, 2, "0,1", True)
    assert parsed.training_script == "core.runs.worker"
    assert parsed.training_script_args == ["--run-dir", str(tmp_path), "--resume"]


def test_recorder_metrics_checkpoints_and_trimming(store):
    run = store.create_run("rec", fake(), "cpu", 10)
    store.set_status(run.id, RUNNING)
    recorder = RunRecorder(run.run_dir, is_main=True)
    for step in range(1, 8):
        recorder.log_metrics(step, {"loss": 1.0 / step})
    assert [p["step"] for p in store.read_metrics(run.id, after_step=5)] == [6, 7]
    assert store.read_metrics(run.id, after_step=7) == []
    assert store.read_metrics(run.id)[2]["loss"] == pytest.approx(1 / 3)
    assert metrics_file_steps(run) == list(range(1, 8))
    assert store.get(run.id).step == 7
    recorder.set_progress(7, 12)
    assert store.get(run.id).total_steps == 12
    with pytest.raises(ValueError, match="reserved"):
        recorder.log_metrics(8, {"step": 1.0})

    RunRecorder(run.run_dir, is_main=False).log_metrics(9, {"loss": 0.0})
    assert store.latest_metrics(run.id)["step"] == 7

    assert not recorder.should_stop()
    store.request_stop(run.id)
    assert recorder.should_stop()

    with recorder.save_checkpoint(5) as d:
        (d / "w.txt").write_text("five")
    with pytest.raises(RuntimeError):
        with recorder.save_checkpoint(7) as d:
            raise RuntimeError("disk full")
    with pytest.raises(ValueError, match="differs"):
        with recorder.save_checkpoint(6) as d:
            (d / "trainer_state.json").write_text('{"step": 4}')
    assert [c.step for c in store.checkpoints(run.id)] == [5]
    assert sorted(p.name for p in recorder.checkpoints_dir.iterdir()) == ["step-000005"]
    with recorder.save_checkpoint(5) as d:
        (d / "w.txt").write_text("five again")
    assert (store.last_checkpoint(run.id).path / "w.txt").read_text() == "five again"

    for step in (0, 5, 7):
        recorder.sample_path(step).write_bytes(b"png")
    (recorder.checkpoints_dir / ".tmp-step-000009-1").mkdir()
    with open(run.run_dir / METRICS_FILE, "a") as f:
        f.write('{"step": 8, "ti')  # a line torn by a kill
    assert store.trim_after(run.id, 5) == 2
    assert [p["step"] for p in store.read_metrics(run.id)] == [1, 2, 3, 4, 5]
    assert metrics_file_steps(run) == [1, 2, 3, 4, 5]
    assert [s for s, _ in store.samples(run.id)] == [0, 5]
    assert sorted(p.name for p in recorder.checkpoints_dir.iterdir()) == ["step-000005"]


# --- processes ---------------------------------------------------------------------------------


def test_queue_two_cpu_runs_start_in_order_and_worker_exit_starts_the_next(store, launcher):
    a = launcher.submit("a", fake(steps=10), "cpu", 10)
    b = launcher.submit("b", fake(steps=2), "cpu", 2)
    c = launcher.submit("c", fake(steps=2), "cuda:0", 2)  # other devices: starts at once
    assert (a.status, b.status, c.status) == (RUNNING, QUEUED, RUNNING)
    # no tick() from here on: the worker of a starts b when it ends
    b = wait_for(lambda: (r := store.get(b.id)).status == FINISHED and r, "b to finish")
    a = store.get(a.id)
    assert a.status == FINISHED and a.step == 10 and a.message == "finished at step 10"
    assert b.started_at >= a.ended_at
    assert wait_for(lambda: store.get(c.id).status == FINISHED, "c to finish")
    assert [p["step"] for p in store.read_metrics(a.id)] == list(range(1, 11))
    assert [ck.step for ck in store.checkpoints(a.id)] == [5, 10]


def test_stop_is_graceful_and_leaves_a_checkpoint(store, launcher):
    run = launcher.submit("stop me", fake(forever=True, checkpoint_every=0), "cpu", 1000)
    wait_for(lambda: store.get(run.id).step >= 3, "three steps")
    stopping = launcher.stop(run.id)
    assert stopping.status == STOPPING and (run.run_dir / STOP_FILE).exists()
    assert launcher.stop(run.id).status == STOPPING  # a second request changes nothing
    done = wait_for(lambda: (r := store.get(run.id)).status == STOPPED and r, "the worker to stop itself")
    last = store.latest_metrics(run.id)["step"]
    assert store.last_checkpoint(run.id).step == last == done.step
    assert done.message == f"stopped at step {last} (checkpoint step-{last:06d})"
    wait_for(lambda: not process_alive(done.worker_pid, done.worker_start), "the worker process to exit")
    with pytest.raises(RunStateError, match="only queued or running"):
        launcher.stop(run.id)


def test_stop_of_a_queued_run_cancels_it(store, launcher):
    blocker = launcher.submit("blocker", fake(forever=True), "cpu", 1000)
    queued = launcher.submit("waiting", fake(), "cpu", 5)
    assert launcher.stop(queued.id).status == STOPPED
    assert store.get(queued.id).started_at is None
    launcher.stop(blocker.id)
    wait_for(lambda: store.get(blocker.id).status == STOPPED, "the blocker to stop")
    assert store.get(queued.id).status == STOPPED


def test_worker_ignoring_stop_is_killed_with_its_process_group(store, launcher):
    run = launcher.submit("stubborn", fake(forever=True, ignore_stop=True, spawn_child=True), "cpu", 1000)
    child_file = run.run_dir / "child.pid"
    wait_for(lambda: child_file.exists() and store.get(run.id).step >= 2, "the worker and its child")
    child = int(child_file.read_text())
    child_start = process_start_time(child)
    run = store.get(run.id)
    assert process_alive(child, child_start) and group_alive(run.pid)
    launcher.stop(run.id, grace_s=0.5)
    done = wait_for(lambda: (r := store.get(run.id)).status == STOPPED and r, "the forced stop", tick=launcher)
    assert "killed" in done.message and "did not stop within 0.5 s" in done.message
    assert not group_alive(run.pid)
    assert not process_alive(run.worker_pid, run.worker_start)
    assert not process_alive(child, child_start)
    assert done.is_resumable


def test_killed_worker_becomes_failed_and_resume_trims_and_continues(store, launcher):
    run = launcher.submit("crashy box", fake(steps=25, checkpoint_every=10), "cuda:7", 25)
    wait_for(lambda: store.get(run.id).step >= 13, "13 steps")
    run = store.get(run.id)
    os.kill(run.worker_pid, signal.SIGKILL)
    wait_for(lambda: not process_alive(run.worker_pid, run.worker_start), "the worker to die")
    assert store.get(run.id).status == RUNNING  # nobody noticed yet
    assert [r.id for r in launcher.mark_orphans()] == [run.id]
    failed = store.get(run.id)
    assert failed.status == FAILED and failed.ended_at is not None
    assert f"worker process {run.pid} is" in failed.message
    assert "resume continues from checkpoint step-000010" in failed.message
    assert "fake: step 13" in failed.message  # the log tail
    assert store.latest_metrics(run.id)["step"] > 10
    with open(run.run_dir / METRICS_FILE, "a") as f:
        f.write('{"step": 99, "lo')  # as if killed in the middle of a write

    blocker = launcher.submit("blocker", fake(forever=True), "cuda:7", 1000)
    assert blocker.status == RUNNING
    queued = launcher.resume(run.id)
    assert (queued.status, queued.step, queued.resume) == (QUEUED, 10, 1)
    assert [p["step"] for p in store.read_metrics(run.id)] == list(range(1, 11))
    assert metrics_file_steps(queued) == list(range(1, 11))

    launcher.stop(blocker.id)  # the blocker's worker starts the resumed run when it exits
    done = wait_for(lambda: (r := store.get(run.id)).status == FINISHED and r, "the resumed run to finish")
    assert [p["step"] for p in store.read_metrics(run.id)] == list(range(1, 26))
    assert metrics_file_steps(done) == list(range(1, 26))
    log = (run.run_dir / "log.txt").read_text()
    assert "fake: resuming from step 10" in log and "(resume)" in log
    with pytest.raises(RunStateError, match="complete"):
        launcher.resume(run.id)


@pytest.mark.parametrize("entry, expected", [
    (ENTRY, "RuntimeError: fake crash at step 3"),
    ("tests.fake_worker:nope", "ConfigError: entry: module 'tests.fake_worker' has no function 'nope'"),
])
def test_worker_started_by_hand_fails_with_the_error_and_log_tail(store, entry, expected):
    run = store.create_run("crash", {"entry": entry, "fake": {"crash_at": 3}}, "cpu", 10)
    with open(run.run_dir / "log.txt", "ab") as log:
        rc = subprocess.run([sys.executable, "-m", "core.runs.worker", "--run-dir", str(run.run_dir)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=TIMEOUT_S).returncode
    assert rc == 1
    failed = store.get(run.id)
    assert failed.status == FAILED and failed.worker_pid is not None
    assert failed.message.startswith(expected)
    assert "--- last lines of log.txt ---" in failed.message
    if entry == ENTRY:
        assert "fake: step 2" in failed.message and "Traceback" in failed.message
    else:  # an input error is one line, not a traceback
        assert "Traceback" not in failed.message


def test_worker_refuses_a_run_that_is_not_queued_or_launched(store):
    run = store.create_run("done", fake(), "cpu", 5)
    store.set_status(run.id, RUNNING, pid=1, pid_start=process_start_time(1))  # owned by another group
    store.set_status(run.id, FINISHED)
    other = store.create_run("owned", fake(), "cpu", 5)
    store.set_status(other.id, RUNNING, pid=1, pid_start=process_start_time(1))
    for target, expected in ((run, "is finished"), (other, "already has worker process 1")):
        out = subprocess.run([sys.executable, "-m", "core.runs.worker", "--run-dir", str(target.run_dir)],
                             cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert out.returncode == 3 and expected in out.stderr
    assert store.get(run.id).status == FINISHED and store.get(other.id).worker_pid is None
    store.set_status(other.id, FAILED)


def test_worker_accepts_a_run_launched_by_an_ancestor_in_another_session(store):
    # as under `accelerate launch`: the recorded process (here: this test) is the worker's ancestor,
    # and the worker runs in a session of its own
    run = store.create_run("rank0", fake(steps=2), "cpu", 2)
    store.set_status(run.id, RUNNING, pid=os.getpid(), pid_start=process_start_time(os.getpid()))
    with open(run.run_dir / "log.txt", "ab") as log:
        rc = subprocess.run([sys.executable, "-m", "core.runs.worker", "--run-dir", str(run.run_dir)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, timeout=TIMEOUT_S).returncode
    done = store.get(run.id)
    assert rc == 0 and done.status == FINISHED and done.pid == os.getpid()
    assert done.worker_pid not in (None, os.getpid())


def test_delete_refuses_an_active_run(store, launcher):
    run = launcher.submit("to delete", fake(forever=True), "cpu", 1000)
    wait_for(lambda: store.get(run.id).step >= 1, "a first step")
    with pytest.raises(RunStateError, match="stop it"):
        store.delete_run(run.id)
    launcher.stop(run.id)
    wait_for(lambda: store.get(run.id).status == STOPPED, "the stop")
    store.delete_run(run.id)
    assert not run.run_dir.exists()
    with pytest.raises(RunNotFoundError):
        store.get(run.id)
    assert store.read_metrics(run.id) == []


def test_a_recycled_pid_is_not_taken_for_the_worker(store, launcher):
    me, my_start = os.getpid(), process_start_time(os.getpid())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = store.create_run("live", fake(), "cuda:0", 5)
    recycled = store.create_run("recycled", fake(), "cuda:1", 5)
    dead = store.create_run("dead", fake(), "cuda:2", 5)
    starting = store.create_run("starting", fake(), "cuda:3", 5)
    never = store.create_run("never", fake(), "cuda:4", 5)
    store.set_status(live.id, RUNNING, pid=me, pid_start=my_start)
    store.set_status(recycled.id, RUNNING, pid=me, pid_start=my_start + 1)
    store.set_status(dead.id, RUNNING, pid=gone.pid, pid_start=1)
    store.set_status(starting.id, RUNNING)  # claimed, worker about to start
    store.set_status(never.id, RUNNING, started_at=time.time() - 3600)
    marked = {r.id: r for r in launcher.mark_orphans()}
    assert set(marked) == {recycled.id, dead.id, never.id}
    assert "the pid now belongs to another process" in marked[recycled.id].message
    assert "is gone" in marked[dead.id].message
    assert "never started" in marked[never.id].message
    assert store.get(live.id).status == RUNNING and store.get(starting.id).status == RUNNING
    for run in (live, starting):
        store.set_status(run.id, FAILED)


# --- CLI ---------------------------------------------------------------------------------------


def core_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


@pytest.mark.slow
def test_cli_list_show_stop_resume_delete(store, launcher):
    runs_dir = str(store.runs_dir)
    for action in ("list", "show", "stop", "resume", "delete"):
        out = core_cli("runs", action, "--help")
        assert out.returncode == 0 and "--runs-dir" in out.stdout, action
    empty = core_cli("runs", "list", "--runs-dir", str(store.runs_dir / "nothing"))
    assert empty.returncode == 0 and "no runs" in empty.stdout

    done = launcher.submit("cli done", fake(steps=3), "cpu", 3)
    wait_for(lambda: store.get(done.id).status == FINISHED, "the first run")
    blocker = launcher.submit("cli blocker", fake(forever=True), "cpu", 1000)
    waiting = launcher.submit("cli waiting", fake(steps=2), "cpu", 2)

    out = core_cli("runs", "list", "--runs-dir", runs_dir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "STEP", "DEVICES", "CREATED", "NAME"]
    assert [line.split()[:2] for line in lines[1:]] == [[waiting.id, QUEUED], [blocker.id, RUNNING],
                                                        [done.id, FINISHED]]
    out = core_cli("runs", "list", "--runs-dir", runs_dir, "--status", FINISHED)
    assert [line.split()[0] for line in out.stdout.splitlines()[1:]] == [done.id]

    out = core_cli("runs", "show", done.id[-4:], "--runs-dir", runs_dir, "--lines", "5")
    assert out.returncode == 0, out.stderr
    for text in (f"run        {done.id}", "status     finished", "step       3 / 3", "fake.steps = 3",
                 "last metrics (step 3", "loss = 0.333333", "fake: done", "checkpoint step-000003"):
        assert text in out.stdout, text

    out = core_cli("runs", "stop", waiting.id, "--runs-dir", runs_dir)
    assert out.returncode == 0 and "cancelled" in out.stdout
    out = core_cli("runs", "delete", blocker.id, "--runs-dir", runs_dir, "--yes")
    assert out.returncode == 2 and "stop it first" in out.stderr
    out = core_cli("runs", "stop", blocker.id, "--runs-dir", runs_dir, "--grace", "30")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{blocker.id}: stopped" in out.stdout and store.get(blocker.id).status == STOPPED

    out = core_cli("runs", "resume", done.id, "--runs-dir", runs_dir)
    assert out.returncode == 2 and "complete" in out.stderr
    out = core_cli("runs", "resume", waiting.id, "--runs-dir", runs_dir)
    assert out.returncode == 0 and out.stdout.startswith(waiting.id)
    wait_for(lambda: store.get(waiting.id).status == FINISHED, "the resumed run")

    out = core_cli("runs", "delete", done.id, "--runs-dir", runs_dir)
    assert out.returncode == 2 and "--yes" in out.stderr and done.run_dir.exists()
    out = core_cli("runs", "delete", done.id, "--runs-dir", runs_dir, "--yes")
    assert out.returncode == 0 and not done.run_dir.exists()
    out = core_cli("runs", "show", done.id, "--runs-dir", runs_dir)
    assert out.returncode == 2 and "not found" in out.stderr


def test_cli_errors_name_the_fix(tmp_path):
    out = core_cli("runs", "show", "x", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "--runs-dir" in out.stderr and "runs.db" in out.stderr
    assert issubclass(RunStateError, UserError) and issubclass(RunNotFoundError, UserError)
