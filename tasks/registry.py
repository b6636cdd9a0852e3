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
    """A registered benchmark: its kind, its modes, and the ``module:function`` that builds it."""

    kind: Kind
    modes: tuple[str, ...]
    builder: str


_ENTRIES: dict[str, Entry] = {
    **{name: Entry("regression", modes, "mmlo.tasks.regression:build") for name, modes in REGRESSION_MODES.items()},
    "offline4": Entry("classification", ("glyphs", "emoji", "icons", "textures"), "mmlo.tasks.offline4:build"),
    "mm2": Entry("classification", ("omniglot", "miniimagenet"), "mmlo.tasks.real:build"),
    "mm2b": Entry("classification", ("miniimagenet", "fc100"), "mmlo.tasks.real:build"),
    "mm3": Entry("classification", ("omniglot", "miniimagenet", "fc100"), "mmlo.tasks.real:build"),
    "mm5": Entry("classification", ("omniglot", "miniimagenet", "fc100", "cub", "aircraft"), "mmlo.tasks.real:build"),
    **{name: Entry("classification", (name,), "mmlo.tasks.real:build") for name in REAL_DATASETS},
    "cifarfs": Entry("classification", ("cifarfs",), "mmlo.tasks.real:build"),
    "folder": Entry("classification", ("folder",), "mmlo.tasks.real:build"),
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
