"""Issue 22: bad input, second pass: bounded sizes, weights and data files checked before a run folder
exists, data listing that opens only regular files and never hangs, typed paths confined, typed text
shown as text, a login throttle that cannot lock the owner out. Real FIFOs, symlink loops and files."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_reliability import TINY, one_line_error, run_core


def no_run_folder(runs: Path) -> bool:
    return not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()]


# --- 1. sizes bounded by the config metadata, the same in CLI, resume and UI ------------------------------


@pytest.mark.parametrize("override, message", [
    ("max_steps=2000000", "max_steps: 2,000,000 is above the maximum 1,000,000"),
    ("max_steps=100000000000000000000", "max_steps: 100,000,000,000,000,000,000 is above the maximum"),
    ("num_generations=1e8", "num_generations: 1e+08 is above the maximum 256"),
    ("data_subset=1e12", "data_subset: 1e+12 is above the maximum 10,000,000"),
    ("seed=1180591620717411303424", "seed: 1,180,591,620,717,411,303,424 is above the maximum 4,294,967,295"),
    ("seed=-1", "seed: -1 is below the minimum 0"),
    ("policy_skip_tokens=100000", "policy_skip_tokens: 100,000 is above the maximum"),
    ("policy_skip_tokens=1000", "policy_skip_tokens: 1000 leaves none of demo-c2i's"),
    ("preview_seeds=[" + ",".join(map(str, range(100))) + "]", "preview_seeds: 100 items, above the maximum 64"),
])
def test_sizes_beyond_the_fields_bounds_are_one_line_errors_before_a_run_folder(tiny_demo, tmp_path, capsys,
                                                                                override, message):
    runs = tmp_path / "runs"
    rc, err = run_core(capsys, "train", *TINY, "--set", override, "--runs-dir", str(runs))
    one_line_error(rc, err, message)
    assert no_run_folder(runs)


def test_the_ui_and_a_resumed_config_apply_the_same_bounds():
    from app import form
    from core import configmeta
    from core.errors import ConfigError
    from core.vapi.config import VapiConfig

    values = {**form.preset_form_values("demo-c2i"), "max_steps": 2_000_000}
    with pytest.raises(ConfigError, match=r"^max_steps: 2,000,000 is above the maximum 1,000,000 \(more than"):
        form.build_plan("demo-c2i", values, "cpu", "too long")
    with pytest.raises(ConfigError, match=r"^seed: .* is above the maximum"):
        VapiConfig.from_dict({**VapiConfig().to_dict(), "seed": 2**70})  # what `train --resume` reads config.json with
    help_line = next(line for line in configmeta.describe(VapiConfig).splitlines() if "max_steps =" in line)
    assert "(at most 1,000,000)" in help_line  # `train --help` shows the bound


# --- 2. weights files checked before the run folder --------------------------------------------------------


class _Code:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned-by-a-checkpoint",)


def _bad_weights(tmp_path: Path) -> list[tuple[Path, str]]:
    """(path, what the error must say) for each kind of bad weights file, all real files."""
    import os

    import torch

    from tests.helpers import tiny_gpt

    good = tmp_path / "good.pt"
    torch.save({"model": tiny_gpt().state_dict()}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not weights\n" * 10)
    code = tmp_path / "code.pt"
    torch.save({"model": tiny_gpt().state_dict(), "extra": _Code()}, code)
    passwd = tmp_path / "passwd.pt"
    passwd.symlink_to("/etc/passwd")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    folder = tmp_path / "step-000010"
    folder.mkdir()
    return [(truncated, "truncated or corrupt"), (text, "is not a PyTorch checkpoint"),
            (code, "holds pickled objects that are not allowed"), (passwd, "is not a PyTorch checkpoint"),
            (fifo, "is a FIFO (named pipe), not a weights file; pass a .pt or .safetensors file"),
            (folder, "is a directory, not a weights file; pass a .pt or .safetensors file (e.g. its model.pt)")]


def test_bad_weights_are_one_line_errors_before_a_run_folder(tiny_demo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    for path, needle in _bad_weights(tmp_path):
        rc, err = run_core(capsys, "train", *TINY, "--set", f"init_weights={path}", "--runs-dir", str(runs))
        one_line_error(rc, err, f"init_weights: {path}", needle)
        assert no_run_folder(runs), path
    assert not (tmp_path / "pwned-by-a-checkpoint").exists()  # nothing was unpickled


def test_a_fifo_or_directory_given_as_weights_to_any_loader_is_named_as_such(tmp_path):
    import os

    from core.errors import CheckpointError
    from core.models import checkpoint

    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "is a FIFO (named pipe)"), (tmp_path, "is a directory")):
        for load in (checkpoint.read_file, checkpoint.load_object, checkpoint.check_file):
            with pytest.raises(CheckpointError, match="^" + str(path) + " " + kind.replace("(", r"\(").replace(")", r"\)")):
                load(path)


# --- 3. data listing: regular files only, inside the root, no loops, bounded -------------------------------


def _finishes(fn, timeout: float = 30.0, unblock: Path | None = None):
    """fn() in a thread: (finished in time, its result or exception). A call blocked on a FIFO is released
    afterwards by opening the FIFO for writing, so a failing test ends instead of hanging."""
    import os
    import threading

    box: dict = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["value"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    done = not thread.is_alive()
    if not done and unblock is not None:
        os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
    return done, box.get("value")


def _png(path: Path, width: int = 16, height: int = 16) -> Path:
    """A PNG whose header says width x height (real pixel data only for small sizes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(3 * width) for _ in range(height)) if width * height <= 4096 else b"\x00" * 64
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_a_fifo_captions_file_is_named_and_never_opened(tmp_path):
    import os

    from core.data.build import build_dataset
    from core.errors import DataError

    _png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "captions.jsonl")
    done, result = _finishes(lambda: build_dataset("captions", tmp_path, 16), unblock=tmp_path / "captions.jsonl")
    assert done, "reading the captions FIFO hung"
    assert isinstance(result, DataError) and str(result) == (
        f"captions file {tmp_path / 'captions.jsonl'} is a FIFO (named pipe); replace it with a regular JSONL file "
        'with one {"image": "relative/path.jpg", "caption": "..."} per line')


