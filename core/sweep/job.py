"""A sweep as a job: worker entry `run_sweep` (kind `sweep` in core.runs.kinds).

The sweep's record holds the device set; its worker runs the work on it in order:

1. the base model's evaluation (once);
2. per variant (the preset first): a training run, then its evaluation with the sweep's sampling seeds
   against the same real images (`evaluate`). Each variant's run is a run folder of its own under
   SWEEP/variants/ (its own index there: `python -m core runs list --runs-dir SWEEP/variants`), run in
   this process exactly as a foreground `train` runs (`core.runs.worker.main`), so it has its config,
   log, metrics, checkpoints and sample grids like any run;
3. after each row, SWEEP/table.json, table.csv and table.txt are rewritten (`core.sweep.table`).

A variant that fails (at start, in training, or in its evaluation) keeps its row with the reason, and the
sweep goes on. Stop: a stop of the sweep (UI, `runs stop SWEEP`, a signal) is relayed to the variant
being trained, which checkpoints; the sweep ends stopped. Resume (`runs resume SWEEP`): rows already
measured are kept (SWEEP/results/*.json), a stopped variant's run continues from its checkpoint. Delete:
the variants live inside the sweep folder and go with it.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

from core.checkpoints import MODEL_FILE
from core.errors import ConfigError, UserError
from core.runs import claims, kinds
from core.runs.launcher import Launcher
from core.runs.store import FINISHED, LOG_FILE, STOP_FILE, STOPPED, RunStore, process_start_time
from core.sweep import table as T
from core.sweep.config import SweepConfig, Variant, expand

SWEEP_ENTRY = kinds.SWEEP_ENTRY
VARIANTS_DIR = "variants"  # the variants' run folders (a runs dir of its own)
RESULTS_DIR = "results"  # one JSON record per row (base.json, NN-slug.json): what a resume keeps
EVALS_DIR = "evals"  # evaluation outputs (eval fid's samples and features)
BASE_RECORD = "base"


# ----------------------------------------------------------------------------- checks before anything runs
def check(cfg: SweepConfig, variants: list[Variant]) -> None:
    """The evaluation fits every variant's model (ConfigError naming the field), before anything is queued."""
    from core.models import registry

    for v in variants:
        model = v.config["model"]
        preset = registry.get_generator(model)
        embedded_t2i = preset.is_demo and preset.task == "t2i"
        if cfg.eval == "demo" and not preset.is_demo:
            raise ConfigError("eval", f"variant {v.name!r}: eval demo measures the demo models (demo-c2i, demo-t2i), "
                                      f"not {model}; use --eval fid with a reference")
        if cfg.eval == "adherence" and not embedded_t2i:
            raise ConfigError("eval", f"variant {v.name!r}: prompt adherence reads the demo evaluator, so it measures "
                                      f"demo-t2i only, not {model}")
        if cfg.eval == "fid" and not cfg.reference and not preset.is_demo:
            raise ConfigError("reference", f"variant {v.name!r}: eval fid of {model} needs the real images "
                                           "(an .npz batch or an image folder)")
    if cfg.eval in ("demo", "adherence") and cfg.num_samples < 20:
        raise ConfigError("num_samples", f"{cfg.num_samples}; the demo evaluation needs at least 20 (two per class: "
                                         "diversity is a distance between samples of one class)")


# ----------------------------------------------------------------------------- evaluation
def evaluate(cfg: SweepConfig, model: str, weights: Optional[str | Path], out_dir: Path,
             log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """{metric: [value per sampling seed]} of one generator (weights None: the preset's own), measured as
    `eval demo` (demo / adherence) or `eval fid` (fid) does, on the sweep's seeds: sample i of seed s has the
    same random numbers for every variant, and the real images are the same for all."""
    seeds = cfg.sampling_seeds()
    if cfg.eval in ("demo", "adherence"):
        from core.demo import report

        fn = report.evaluate_t2i if model == "demo-t2i" else report.evaluate_checkpoint
        res = fn(weights=weights, num_samples=cfg.num_samples, sample_seeds=seeds, log=log)
        return {k: [row[k] for row in res["per_seed"]] for k in res["per_seed"][0]}
    from core.eval.configs import EvalConfig
    from core.eval.eval_job import evaluate as eval_fid
    from core.models import registry

    embedded = registry.get_generator(model).is_demo
    per_seed: dict[str, list[float]] = {}
    for s in seeds:  # one folder per seed: the seeds need not be consecutive
        ecfg = EvalConfig(model=model, weights=str(weights) if weights else None, num_samples=cfg.num_samples,
                          seed=s, num_seeds=1, metrics=["fid", "prc"],
                          extractor=cfg.extractor or ("demo" if embedded else "inception"),
                          reference=cfg.reference or ("shapes:reference" if embedded else None))
        results = eval_fid(ecfg, out_dir / f"seed-{s}", log=log)
        if results is None:
            raise UserError(f"the evaluation of seed {s} stopped before all samples were drawn")
        for k, v in results["metrics"].items():
            per_seed.setdefault(k, []).append(v)
    return per_seed


# ----------------------------------------------------------------------------- one row
def _write_record(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def _read_record(path: Path) -> Optional[dict]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") in (T.DONE, T.FAILED) else None


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), text)


