"""The logic of ``mmlo data list | prepare | show``, as plain functions the CLI calls.

``list`` says, per benchmark, mode and split, how many classes there are and whether the data is ready;
``prepare`` renders offline4's cache or checks and caches a real dataset, once, before a study (never inside
a trial); ``show`` writes a PNG contact sheet (a row per class, a column per sample) so a person can look at
the data. A missing source raises :class:`~mmlo.tasks.errors.DataMissingError` naming the install command.
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image

from mmlo.tasks.base import SPLITS
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.registry import benchmark_kind, benchmark_modes, benchmark_names
from mmlo.tasks.rendering import Progress

#: Contact-sheet tiles are enlarged (nearest neighbour) to at least this many pixels, to be legible.
SHEET_TILE = 64


@dataclass(frozen=True)
class DataRow:
    """One line of ``mmlo data list``; ``classes`` is None where it is unbounded or not yet known."""

    benchmark: str
    mode: str
    split: str
    classes: int | None
    ready: bool
    note: str


def data_list(root: Path | None = None, cache_dir: Path | None = None) -> list[DataRow]:
    """Every registered benchmark: regression (procedural, always ready), offline4 (class counts from the
    committed index; ready when its sources are installed or its default cache is rendered) and the real
    datasets (ready when their files are under ``root``; class counts once prepared)."""
    rows: list[DataRow] = []
    for name in benchmark_names():
        if benchmark_kind(name) == "regression":
            rows += [DataRow(name, m, "all", None, True, "procedural: unlimited tasks") for m in benchmark_modes(name)]
        elif name == "offline4":
            rows += _offline4_rows(cache_dir)
        else:
            rows += _real_rows(name, root, cache_dir)
    return rows


def _offline4_rows(cache_dir: Path | None) -> list[DataRow]:
    from mmlo.tasks import offline4

    defaults = BenchmarkConfig(name="offline4", cache_dir=cache_dir)
    root = offline4.cache_root(cache_dir)
    rows = []
    for mode in offline4.MODES:
        missing = [s for s in offline4.mode_sources(mode) if not s.present]
        for split, n in offline4.class_counts()[mode].items():
            cached = offline4.cached_bank_file(root, mode, split, defaults.image_size, defaults.samples_per_class, n)
            if cached is not None:
                note = f"cached ({defaults.image_size}px, {defaults.samples_per_class} per class)"
            elif missing:
                note = "missing: " + "; ".join(f"{s.name} ({s.install})" for s in missing)
            else:
                note = "renders on first use (or run `mmlo data prepare offline4`)"
            rows.append(DataRow("offline4", mode, split, n, cached is not None or not missing, note))
    return rows


def _real_rows(name: str, root: Path | None, cache_dir: Path | None) -> list[DataRow]:
    from mmlo.tasks.errors import DataMissingError

    real = importlib.import_module("mmlo.tasks.real")
    status = real.status(name, root)
    counts: dict[str, dict[str, int]] = {}
    if root is not None and all(s.present for s in status.values()):
        try:
            counts = real.class_counts(BenchmarkConfig(name=name, root=root, cache_dir=cache_dir))
        except DataMissingError:
            counts = {}
    rows = []
    for mode, st in status.items():
        if st.present:
            note = "present"
        elif root is None:
            note = f"needs --root, a folder holding {'; '.join(st.expected)}"
        else:
            note = str(st)
        if mode in counts:
            rows += [DataRow(name, mode, s, counts[mode][s], st.present, note) for s in SPLITS]
        else:
            suffix = "; run `mmlo data prepare` for class counts" if st.present else ""
            rows.append(DataRow(name, mode, "all", None, st.present, note + suffix))
    return rows


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
) -> dict[str, dict[str, int]]:
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
    bar = progress or StderrProgress()
    if benchmark_kind(name) == "regression":
        return {}
    if name == "offline4":
        from mmlo.tasks import offline4

        files = offline4.prepare(cfg, bar)
        counts = offline4.class_counts(cfg.max_classes)
        ready = {m: counts[m] for m in offline4.selected_modes(cfg)}
        where = f" in {files[0].parent.parent}" if files else ""
    else:
        real = importlib.import_module("mmlo.tasks.real")
        ready = dict(real.prepare(cfg, bar))
        where = ""
    for mode, per_split in ready.items():
        print(f"{name} {mode}: ready{where} ({', '.join(f'{s} {n}' for s, n in per_split.items())} classes)")
    return ready


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
    if benchmark_kind(name) == "regression":
        raise ValueError(f"{name} is a regression benchmark: it has functions, not images, to show")
    if mode not in benchmark_modes(name):
        raise ValueError(f"{name} has no mode {mode!r}; modes: {', '.join(benchmark_modes(name))}")
    if name == "offline4":
        from mmlo.tasks import offline4

        available = offline4.class_counts()[mode][split]
        size = image_size or BenchmarkConfig().image_size
        grid = offline4.render_preview(mode, split, range(min(n_classes, available)), samples, size)
    else:
        grid = _real_grid(name, mode, split, n_classes, samples, root, image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(grid).save(out)
    return out


def _real_grid(
    name: str, mode: str, split: str, n_classes: int, samples: int, root: Path | None, image_size: int | None
) -> np.ndarray:
    from mmlo.tasks.registry import get_benchmark

    update = {} if image_size is None else {"image_size": image_size}
    benchmark = get_benchmark(BenchmarkConfig(name=name, modes=[mode], root=root, **update))
    bank = benchmark.bank(mode, split)  # type: ignore[attr-defined]
    rows = []
    for c in range(min(n_classes, bank.num_classes)):
        images = bank.class_images(c)[:samples]
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        pad = np.full((samples - len(images), *images.shape[1:]), 255, dtype=np.uint8)
        rows.append(np.concatenate([images, pad]))
    return np.stack(rows)


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