def test_listing_skips_fifos_links_out_of_the_root_and_loops_and_is_bounded(tmp_path):
    import os

    from core.data.build import build_dataset
    from core.data.files import list_files
    from core.errors import DataError

    root = tmp_path / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        _png(root / cls / "0.png")
        (root / cls / "loop1").symlink_to("..")  # two loops per folder: 2**depth paths when links are followed
        (root / cls / "loop2").symlink_to("..")
    os.mkfifo(root / "a" / "1.png")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _png(outside / "9.png")
    (root / "b" / "out").symlink_to(outside)
    (root / "b" / "out.png").symlink_to(outside / "9.png")
    (root / "b" / "self.png").symlink_to(root / "b" / "self.png")  # a link to itself

    done, dataset = _finishes(lambda: build_dataset("imagefolder", root, 16), unblock=root / "a" / "1.png")
    assert done, "listing or reading the folder hung"
    assert not isinstance(dataset, BaseException), dataset
    assert [str(dataset.path(i).relative_to(root)) for i in range(len(dataset))] == ["a/0.png", "b/0.png"]
    dataset.verify(sample=None)  # reads only regular files: does not wait on the FIFO
    listing = list_files(root, lambda name: name.endswith(".png"))
    reasons = dict(listing.skipped)
    assert reasons["a/1.png"] == "is a FIFO (named pipe)"
    assert reasons["b/out"].startswith(f"is a symlink to {outside}, outside")
    assert reasons["b/out.png"].startswith("is a symlink to") and reasons["b/self.png"] == "is a symlink loop"
    with pytest.raises(DataError, match=rf"^listing {root} took over 0 s \(0 files so far"):
        list_files(root, lambda name: True, timeout_s=0)


def test_a_folder_of_only_bad_images_is_one_line_without_warnings(tiny_demo, tmp_path):
    import subprocess
    import sys

    from tests.test_reliability import ROOT

    images = tmp_path / "images"
    for cls, side in (("a", 20000), ("b", 12000)):  # PIL refuses 20000**2 pixels, and warns at 12000**2
        (images / cls).mkdir(parents=True)
        _png(images / cls / "huge.png", side, side)  # a real header; nothing past it is decoded
        (images / cls / "text.jpg").write_text("not a jpeg")
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "core", "train", *TINY, "--set", "data=imagefolder",
                        "--set", f"data_path={images}", "--set", "data_subset=null", "--set", "preview_classes=[0, 1]",
                        "--runs-dir", str(runs)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and str(images) in lines[0] and "12000x12000 pixels by its header" in lines[0]
    assert "decompression bomb" in lines[0]
    assert no_run_folder(runs)


def test_a_slow_launch_check_answers_within_its_bound_and_holds_nothing(tiny_demo, tmp_path):
    import time

    from app import form
    from core.errors import ConfigError

    images = tmp_path / "images"
    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
        for i in range(20):
            _png(images / cls / f"{i}.png")
    values = {**form.preset_form_values("demo-c2i"), "data": "imagefolder", "data_path": str(images),
              "data_subset": None, "preview_classes": [0, 1], "reward_weights.lpips": 0}
    plan = form.build_plan("demo-c2i", values, "cpu", "slow")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"^data_path: checking the inputs took over 0.001 s"):
        form.preflight(plan, timeout_s=0.001)  # decoding 40 images takes longer: the handler gives up waiting
    assert time.monotonic() - start < 1.0
    form.preflight(plan)  # the same check, given its time, passes


# --- 4. every typed path confined before any file access, one answer for outside and missing ---------------


