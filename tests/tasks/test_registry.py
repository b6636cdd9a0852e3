from __future__ import annotations

import pytest

from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.registry import benchmark_kind, benchmark_modes, benchmark_names, get_benchmark
from mmlo.tasks.regression import RegressionBenchmark


def test_kinds_and_names_without_building_data() -> None:
    # every name has a kind (its mode tuples are checked against the builders below)
    assert benchmark_kind("regression5") == "regression" and benchmark_kind("offline4") == "classification"
    assert {"regression2", "regression5", "offline4", "mm5", "omniglot"} <= set(benchmark_names())


def test_regression_entries_match_their_builder() -> None:
    # each regressionN name builds the modes the registry lists for it
    for name in (n for n in benchmark_names() if benchmark_kind(n) == "regression"):
        bench = get_benchmark(BenchmarkConfig(name=name, shots=5, query=5))
        assert bench.modes == benchmark_modes(name), name


def test_image_entries_match_their_builders() -> None:
    # the registry's mode tuples are the ones offline4 and tasks.real build (no second source of truth drifts)
    from mmlo.tasks import offline4, real

    assert benchmark_modes("offline4") == offline4.MODES
    registered = {n for n in benchmark_names() if benchmark_kind(n) == "classification" and n != "offline4"}
    assert registered == set(real.COMPOSITIONS)
    assert all(benchmark_modes(n) == real.COMPOSITIONS[n] for n in registered)


def test_get_benchmark_builds_regression() -> None:
    # regression names build a RegressionBenchmark with the configured modes and point counts
    bench = get_benchmark(BenchmarkConfig(name="regression2", shots=5, query=5))
    assert isinstance(bench, RegressionBenchmark) and bench.modes == ("sinusoid", "linear")
    assert (bench.shots, bench.query) == (5, 5)


def test_unknown_names_and_modes_are_refused() -> None:
    # an unregistered name or a mode outside the benchmark fails with the valid choices in the message
    with pytest.raises(ValueError, match="registered: .*regression2"):
        benchmark_modes("sinewaves")
    with pytest.raises(ValueError, match="not part of offline4"):
        get_benchmark(BenchmarkConfig(name="offline4", modes=["glyphs", "sinusoid"]))
