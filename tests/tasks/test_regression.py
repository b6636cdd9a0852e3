from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.regression import FAMILIES, NOISE_STD, build, sample_family

N = 20_000


def _cfg(name: str = "regression5", **kw: object) -> BenchmarkConfig:
    return BenchmarkConfig(name=name, shots=5, query=5, **kw)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parameters_fill_their_uniform_ranges(family: str) -> None:
    # every uniform parameter stays in [low, high], reaches both ends, and has the U[low, high] mean and variance
    drawn = sample_family("train", family, range(N), 1)
    for name, low, high in FAMILIES[family].uniform:
        v = drawn.params[name]
        width = high - low
        assert v.min() >= low and v.max() <= high
        assert v.min() < low + 0.002 * width and v.max() > high - 0.002 * width
        se = width / math.sqrt(12 * N)
        assert abs(v.mean() - (low + high) / 2) < 5 * se
        assert v.var() == pytest.approx(width**2 / 12, rel=0.04)


def test_quadratic_sign_is_a_fair_coin() -> None:
    # s takes only the values -1 and +1, each about half the time (5 standard errors of a fair coin)
    s = sample_family("train", "quadratic", range(N), 1).params["s"]
    assert set(np.unique(s)) == {-1.0, 1.0}
    assert abs((s > 0).mean() - 0.5) < 5 * 0.5 / math.sqrt(N)


