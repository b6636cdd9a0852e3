"""MMAML's multimodal regression benchmark: five function families (method.md §5).

Every task draws its function parameters uniformly from its family's ranges, ``shots`` support and
``query`` query inputs ``x ~ U[-5, 5]``, and targets ``y = f(x) + ε`` with ``ε ~ N(0, 0.3²)``.
``regression2`` mixes sinusoid and linear tasks, ``regression3`` adds quadratic, ``regression5`` adds tanh
and abs; a meta-batch holds an equal share of every mode.

A task is a pure function of ``(split, mode, seed)``. Its random numbers come from a counter-based
generator (SplitMix64 keyed by the seed and by the split and family names), evaluated for a whole
meta-batch in a few numpy array operations: no per-task generator objects on the hot path, and the same
triple gives the same task on every platform and in every benchmark that contains the family (a
sinusoid task of ``regression2`` is the same task in ``regression5``). The split only separates the seed
streams, so the three splits never share a task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmlo.tasks.base import SPLITS, Benchmark, DataRow, Split, TaskBatch
from mmlo.tasks.config import BenchmarkConfig

#: Bumped whenever the sampling recipe changes, so that fingerprints of old studies stop matching.
RECIPE_VERSION = 1
X_RANGE = (-5.0, 5.0)
NOISE_STD = 0.3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
#: Counter slots reserved for function parameters, ahead of the inputs and the noise.
_PARAMETER_SLOTS = 4


@dataclass(frozen=True)
class Family:
    """One mode: a parametric function family with uniformly drawn parameters.

    ``uniform`` lists ``(name, low, high)`` for parameters drawn from U[low, high]; ``signs`` names
    parameters drawn from {-1, +1} with equal probability (the quadratic's ``s``).
    """

    name: str
    formula: str
    uniform: tuple[tuple[str, float, float], ...]
    signs: tuple[str, ...]
    function: Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]

    def __call__(self, params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        """Noise-free targets; ``params`` values are ``[T]`` and broadcast against ``x`` of ``[T, n]``."""
        return self.function({k: np.asarray(v)[..., None] for k, v in params.items()}, x)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "sinusoid",
            "A*sin(x - phi)",
            (("A", 0.1, 5.0), ("phi", 0.0, float(np.pi))),
            (),
            lambda p, x: p["A"] * np.sin(x - p["phi"]),
        ),
        Family("linear", "a*x + b", (("a", -3.0, 3.0), ("b", -3.0, 3.0)), (), lambda p, x: p["a"] * x + p["b"]),
        Family(
            "quadratic",
            "s*alpha*(x - c)**2 + beta",
            (("alpha", 0.02, 0.15), ("c", -3.0, 3.0), ("beta", -3.0, 3.0)),
            ("s",),
            lambda p, x: p["s"] * p["alpha"] * (x - p["c"]) ** 2 + p["beta"],
        ),
        Family(
            "tanh",
            "a*tanh(x - c) + beta",
            (("a", -3.0, 3.0), ("c", -3.0, 3.0), ("beta", -3.0, 3.0)),
            (),
            lambda p, x: p["a"] * np.tanh(x - p["c"]) + p["beta"],
        ),
        Family(
            "abs",
            "a*|x - c| + beta",
            (("a", -3.0, 3.0), ("c", -3.0, 3.0), ("beta", -3.0, 3.0)),
            (),
            lambda p, x: p["a"] * np.abs(x - p["c"]) + p["beta"],
        ),
    )
}

#: The registered regression benchmarks and their modes, in MMAML's order.
BENCHMARK_MODES: dict[str, tuple[str, ...]] = {
    "regression2": ("sinusoid", "linear"),
    "regression3": ("sinusoid", "linear", "quadratic"),
    "regression5": ("sinusoid", "linear", "quadratic", "tanh", "abs"),
}


@dataclass(frozen=True)
class FamilySample:
    """Tasks of one family: parameters ``[T]``, inputs, noise-free targets and noisy targets ``[T, n]``."""

    params: dict[str, np.ndarray]
    x: np.ndarray
    clean_y: np.ndarray
    y: np.ndarray


def _finalize(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _stream_constant(split: str, family: str) -> np.uint64:
    digest = hashlib.sha256(f"mmlo.regression:{split}:{family}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


def _uniforms(split: str, family: str, seeds: Sequence[int], count: int) -> np.ndarray:
    """``[T, count]`` float64 in [0, 1): SplitMix64 keyed by (split, family, seed), in counter mode."""
    seed_words = np.array([int(s) & _MASK64 for s in seeds], dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _finalize(_finalize(seed_words + _GOLDEN) ^ _stream_constant(split, family))
        counters = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        bits = _finalize(key[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_family(split: Split, family: str, seeds: Sequence[int], points: int) -> FamilySample:
    """Draw one task of ``family`` per seed with ``points`` (x, y) pairs, deterministically.

    Counter slots: the parameters use the first four, the inputs the next ``points``, and the Gaussian
    noise (Box-Muller, two uniforms per point) the ``2 * points`` after those, so a task's function and
    its first inputs do not depend on how many points are drawn.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; expected one of {SPLITS}")
    if family not in FAMILIES:
        raise ValueError(f"unknown regression family '{family}'; expected one of {tuple(FAMILIES)}")
    spec = FAMILIES[family]
    u = _uniforms(split, family, seeds, _PARAMETER_SLOTS + 3 * points)
    params: dict[str, np.ndarray] = {}
    for slot, (name, low, high) in enumerate(spec.uniform):
        params[name] = low + (high - low) * u[:, slot]
    for slot, name in enumerate(spec.signs, start=len(spec.uniform)):
        params[name] = np.where(u[:, slot] < 0.5, -1.0, 1.0)
    first_x = _PARAMETER_SLOTS
    first_noise = first_x + points
    x = X_RANGE[0] + (X_RANGE[1] - X_RANGE[0]) * u[:, first_x:first_noise]
    radius = np.sqrt(-2.0 * np.log1p(-u[:, first_noise : first_noise + points]))
    angle = 2.0 * np.pi * u[:, first_noise + points : first_noise + 2 * points]
    clean_y = spec(params, x)
    y = clean_y + NOISE_STD * radius * np.cos(angle)
    return FamilySample(params=params, x=x, clean_y=clean_y, y=y)


class RegressionBenchmark(Benchmark):
    """A mixture of regression families; each task has ``shots`` support and ``query`` query points."""

    kind = "regression"
    input_shape = (1,)
    output_dim = 1

    def __init__(self, name: str, modes: Sequence[str], shots: int, query: int) -> None:
        unknown = [m for m in modes if m not in FAMILIES]
        if unknown or not modes:
            raise ValueError(f"unknown regression modes {unknown}; expected a subset of {tuple(FAMILIES)}")
        self.name = name
        self.modes = tuple(modes)
        self.shots = shots
        self.query = query

    def tasks(self, split: Split, modes: Sequence[int], seeds: Sequence[int]) -> TaskBatch:
        """One task per ``(mode index, seed)``; the support is the first ``shots`` points, the query the rest."""
        mode_index = np.asarray(list(modes), dtype=np.int64)
        seed_list = [int(s) for s in seeds]
        if mode_index.shape[0] != len(seed_list):
            raise ValueError(f"{mode_index.shape[0]} modes for {len(seed_list)} seeds")
        if mode_index.size and (mode_index.min() < 0 or mode_index.max() >= len(self.modes)):
            raise ValueError(f"mode index out of range for the {len(self.modes)} modes of {self.name}")
        points = self.shots + self.query
        x = np.empty((len(seed_list), points), dtype=np.float64)
        y = np.empty_like(x)
        for m in np.unique(mode_index):
            rows = np.flatnonzero(mode_index == m)
            drawn = sample_family(split, self.modes[m], [seed_list[r] for r in rows], points)
            x[rows] = drawn.x
            y[rows] = drawn.y
        xt = torch.from_numpy(x.astype(np.float32)).unsqueeze(-1)
        yt = torch.from_numpy(y.astype(np.float32)).unsqueeze(-1)
        return TaskBatch(
            support_x=xt[:, : self.shots].contiguous(),
            support_y=yt[:, : self.shots].contiguous(),
            query_x=xt[:, self.shots :].contiguous(),
            query_y=yt[:, self.shots :].contiguous(),
            mode=torch.from_numpy(mode_index.copy()),
            seed=torch.tensor(seed_list, dtype=torch.int64),
        )

    def fingerprint(self) -> str:
        """Hash of the modes, their formulas and ranges, the point counts, noise and recipe version."""
        recipe = {
            "name": self.name,
            "recipe_version": RECIPE_VERSION,
            "x_range": X_RANGE,
            "noise_std": NOISE_STD,
            "shots": self.shots,
            "query": self.query,
            "modes": [[m, FAMILIES[m].formula, FAMILIES[m].uniform, FAMILIES[m].signs] for m in self.modes],
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build(cfg: BenchmarkConfig) -> RegressionBenchmark:
    """The benchmark named by ``cfg.name`` (regression2/3/5), restricted to ``cfg.modes`` if given.

    ``cfg.shots`` and ``cfg.query`` are the support and query points per task (MMAML: 5 and 5).
    """
    if cfg.name not in BENCHMARK_MODES:
        raise ValueError(f"'{cfg.name}' is not a regression benchmark; expected one of {tuple(BENCHMARK_MODES)}")
    available = BENCHMARK_MODES[cfg.name]
    modes = tuple(cfg.modes) if cfg.modes is not None else available
    outside = [m for m in modes if m not in available]
    if outside:
        raise ValueError(f"modes {outside} are not part of {cfg.name}; it has {available}")
    return RegressionBenchmark(cfg.name, modes, cfg.shots, cfg.query)


def data_rows(name: str, root: Path | None, cache_dir: Path | None) -> list[DataRow]:
    """``name``'s lines of ``mmlo data list``: procedural, always ready (``root`` and ``cache_dir`` are not used)."""
    return [DataRow(name, mode, "all", None, True, "procedural: unlimited tasks") for mode in BENCHMARK_MODES[name]]
