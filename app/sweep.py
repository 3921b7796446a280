"""The Launch tab's Sweep section: the run the form describes becomes the preset of a sweep, and the fields
to vary are typed one per line (`FIELD=V1,V2`, as the CLI's --vary). Before queueing it shows the number
of runs and an estimate of their time; queueing goes through `core.sweep.job.submit_sweep`, so every
variant is validated first (an error names the field and the variant) and nothing is queued on an error.
"""
from __future__ import annotations

from typing import Any, Optional

from core.errors import ConfigError
from core.sweep import job
from core.sweep.config import SweepConfig, Variant, parse_vary, variant_name

VARY_HELP = ("one field per line: FIELD=V1,V2 (e.g. learning_rate=3e-5,1e-4 or beta=0,1); the other fields are "
             "the form's. Grid: every combination; one at a time: one change from the form's run per variant")


def sweep_of(launch_plan, vary_text: str, one_at_a_time: bool, eval_kind: str, num_samples: Any,
             num_seeds: Any) -> tuple[SweepConfig, list[Variant]]:
    """The sweep of the form's run (`launch_plan`: app.form.LaunchPlan) and its validated variants."""
    lines = [line.strip() for line in (vary_text or "").splitlines() if line.strip()]
    if not lines:
        raise ConfigError("vary", "type at least one line FIELD=V1,V2, e.g. learning_rate=3e-5,1e-4")
    vary = parse_vary(lines)
    overrides = {k: v for k, v in launch_plan.overrides.items() if k not in vary and k.split(".", 1)[0] not in vary}
    numbers = {}
    for name, value in (("num_samples", num_samples), ("num_seeds", num_seeds)):
        if value is None or float(value) != int(value):
            raise ConfigError(name, f"{value!r}; expected a whole number")
        numbers[name] = int(value)
    cfg = SweepConfig(preset=launch_plan.preset, overrides=overrides, vary=vary,
                      mode="one-at-a-time" if one_at_a_time else "grid", eval=eval_kind, **numbers)
    variants = job.prepare(cfg)
    return cfg, variants


def seconds_per_step(store, model: str) -> Optional[float]:
    """Seconds per step of the newest finished training run of `model` in the store (None: no such run)."""
    for run in store.list_runs(["finished"]):
        if run.kind != "train" or not run.step or not run.ran_seconds:
            continue
        try:
            if store.read_config(run.id).get("model") == model:
                return run.ran_seconds / run.step
        except (OSError, ValueError):
            continue
    return None


def summary(store, cfg: SweepConfig, variants: list[Variant]) -> str:
    """What queueing would do: the runs, their steps and the estimated training time."""
    steps = sum(int(v.config["max_steps"]) for v in variants)
    per_step = seconds_per_step(store, variants[0].config["model"])
    if per_step is None:
        time_text = "no finished run of this model here to estimate the time from"
    else:
        minutes = steps * per_step / 60
        time_text = (f"training ≈ {minutes:.0f} min ({per_step:.2g} s/step, from the newest finished run of "
                     f"{variants[0].config['model']}), plus {len(variants) + 1} evaluations")
    names = "\n".join(f"- {v.name}" for v in variants)
    return (f"**{len(variants)} runs** (the form's run and {len(variants) - 1} variants, {steps} steps in all), "
            f"each evaluated with `{cfg.eval}` on {cfg.num_samples} samples × {len(cfg.sampling_seeds())} seeds, "
            f"and the base model once; {time_text}. The form's run keeps the preset's own value of each field "
            f"varied: {variant_name(preset_values(variants[0], cfg.vary))}.\n\n{names}")


def preset_values(preset: Variant, fields) -> dict:
    """{field: the preset variant's value} of dotted or plain field names (reward_weights.lpips)."""
    out = {}
    for name in fields:
        value = preset.config
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[name] = value
    return out


def queue(app, launch_plan, cfg: SweepConfig):
    """Queue the sweep as a background job on the form's devices. Returns the Run."""
    with app.launcher_lock:
        return job.submit_sweep(app.launcher, cfg, launch_plan.devices, name=f"sweep {launch_plan.name}")
