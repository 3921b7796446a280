"""What every page of one app shares: the run store and launcher, the scheduler ticker, the roots a
user may point at, the loaded-model cache and one lock per device.

Nothing here is per-user. A browser session keeps its own state in `gr.State`; this object only
holds resources that are safe to share: the store (SQLite, the source of truth), a launcher whose
calls are serialised by `launcher_lock`, and a read-mostly model cache guarded by its lock.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core import paths
from core.runs.launcher import Launcher
from core.runs.store import RunStore

TICK_INTERVAL_S = 1.5       # the background scheduler tick: queued runs start, stop deadlines are enforced
PAGE_TICK_MIN_S = 1.0       # a page timer triggers a tick only if none ran for this long
SCRATCH_MAX_AGE_S = 3600.0  # Compare outputs (PNGs, zips) older than this are removed


class Ticker:
    """One daemon thread per app that calls `launcher.tick()` every `interval` seconds.

    `tick_if_due` lets page timers tick too (rate-limited, never blocking a page on a running tick)."""

    def __init__(self, launcher: Launcher, lock: threading.RLock, interval: float = TICK_INTERVAL_S):
        self.launcher = launcher
        self.lock = lock
        self.interval = interval
        self.last_tick = 0.0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Mark runs whose worker died while no UI was up, then tick in the background."""
        if self._thread is not None:
            return
        with self.lock:
            self.launcher.mark_orphans()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vapi-run-ticker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def tick(self) -> None:
        with self.lock:
            try:
                self.launcher.tick()
                self.last_error = ""
            except Exception as e:  # a broken tick must not end the scheduler thread
                self.last_error = f"{type(e).__name__}: {e}"
                traceback.print_exc(file=sys.stderr)
            self.last_tick = time.monotonic()

    def tick_if_due(self, min_interval: float = PAGE_TICK_MIN_S) -> None:
        if time.monotonic() - self.last_tick < min_interval:
            return
        if not self.lock.acquire(blocking=False):
            return  # a tick (or a user action) is under way
        try:
            if time.monotonic() - self.last_tick >= min_interval:
                self.tick()
        finally:
            self.lock.release()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()


class ModelCache:
    """Loaded (generator, tokenizer) pairs, least recently used first out; loads are serialised.

    Read-mostly: a key is (preset, weights file, its size and mtime, device), so a checkpoint written
    again under the same name is loaded again. Models are used read-only (eval mode, no grad)."""

    def __init__(self, capacity: int = 2):
        self.capacity = max(1, capacity)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            self._items[key] = value
            evicted = False
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                evicted = True
            if evicted:
                _release_gpu_memory()
            return value

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)


def _release_gpu_memory() -> None:
    """Hand the cached blocks of evicted models back to the GPU (a no-op without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class DeviceLocks:
    """One lock per device name, so two requests never sample on the same GPU at once."""

    def __init__(self):
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, device: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(device, threading.Lock())


@dataclass
class AppContext:
    """Shared, read-mostly resources of one app instance."""

    runs_dir: Path
    data_roots: list[Path]
    store: RunStore = field(init=False)
    launcher: Launcher = field(init=False)
    launcher_lock: threading.RLock = field(init=False)
    ticker: Ticker = field(init=False)
    models: ModelCache = field(init=False)
    device_locks: DeviceLocks = field(init=False)
    per_class_cache: dict = field(init=False)  # Compare's per-class numbers by models, classes and sampling
    scratch_dir: Optional[Path] = field(init=False, default=None)  # made on first use, removed by close()
    page_timer_s: float = 1.0
    model_cache_size: int = 2
    stop_grace_s: float | None = None

    def __post_init__(self):
        self.runs_dir = Path(self.runs_dir).resolve()
        self.data_roots = [Path(r).resolve() for r in self.data_roots]
        self.store = RunStore(self.runs_dir)
        kwargs = {} if self.stop_grace_s is None else {"grace_s": self.stop_grace_s}
        self.launcher = Launcher(self.store, **kwargs)
        self.launcher_lock = threading.RLock()
        self.ticker = Ticker(self.launcher, self.launcher_lock)
        self.models = ModelCache(self.model_cache_size)
        self.device_locks = DeviceLocks()
        self.per_class_cache = {}

    @property
    def weight_roots(self) -> list[Path]:
        """Where a weights file (init_weights) may come from: run folders and the checkpoints dir."""
        return [self.runs_dir, Path(paths.CHECKPOINTS_DIR).resolve()]

    def allowed_paths(self) -> list[str]:
        """Folders the web server may serve files from: the runs dir and the checkpoint folders."""
        roots = [self.runs_dir, Path(paths.CHECKPOINTS_DIR).resolve(), Path(paths.DEMO_DIR).resolve()]
        return sorted({str(r) for r in roots})

    def new_scratch(self, prefix: str) -> Path:
        """A fresh folder for one request's output files; folders older than an hour are removed."""
        if self.scratch_dir is None:
            self.scratch_dir = Path(tempfile.mkdtemp(prefix="vapi-app-"))
        now = time.time()
        for old in self.scratch_dir.iterdir():
            try:
                if now - old.stat().st_mtime > SCRATCH_MAX_AGE_S:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                continue
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.scratch_dir))

    def start(self) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.ticker.start()

    def close(self) -> None:
        self.ticker.stop()
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            self.scratch_dir = None
