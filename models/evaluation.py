"""The evaluation protocol (method.md §6): fixed seeded episodes per mode, per-episode results, 95 % intervals.

Every arm of a study is scored on the same episodes: episode ``i`` of a mode on a split is the task with
seed ``episode_seed(eval_seed, split, mode, i)``, whatever the learner or its training seed. Results are
kept per episode (``value_before`` after modulation only, ``value_after`` after adaptation, MMAML's pre-
and post-update numbers) so that any interval or paired comparison can be recomputed later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mmlo.models.base import Learner
from mmlo.tasks.base import Benchmark, Kind, Split, episode_seed


def metric_name(kind: Kind) -> str:
    """'accuracy' (higher is better) for classification, 'mse' (lower is better) for regression."""
    return "accuracy" if kind == "classification" else "mse"


def evaluate(
    learner: Learner,
    benchmark: Benchmark,
    split: Split,
    episodes_per_mode: int,
    eval_seed: int,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Adapt to and score ``episodes_per_mode`` fixed episodes of every mode, ``batch_size`` tasks per call.

    Returns one row per episode with keys ``split, mode, episode, episode_seed, metric, value_before,
    value_after``; ``value_before`` is None for learners without an inner loop (the ProtoNet family).
    Inner-loop gradients are still taken (MAML adapts at test time), but no meta-gradient graph is kept.
    """
    metric = metric_name(benchmark.kind)
    device = next(iter(learner.parameters())).device
    rows: list[dict[str, Any]] = []
    was_training = learner.training
    learner.eval()
    try:
        for mode_index, mode in enumerate(benchmark.modes):
            seeds = [episode_seed(eval_seed, split, mode, i) for i in range(episodes_per_mode)]
            for start in range(0, episodes_per_mode, batch_size):
                chunk = seeds[start : start + batch_size]
                batch = benchmark.tasks(split, [mode_index] * len(chunk), chunk).to(device)
                with torch.enable_grad():
                    out = learner.task_outputs(learner.params(), batch, training=False)
                after = out.metric.detach().double().cpu().tolist()
                before = (
                    out.metric_before.detach().double().cpu().tolist()
                    if out.metric_before is not None
                    else [None] * len(chunk)
                )
                for offset, (seed, b, a) in enumerate(zip(chunk, before, after, strict=True)):
                    rows.append(
                        {
                            "split": split,
                            "mode": mode,
                            "episode": start + offset,
                            "episode_seed": seed,
                            "metric": metric,
                            "value_before": b,
                            "value_after": a,
                        }
                    )
    finally:
        learner.train(was_training)
    return rows


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and 95 % half-width ``1.96 * s / sqrt(n)`` (``s`` the sample std, ddof=1; NaN for n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci95 of no values")
    if v.size < 2:
        return float(v[0]), math.nan
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


def mode_means(rows: Sequence[dict[str, Any]], key: str = "value_after") -> dict[str, float]:
    """Mean of ``key`` per mode over evaluation rows, in first-seen mode order."""
    per_mode: dict[str, list[float]] = {}
    for row in rows:
        if row[key] is not None:
            per_mode.setdefault(row["mode"], []).append(row[key])
    return {mode: float(np.mean(v)) for mode, v in per_mode.items()}
