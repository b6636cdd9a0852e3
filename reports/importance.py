"""Parameter importance of an Optuna search, from the trials table alone: the adjusted correlation ratio.

Optuna's fANOVA and mean-decrease-impurity evaluators need scikit-learn, which is not a dependency, and a
random forest on a handful of trials says little anyway. The report therefore uses a one-way analysis of
variance per parameter, the first-order main effect that fANOVA also starts from:

* the trials in which the parameter was sampled (a conditional parameter whose ``when`` condition failed is
  left out) are grouped by its value: one group per value for a categorical parameter or a numeric one
  with at most ``max_groups`` values, otherwise ``max_groups`` equal-count groups by rank (so a log-scale
  parameter needs no special case);
* importance = epsilon² = (SS_between - (g - 1)·MS_within) / SS_total, the share of the metric's variance
  explained by the parameter alone, corrected for the variance g groups explain by chance (plain eta²
  would give any parameter with one value per trial an importance of 1). Clipped to [0, 1].

Importances are not normalised to sum to one: parameters can explain overlapping shares of the variance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl


def _groups(values: list[object], max_groups: int) -> np.ndarray:
    """A group index per trial: the distinct value, or its rank bin for a numeric parameter with many values."""
    distinct = list(dict.fromkeys(values))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(distinct) <= max_groups or not numeric:
        index = {value: i for i, value in enumerate(distinct)}
        return np.array([index[v] for v in values])
    ranks = np.argsort(np.argsort(np.array(values, dtype=float), kind="stable"), kind="stable")
    return ranks * max_groups // len(values)


def epsilon_squared(metric: np.ndarray, groups: np.ndarray) -> float:
    """Adjusted share of the variance of ``metric`` explained by ``groups`` (0 when undetermined)."""
    n = metric.size
    labels = np.unique(groups)
    g = labels.size
    if g < 2 or n <= g:
        return 0.0
    total = float(np.sum((metric - metric.mean()) ** 2))
    if total == 0.0:
        return 0.0
    between = sum(
        float(np.sum(groups == label)) * (float(metric[groups == label].mean()) - float(metric.mean())) ** 2
        for label in labels
    )
    within = total - between
    adjusted = (between - (g - 1) * within / (n - g)) / total
    return float(min(max(adjusted, 0.0), 1.0))


def parameter_importance(
    frame: pl.DataFrame, params: Sequence[str], metric: str = "value", max_groups: int = 4
) -> pl.DataFrame:
    """Importance of each parameter for ``metric``: one row per parameter, most important first.

    ``frame`` has one row per trial, a ``metric`` column and one column per parameter (null where the
    parameter was not sampled). Returns columns param, importance, n_trials, n_groups.
    """
    rows = []
    for param in params:
        used = frame.select(param, metric).drop_nulls()
        used = used.filter(pl.col(metric).is_finite())
        values = used[param].to_list()
        y = used[metric].cast(pl.Float64).to_numpy()
        groups = _groups(values, max_groups) if values else np.zeros(0, dtype=int)
        rows.append(
            {
                "param": param,
                "importance": epsilon_squared(y, groups),
                "n_trials": used.height,
                "n_groups": int(np.unique(groups).size),
            }
        )
    schema = {"param": pl.String, "importance": pl.Float64, "n_trials": pl.Int64, "n_groups": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort("importance", descending=True, maintain_order=True)