@contextlib.contextmanager
def _relay_stop(recorder, child_dir: Path) -> Iterator[None]:
    """While a variant trains, a stop of the sweep becomes a stop of that variant (it checkpoints)."""
    done = threading.Event()
    sweep_stop = Path(recorder.run_dir) / STOP_FILE

    def watch():
        while not done.wait(0.5):
            if sweep_stop.exists():
                (child_dir / STOP_FILE).touch()
                return

    t = threading.Thread(target=watch, name="sweep-stop-relay", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


class _Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()

    def isatty(self):
        return False


@contextlib.contextmanager
def _output_also_to(path: Path) -> Iterator[None]:
    """The variant's output in its own log.txt as well as in the sweep's."""
    with open(path, "a", buffering=1) as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)), \
            contextlib.redirect_stderr(_Tee(sys.stderr, log)):
        yield


def _train(variant: Variant, run_id: str, children: RunStore, devices: str, recorder) -> tuple[str, str]:
    """Train one variant in this process as a run of `children` (continue it when it exists). Returns its
    (status, message)."""
    from core.runs import worker

    me = {"worker_pid": os.getpid(), "worker_start": process_start_time(os.getpid())}
    child_dir = children.runs_dir / run_id
    resume = child_dir.is_dir()
    if resume:
        Launcher(children).mark_orphans()  # the sweep's previous worker died (kill -9): its variant failed
        child = children.get(run_id)
        if child.status == FINISHED:
            return child.status, child.message
        Launcher(children).resume_in_place(run_id, claim=me)
    else:
        children.create_run(variant.name, {**variant.config, "entry": kinds.TRAIN_ENTRY}, devices,
                            int(variant.config["max_steps"]), run_id=run_id, claim=me)
    with _relay_stop(recorder, child_dir), _output_also_to(child_dir / LOG_FILE):
        rc = worker.main(["--run-dir", str(child_dir)] + (["--resume"] if resume else []))
    # the variant's worker let go of every device this process held (core.runs.claims); the sweep takes its
    # own back before it evaluates (waiting, if a job of another runs dir got in between)
    sweep_dir = Path(recorder.run_dir)
    claims.hold(devices, sweep_dir, wait=True, should_stop=(sweep_dir / STOP_FILE).exists)
    if rc == 130:  # a second Ctrl-C aborted the variant: it aborts the sweep too, as it does a train
        raise KeyboardInterrupt
    child = children.get(run_id)
    return child.status, child.message


def run_variant(cfg: SweepConfig, variant: Variant, run_id: str, children: RunStore, devices: str, recorder,
                evals_dir: Path) -> Optional[dict]:
    """Train and evaluate one variant: its record (status done or failed, with the reason), or None when
    the sweep was asked to stop (the variant's run is stopped with a checkpoint; a resume continues it)."""
    record = {"name": variant.name, "changes": variant.changes, "run_id": run_id, "status": T.FAILED,
              "reason": None, "per_seed": {}, "kl_base": None, "train_s": None, "eval_s": None}
    try:
        status, message = _train(variant, run_id, children, devices, recorder)
    except UserError as e:  # could not start it (e.g. its folder holds an unreadable config)
        return {**record, "reason": f"could not start: {e}"}
    if status == STOPPED:
        return None
    child = children.get(run_id)
    record["train_s"] = child.ran_seconds
    rows = children.read_metrics(run_id)
    kl = [r["kl_base"] for r in rows if r.get("kl_base") is not None]
    record["kl_base"] = kl[-1] if kl else None
    if status != FINISHED:
        return {**record, "reason": f"training {status}: {_first_line(message or '')}"}
    ckpt = children.last_checkpoint(run_id)
    if ckpt is None:
        return {**record, "reason": "training finished without a checkpoint"}
    start = time.perf_counter()
    try:
        print(f"[sweep] evaluating {variant.name}", flush=True)
        record["per_seed"] = evaluate(cfg, variant.config["model"], Path(ckpt.path) / MODEL_FILE,
                                      evals_dir / run_id, log=lambda m: print(m, flush=True))
    except Exception as e:  # noqa: BLE001 - a variant's failure is its row's reason; the sweep goes on
        if not isinstance(e, UserError):
            traceback.print_exc()
        return {**record, "reason": f"evaluation: {type(e).__name__}: {e}"}
    record["eval_s"] = time.perf_counter() - start
    return {**record, "status": T.DONE}


