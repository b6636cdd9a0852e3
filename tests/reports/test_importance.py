from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mmlo.reports.importance import epsilon_squared, parameter_importance


# Hand-derived: metric [1, 2, 3, 4] in groups {1, 2} | {3, 4}: SS_total 5, SS_between 4, MS_within 0.5,
# so epsilon² = (4 - 1 * 0.5) / 5 = 0.7; groups that explain everything give 1.
def test_epsilon_squared_by_hand() -> None:
    assert epsilon_squared(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 1, 1])) == pytest.approx(0.7)
    assert epsilon_squared(np.array([1.0, 1.0, 3.0, 3.0]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)


# Undetermined cases (one group, as many groups as trials, a constant metric) give 0, never NaN.
def test_epsilon_squared_undetermined() -> None:
    assert epsilon_squared(np.array([1.0, 2.0]), np.array([0, 0])) == 0.0
    assert epsilon_squared(np.array([1.0, 2.0]), np.array([0, 1])) == 0.0
    assert epsilon_squared(np.array([5.0, 5.0, 5.0]), np.array([0, 1, 1])) == 0.0


# A planted effect is ranked first: a strong categorical effect > a weak log-scale effect > pure noise (≈ 0).
def test_planted_effect_ranking() -> None:
    rng = np.random.default_rng(0)
    n = 60
    modulation = rng.choice(["film", "kml", "sigmoid"], size=n)
    inner_lr = np.exp(rng.uniform(np.log(1e-3), np.log(1.0), size=n))
    noise_param = rng.uniform(0, 1, size=n)
    value = 0.5 + 0.15 * (modulation == "kml") + 0.02 * np.log10(inner_lr) + 0.01 * rng.standard_normal(n)
    frame = pl.DataFrame({"modulation": modulation, "inner_lr": inner_lr, "seed_offset": noise_param, "value": value})
    importance = parameter_importance(frame, ["seed_offset", "inner_lr", "modulation"])
    assert importance["param"].to_list() == ["modulation", "inner_lr", "seed_offset"]
    scores = dict(zip(importance["param"], importance["importance"], strict=True))
    assert scores["modulation"] > 0.6
    assert scores["seed_offset"] < 0.1
    assert importance.filter(pl.col("param") == "inner_lr")["n_groups"].item() == 4


# A conditional parameter counts only the trials that sampled it (nulls are left out).
def test_conditional_parameter_uses_sampled_trials() -> None:
    frame = pl.DataFrame({"variant": ["a", "a", "b", "b", None, None], "value": [1.0, 1.1, 2.0, 2.1, 9.0, -9.0]})
    row = parameter_importance(frame, ["variant"]).row(0, named=True)
    assert row["n_trials"] == 4
    assert row["importance"] > 0.9