@pytest.mark.parametrize("family", ["sinusoid", "abs"])
def test_inputs_are_uniform_on_minus_five_to_five(family: str) -> None:
    # x ~ U[-5, 5]: bounds, mean 0 and variance 100/12
    x = sample_family("val", family, range(N // 4), 4).x.ravel()
    assert x.min() >= -5 and x.max() <= 5
    assert abs(x.mean()) < 5 * 10 / math.sqrt(12 * x.size)
    assert x.var() == pytest.approx(100 / 12, rel=0.03)


@pytest.mark.parametrize("family", ["linear", "tanh"])
def test_noise_is_gaussian_with_std_0_3(family: str) -> None:
    # y - f(x) has mean 0, std 0.3, and the Gaussian's 68.27 % / 95.45 % mass within 1 / 2 std
    drawn = sample_family("test", family, range(N // 10), 10)
    noise = (drawn.y - drawn.clean_y).ravel()
    assert abs(noise.mean()) < 5 * NOISE_STD / math.sqrt(noise.size)
    assert noise.std() == pytest.approx(NOISE_STD, rel=0.02)
    assert np.mean(np.abs(noise) < NOISE_STD) == pytest.approx(0.6827, abs=0.015)
    assert np.mean(np.abs(noise) < 2 * NOISE_STD) == pytest.approx(0.9545, abs=0.01)


def test_family_formulas_by_hand() -> None:
    # each formula of method.md §5 evaluated at hand-picked parameters and inputs x = 0 and x = 2
    x = np.array([[0.0, 2.0]])
    cases = {
        "sinusoid": ({"A": 2.0, "phi": math.pi / 2}, [-2.0, 2 * math.sin(2 - math.pi / 2)]),
        "linear": ({"a": 1.5, "b": -1.0}, [-1.0, 2.0]),
        "quadratic": ({"s": -1.0, "alpha": 0.1, "c": 1.0, "beta": 0.5}, [0.4, 0.4]),
        "tanh": ({"a": 2.0, "c": 2.0, "beta": 1.0}, [1 + 2 * math.tanh(-2.0), 1.0]),
        "abs": ({"a": -0.5, "c": 1.0, "beta": 3.0}, [2.5, 2.5]),
    }
    for family, (params, expected) in cases.items():
        got = FAMILIES[family]({k: np.array([v]) for k, v in params.items()}, x)
        np.testing.assert_allclose(got, [expected], rtol=1e-12, err_msg=family)


def test_tasks_carry_their_mode_labels_and_family_data() -> None:
    # task i of a batch has mode label modes[i] and exactly the (x, y) of that family's draw for its seed
    bench = build(_cfg())
    modes = [4, 0, 3, 1, 2, 0]
    seeds = [11, 12, 13, 14, 15, 16]
    batch = bench.tasks("train", modes, seeds)
    assert batch.mode.tolist() == modes and batch.seed.tolist() == seeds
    for i, (m, s) in enumerate(zip(modes, seeds, strict=True)):
        ref = sample_family("train", bench.modes[m], [s], 10)
        x = torch.cat([batch.support_x[i], batch.query_x[i]]).squeeze(-1).double().numpy()
        y = torch.cat([batch.support_y[i], batch.query_y[i]]).squeeze(-1).double().numpy()
        assert x == pytest.approx(ref.x[0], abs=1e-6)
        assert y == pytest.approx(ref.y[0], abs=1e-5)


def test_shapes_and_equal_mode_shares() -> None:
    # regression3's meta-batch of 75 has 25 tasks per mode and [T, points, 1] float32 tensors
    bench = build(BenchmarkConfig(name="regression3", shots=7, query=3))
    batch = bench.meta_batch("train", 75, np.random.default_rng(0))
    assert batch.support_x.shape == (75, 7, 1) and batch.query_y.shape == (75, 3, 1)
    assert batch.support_x.dtype == torch.float32 and batch.mode.dtype == torch.int64
    assert torch.bincount(batch.mode).tolist() == [25, 25, 25]
    assert bench.kind == "regression" and bench.input_shape == (1,) and bench.output_dim == 1


def test_same_triple_same_task_across_benchmarks_and_calls() -> None:
    # a task is a pure function of (split, mode, seed): repeat calls and regression2 vs regression5 agree
    r2, r5 = build(_cfg("regression2")), build(_cfg("regression5"))
    a = r2.tasks("val", [0, 1], [7, 2**61 + 3])
    b = r5.tasks("val", [0, 1], [7, 2**61 + 3])
    c = r2.tasks("val", [0, 1], [7, 2**61 + 3])
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert torch.equal(getattr(a, name), getattr(c, name))


def test_splits_and_seeds_separate_streams() -> None:
    # the same seed on another split, or another seed on the same split, gives a different task
    bench = build(_cfg("regression2"))
    train = bench.tasks("train", [0], [5]).support_x
    assert not torch.equal(train, bench.tasks("test", [0], [5]).support_x)
    assert not torch.equal(train, bench.tasks("train", [0], [6]).support_x)


def test_mode_subset_and_fingerprint() -> None:
    # a modes: subset keeps the given order; the fingerprint changes with the modes and the point counts
    sub = build(_cfg("regression5", modes=["abs", "sinusoid"]))
    assert sub.modes == ("abs", "sinusoid")
    full = build(_cfg("regression5"))
    more_shots = build(BenchmarkConfig(name="regression5", shots=10, query=5))
    assert len({sub.fingerprint(), full.fingerprint(), more_shots.fingerprint()}) == 3
    assert full.fingerprint() == build(_cfg("regression5")).fingerprint()
    with pytest.raises(ValueError, match="not part of regression2"):
        build(_cfg("regression2", modes=["tanh"]))


@pytest.mark.parametrize("name", ["regression2", "regression3", "regression5"])
def test_regression_defaults_to_mmaml_five_support_five_query(name: str) -> None:
    # shots/query left out of a regression benchmark mean MMAML-Regression's 5 support + 5 query points per
    # task, written into the config itself (so a dumped config says 5 and 5), and the tasks have them
    cfg = BenchmarkConfig(name=name)
    assert (cfg.shots, cfg.query) == (5, 5)
    assert {k: cfg.model_dump()[k] for k in ("shots", "query")} == {"shots": 5, "query": 5}
    batch = build(cfg).tasks("train", [0], [3])
    assert batch.support_x.shape == (1, 5, 1) and batch.query_x.shape == (1, 5, 1)


def test_image_defaults_and_explicit_values_stay() -> None:
    # image benchmarks keep 1 shot and 15 query per class; a value written in the config always wins, and an
    # explicit null means the benchmark's default, as for image_size
    assert (BenchmarkConfig().shots, BenchmarkConfig().query) == (1, 15)
    assert (BenchmarkConfig(name="mm5").shots, BenchmarkConfig(name="mm5").query) == (1, 15)
    mixed = BenchmarkConfig(name="regression2", shots=10)
    assert (mixed.shots, mixed.query) == (10, 5)
    image = BenchmarkConfig(name="offline4", query=5)
    assert (image.shots, image.query) == (1, 5)
    assert BenchmarkConfig.model_validate({"name": "regression3", "shots": None}).shots == 5


def test_resolved_study_spec_records_the_regression_defaults() -> None:
    # a study that omits shots/query on a regression benchmark runs, and records, 5 and 5
    from mmlo.orchestrator.spec import dump_study, parse_study

    study = parse_study({"name": "t", "benchmark": {"name": "regression2"}, "arms": [{"name": "M", "learner": "maml"}]})
    resolved = yaml.safe_load(dump_study(study))["benchmark"]
    assert (resolved["shots"], resolved["query"]) == (5, 5)
    assert parse_study(yaml.safe_load(dump_study(study))).benchmark == study.benchmark
