"""Building offline4: the cache of rendered banks, the benchmark of a study, and its data commands.

A bank (one mode's split at one image size and ``samples_per_class``) is rendered on first use into a cache
(``cache_dir``, else ``$MMLO_CACHE``, else ``~/.cache/mmlo``) and reused; ``mmlo data prepare offline4``
renders every bank once, before a study, on every core. A mode whose sources are missing is refused with
:class:`~mmlo.tasks.errors.DataMissingError` naming the install command.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmlo.tasks.base import SPLITS, DataRow, Prepared, Progress, Split
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.episodes import ClassBank, ImageBenchmark
from mmlo.tasks.offline4.index import canonical_sha256, load_index
from mmlo.tasks.offline4.rendering import MODE_MODULES, mode_module, render_classes
from mmlo.tasks.offline4.sources import Source, require

NAME = "offline4"
MODES: tuple[str, ...] = tuple(MODE_MODULES)
#: Bumped whenever a renderer draws different pixels for the same class and sample index; part of the
#: cache key and of the fingerprint, so old caches and old results are never mixed with new ones.
RECIPE_VERSION = 2


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where rendered banks live: ``cache_dir``, else ``$MMLO_CACHE``, else ``~/.cache/mmlo``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MMLO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmlo"


def _bank_dir(root: Path, mode: str) -> Path:
    return root / NAME / f"{mode}-{load_index()[mode].sha256[:16]}-r{RECIPE_VERSION}"


def _bank_stem(split: Split, image_size: int, samples_per_class: int) -> str:
    return f"{split}-{image_size}px-{samples_per_class}s"


def cached_bank_file(
    root: Path, mode: str, split: Split, image_size: int, samples_per_class: int, classes: int
) -> Path | None:
    """The smallest cached bank file holding at least the first ``classes`` classes, if any.

    A bank of n classes is a prefix of every larger bank of the same split, size and sample count (samples
    are seeded per class), so a full cache also serves every ``max_classes``.
    """
    folder = _bank_dir(root, mode)
    best: tuple[int, Path] | None = None
    for path in folder.glob(f"{_bank_stem(split, image_size, samples_per_class)}-*c.npy"):
        held = int(path.stem.rsplit("-", 1)[1][:-1])
        if held >= classes and (best is None or held < best[0]):
            best = (held, path)
    return None if best is None else best[1]


def mode_sources(mode: str, classes: Sequence[tuple[str, Any]] | None = None) -> list[Source]:
    """What ``mode`` renders ``classes`` (default: all of them) from, and whether each source is present."""
    index = load_index()[mode]
    chosen = [c for s in SPLITS for c in index.splits[s]] if classes is None else classes
    return mode_module(mode).sources(index.table, chosen)


def status() -> dict[str, list[Source]]:
    """Per mode, its sources: present or missing, with the command that installs each."""
    return {mode: mode_sources(mode) for mode in MODES}


def ensure_bank(
    mode: str,
    split: Split,
    *,
    image_size: int,
    samples_per_class: int,
    max_classes: int | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = 1,
) -> Path:
    """The cache file holding (at least) the bank of ``mode`` on ``split``, rendered first if missing.

    ``workers`` defaults to one process: a trial that finds no cache renders on its own CPU only (and never
    forks beside Ray's threads); :func:`prepare` renders on every core.
    """
    index = load_index()[mode]
    classes = index.classes(split, max_classes)
    root = cache_root(cache_dir)
    found = cached_bank_file(root, mode, split, image_size, samples_per_class, len(classes))
    if found is not None:
        return found
    require(mode, mode_sources(mode, classes))
    images = render_classes(
        mode,
        index.table,
        classes,
        samples_per_class,
        image_size,
        progress=progress,
        label=f"{mode}/{split}",
        workers=workers,
    )
    path = _bank_dir(root, mode) / f"{_bank_stem(split, image_size, samples_per_class)}-{len(classes)}c.npy"
    _save_atomic(path, images)
    return path


def load_bank(
    mode: str,
    split: Split,
    *,
    image_size: int,
    samples_per_class: int,
    max_classes: int | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = 1,
) -> ClassBank:
    """The bank of ``mode`` on ``split``: read from the cache, or rendered into it first (atomically)."""
    classes = load_index()[mode].classes(split, max_classes)
    path = ensure_bank(
        mode,
        split,
        image_size=image_size,
        samples_per_class=samples_per_class,
        max_classes=max_classes,
        cache_dir=cache_dir,
        progress=progress,
        workers=workers,
    )
    # Memory-mapped, not read: parallel trials share one copy of the bank through the page cache.
    images = np.load(path, mmap_mode="r")[: len(classes) * samples_per_class]
    offsets = np.arange(len(classes) + 1, dtype=np.int64) * samples_per_class
    return ClassBank(images, offsets, tuple(key for key, _ in classes))


def _save_atomic(path: Path, images: np.ndarray) -> None:
    # Concurrent renderers (two trials, two shells) each write a private file and rename it into place:
    # readers see a whole bank or none, and the banks they race to write are identical.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, images)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def selected_modes(cfg: BenchmarkConfig) -> tuple[str, ...]:
    """The study's modes (a subset of offline4's, in the study's order), checked."""
    modes = tuple(cfg.modes) if cfg.modes is not None else MODES
    unknown = [m for m in modes if m not in MODES]
    if unknown or len(set(modes)) != len(modes) or not modes:
        raise ValueError(f"offline4 modes must be distinct names from {MODES}, got {list(modes)}")
    return modes


def fingerprint(cfg: BenchmarkConfig) -> str:
    """Everything that fixes the images tasks are drawn from: the modes and their index hashes, the recipe,
    the image size, the samples per class and ``max_classes`` (the episode shape is the study's own record)."""
    modes = selected_modes(cfg)
    index = load_index()
    parts = {
        "benchmark": NAME,
        "modes": [[m, index[m].sha256] for m in modes],
        "recipe": RECIPE_VERSION,
        "image_size": cfg.image_size,
        "samples_per_class": cfg.samples_per_class,
        "max_classes": cfg.max_classes,
    }
    return canonical_sha256(parts)[:16]


def build(cfg: BenchmarkConfig) -> ImageBenchmark:
    """The offline4 benchmark of ``cfg``: lazy banks (rendered or read on first use), refused up front if a
    selected mode's sources are missing and its banks are not already cached."""
    modes = selected_modes(cfg)
    need = cfg.shots + cfg.query
    if cfg.samples_per_class < need:
        raise ValueError(
            f"samples_per_class={cfg.samples_per_class} is fewer than shots + query = {need}: "
            "raise samples_per_class or lower query"
        )
    root = cache_root(cfg.cache_dir)
    banks: dict[str, dict[Split, Any]] = {}
    for mode in modes:
        index = load_index()[mode]
        chosen = {s: index.classes(s, cfg.max_classes) for s in SPLITS}
        cached = all(
            cached_bank_file(root, mode, s, cfg.image_size, cfg.samples_per_class, len(chosen[s])) for s in SPLITS
        )
        if not cached:
            require(mode, mode_sources(mode, [c for s in SPLITS for c in chosen[s]]))
        banks[mode] = {
            split: functools.partial(
                load_bank,
                mode,
                split,
                image_size=cfg.image_size,
                samples_per_class=cfg.samples_per_class,
                max_classes=cfg.max_classes,
                cache_dir=cfg.cache_dir,
            )
            for split in SPLITS
        }
    return ImageBenchmark(NAME, banks, cfg.ways, cfg.shots, cfg.query, fingerprint(cfg), image_size=cfg.image_size)


def prepare(cfg: BenchmarkConfig, progress: Progress | None = None, *, workers: int | None = None) -> list[Path]:
    """Render (or find) every bank ``cfg`` needs, before a study, on ``workers`` processes (default: every
    CPU, or ``$MMLO_RENDER_WORKERS``); returns the cache files.

    Every selected mode's sources are checked first, so a missing font package is reported before minutes
    of rendering, not after.
    """
    for mode in selected_modes(cfg):
        require(mode, mode_sources(mode))
    return _ensure_banks(cfg, progress, workers)


def prepare_here(cfg: BenchmarkConfig) -> None:
    """Every bank ``cfg`` needs, found in this machine's cache or rendered there on one CPU (a trial's node)."""
    _ensure_banks(cfg, None, 1)


def _ensure_banks(cfg: BenchmarkConfig, progress: Progress | None, workers: int | None) -> list[Path]:
    return [
        ensure_bank(
            mode,
            split,
            image_size=cfg.image_size,
            samples_per_class=cfg.samples_per_class,
            max_classes=cfg.max_classes,
            cache_dir=cfg.cache_dir,
            progress=progress,
            workers=workers,
        )
        for mode in selected_modes(cfg)
        for split in SPLITS
    ]


def class_counts(max_classes: int | None = None) -> dict[str, dict[Split, int]]:
    """Classes per mode and split (capped by ``max_classes``)."""
    index = load_index()
    return {m: {s: len(index[m].classes(s, max_classes)) for s in SPLITS} for m in MODES}


def render_preview(mode: str, split: Split, classes: Sequence[int], samples: int, image_size: int) -> np.ndarray:
    """Fresh renders (no cache) of the first ``samples`` samples of the given classes of ``mode``:
    uint8 ``[len(classes), samples, image_size, image_size, 3]``, for contact sheets."""
    index = load_index()[mode]
    require(mode, mode_sources(mode))
    chosen = [index.splits[split][c] for c in classes]
    images = render_classes(mode, index.table, chosen, samples, image_size, workers=1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images.reshape(len(chosen), samples, image_size, image_size, 3)


def data_rows(name: str, root: Path | None, cache_dir: Path | None) -> list[DataRow]:
    """offline4's lines of ``mmlo data list``: class counts from the committed index; a split is ready when
    its sources are installed or its bank at the default size is cached (``root`` is not used)."""
    defaults = BenchmarkConfig(name=name, cache_dir=cache_dir)
    cache = cache_root(cache_dir)
    rows = []
    for mode in MODES:
        missing = [s for s in mode_sources(mode) if not s.present]
        for split, n in class_counts()[mode].items():
            cached = cached_bank_file(cache, mode, split, defaults.image_size, defaults.samples_per_class, n)
            if cached is not None:
                note = f"cached ({defaults.image_size}px, {defaults.samples_per_class} per class)"
            elif missing:
                note = "missing: " + "; ".join(f"{s.name} ({s.install})" for s in missing)
            else:
                note = "renders on first use (or run `mmlo data prepare offline4`)"
            rows.append(DataRow(name, mode, split, n, cached is not None or not missing, note))
    return rows


def prepare_data(cfg: BenchmarkConfig, progress: Progress | None = None) -> Prepared:
    """``mmlo data prepare offline4``: every bank of ``cfg`` rendered on every core (:func:`prepare`)."""
    files = prepare(cfg, progress)
    counts = class_counts(cfg.max_classes)
    return Prepared({m: counts[m] for m in selected_modes(cfg)}, files[0].parent.parent if files else None)


def preview_grid(
    name: str, mode: str, split: Split, n_classes: int, samples: int, root: Path | None, image_size: int | None
) -> np.ndarray:
    """``mmlo data show offline4``: the first ``n_classes`` classes of ``mode`` rendered afresh (no cache
    needed), at ``image_size`` or the default size (``name`` and ``root`` are not used)."""
    available = class_counts()[mode][split]
    size = image_size or BenchmarkConfig().image_size
    return render_preview(mode, split, range(min(n_classes, available)), samples, size)
