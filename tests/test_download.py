"""`python -m core download --preset P`: the plan (what, from where, to where), the refusal offline before any
download, and the resumable URL download against a real local HTTP server with Range support."""
from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.downloads import fetch_url
from core.errors import MissingWeightsError

ROOT = Path(__file__).resolve().parents[1]


def _cli(args, tmp_path, **env):
    """The CLI in a subprocess (a real exit code and environment)."""
    env = {**os.environ, "VAPI_CHECKPOINTS": str(tmp_path / "ckpts"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_HOME": str(tmp_path / "hf"), **env}
    return subprocess.run([sys.executable, "-m", "core", "download", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    """The CLI in this process (fast): -> (exit code, stdout, stderr)."""
    from core import cli, paths

    monkeypatch.setattr(paths, "CHECKPOINTS_DIR", tmp_path / "ckpts")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def go(*args):
        rc = cli.main(["download", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return go


def test_preset_plan_names_every_part_its_source_and_its_place(tmp_path, run):
    rc, out, err = run("--preset", "llamagen-t2i-xl", "--dry-run")
    assert rc == 0, err
    lines = out.splitlines()
    ck, hub = tmp_path / "ckpts", tmp_path / "torch" / "hub" / "checkpoints"
    expected = [("generator", "peizesun/llamagen_t2i", ck / "t2i_XL_stage1_256.pt"),
                ("tokenizer", "peizesun/llamagen_t2i", ck / "vq_ds16_t2i.pt"),
                ("text encoder", "google/flan-t5-xl", ck / "flan-t5-xl"),
                ("LPIPS backbone", "https://download.pytorch.org/models/vgg16-397923af.pth", hub / "vgg16-397923af.pth")]
    assert len(lines) == len(expected), out
    for line, (role, source, dest) in zip(lines, expected):
        assert line.startswith("fetch") and role in line and source in line and line.endswith(f"-> {dest}"), line
    # present parts are skipped, and said so
    ck.mkdir()
    (ck / "vq_ds16_t2i.pt").write_bytes(b"x")
    hub.mkdir(parents=True)
    (hub / "vgg16-397923af.pth").write_bytes(b"x")
    rc, out, err = run("--preset", "llamagen-t2i-xl", "--dry-run")
    skipped = [line for line in out.splitlines() if line.startswith("skip")]
    assert len(skipped) == 2 and "vq_ds16_t2i" in skipped[0] and "vgg16" in skipped[1], out
    assert not any(p.name.endswith(".part") for p in ck.iterdir())  # a dry run writes nothing


def test_parts_by_their_own_names_and_the_demo_needs_nothing(tmp_path, run):
    rc, out, _ = run("vgg16", "--dry-run")
    assert rc == 0 and out.startswith("fetch  LPIPS backbone") and "vgg16-397923af.pth" in out
    rc, out, _ = run("flan-t5-xl", "--dry-run")
    assert rc == 0 and "google/flan-t5-xl" in out and str(tmp_path / "ckpts" / "flan-t5-xl") in out
    rc, out, _ = run("--preset", "demo-c2i", "--dry-run")  # embedded weights, an MSE-only reward
    assert rc == 0 and out and all(line.startswith("skip") for line in out.splitlines()), out
    rc, _, err = run("--preset", "no-such-preset")
    assert rc == 2 and "--preset: unknown preset 'no-such-preset'" in err
    rc, _, err = run()
    assert rc == 2 and "--preset" in err


def test_offline_the_whole_preset_is_refused_before_any_download(tmp_path):
    r = _cli(["--preset", "llamagen-c2i-xxl"], tmp_path, HF_HUB_OFFLINE="1")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "nothing was downloaded" in r.stderr and "huggingface.co" in r.stderr
    for name in ("c2i_XXL_384", "vq_ds16_c2i", "vgg16"):
        assert name in r.stderr, r.stderr
    assert not (tmp_path / "ckpts").exists() and not (tmp_path / "torch").exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    ranges: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        start = 0
        header = self.headers.get("Range")
        type(self).ranges.append(header)
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(self.body) - start))
        self.end_headers()
        self.wfile.write(self.body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_an_interrupted_download_resumes_from_where_it_stopped(server, tmp_path):
    body = os.urandom(3 * 2**20 + 17)
    _RangeHandler.body, _RangeHandler.ranges = body, []
    name = f"net-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    dest = tmp_path / "hub" / name
    dest.parent.mkdir()
    (dest.parent / (name + ".part")).write_bytes(body[:2**20])  # what an interrupted run left
    url = f"http://127.0.0.1:{server.server_port}/{name}"
    assert fetch_url(url, dest, progress=False) == dest
    assert dest.read_bytes() == body and not (dest.parent / (name + ".part")).exists()
    assert _RangeHandler.ranges == [f"bytes={2**20}-"]  # only the rest was asked for
    # a file whose bytes do not match the hash in its name never appears
    bad = tmp_path / "hub" / "net-00000000.pth"
    with pytest.raises(MissingWeightsError, match="sha256"):
        fetch_url(url, bad, progress=False)
    assert not bad.exists() and not (tmp_path / "hub" / "net-00000000.pth.part").exists()