def _base_record(cfg: SweepConfig, preset: Variant, evals_dir: Path) -> dict:
    record = {"name": T.BASE_ROW, "changes": None, "run_id": None, "status": T.FAILED, "reason": None,
              "per_seed": {}, "kl_base": None, "train_s": 0.0, "eval_s": None}
    start = time.perf_counter()
    try:
        print(f"[sweep] evaluating the base model ({preset.config['model']})", flush=True)
        record["per_seed"] = evaluate(cfg, preset.config["model"], preset.config.get("init_weights"),
                                      evals_dir / BASE_RECORD, log=lambda m: print(m, flush=True))
    except Exception as e:  # noqa: BLE001
        if not isinstance(e, UserError):
            traceback.print_exc()
        return {**record, "reason": f"evaluation: {type(e).__name__}: {e}"}
    return {**record, "status": T.DONE, "eval_s": time.perf_counter() - start}


def total_steps(variants: list[Variant]) -> int:
    """A sweep's progress: the base model's evaluation and each variant (trained and evaluated); equals
    SweepConfig.total_steps."""
    return len(variants) + 1


def write_table(run_dir: Path, cfg: SweepConfig, variants: list[Variant]) -> dict:
    """Rebuild the table from the records on disk (a variant without one: pending) and write its files."""
    results = run_dir / RESULTS_DIR
    base = _read_record(results / f"{BASE_RECORD}.json")
    rows = []
    for i, v in enumerate(variants):
        rec = _read_record(results / f"{_run_id(i, v)}.json")
        rows.append(rec or {"name": v.name, "changes": v.changes, "status": T.PENDING, "per_seed": {}})
    table = T.build(cfg.to_dict(), base, rows)
    T.write(run_dir, table)
    return table


def _run_id(i: int, v: Variant) -> str:
    return f"v{i:02d}-{v.slug}"


def run_sweep(config: dict, run_dir: Path, recorder, resume: bool) -> None:
    """Worker entry (config["entry"] == SWEEP_ENTRY); see the module docstring."""
    run_dir = Path(run_dir)
    cfg = SweepConfig.from_dict(config)
    variants = expand(cfg)
    check(cfg, variants)
    devices = RunStore(run_dir.parent).get(run_dir.name).devices
    children = RunStore(run_dir / VARIANTS_DIR)
    results, evals = run_dir / RESULTS_DIR, run_dir / EVALS_DIR
    results.mkdir(exist_ok=True)
    total = total_steps(variants)
    print(f"[sweep] {len(variants)} runs (the preset and {len(variants) - 1} variants) on {devices}, "
          f"eval {cfg.eval} with seeds {cfg.sampling_seeds()}" + (" (resumed)" if resume else ""), flush=True)
    done = 0
    if _read_record(results / f"{BASE_RECORD}.json") is None:
        _write_record(results / f"{BASE_RECORD}.json", _base_record(cfg, variants[0], evals))
    done += 1
    recorder.set_progress(done, total)
    write_table(run_dir, cfg, variants)
    for i, v in enumerate(variants):
        path = results / f"{_run_id(i, v)}.json"
        if _read_record(path) is None:
            if recorder.should_stop():
                break
            print(f"[sweep] {i + 1}/{len(variants)}: {v.name}", flush=True)
            record = run_variant(cfg, v, _run_id(i, v), children, devices, recorder, evals)
            if record is None:  # stopped: the sweep stops too (a signal may have reached only the variant)
                (run_dir / STOP_FILE).touch()
                break
            _write_record(path, record)
            print(f"[sweep] {v.name}: {record['status']}" + (f" ({record['reason']})" if record["reason"] else ""),
                  flush=True)
        done += 1
        recorder.set_progress(done, total)
        write_table(run_dir, cfg, variants)
    print(T.text(write_table(run_dir, cfg, variants)), flush=True)


def prepare(cfg: SweepConfig) -> list[Variant]:
    """Every check a sweep can make before it is queued: its variants (each run config validated), the
    evaluation against each variant's model, and the preset's data and weights (`preflight`)."""
    from core.vapi.config import VapiConfig
    from core.vapi.preflight import preflight

    variants = expand(cfg)
    check(cfg, variants)
    preflight(VapiConfig.from_dict(variants[0].config))
    return variants


def check_job(cfg: SweepConfig, runs_dir=None) -> str:
    """A job kind's check: `prepare` (nothing queued on an error); returns the sweep's default name."""
    prepare(cfg)
    return f"sweep {cfg.preset}"


def submit_sweep(launcher, cfg: SweepConfig, devices: str, name: Optional[str] = None):
    """Validate a sweep (`prepare`) and queue it as a background job of kind `sweep`. Returns the Run."""
    from core.device import gpu_ids

    if len(gpu_ids(devices)) > 1:
        raise ConfigError("devices", f"{devices}: a sweep trains on one device (cpu or one GPU) at a time")
    return kinds.submit(launcher, kinds.SWEEP, cfg, devices, name)
