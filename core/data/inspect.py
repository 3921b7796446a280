"""What a data path holds, before a run: `python -m core data inspect --data KIND PATH` and the Launch form.

Lists the data as the trainer would (same builder, same subset rule), then decodes a spread sample to count
unreadable images and to time reading: from that, how long one full pass over the items would take in one
process (the trainer reads with the same code). Nothing here reads model weights.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from core.errors import DataError
from core.units import format_duration

SAMPLE = 64  # images decoded by default


@dataclass
class DataReport:
    kind: str
    path: str
    format: str  # the caption format found, "imagefolder", or "shapes"
    items: int  # items the run would use (after the subset)
    listed: int  # items found before the subset
    examples: list[str]  # a few captions (or class names)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> items left out while listing
    checked: int = 0  # images decoded
    unreadable: list[str] = field(default_factory=list)  # of those, the ones that failed
    seconds_per_item: Optional[float] = None  # read + preprocess, one process
    problem: Optional[str] = None  # e.g. too many unreadable images: what the run would stop on

    @property
    def full_pass_seconds(self) -> Optional[float]:
        return None if self.seconds_per_item is None else self.seconds_per_item * self.items

    def lines(self) -> list[str]:
        out = [f"format: {self.format} ({self.kind}) at {self.path}",
               f"items: {self.items}" + (f" of {self.listed} listed (the subset)" if self.listed != self.items else "")]
        label = "captions" if self.kind != "imagefolder" else "classes"
        out.append(f"{label} (first {len(self.examples)}):")
        out += [f"  {e!r}" if label == "captions" else f"  {e}" for e in self.examples]
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items()) or "none"
        out.append(f"left out while listing: {skipped}")
        out.append(f"unreadable images: {len(self.unreadable)} of {self.checked} decoded"
                   + (f" (e.g. {self.unreadable[0]})" if self.unreadable else ""))
        if self.seconds_per_item is not None:
            out.append(f"read + preprocess: {1 / self.seconds_per_item:.0f} images/s in one process; a full pass over "
                       f"{self.items} items ≈ {format_duration(self.full_pass_seconds)}")
        if self.problem:
            out.append(f"problem: {self.problem}")
        return out


def _format_of(dataset, kind: str) -> str:
    if kind != "captions":
        return kind
    return getattr(dataset, "format", "jsonl")


def _skipped_of(dataset) -> dict[str, int]:
    counts = dict(getattr(dataset, "skipped_counts", {}) or {})
    missing = getattr(dataset, "missing_files", None)
    if callable(missing) and missing():
        counts["image file missing"] = len(missing())
    return counts


def _examples(dataset, n: int) -> list[str]:
    if getattr(dataset, "num_classes", None) is not None:
        names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", ())
        return [str(c) for c in list(names)[:n]]
    caption = getattr(dataset, "caption", None)
    if caption is not None:
        return [caption(i) for i in range(min(n, len(dataset)))]
    return [dataset[i][-1] for i in range(min(n, len(dataset)))]  # shapes with captions


def inspect_data(kind: str, path: Optional[str | Path], image_size: int = 256, subset: Optional[float] = None,
                 seed: int = 0, sample: int = SAMPLE, examples: int = 5) -> DataReport:
    """List `path` as data=`kind`, decode `sample` items spread over it, and time reading. Listing errors raise
    (DataError / ConfigError, as the trainer's would); too many unreadable images are reported, not raised."""
    from core.data.build import build_dataset

    dataset = build_dataset(kind, path, image_size=image_size, subset=subset, seed=seed,
                            **({"with_captions": True} if kind == "shapes" else {}))
    listed = getattr(dataset, "total", None) or len(dataset)
    where = str(path) if path else ("train" if kind == "shapes" else "")
    report = DataReport(kind, where, _format_of(dataset, kind), len(dataset), listed, _examples(dataset, examples),
                        _skipped_of(dataset))
    n = len(dataset)
    picks = np.unique(np.linspace(0, n - 1, min(sample, n)).round().astype(np.int64)).tolist()
    verify = getattr(dataset, "verify", None)
    if verify is not None:
        try:
            found = verify(sample=sample)
            report.checked, report.unreadable = found["checked"], [str(p) for p in found["bad"]]
        except DataError as e:  # past max_bad_fraction: what the run would stop on
            report.problem = str(e)
            bad = dataset.bad_files()
            report.checked, report.unreadable = len(picks), [str(p) for p in bad]
    else:
        report.checked = len(picks)
    if report.problem is None:
        timed = picks[:32]
        t0 = time.perf_counter()
        for j in timed:
            dataset[j]
        report.seconds_per_item = (time.perf_counter() - t0) / max(1, len(timed))
    return report
