"""`python -m core info | download | sample`."""
from __future__ import annotations

import argparse
from pathlib import Path

from core import paths
from core.models.registry import DEFAULT_GENERATOR


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="presets, what is present in checkpoints/, devices",
                       description="List model presets with the state of their weight files, and the devices.")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("download", help="fetch what a preset needs (or one file) into checkpoints/ and the torch hub",
                       description="Download published weights: with --preset, everything a preset needs that is missing "
                                   "(generator, tokenizer, text encoder, LPIPS backbone); with NAME, one part. Interrupted "
                                   "downloads resume when run again.")
    p.add_argument("name", nargs="?", default=None,
                   help="one part: a model preset or file name (llamagen-c2i-xxl-384, c2i_XXL_384, vq_ds16_c2i), the "
                        "text encoder flan-t5-xl, or the LPIPS backbone vgg16 (alexnet)")
    p.add_argument("--preset", default=None,
                   help="a run preset (llamagen-c2i-xxl, llamagen-t2i-xl, janus-pro-1b, ...) or a model preset: fetch "
                        "every missing file it needs")
    p.add_argument("--dry-run", action="store_true", help="print the plan (what is present, what would be fetched from "
                                                          "where to where) and download nothing")
    p.add_argument("--with-tokenizer", action="store_true", help="with NAME: also fetch the preset's tokenizer")
    p.add_argument("--force", action="store_true", help="download again even if the file exists")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("sample", help="sample images for classes or prompts with fixed seeds -> PNG grid + PNGs",
                       description="Free-running sampling with a KV cache. Rows = classes (class-conditional presets) "
                                   "or prompts (text-conditional ones), columns = seeds.")
    p.add_argument("--model", default=DEFAULT_GENERATOR, help=f"generator preset (default: {DEFAULT_GENERATOR}, the embedded demo)")
    p.add_argument("--weights", default=None, help="a checkpoint to load instead of the preset's weights (e.g. an aligned run checkpoint)")
    p.add_argument("--classes", nargs="+", default=None, help="class ids or names (default: the first 4 classes)")
    p.add_argument("--prompts", nargs="+", default=None,
                   help="prompts, each quoted, for text-conditional presets (demo-t2i, llamagen-t2i-*, janus-pro-1b)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3], help="one image per seed and class")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile the decode step (same images either way): auto = on a GPU with triton "
                        "for 64+ images; the compile time is printed once")
    p.add_argument("--out", default="outputs/samples", help="output folder")
    p.set_defaults(func=cmd_sample)


def cmd_info(args) -> int:
    from core import device
    from core.models import registry

    missing: dict = {}
    print(f"Generator presets (downloads go to {paths.CHECKPOINTS_DIR}):")
    for g in registry.all_generators():
        absent = [f for f in registry.files_of(g.name) if not f.present]
        for f in absent:
            missing[f.path] = f
        state = "present" if not absent else "missing " + " + ".join(f.name for f in absent)
        print(f"  {g.name:22s} {g.task} {g.size:7s} {g.image_size:3d}px  {g.description}\n  {'':22s} {state}")
    if missing:
        print("Missing files:")
        for path, f in missing.items():
            print(f"  {f.role} {path}\n      {f.hint}")
    print("Devices:")
    for d in device.report():
        print(f"  {d['name']:8s} {d['detail']}")
    return 0


def cmd_download(args) -> int:
    from core.errors import ConfigError
    from core.vapi import fetch

    if (args.name is None) == (args.preset is None):
        raise ConfigError("download", "give one part by NAME or a whole preset with --preset P (not both)")
    if args.preset is not None:
        if args.with_tokenizer:
            raise ConfigError("--with-tokenizer", "--preset already fetches the tokenizer; drop --with-tokenizer")
        files = fetch.plan(args.preset)
    else:
        files = [fetch.part(args.name)]
        if args.with_tokenizer:
            from core.models import registry

            preset = registry.get_generator(args.name)
            files.append(fetch.part(registry.get_tokenizer(preset.tokenizer).filename.rsplit(".", 1)[0]))
    if args.dry_run:
        for step in fetch.steps(files, args.force):
            print(step.line())
        return 0
    todo = fetch.fetch(files, force=args.force)
    fetched = [s for s in todo if s.action == "fetch"]
    cannot = [s for s in todo if s.action == "cannot"]
    print(f"done: {len(fetched)} fetched, {sum(s.action == 'skip' for s in todo)} already present"
          + (f", {len(cannot)} to get another way (above)" if cannot else ""))
    return 2 if cannot else 0