def test_typed_paths_outside_the_roots_and_missing_ones_get_the_same_answer_and_queue_nothing(tiny_demo, tmp_path,
                                                                                               monkeypatch):
    import re

    import torch

    from tests.helpers import served_app
    from tests.test_app_eval_tabs import EVAL, UI, aligned_run
    from core.runs.store import RunStore

    data_root = tmp_path / "data"
    data_root.mkdir()
    evil = tmp_path / "evil.pt"  # outside every root: a pickle with code
    torch.save({"model": {}, "x": _Code()}, evil)
    aligned = aligned_run(RunStore(tmp_path / "runs"))
    with served_app(tmp_path, monkeypatch, [data_root], page_timer_s=0.5) as (app, url):
        ui, store = UI(url), app.ctx.store
        inside_missing = str(tmp_path / "runs" / "no-such-run" / "model.pt")

        def answer(status: str, text: str) -> str:
            return re.sub(r"^✗ \*\*Not queued\*\* — ", "", status.replace(repr(text), "PATH"))

        diag = {text: ui.client.predict(text, 20, 2, 20, "0", "1", api_name="/launch_diagnose")[0]
                for text in ("/etc/passwd", str(evil), "/root", inside_missing, "no-such-run@5")}
        assert all(s.startswith("✗") and "not found inside the allowed roots" in s for s in diag.values()), diag
        assert len({answer(s, t) for t, s in diag.items()}) == 1, diag  # the same words whatever exists
        evaluate = {text: ui.call("/launch_eval", **{"source": text, **EVAL})["evaluate status"]
                    for text in ("/root", "/etc/passwd", "/no/such/dir", "nope@3")}
        assert all("`source`" in s and "not found inside the allowed roots" in s for s in evaluate.values()), evaluate
        assert len({s.replace(repr(t), "PATH") for t, s in evaluate.items()}) == 1, evaluate
        assert [r.id for r in store.list_runs()] == [aligned]  # nothing queued, nothing read


# --- 6. the login: throttled per client, never a lock; what answers without a login ------------------------


@pytest.mark.slow
def test_a_launched_app_throttles_a_guessing_client_without_locking_the_owner_out(tmp_path, monkeypatch):
    """10 names x 3 wrong passwords in parallel from 127.0.0.1 against a launched app with --auth; the owner at
    127.0.0.2 logs in at once, and the guessing address gets in with the password after its wait."""
    import concurrent.futures
    import time

    import httpx

    from app import create_app
    from app.safety import LoginGuard
    from core.runs.launcher import free_port

    monkeypatch.setattr(LoginGuard, "FAILURE_DELAY_S", 0.05)  # the same rule on a test's time scale
    monkeypatch.setattr(LoginGuard, "MAX_DELAY_S", 0.3)
    app = create_app(tmp_path / "runs", data_roots=[tmp_path])
    app.ctx.store.create_run("secret-project-name", {"entry": "core.vapi.trainer:run"}, "cpu", 5)
    _, url, _ = app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True, auth=[("ada", "secret")])
    try:
        def login(source: str, user: str, password: str) -> int:
            with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=120) as client:
                return client.post(url + "login", data={"username": user, "password": password}).status_code

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(lambda i: login("127.0.0.1", f"name{i % 10}", f"guess{i}"), range(30)))
        guessing = time.monotonic() - start
        assert codes == [400] * 30
        # one at a time, each waiting its backoff: the 29 waits between 30 attempts (0.05, 0.1, 0.2, then 0.3 capped)
        # and the last answer's own delay (0.05); 10 ms for the event loop's clock
        assert guessing >= 0.05 + 0.1 + 0.2 + 0.3 * 26 + 0.05 - 0.01
        start = time.monotonic()
        assert login("127.0.0.2", "ada", "secret") == 200 and time.monotonic() - start < 0.5  # the owner: at once
        assert login("127.0.0.1", "ada", "secret") == 200  # the guessing address too, after its wait: no lock

        anonymous = httpx.Client(timeout=30)
        for route in ("config", "gradio_api/info", "gradio_api/queue/status", "monitoring"):
            assert anonymous.get(url + route).status_code == 401, route
        for route in ("openapi.json", "docs", "redoc"):
            assert anonymous.get(url + route).status_code == 404, route
        assert set(anonymous.get(url + "gradio_api/app_id").json()) == {"app_id"}
        page = anonymous.get(url).text
        assert "secret-project-name" not in page and "data_roots" not in page
    finally:
        app.close(verbose=False)


def test_a_fifo_as_the_data_folder_or_the_prompt_file_is_named(tmp_path):
    import os

    from core.data.build import build_dataset
    from core.errors import ConfigError, DataError
    from core.eval.configs import read_prompts

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done, result = _finishes(lambda: build_dataset("imagefolder", fifo, 16), unblock=fifo)
    assert done and isinstance(result, (ConfigError, DataError)), result
    assert f"{fifo} is a FIFO (named pipe), not a folder" in str(result)
    done, result = _finishes(lambda: read_prompts(fifo), unblock=fifo)
    assert done and isinstance(result, DataError), result
    assert str(result) == f"{fifo} is a FIFO (named pipe), not a prompt file; pass a regular .txt or .jsonl file"
