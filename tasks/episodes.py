"""N-way K-shot episodes from in-memory image banks: the task sampler of every image benchmark.

A mode's split is a :class:`ClassBank`: one uint8 array holding all images of all its classes, with class
``c`` occupying the rows ``offsets[c]:offsets[c+1]``. An episode chooses ``ways`` classes without
replacement (their order is the episode's label permutation), then ``shots + query`` distinct images of each
class, all from a generator seeded by the task seed, and gathers them with one fancy index. So a task is
fully determined by ``(split, mode, seed)`` and costs microseconds, not a file read.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmlo.tasks.base import SPLITS, Benchmark, Kind, Split, TaskBatch


@dataclass(frozen=True)
class ClassBank:
    """The images of one mode's split, grouped by class.

    ``images`` is uint8 ``[N, H, W, C]`` with ``C`` 3 (RGB) or 1 (grey, tiled to RGB when sampled, which
    keeps Omniglot-sized banks small); ``offsets`` is int64 ``[n_base + 1]`` with class ``c`` stored in
    ``images[offsets[c]:offsets[c+1]]``. ``rotations`` > 1 adds the customary Omniglot rotated classes
    without storing them: class ``c`` is base class ``c % n_base`` turned by ``(c // n_base) * 90`` degrees.
    """

    images: np.ndarray
    offsets: np.ndarray
    class_names: tuple[str, ...]
    rotations: int = 1

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, H, W, 1|3], got {self.images.dtype} {self.images.shape}")
        offsets = np.asarray(self.offsets, dtype=np.int64)
        object.__setattr__(self, "offsets", offsets)
        if offsets.ndim != 1 or len(offsets) != len(self.class_names) + 1:
            raise ValueError(f"{len(self.class_names)} class names need {len(self.class_names) + 1} offsets")
        if offsets[0] != 0 or offsets[-1] != len(self.images) or np.any(np.diff(offsets) < 1):
            raise ValueError("offsets must rise strictly from 0 to the number of images")
        if self.rotations not in (1, 2, 3, 4):
            raise ValueError(f"rotations must be 1..4, got {self.rotations}")
        if self.rotations > 1 and self.images.shape[1] != self.images.shape[2]:
            raise ValueError("rotated classes need square images")

    @property
    def num_base_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_classes(self) -> int:
        """Classes an episode can draw from, rotated copies included."""
        return self.num_base_classes * self.rotations

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_sizes(self) -> np.ndarray:
        """Images per class, for all ``num_classes`` classes."""
        return np.tile(np.diff(self.offsets), self.rotations)

    def class_name(self, c: int) -> str:
        base, turn = c % self.num_base_classes, c // self.num_base_classes
        return self.class_names[base] if turn == 0 else f"{self.class_names[base]}/rot{90 * turn:03d}"

    def class_images(self, c: int) -> np.ndarray:
        """All images of class ``c`` as uint8 ``[n, H, W, C]`` (rotated if ``c`` is a rotated class)."""
        base, turn = c % self.num_base_classes, c // self.num_base_classes
        return np.rot90(self.images[self.offsets[base] : self.offsets[base + 1]], turn, axes=(1, 2))

    def head(self, n: int) -> ClassBank:
        """The bank of the first ``n`` base classes (``max_classes``: a deterministic prefix of the class list)."""
        if n >= self.num_base_classes:
            return self
        end = int(self.offsets[n])
        return ClassBank(self.images[:end], self.offsets[: n + 1], self.class_names[:n], self.rotations)

    def gather(self, classes: np.ndarray, within: np.ndarray) -> np.ndarray:
        """Images ``within[..., i]`` of classes ``classes[...]``: uint8 ``[*within.shape, H, W, C]``.

        ``classes`` has the shape of ``within`` without its last axis; indices are in ``0..num_classes-1``.
        """
        n_base = self.num_base_classes
        rows = self.offsets[classes % n_base][..., None] + within
        out = self.images[rows]
        if self.rotations > 1:
            turns = np.broadcast_to((classes // n_base)[..., None], within.shape)
            for turn in range(1, self.rotations):
                hit = turns == turn
                if hit.any():
                    out[hit] = np.rot90(out[hit], turn, axes=(1, 2))
        return out


def _mode_salt(mode: str) -> int:
    # A stable hash of the mode name rather than its index, so that a mode's task for a given seed is the
    # same picture in every composition that contains it (mm2, mm3, mm5 ...).
    return zlib.crc32(mode.encode())


class ImageBenchmark(Benchmark):
    """A multimodal N-way K-shot classification benchmark over per-mode, per-split class banks.

    ``banks[mode][split]`` is a :class:`ClassBank` or a zero-argument callable returning one; callables are
    called once, on first use, and cached (so a benchmark is cheap to build and to send to a worker).
    Each task has ``ways * shots`` support and ``ways * query`` query images, stored class by class
    (label 0's images first), with labels in ``0..ways-1`` assigned in the episode's random class order.
    """

    kind: Kind = "classification"

    def __init__(
        self,
        name: str,
        banks: Mapping[str, Mapping[Split, ClassBank | Callable[[], ClassBank]]],
        ways: int,
        shots: int,
        query: int,
        fingerprint: str,
        *,
        image_size: int | None = None,
    ) -> None:
        if not banks:
            raise ValueError(f"benchmark {name} has no modes")
        for mode, splits in banks.items():
            missing = [s for s in SPLITS if s not in splits]
            if missing:
                raise ValueError(f"mode {mode} of {name} lacks the splits {missing}")
        self.name = name
        self.modes = tuple(banks)
        self.ways, self.shots, self.query = ways, shots, query
        self.output_dim = ways
        self._banks = {mode: dict(splits) for mode, splits in banks.items()}
        self._fingerprint = fingerprint
        self._image_size = image_size
        self._loaded: dict[tuple[str, str], ClassBank] = {}
        self._checked: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        if self._image_size is None:
            h, w = self.bank(self.modes[0], "train").image_size
            return (3, h, w)
        return (3, self._image_size, self._image_size)

    def fingerprint(self) -> str:
        return self._fingerprint

    def bank(self, mode: str, split: Split) -> ClassBank:
        """The class bank of ``mode`` on ``split``, loaded on first use."""
        key = (mode, split)
        with self._lock:
            if key not in self._loaded:
                source = self._banks[mode][split]
                self._loaded[key] = source if isinstance(source, ClassBank) else source()
            return self._loaded[key]

    def _episode_bank(self, mode: str, split: Split) -> ClassBank:
        """:meth:`bank`, checked once against the task shape (ways, shots + query, image size)."""
        bank = self.bank(mode, split)
        if (mode, split) not in self._checked:
            self._check(mode, split, bank)
            self._checked.add((mode, split))
        return bank

    def _check(self, mode: str, split: str, bank: ClassBank) -> None:
        where = f"{self.name} mode {mode!r} split {split!r}"
        if bank.num_classes < self.ways:
            raise ValueError(f"{where} has {bank.num_classes} classes, fewer than ways={self.ways}")
        need = self.shots + self.query
        sizes = bank.class_sizes()
        if sizes.min() < need:
            c = int(sizes.argmin())
            raise ValueError(
                f"{where}: class {bank.class_name(c)!r} has {sizes[c]} images, "
                f"fewer than shots + query = {need}"
            )
        if bank.image_size != self.input_shape[1:]:
            raise ValueError(f"{where} holds {bank.image_size} images, not {self.input_shape[1:]}")

    def tasks(self, split: Split, modes: Sequence[int], seeds: Sequence[int]) -> TaskBatch:
        """One episode per ``(mode, seed)``; the same triple always gives the same pixels and labels."""
        mode_idx = np.asarray(modes, dtype=np.int64).reshape(-1)
        seed_arr = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if mode_idx.shape != seed_arr.shape:
            raise ValueError(f"{len(mode_idx)} modes but {len(seed_arr)} seeds")
        split_idx = SPLITS.index(split)
        ways, shots, per = self.ways, self.shots, self.shots + self.query
        n_tasks = len(mode_idx)
        _, height, width = self.input_shape
        # One uint8 buffer, class-major, already channel-first: rows [:shots] of each class are support, the
        # rest query. Transposing (and tiling grey to RGB) on uint8 costs a quarter of doing it on float32.
        pixels = np.empty((n_tasks, ways, per, 3, height, width), dtype=np.uint8)
        for m in np.unique(mode_idx):
            mode = self.modes[int(m)]
            bank = self._episode_bank(mode, split)
            rows = np.flatnonzero(mode_idx == m)
            classes, within = self._draw(bank, mode, split_idx, seed_arr[rows])
            pixels[rows] = bank.gather(classes, within).transpose(0, 1, 2, 5, 3, 4)
        source = torch.from_numpy(pixels)
        support_x = source[:, :, :shots].to(torch.float32).div_(255.0)
        query_x = source[:, :, shots:].to(torch.float32).div_(255.0)
        labels = torch.arange(ways, dtype=torch.int64)
        return TaskBatch(
            support_x=support_x.reshape(n_tasks, ways * shots, 3, height, width),
            support_y=labels.repeat_interleave(shots).expand(n_tasks, -1).contiguous(),
            query_x=query_x.reshape(n_tasks, ways * self.query, 3, height, width),
            query_y=labels.repeat_interleave(self.query).expand(n_tasks, -1).contiguous(),
            mode=torch.from_numpy(mode_idx.copy()),
            seed=torch.from_numpy(seed_arr.copy()),
        )

    def _draw(
        self, bank: ClassBank, mode: str, split_idx: int, seeds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Classes ``[t, ways]`` and distinct image indices within each class ``[t, ways, shots+query]``."""
        ways, per = self.ways, self.shots + self.query
        sizes = bank.class_sizes()
        width = int(sizes.max())
        column = np.arange(width)
        classes = np.empty((len(seeds), ways), dtype=np.int64)
        within = np.empty((len(seeds), ways, per), dtype=np.int64)
        salt = _mode_salt(mode)
        for t, seed in enumerate(seeds.tolist()):
            rng = np.random.default_rng((seed, salt, split_idx))
            chosen = rng.choice(bank.num_classes, size=ways, replace=False)
            # Random keys, with the slots past each class's end pushed last: the `per` smallest keys are a
            # uniform draw without replacement from every class at once. Sorting those few by key fixes
            # their order independently of how argpartition breaks ties.
            keys = rng.random((ways, width))
            keys[column[None, :] >= sizes[chosen][:, None]] = 2.0
            smallest = np.argpartition(keys, per - 1, axis=1)[:, :per]
            order = np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1, kind="stable")
            classes[t] = chosen
            within[t] = np.take_along_axis(smallest, order, axis=1)
        return classes, within

    def __getstate__(self) -> dict[str, Any]:
        # Banks that came from callables are reloaded in the receiving process instead of being pickled.
        state = self.__dict__.copy()
        state["_loaded"] = {}
        state["_checked"] = set()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

