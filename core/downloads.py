"""A resumable download of one URL to one file (the LPIPS backbone; hub files go through huggingface_hub).

The bytes go to `<dest>.part`; a second call after an interruption asks the server for the rest (an HTTP
Range request) and appends. The file appears at `dest` only complete and, when the name carries torch hub's
hash prefix (`vgg16-397923af.pth`: the first hex digits of its sha256), only with that hash.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.request
from pathlib import Path
from typing import Optional

from core.errors import MissingWeightsError

CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torch hub's convention


def hash_prefix(name: str) -> Optional[str]:
    m = _HASH_IN_NAME.search(name)
    return m.group(1) if m else None


def fetch_url(url: str, dest: Path, *, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming a `<dest>.part` left by an interrupted call. Returns dest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if start and response.status != 206:  # the server sent the whole file: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        done = start
        with open(part, "ab" if start else "wb") as f:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if progress and total:
                    print(f"\r  {dest.name}: {done / 2**20:.1f} / {total / 2**20:.1f} MiB", end="", file=sys.stderr,
                          flush=True)
        if progress and total:
            print(file=sys.stderr)
    if total is not None and done != total:
        raise MissingWeightsError(f"download of {url} stopped at {done} of {total} bytes; run the same command again "
                                  f"to resume ({part} keeps what arrived)")
    expected = hash_prefix(dest.name)
    if expected is not None:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
        if not digest.hexdigest().startswith(expected):
            part.unlink()
            raise MissingWeightsError(f"{url} arrived with sha256 {digest.hexdigest()[:12]}…, not {expected}… as its "
                                      f"name says; the partial file was deleted, run the command again")
    os.replace(part, dest)
    return dest
