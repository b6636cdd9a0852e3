"""Named benchmarks: one function builds any of them from a :class:`BenchmarkConfig`.

A study names ``benchmark: offline4`` or ``benchmark: regression5``; the registry knows each name's kind
and modes without building any data (a spec can be validated, and a search space laid out, before the
images exist), and imports a builder only when the benchmark is built, so that a regression study never
depends on the image modules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from mmlo.tasks.base import Benchmark, Kind
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.regression import BENCHMARK_MODES as REGRESSION_MODES

#: The real datasets (benchmark.md), each also usable alone as a one-mode benchmark ('folder': any
#: class-per-folder image collection). Kept equal to ``mmlo.tasks.real.COMPOSITIONS`` by a test.
REAL_DATASETS: tuple[str, ...] = ("omniglot", "miniimagenet", "fc100", "cifarfs", "cub", "aircraft", "folder")


@dataclass(frozen=True)
class Entry:
    """A registered benchmark: its kind, its modes, the ``module:function`` that builds it, and the one that
    prepares its data on a machine (None: nothing to prepare)."""

    kind: Kind
    modes: tuple[str, ...]
    builder: str
    preparer: str | None = None


_ENTRIES: dict[str, Entry] = {
    **{name: Entry("regression", modes, "mmlo.tasks.regression:build") for name, modes in REGRESSION_MODES.items()},
    "offline4": Entry(
        "classification",
        ("glyphs", "emoji", "icons", "textures"),
        "mmlo.tasks.offline4:build",
        "mmlo.tasks.offline4:prepare_here",
    ),
    **{
        name: Entry("classification", modes, "mmlo.tasks.real:build", "mmlo.tasks.real:prepare")
        for name, modes in {
            "mm2": ("omniglot", "miniimagenet"),
            "mm2b": ("miniimagenet", "fc100"),
            "mm3": ("omniglot", "miniimagenet", "fc100"),
            "mm5": ("omniglot", "miniimagenet", "fc100", "cub", "aircraft"),
            **{name: (name,) for name in REAL_DATASETS},
        }.items()
    },
}


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
    if entry.preparer is None:
        return
    from mmlo.tasks.offline4 import cache_root

    lock = cache_root(cfg.cache_dir) / f".prepare-{cfg.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    module_name, function = entry.preparer.split(":")
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        getattr(importlib.import_module(module_name), function)(cfg)


def get_benchmark(cfg: BenchmarkConfig) -> Benchmark:
    """Build the benchmark ``cfg.name``; a missing data source raises ``DataMissingError``."""
    entry = _entry(cfg.name)
    if cfg.modes is not None:
        outside = [m for m in cfg.modes if m not in entry.modes]
        if outside:
            raise ValueError(f"modes {outside} are not part of {cfg.name}; it has {entry.modes}")
    module_name, function = entry.builder.split(":")
    builder = getattr(importlib.import_module(module_name), function)
    return builder(cfg)
