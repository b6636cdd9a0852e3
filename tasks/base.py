"""The task-source interface: what every benchmark (regression families, built-in images, real datasets) provides.

A task is identified by ``(split, mode, seed)``: the same triple always yields the same support and query
set, so evaluation episodes can be shared by every arm of a study and any task can be rebuilt later
(transference, debugging). A meta-batch is a :class:`TaskBatch` with a leading task axis, so that learners
process it in one vectorised call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
Kind = Literal["classification", "regression"]
#: ``progress(label, done, total)``: called while a benchmark's data is prepared (``done`` counts images).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DataRow:
    """One line of ``mmlo data list``; ``classes`` is None where it is unbounded or not yet known."""

    benchmark: str
    mode: str
    split: str
    classes: int | None
    ready: bool
    note: str


@dataclass(frozen=True)
class Prepared:
    """What ``mmlo data prepare`` made ready: classes per mode and split, and the folder it is in (None: not
    stated)."""

    classes: dict[str, dict[Split, int]]
    location: Path | None = None


@dataclass(frozen=True)
class TaskBatch:
    """A batch of T tasks, stacked on a leading task axis.

    Classification: ``support_x`` is ``[T, ways*shots, C, H, W]`` float32 in [0, 1], ``support_y`` is
    ``[T, ways*shots]`` int64 labels in ``0..ways-1``; ``query_*`` likewise with ``ways*query`` rows.
    Regression: ``support_x``/``support_y`` are ``[T, shots, 1]`` float32; ``query_*`` ``[T, query, 1]``.
    ``mode`` is ``[T]`` int64, an index into the benchmark's ``modes``; ``seed`` is ``[T]`` int64, the
    task seed that rebuilds the task with :meth:`Benchmark.tasks`.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    mode: torch.Tensor
    seed: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return int(self.mode.shape[0])

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: torch.Tensor | slice | Sequence[int]) -> TaskBatch:
        """The sub-batch of the given task indices (used by oracle per-mode routing and by loops in tests)."""
        if not isinstance(index, (torch.Tensor, slice)):
            index = torch.as_tensor(list(index), dtype=torch.long)
        return TaskBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class Benchmark(ABC):
    """A multimodal task distribution: a named mixture of modes, each with train/val/test tasks."""

    name: str
    kind: Kind
    modes: tuple[str, ...]
    #: Shape of one input, e.g. ``(3, 32, 32)`` or ``(1,)``.
    input_shape: tuple[int, ...]
    #: Number of output units the learner needs (``ways`` for classification, 1 for regression).
    output_dim: int

    @abstractmethod
    def tasks(self, split: Split, modes: Sequence[int], seeds: Sequence[int]) -> TaskBatch:
        """Build one task per ``(mode, seed)`` pair, deterministically, stacked into a TaskBatch."""

    def fingerprint(self) -> str:
        """A hash of everything that defines the task distribution (class indexes, splits, recipe version).

        Studies record it so that results stay comparable; the default covers the name and modes only.
        """
        import hashlib

        return hashlib.sha256(f"{self.name}:{','.join(self.modes)}".encode()).hexdigest()[:16]

    def meta_batch(self, split: Split, size: int, rng: np.random.Generator) -> TaskBatch:
        """A meta-batch with equal shares of every mode (``size`` must be a multiple of the mode count)."""
        n = len(self.modes)
        if size % n:
            raise ValueError(f"meta_batch {size} is not a multiple of the {n} modes of {self.name}")
        modes = [i % n for i in range(size)]
        seeds = rng.integers(0, 2**62, size=size).tolist()
        return self.tasks(split, modes, seeds)


def episode_seed(base_seed: int, split: str, mode: str, index: int) -> int:
    """The seed of evaluation episode ``index`` of ``mode`` on ``split``: shared by every arm of a study."""
    import hashlib

    digest = hashlib.sha256(f"{base_seed}:{split}:{mode}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2
