"""The logic of ``mmlo data list | prepare | show``, as plain functions the CLI calls.

``list`` says, per benchmark, mode and split, how many classes there are and whether the data is ready;
``prepare`` renders offline4's cache or checks and caches a real dataset, once, before a study (never inside
a trial); ``show`` writes a PNG contact sheet (a row per class, a column per sample) so a person can look at
the data. What each benchmark reports, prepares and shows is its registry entry's business
(:mod:`mmlo.tasks.registry`); this module only formats it. A missing source raises
:class:`~mmlo.tasks.errors.DataMissingError` naming the install command.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image

from mmlo.tasks.base import SPLITS, DataRow, Progress, Split
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.registry import benchmark_names, data_status, prepare_data, preview_grid

#: Contact-sheet tiles are enlarged (nearest neighbour) to at least this many pixels, to be legible.
SHEET_TILE = 64


def data_list(root: Path | None = None, cache_dir: Path | None = None) -> list[DataRow]:
    """Every registered benchmark's lines, in registration order: regression (procedural, always ready),
    offline4 (class counts from the committed index; ready when its sources are installed or its default
    cache is rendered) and the real datasets (ready when their files are under ``root``; class counts once
    prepared)."""
    return [row for name in benchmark_names() for row in data_status(name, root, cache_dir)]


def format_rows(rows: list[DataRow]) -> str:
    """The rows as an aligned text table."""
    header = ("benchmark", "mode", "split", "classes", "ready", "note")
    cells = [header] + [
        (r.benchmark, r.mode, r.split, "-" if r.classes is None else str(r.classes), "yes" if r.ready else "NO", r.note)
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1] for c in cells)


def print_data_list(root: Path | None = None, cache_dir: Path | None = None) -> None:
    """Print :func:`data_list` as a table."""
    print(format_rows(data_list(root, cache_dir)))


class StderrProgress:
    """A one-line text progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._started: dict[str, float] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        start = self._started.setdefault(label, now)
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = int(30 * done / max(total, 1))
        line = f"\r{label:<20} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {now - start:5.1f}s"
        self.stream.write(line + ("\n" if done >= total else ""))
        self.stream.flush()


def prepare(
    name: str,
    *,
    root: Path | None = None,
    config: BenchmarkConfig | None = None,
    progress: Progress | None = None,
) -> dict[str, dict[Split, int]]:
    """Make benchmark ``name`` ready for a study; prints and returns the classes per mode and split.

    ``config`` (a study's benchmark block) says exactly what to prepare (modes, image size, samples per
    class, ``max_classes``); without it, the benchmark's defaults. offline4 renders its cache on every core;
    a real dataset is checked under ``root`` and resized into its cache; regression needs nothing.
    """
    if config is not None and config.name != name:
        raise ValueError(f"the study's benchmark is {config.name!r}, not {name!r}")
    cfg = config or BenchmarkConfig(name=name)
    if root is not None:
        cfg = cfg.model_copy(update={"root": root.expanduser().resolve()})
    prepared = prepare_data(cfg, progress or StderrProgress())
    if prepared is None:
        return {}
    where = "" if prepared.location is None else f" in {prepared.location}"
    for mode, per_split in prepared.classes.items():
        print(f"{name} {mode}: ready{where} ({', '.join(f'{s} {n}' for s, n in per_split.items())} classes)")
    return prepared.classes


def show(
    name: str,
    *,
    mode: str,
    out: Path,
    split: str = "train",
    n_classes: int = 8,
    root: Path | None = None,
    image_size: int | None = None,
    samples: int = 8,
) -> Path:
    """Write a contact sheet of the first ``n_classes`` classes of ``mode`` on ``split`` (``samples`` each)
    to the PNG ``out``; returns its path. offline4 renders the samples afresh (no cache needed); a real
    dataset reads its prepared cache."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    grid = preview_grid(name, mode, split, n_classes, samples, root, image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(grid).save(out)
    return out


def contact_sheet(grid: np.ndarray, gap: int = 2) -> Image.Image:
    """A ``[rows, cols, H, W, 3]`` uint8 grid as one image, tiles enlarged to ``SHEET_TILE`` px and separated
    by ``gap`` px of grey."""
    rows, cols, h, w, _ = grid.shape
    scale = max(1, -(-SHEET_TILE // max(h, w)))
    th, tw = h * scale, w * scale
    sheet = Image.new("RGB", (cols * (tw + gap) + gap, rows * (th + gap) + gap), (128, 128, 128))
    for r in range(rows):
        for c in range(cols):
            tile = Image.fromarray(grid[r, c]).resize((tw, th), Image.Resampling.NEAREST)
            sheet.paste(tile, (gap + c * (tw + gap), gap + r * (th + gap)))
    return sheet
