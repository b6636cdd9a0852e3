"""Rendering many classes of one offline4 mode, on every CPU core, with a progress callback.

Each mode is a module (``glyphs``, ``emoji``, ``icons``, ``textures``) with the same four names: ``MODE``,
``CHANNELS``, ``sources(table, classes)`` and ``render_class(table, key, entry, samples, size)``. Classes are
rendered independently (each sample is seeded by its mode, class key and index), so splitting them over
processes gives the same pixels as one loop.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from mmlo.tasks.base import Progress

MODE_MODULES: dict[str, str] = {
    "glyphs": "mmlo.tasks.offline4.glyphs",
    "emoji": "mmlo.tasks.offline4.emoji",
    "icons": "mmlo.tasks.offline4.icons",
    "textures": "mmlo.tasks.offline4.textures",
}
#: Below this many images a worker pool costs more than it saves.
PARALLEL_MIN_IMAGES = 2000
#: Classes per work item: small enough for a smooth progress bar, large enough to amortise the transfer.
CHUNK_CLASSES = 16


def mode_module(mode: str) -> ModuleType:
    """The renderer module of ``mode``."""
    try:
        return importlib.import_module(MODE_MODULES[mode])
    except KeyError:
        raise ValueError(f"unknown offline4 mode {mode!r}; modes: {', '.join(MODE_MODULES)}") from None


def default_workers() -> int:
    """Processes ``mmlo data prepare`` renders with: ``$MMLO_RENDER_WORKERS``, else every CPU it may use."""
    env = os.environ.get("MMLO_RENDER_WORKERS")
    return max(1, int(env)) if env else len(os.sched_getaffinity(0))


_worker_table: Mapping[str, Any] = {}


def _init_worker(table: Mapping[str, Any]) -> None:
    global _worker_table
    _worker_table = table


Job = tuple[str, Sequence[tuple[str, Any]], int, int]


def _render_chunk(table: Mapping[str, Any], job: Job) -> np.ndarray:
    mode, classes, samples, size = job
    module = mode_module(mode)
    return np.concatenate([module.render_class(table, key, entry, samples, size) for key, entry in classes])


def _render_chunk_in_worker(job: Job) -> np.ndarray:
    return _render_chunk(_worker_table, job)


def render_classes(
    mode: str,
    table: Mapping[str, Any],
    classes: Sequence[tuple[str, Any]],
    samples: int,
    size: int,
    *,
    progress: Progress | None = None,
    label: str = "",
    workers: int | None = None,
) -> np.ndarray:
    """``samples`` images of each ``(key, entry)`` class, class-major: uint8 ``[n * samples, size, size, C]``;
    on ``workers`` processes (default :func:`default_workers`) when there are enough images to pay for them."""
    module = mode_module(mode)
    total = len(classes) * samples
    out = np.empty((total, size, size, module.CHANNELS), dtype=np.uint8)
    jobs = [(mode, classes[i : i + CHUNK_CLASSES], samples, size) for i in range(0, len(classes), CHUNK_CLASSES)]
    workers = min(default_workers() if workers is None else workers, len(jobs))
    done = 0
    if progress is not None:
        progress(label, 0, total)
    for chunk in _run(jobs, table, workers if total >= PARALLEL_MIN_IMAGES else 1):
        out[done : done + len(chunk)] = chunk
        done += len(chunk)
        if progress is not None:
            progress(label, done, total)
    return out


def _run(jobs: list[Job], table: Mapping[str, Any], workers: int) -> Iterator[np.ndarray]:
    if workers <= 1:
        yield from (_render_chunk(table, job) for job in jobs)
        return
    # fork, not spawn: a spawned worker re-runs the caller's main script, which in a script without a
    # `__main__` guard renders again and makes the pool respawn workers forever. Workers only run numpy and
    # Pillow, so they never touch the thread pools (torch's) a fork does not copy; trials, which run beside
    # Ray's threads, render with one process (see benchmark.ensure_bank).
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(table,)) as pool:
        yield from pool.imap(_render_chunk_in_worker, jobs)
