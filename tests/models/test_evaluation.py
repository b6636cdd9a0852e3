from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmlo.models.base import Learner, Params, TaskOutput
from mmlo.models.config import LearnerConfig
from mmlo.models.evaluation import evaluate, mean_ci95, metric_name, mode_means
from mmlo.tasks.base import TaskBatch, episode_seed
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.regression import build


class ConstantPredictor(Learner):
    """Predicts one learned constant c; 'adapts' by moving c to the support mean (a hand-checkable learner)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = LearnerConfig(learner="maml")
        self.c = nn.Parameter(torch.tensor(0.5))

    def task_outputs(self, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
        c = params["c"]
        before = ((batch.query_y - c) ** 2).mean(dim=(1, 2))
        adapted = batch.support_y.mean(dim=(1, 2), keepdim=True)
        after = ((batch.query_y - adapted) ** 2).mean(dim=(1, 2)) + 0 * c
        return TaskOutput(loss=after, metric=after, metric_before=before)

    def parameter_counts(self) -> dict[str, int]:
        return {"backbone": 1, "encoder": 0, "generator": 0, "total": 1}


def test_mean_ci95_by_hand() -> None:
    # [1, 2, 3, 4]: mean 2.5, s = sqrt(5/3), half-width 1.96 * s / 2 = 1.2651746
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-12)
    assert half == pytest.approx(1.2651746, abs=1e-7)
    assert mean_ci95([3.0, 3.0, 3.0]) == (3.0, 0.0)
    single = mean_ci95([0.7])
    assert single[0] == 0.7 and math.isnan(single[1])


def test_metric_names_follow_the_kind() -> None:
    # classification is scored by accuracy, regression by mse
    assert metric_name("classification") == "accuracy" and metric_name("regression") == "mse"


def test_evaluate_rows_use_the_shared_episode_seeds() -> None:
    # one row per (mode, episode) with the study's episode seed, and values computed on exactly that task
    bench = build(BenchmarkConfig(name="regression2", shots=5, query=5))
    rows = evaluate(ConstantPredictor(), bench, "test", 7, eval_seed=99, batch_size=3)
    assert len(rows) == 14
    assert [r["mode"] for r in rows] == ["sinusoid"] * 7 + ["linear"] * 7
    for r in rows:
        assert r["episode_seed"] == episode_seed(99, "test", r["mode"], r["episode"])
        assert r["metric"] == "mse" and r["split"] == "test"
    last = rows[-1]
    task = bench.tasks("test", [1], [last["episode_seed"]])
    expected_after = ((task.query_y - task.support_y.mean()) ** 2).mean().item()
    expected_before = ((task.query_y - 0.5) ** 2).mean().item()
    assert last["value_after"] == pytest.approx(expected_after, rel=1e-6)
    assert last["value_before"] == pytest.approx(expected_before, rel=1e-6)


def test_evaluate_is_independent_of_batch_size() -> None:
    # chunking the episodes into calls of any size gives the same per-episode values
    bench = build(BenchmarkConfig(name="regression3", shots=5, query=5))
    learner = ConstantPredictor()
    a = evaluate(learner, bench, "val", 5, eval_seed=1, batch_size=5)
    b = evaluate(learner, bench, "val", 5, eval_seed=1, batch_size=2)
    assert [r["value_after"] for r in a] == pytest.approx([r["value_after"] for r in b], rel=1e-6)
    assert list(mode_means(a)) == ["sinusoid", "linear", "quadratic"]
