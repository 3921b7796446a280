"""Workbench UI latency on this machine.

    python -m benchmarks.app_latency [--rows 20] [--timer 1.0] [--history 300]

Prints
- start: importing the app, create_app, and launch until the page answers HTTP 200;
- live update: time from a metric row being written to the run store (as a worker's recorder
  does) to that row being returned by the Runs tab's update endpoint (/runs_refresh, through
  gradio_client): once polling back to back (the endpoint's own latency), once polling at the
  page timer's period as a browser does;
- the first refresh of a run with --history rows (full read plus the figure).

No GPU, no weights: the run is a folder in a temporary runs dir whose metrics this script writes.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

T_PROCESS = time.perf_counter()


def stats(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return (f"mean {statistics.fmean(ms):7.1f} ms   median {statistics.median(ms):7.1f} ms   "
            f"p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms   (n={len(ms)})")


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout} s")
        time.sleep(0.02)


def latest_index(client) -> int:
    """Position of the "latest metrics" output among /runs_refresh's outputs."""
    returns = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/runs_refresh"]["returns"]
    return [r["label"] for r in returns].index("latest metrics")


def measure_updates(client, store, run_id: str, rows: int, poll_s: float, first_step: int) -> list[float]:
    """Write `rows` metric rows at random moments; poll the endpoint every `poll_s` (0 = back to back)
    and record, per row, the time from its write to the first response that contains it."""
    import random

    written: dict[int, float] = {}
    latencies: list[float] = []
    done = threading.Event()

    def writer():
        rng = random.Random(0)
        for k in range(rows):
            time.sleep(rng.uniform(0.3, 1.2))
            step = first_step + k
            written[step] = time.perf_counter()
            store.append_metrics(run_id, step, {"reward_mean": -1.0 / step, "reward_std": 0.1, "loss_pg": 0.1})
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    seen = first_step - 1
    index = latest_index(client)
    while not (done.is_set() and seen >= first_step + rows - 1):
        t_call = time.perf_counter()
        result = client.predict(run_id, 0.0, None, api_name="/runs_refresh")
        t_back = time.perf_counter()
        latest = result[index]
        if isinstance(latest, dict) and isinstance(latest.get("step"), int) and latest["step"] > seen:
            for step in range(seen + 1, latest["step"] + 1):
                if step in written:
                    latencies.append(t_back - written[step])
            seen = latest["step"]
        if poll_s > 0:
            time.sleep(max(0.0, poll_s - (t_back - t_call)))
    thread.join()
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.app_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20, help="metric rows written per measurement")
    parser.add_argument("--timer", type=float, default=1.0, help="the Runs tab's page timer period, seconds")
    parser.add_argument("--history", type=int, default=300, help="rows of the run read on its first refresh")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    from gradio_client import Client

    from app import create_app
    from core.runs.launcher import free_port
    from core.runs import kinds
    from core.runs.store import STOPPED

    t_import = time.perf_counter() - t0
    runs_dir = Path(tempfile.mkdtemp(prefix="vapi-bench-runs-"))
    t1 = time.perf_counter()
    app = create_app(runs_dir, data_roots=[runs_dir], page_timer_s=args.timer)
    t_create = time.perf_counter() - t1
    t2 = time.perf_counter()
    _, url, _ = app.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    wait_http(url)
    t_launch = time.perf_counter() - t2
    try:
        print(f"app start on this machine ({runs_dir}):")
        print(f"  import app (gradio, torch, core)      {t_import:6.2f} s   (process start to here: {time.perf_counter() - T_PROCESS:.2f} s)")
        print(f"  create_app                            {t_create:6.2f} s")
        print(f"  launch until the page answers 200     {t_launch:6.2f} s")
        print(f"  create_app + launch                   {t_create + t_launch:6.2f} s")

        store = app.ctx.store
        run = store.create_run("latency", {"entry": kinds.TRAIN_ENTRY}, "cpu", 10_000)
        store.set_status(run.id, STOPPED)  # nothing starts it: this script writes its metrics
        client = Client(url, verbose=False)
        client.predict(run.id, 0.0, None, api_name="/runs_refresh")  # the session's first (full) refresh

        t_rt = []
        for _ in range(20):
            t = time.perf_counter()
            client.predict(run.id, 0.0, None, api_name="/runs_refresh")
            t_rt.append(time.perf_counter() - t)
        print("\n/runs_refresh round trip, nothing new:  " + stats(t_rt))
        tight = measure_updates(client, store, run.id, args.rows, 0.0, first_step=1)
        print("write -> returned, polling back to back: " + stats(tight))
        timer = measure_updates(client, store, run.id, args.rows, args.timer, first_step=args.rows + 1)
        print(f"write -> returned, polling every {args.timer:g} s:  " + stats(timer))

        big = store.create_run("history", {"entry": kinds.TRAIN_ENTRY}, "cpu", args.history)
        store.set_status(big.id, STOPPED)
        keys = ("reward_mean", "reward_std", "dist_mse", "loss_pg", "loss_prior", "clip_frac", "kl_base", "grad_norm",
                "samples_per_s", "entropy", "lr", "step_time")
        for step in range(1, args.history + 1):
            store.append_metrics(big.id, step, {k: 1.0 / step for k in keys})
        fresh = Client(url, verbose=False)
        t = time.perf_counter()
        fresh.predict(big.id, 0.6, None, api_name="/runs_refresh")
        print(f"\nfirst refresh of a {args.history}-step run (all rows, 8 panels, EMA 0.6): "
              f"{(time.perf_counter() - t) * 1000:.0f} ms")
    finally:
        app.close(verbose=False)
        shutil.rmtree(runs_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