def _beside_runs(device: str):
    """core.runs.threads.cpu_share on the default runs dir (a no-op when it holds no runs)."""
    import contextlib

    from core import paths
    from core.runs.store import DB_FILE, RunStore
    from core.runs.threads import cpu_share

    if not (Path(paths.RUNS_DIR) / DB_FILE).is_file():
        return contextlib.nullcontext()
    return cpu_share(RunStore(paths.RUNS_DIR), device)


def cmd_sample(args) -> int:
    import torch

    from core import device as devmod
    from core import imaging
    from core.data.classes import class_names_for, resolve_classes
    from core.errors import ConfigError
    from core.models import registry
    from core.models.generate import check_sampling_args, compile_seconds, generate_images
    from core.models.load import load_pair

    preset = registry.get_generator(args.model)
    if preset.task == "c2i" and args.prompts is not None:
        raise ConfigError("prompts", f"{args.model} is class-conditional; give --classes (or a text-conditional preset)")
    if preset.task != "c2i" and args.classes is not None:
        raise ConfigError("classes", f"{args.model} is text-conditional; give --prompts \"...\" instead")
    if preset.task != "c2i" and not [p for p in args.prompts or [] if p.strip()]:
        raise ConfigError("prompts", f"{args.model} is text-conditional: give at least one --prompts \"...\"")
    check_sampling_args(args.cfg_scale, args.temperature, args.top_k, args.top_p)
    dev = devmod.resolve(args.device)
    seeds = list(args.seeds)
    if preset.task == "c2i":
        gen, tok = load_pair(args.model, args.weights, dev)
        names = class_names_for(gen.config.num_classes)
        classes = resolve_classes(args.classes if args.classes else range(min(4, len(names))), names)
        cond, mask = torch.tensor([c for c in classes for _ in seeds], device=dev), None
        rows = [names[c] for c in classes]
        stems = [f"{c:04d}_{names[c].replace(' ', '_').replace('/', '_')}" for c in classes]
    else:
        from core.eval.sampling import load_sampler

        sampler = load_sampler(args.model, args.weights, dev)  # names a missing text encoder before any work
        gen, tok = sampler.policy, sampler.tokenizer
        rows = [p.strip() for p in args.prompts if p.strip()]
        cond, mask = sampler.encode_prompts([p for p in rows for _ in seeds])
        stems = [f"{k:02d}_{imaging.slug(p)}" for k, p in enumerate(rows)]
    all_seeds = [s for _ in rows for s in seeds]
    with _beside_runs(str(dev)):  # on the CPU beside a CPU run: half the cores, leased from the run
        imgs = generate_images(gen, tok, cond, seeds=all_seeds, batch_size=args.batch_size, cfg_scale=args.cfg_scale,
                               temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cond_mask=mask,
                               compile=args.compile)
    for rows_, seconds in compile_seconds.pop(id(gen), {}).items():
        print(f"compiled the decode step for {rows_} rows in {seconds:.1f} s")
    out = Path(args.out)
    up = max(1, 128 // imgs.shape[-1])
    files = imaging.save_images(imgs, out, [f"{stem}_seed{s}.png" for stem in stems for s in seeds], upscale=up)
    imaging.save_png(imaging.grid(imgs, nrow=len(seeds), upscale=up), out / "grid.png")
    print(f"wrote {len(files)} images and {out / 'grid.png'} (rows: {'; '.join(rows)}; seeds {seeds})")
    return 0
