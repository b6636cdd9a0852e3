"""Named benchmarks: one function builds any of them from a :class:`BenchmarkConfig`.

A study names ``benchmark: offline4`` or ``benchmark: regression5``; the registry knows each name's kind
and modes without building any data (a spec can be validated, and a search space laid out, before the
images exist). Each entry names one function per concern (build, prepare on a node, prepare before a
study, its lines of ``mmlo data list``, a preview of its images) and the registry imports it only when that
concern comes up, so that a regression study never depends on the image modules and ``mmlo data`` never
needs to know one benchmark from another.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmlo.tasks.base import Benchmark, DataRow, Kind, Prepared, Progress
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.regression import BENCHMARK_MODES as REGRESSION_MODES

if TYPE_CHECKING:
    import numpy as np

#: The real datasets (benchmark.md), each also usable alone as a one-mode benchmark ('folder': any
#: class-per-folder image collection). Kept equal to ``mmlo.tasks.real.COMPOSITIONS`` by a test.
REAL_DATASETS: tuple[str, ...] = ("omniglot", "miniimagenet", "fc100", "cifarfs", "cub", "aircraft", "folder")


@dataclass(frozen=True)
class Entry:
    """A registered benchmark: its kind, its modes, and one ``module:function`` per concern, imported only when
    that concern comes up (None: the concern does not apply, e.g. regression has no data to prepare)."""

    kind: Kind
    modes: tuple[str, ...]
    #: ``build(cfg) -> Benchmark``: the benchmark of a study.
    build: str
    #: ``data_rows(name, root, cache_dir) -> list[DataRow]``: its lines of ``mmlo data list``.
    status: str
    #: ``prepare_here(cfg)``: its data made ready on this machine (a trial's node), on one CPU.
    prepare_here: str | None = None
    #: ``prepare_data(cfg, progress) -> Prepared``: its data made ready before a study (``mmlo data prepare``).
    prepare: str | None = None
    #: ``preview_grid(name, mode, split, n_classes, samples, root, image_size) -> uint8 [classes, samples, H,
    #: W, 3]``: a few of its images, for ``mmlo data show`` (None: it has no images).
    preview: str | None = None


_ENTRIES: dict[str, Entry] = {
    **{
        name: Entry("regression", modes, "mmlo.tasks.regression:build", "mmlo.tasks.regression:data_rows")
        for name, modes in REGRESSION_MODES.items()
    },
    "offline4": Entry(
        "classification",
        ("glyphs", "emoji", "icons", "textures"),
        build="mmlo.tasks.offline4:build",
        status="mmlo.tasks.offline4:data_rows",
        prepare_here="mmlo.tasks.offline4:prepare_here",
        prepare="mmlo.tasks.offline4:prepare_data",
        preview="mmlo.tasks.offline4:preview_grid",
    ),
    **{
        name: Entry(
            "classification",
            modes,
            build="mmlo.tasks.real:build",
            status="mmlo.tasks.real:data_rows",
            prepare_here="mmlo.tasks.real:prepare",
            prepare="mmlo.tasks.real:prepare_data",
            preview="mmlo.tasks.real:preview_grid",
        )
        for name, modes in {
            "mm2": ("omniglot", "miniimagenet"),
            "mm2b": ("miniimagenet", "fc100"),
            "mm3": ("omniglot", "miniimagenet", "fc100"),
            "mm5": ("omniglot", "miniimagenet", "fc100", "cub", "aircraft"),
            **{name: (name,) for name in REAL_DATASETS},
        }.items()
    },
}


def _hook(target: str) -> Callable[..., Any]:
    """The function a ``module:function`` string names, its module imported now."""
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)


def _entry(name: str) -> Entry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise ValueError(f"unknown benchmark '{name}'; registered: {', '.join(benchmark_names())}") from None


def benchmark_names() -> tuple[str, ...]:
    """Every registered benchmark name, in registration order."""
    return tuple(_ENTRIES)


def benchmark_modes(name: str) -> tuple[str, ...]:
    """All modes of benchmark ``name`` (before any ``modes:`` subset of a study), without building data."""
    return _entry(name).modes


def benchmark_kind(name: str) -> Kind:
    """'classification' or 'regression', without building data."""
    return _entry(name).kind


def prepare_here(cfg: BenchmarkConfig) -> None:
    """Make ``cfg``'s data ready on this machine (a trial's node), on one CPU; a no-op once it is.

    Trials that start together on one node take turns (a lock in the data cache): the first renders or
    resizes, the others then find the cache. Raises ``DataMissingError`` naming what is missing.
    """
    import fcntl

    entry = _entry(cfg.name)
    if entry.prepare_here is None:
        return
    from mmlo.tasks.offline4 import cache_root

    lock = cache_root(cfg.cache_dir) / f".prepare-{cfg.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _hook(entry.prepare_here)(cfg)


def get_benchmark(cfg: BenchmarkConfig) -> Benchmark:
    """Build the benchmark ``cfg.name``; a missing data source raises ``DataMissingError``."""
    entry = _entry(cfg.name)
    if cfg.modes is not None:
        outside = [m for m in cfg.modes if m not in entry.modes]
        if outside:
            raise ValueError(f"modes {outside} are not part of {cfg.name}; it has {entry.modes}")
    return _hook(entry.build)(cfg)


def data_status(name: str, root: Path | None = None, cache_dir: Path | None = None) -> list[DataRow]:
    """Benchmark ``name``'s lines of ``mmlo data list``: per mode (and split, where known) its classes and
    whether its data is ready; real datasets are looked for under ``root``."""
    return _hook(_entry(name).status)(name, root, cache_dir)


def prepare_data(cfg: BenchmarkConfig, progress: Progress | None = None) -> Prepared | None:
    """Make ``cfg``'s data ready before a study, on every core; None when the benchmark has nothing to prepare."""
    entry = _entry(cfg.name)
    return None if entry.prepare is None else _hook(entry.prepare)(cfg, progress)


def preview_grid(
    name: str,
    mode: str,
    split: str,
    n_classes: int,
    samples: int,
    root: Path | None = None,
    image_size: int | None = None,
) -> np.ndarray:
    """``samples`` images of each of the first ``n_classes`` classes of ``mode`` on ``split``: uint8
    ``[classes, samples, H, W, 3]``; refused for a benchmark without images or a mode it does not have."""
    entry = _entry(name)
    if entry.preview is None:
        raise ValueError(f"{name} is a {entry.kind} benchmark: it has functions, not images, to show")
    if mode not in entry.modes:
        raise ValueError(f"{name} has no mode {mode!r}; modes: {', '.join(entry.modes)}")
    return _hook(entry.preview)(name, mode, split, n_classes, samples, root, image_size)
