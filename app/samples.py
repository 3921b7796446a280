"""Sample grids of a run (samples/step-N.png + step-N.json) as the Runs tab shows them.

The trainer writes one grid per preview step: rows = classes (or prompts), columns = seeds, tiles
separated by `GRID_PAD` white pixels (core.imaging.grid's default). From those files this module
builds the gallery items and a step x class board: for one seed, one row per step (step 0 = the
base model) and one column per class, so a class can be followed through training.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.imaging import GRID_PAD
from core.runs.store import RunStore

LABEL_W = 86  # width of the step labels on the left of the board
HEADER_H = 34  # height of the class labels above the board (the image's label badge covers the top left)


@dataclass(frozen=True)
class SampleGrid:
    step: int
    path: Path
    rows: list[str]  # class names or prompts, one per grid row
    seeds: list[int]  # one per grid column
    pad: int = GRID_PAD  # white pixels between tiles (the trainer records it in the json)

    @property
    def caption(self) -> str:
        who = "base model" if self.step == 0 else f"step {self.step}"
        return f"{who} · rows: {', '.join(self.rows[:6])}{' …' if len(self.rows) > 6 else ''} · seeds {self.seeds}"


def grids(store: RunStore, run_id: str) -> list[SampleGrid]:
    """The run's sample grids by step, with their row labels and seeds (empty lists if no json)."""
    out = []
    for step, path in store.samples(run_id):
        meta: dict = {}
        try:
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError):
            pass
        rows = [str(r) for r in meta.get("rows", [])] if isinstance(meta, dict) else []
        seeds = [int(s) for s in meta.get("seeds", [])] if isinstance(meta, dict) else []
        pad = int(meta.get("pad", GRID_PAD)) if isinstance(meta, dict) else GRID_PAD
        out.append(SampleGrid(step, path, rows, seeds, pad))
    return out


def signature(items: list[SampleGrid]) -> list[list]:
    """What changes when a grid is added or rewritten (to skip re-sending unchanged galleries)."""
    sig = []
    for g in items:
        try:
            sig.append([g.step, g.path.stat().st_mtime_ns])
        except FileNotFoundError:
            continue
    return sig


def tiles(grid: SampleGrid) -> np.ndarray | None:
    """[rows, seeds, h, w, 3] uint8 tiles of a grid, or None if its size does not fit its json."""
    if not grid.rows or not grid.seeds:
        return None
    try:
        with Image.open(grid.path) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError:
        return None
    n_rows, n_cols, pad = len(grid.rows), len(grid.seeds), grid.pad
    h, rem_h = divmod(arr.shape[0] - pad, n_rows)
    w, rem_w = divmod(arr.shape[1] - pad, n_cols)
    h, w = h - pad, w - pad
    if rem_h or rem_w or h <= 0 or w <= 0:
        return None
    out = np.empty((n_rows, n_cols, h, w, 3), np.uint8)
    for r in range(n_rows):
        for c in range(n_cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[r, c] = arr[y:y + h, x:x + w]
    return out


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=13)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


LEGEND_LINE_H = 15  # one "P1: prompt" line under a board whose columns are prompts


def step_class_board(items: list[SampleGrid], seed: int, max_classes: int = 16) -> np.ndarray | None:
    """One image: a row per step (labelled, step 0 = base), a column per class or prompt, all for `seed`.
    Labels too long for a column (prompts) become P1, P2, ... with the full text in a legend under the board."""
    rows = []
    labels = None
    for g in items:
        if seed not in g.seeds:
            continue
        t = tiles(g)
        if t is None:
            continue
        column = g.seeds.index(seed)
        rows.append((g.step, t[:max_classes, column]))
        labels = labels or g.rows[:max_classes]
    if not rows:
        return None
    n_cls = max(r[1].shape[0] for r in rows)
    h, w = rows[0][1].shape[1:3]
    pad = GRID_PAD * 2
    fits = max(3, w // 7)  # characters of a column label
    legend = [f"P{c + 1}: {name}" for c, name in enumerate(labels or [])] if any(
        len(name) > fits for name in labels or []) else []
    width = LABEL_W + n_cls * (w + pad) + pad
    if legend:
        width = max(width, 8 + 7 * max(len(line) for line in legend))
    height = HEADER_H + len(rows) * (h + pad) + pad + (len(legend) * LEGEND_LINE_H + 6 if legend else 0)
    board = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(board)
    font = _font()
    for c, name in enumerate(labels or []):
        x = LABEL_W + pad + c * (w + pad)
        draw.text((x, HEADER_H - 17), f"P{c + 1}" if legend else name[:fits], fill="black", font=font)
    top = HEADER_H + len(rows) * (h + pad) + pad + 3
    for k, line in enumerate(legend):
        draw.text((4, top + k * LEGEND_LINE_H), line, fill="black", font=font)
    for r, (step, tile_row) in enumerate(rows):
        y = HEADER_H + pad + r * (h + pad)
        draw.text((4, y + h // 2 - 6), "base (0)" if step == 0 else f"step {step}", fill="black", font=font)
        for c in range(tile_row.shape[0]):
            if tile_row[c].shape[:2] != (h, w):
                continue
            board.paste(Image.fromarray(tile_row[c]), (LABEL_W + pad + c * (w + pad), y))
    return np.asarray(board)


def seeds_of(items: list[SampleGrid]) -> list[int]:
    seen: list[int] = []
    for g in items:
        for s in g.seeds:
            if s not in seen:
                seen.append(s)
    return seen
