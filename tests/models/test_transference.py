"""Task-level transference: hand-derived loss ratios, the zero-gradient and self-transference invariants,
vectorised == per-source loop, the summary shares, and the fit hook."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import grad, vmap

from mmlo.models.base import Learner, Params, TaskOutput
from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.models.learners import build_learner
from mmlo.models.training import fit
from mmlo.models.transference import (
    TransferenceSettings,
    make_transference_hook,
    measure_transference,
    reference_loop_transference,
    summarise,
    transfer_class,
    vectorised,
)
from mmlo.tasks.base import Benchmark, TaskBatch
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.episodes import ClassBank, ImageBenchmark
from mmlo.tasks.regression import build


def _mse(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((p["w"] * x + p["b"] - y) ** 2).mean()


class LinearLearner(Learner):
    """``y = w x + b``, adapted to each task by ``inner_steps`` SGD steps of ``inner_lr`` on the support MSE;
    the loss is the query MSE after adaptation. Tasks are vectorised with vmap, as the real learners are."""

    def __init__(self, w: float = 0.0, b: float = 0.0, inner_lr: float = 0.0, inner_steps: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w]))
        self.b = nn.Parameter(torch.tensor([b]))
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps

    def task_outputs(self, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
        def one(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
            p = params
            for _ in range(self.inner_steps):
                g = grad(_mse)(p, sx, sy)
                p = {name: p[name] - self.inner_lr * g[name] for name in p}
            return _mse(p, qx, qy)

        loss = vmap(one)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        return TaskOutput(loss=loss, metric=loss.detach())

    def parameter_counts(self) -> dict[str, int]:
        return {"backbone": 2, "encoder": 0, "generator": 0, "total": 2}


def _tasks(query_x: list[list[float]], query_y: list[list[float]], seeds: list[int]) -> TaskBatch:
    qx = torch.tensor(query_x).unsqueeze(-1)
    return TaskBatch(
        support_x=torch.zeros(len(seeds), 1, 1),
        support_y=torch.zeros(len(seeds), 1, 1),
        query_x=qx,
        query_y=torch.tensor(query_y).unsqueeze(-1),
        mode=torch.zeros(len(seeds), dtype=torch.long),
        seed=torch.tensor(seeds),
    )


def _regression_tasks(split: str, per_mode: int, offset: int) -> TaskBatch:
    bench = build(BenchmarkConfig(name="regression3", shots=5, query=5))
    modes = [m for m in range(3) for _ in range(per_mode)]
    return bench.tasks(split, modes, [offset + i for i in range(len(modes))])  # type: ignore[arg-type]


def test_closed_form_loss_ratios() -> None:
    # At θ = (w, b) = (0, 0) with α = 0.1: the source (query x = 1, 2; y = 2x) has L = (4 + 16)/2 = 10 and
    # ∇L = 2·mean((wx + b - y)·(x, 1)) = (-10, -6), so θ_s = (1, 0.6). The target (x = 1, 3; y = x) has
    # L(θ) = (1 + 9)/2 = 5 and L(θ_s) = (0.6² + 0.6²)/2 = 0.36: LR = 0.072. Self: the target's own
    # gradient is (-10, -4), θ_t = (1, 0.4), L(θ_t) = 0.4² = 0.16: LR = 0.032.
    learner = LinearLearner()
    source = _tasks([[1.0, 2.0]], [[2.0, 4.0]], [11])
    target = _tasks([[1.0, 3.0]], [[1.0, 3.0]], [22])
    result = measure_transference(learner, learner.params(), source, target, alpha=0.1, include_self=True)
    assert result.lr.shape == (2, 1)
    assert result.lr[0, 0].item() == pytest.approx(0.072, rel=1e-6)
    assert result.lr[1, 0].item() == pytest.approx(0.032, rel=1e-6)
    assert result.loss_before[:, 0].tolist() == pytest.approx([5.0, 5.0], rel=1e-7)
    assert result.loss_after[:, 0].tolist() == pytest.approx([0.36, 0.16], rel=1e-6)
    assert result.is_self.tolist() == [[False], [True]]
    assert result.source_split == ("train", "test")


def test_zero_gradient_source_has_lr_exactly_one() -> None:
    # A source the model already fits (y = 0 = w x + b at θ = 0, after an inner step too) has ∇L = 0, so
    # θ_i = θ bit for bit and LR = 1 exactly, in every chunk.
    learner = LinearLearner(inner_lr=0.1, inner_steps=1)
    sources = _tasks([[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]], [[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]], [1, 2, 3])
    targets = _regression_tasks("test", 2, 100)
    for chunk_size in (None, 1, 2):
        result = measure_transference(
            learner, learner.params(), sources, targets, alpha=0.5, chunk_size=chunk_size
        )
        assert (result.lr[0] == 1.0).all() and (result.lr[2] == 1.0).all()
        assert (result.lr[1] != 1.0).all()


def test_self_transference_below_one_for_small_alpha() -> None:
    # One small gradient step on a task lowers that task's own loss while the model has not converged.
    torch.manual_seed(0)
    learner = LinearLearner(w=0.3, b=-0.2, inner_lr=0.01, inner_steps=2)
    sources = _regression_tasks("train", 2, 0)
    targets = _regression_tasks("test", 3, 50)
    result = measure_transference(learner, learner.params(), sources, targets, alpha=1e-3, include_self=True)
    self_lr = result.lr[result.is_self]
    assert self_lr.numel() == targets.num_tasks
    assert (self_lr < 1.0).all()


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_vectorised_equals_per_source_loop(chunk_size: int | None) -> None:
    # vmap(grad) over sources and vmap over stacked look-ahead parameters give the per-source loop's numbers.
    learner = LinearLearner(w=0.7, b=0.1, inner_lr=0.02, inner_steps=3)
    sources = _regression_tasks("train", 3, 0)
    targets = _regression_tasks("test", 2, 7)
    fast = measure_transference(
        learner, learner.params(), sources, targets, chunk_size=chunk_size, alpha=0.01, include_self=True
    )
    slow = reference_loop_transference(learner, learner.params(), sources, targets, alpha=0.01, include_self=True)
    torch.testing.assert_close(fast.lr, slow.lr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast.loss_after, slow.loss_after, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast.loss_before, slow.loss_before, rtol=1e-6, atol=1e-6)
    assert torch.equal(fast.is_self, slow.is_self)
    assert torch.equal(fast.source_seed, slow.source_seed)


def test_rows_carry_the_contract_columns() -> None:
    # One row per (source, target) with mode names, task seeds, both losses, LR = after / before, α, band.
    learner = LinearLearner(w=0.5)
    sources = _regression_tasks("train", 1, 0)
    targets = _regression_tasks("test", 1, 9)
    rows = measure_transference(learner, learner.params(), sources, targets, alpha=0.01).rows(
        ("sinusoid", "linear", "quadratic"), 0.02
    )
    assert len(rows) == 9
    assert set(rows[0]) == {
        "source_split", "target_split", "source_mode", "target_mode", "source_task", "target_task",
        "self", "loss_before", "loss_after", "lr", "alpha", "neutral_band",
    }
    assert [r["source_mode"] for r in rows[:3]] == ["sinusoid"] * 3
    assert [r["target_mode"] for r in rows[:3]] == ["sinusoid", "linear", "quadratic"]
    assert rows[4]["source_task"] == 1 and rows[4]["target_task"] == 10
    assert all(r["lr"] == r["loss_after"] / r["loss_before"] for r in rows)
    assert all(r["alpha"] == 0.01 and r["neutral_band"] == 0.02 and r["self"] is False for r in rows)


def test_transfer_classes_partition_the_loss_ratio() -> None:
    # Positive below 1 - band, negative above 1 + band, neutral strictly inside the band; LR = 1 is neutral
    # even for band 0. On the edge (band 0.25, exact in binary) |1 - 0.75| = |1 - 1.25| = 0.25 is not < 0.25.
    assert transfer_class(0.98, 0.01) == "positive"
    assert transfer_class(0.995, 0.01) == "neutral"
    assert transfer_class(1.0, 0.0) == "neutral"
    assert transfer_class(1.0 + 1e-9, 0.0) == "negative"
    assert transfer_class(1.0 - 1e-9, 0.0) == "positive"
    assert transfer_class(1.02, 0.01) == "negative"
    assert transfer_class(0.75, 0.25) == "positive"
    assert transfer_class(1.25, 0.25) == "negative"
    assert transfer_class(0.875, 0.25) == "neutral"
    assert transfer_class(math.nan, 0.01) == "undefined"


def test_summary_means_medians_and_shares() -> None:
    # LRs 0.5, 0.995, 1.0, 1.5 (band 0.01): mean 0.99875, median 0.9975, shares 1/4, 2/4, 1/4; self pairs
    # apart, where a NaN ratio counts in n but not in the mean or the shares.
    base = {"source_mode": "a", "target_mode": "b", "neutral_band": 0.01, "self": False}
    rows = [{**base, "lr": v} for v in (0.5, 0.995, 1.0, 1.5)]
    rows.append({**base, "target_mode": "a", "self": True, "lr": 0.9})
    rows.append({**base, "target_mode": "a", "self": True, "lr": math.nan})
    summary = {(s["self"], s["source_mode"], s["target_mode"]): s for s in summarise(rows)}
    cross = summary[(False, "a", "b")]
    assert cross["n"] == 4
    assert cross["mean"] == pytest.approx(0.99875)
    assert cross["median"] == pytest.approx(0.9975)
    assert (cross["positive"], cross["neutral"], cross["negative"]) == (0.25, 0.5, 0.25)
    self_summary = summary[(True, "a", "a")]
    assert (self_summary["n"], self_summary["mean"], self_summary["positive"]) == (2, 0.9, 1.0)


def test_hook_measures_at_its_iterations_without_touching_training() -> None:
    # The hook defaults to the last iteration and α = the outer lr, appends (S + T) x T rows tagged with the
    # iteration, and leaves the module mode and the torch RNG stream as they were.
    bench = build(BenchmarkConfig(name="regression3", shots=5, query=5))
    train_cfg = TrainConfig(iterations=40, lr=0.003, eval_seed=5)
    hook = make_transference_hook(bench, train_cfg, TransferenceSettings(sources_per_mode=2, targets_per_mode=1))
    assert hook.iterations == frozenset({40})
    assert hook.alpha == 0.003
    learner = LinearLearner(w=0.2, inner_lr=0.01, inner_steps=1)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    hook(40, learner, bench)
    assert torch.equal(torch.rand(3), expected)
    assert learner.training
    assert len(hook.rows) == (6 + 3) * 3
    assert {r["iteration"] for r in hook.rows} == {40}
    assert sum(r["self"] for r in hook.rows) == 3
    assert hook.seconds > 0
    again = make_transference_hook(
        bench, train_cfg, TransferenceSettings(sources_per_mode=2, targets_per_mode=1, at=(10, 40, 99))
    )
    assert again.iterations == frozenset({10, 40})
    assert torch.equal(again.sources.seed, hook.sources.seed)


def _image_benchmark() -> ImageBenchmark:
    """Two modes of random 8x8 images, 4 classes of 4 images per split, 3-way 1-shot 2-query."""
    rng = np.random.default_rng(0)
    banks = {
        mode: {
            split: ClassBank(
                rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8),
                np.arange(0, 17, 4),
                tuple(f"{mode}{c}" for c in range(4)),
            )
            for split in ("train", "val", "test")
        }
        for mode in ("first", "second")
    }
    return ImageBenchmark("tiny", banks, ways=3, shots=1, query=2, fingerprint="tiny")  # type: ignore[arg-type]


def _float64(batch: TaskBatch) -> TaskBatch:
    return dataclasses.replace(
        batch,
        support_x=batch.support_x.double(),
        query_x=batch.query_x.double(),
        **(
            {"support_y": batch.support_y.double(), "query_y": batch.query_y.double()}
            if batch.support_y.is_floating_point()
            else {}
        ),
    )


@pytest.mark.parametrize(
    ("kind", "learner", "extra"),
    [
        ("classification", "protonet", {}),
        ("classification", "multi_protonet", {}),
        ("classification", "mprotonet", {}),
        ("classification", "kml", {"kml_variant": "residual"}),
        ("classification", "maml", {}),
        ("classification", "mmaml", {"first_order": True}),
        ("classification", "kml", {"base": "maml"}),
        ("regression", "maml", {}),
        ("regression", "multi_maml", {}),
        ("regression", "mmaml", {}),
        ("regression", "mmaml", {"encoder": "lstm"}),
    ],
)
def test_real_learners_vectorised_equals_loop(kind: str, learner: str, extra: dict[str, object]) -> None:
    # Every learner of build_learner runs under the measure (oracle routing, modulation, inner loops), and
    # the vmapped numbers equal the per-source loop's; self-transference stays below 1 for a small step.
    if kind == "classification":
        bench: Benchmark = _image_benchmark()
        sources = _float64(bench.tasks("train", [0, 1, 1], [1, 2, 3]))
        targets = _float64(bench.tasks("test", [0, 1], [4, 5]))
    else:
        bench = build(BenchmarkConfig(name="regression2", shots=5, query=5))
        sources = _float64(bench.tasks("train", [0, 1, 1], [1, 2, 3]))
        targets = _float64(bench.tasks("test", [0, 1], [4, 5]))
    cfg = LearnerConfig(
        learner=learner, channels=[4, 4], hidden=[8, 8], bias_transformation=3, embedding_dim=6,
        inner_steps=1, inner_lr=0.1 if kind == "classification" else 0.01, **extra,
    )
    torch.manual_seed(0)
    model = build_learner(cfg, bench).double()
    fast = measure_transference(model, model.params(), sources, targets, chunk_size=2, alpha=1e-3, include_self=True)
    slow = reference_loop_transference(model, model.params(), sources, targets, alpha=1e-3, include_self=True)
    torch.testing.assert_close(fast.lr, slow.lr, rtol=1e-6, atol=1e-9)
    assert (fast.lr[fast.is_self] < 1.0).all()


def test_hook_strategies_agree() -> None:
    # The per-source loop and vmap give the hook the same rows; 'auto' takes the loop on CPU.
    bench = build(BenchmarkConfig(name="regression2", shots=5, query=5))
    train_cfg = TrainConfig(iterations=3, lr=0.01)
    learner = LinearLearner(w=0.4, inner_lr=0.02, inner_steps=2)
    rows = {}
    for strategy in ("vmap", "loop"):
        hook = make_transference_hook(
            bench, train_cfg, TransferenceSettings(sources_per_mode=3, targets_per_mode=2), strategy=strategy
        )
        hook(3, learner, bench)
        rows[strategy] = hook.rows
    assert [r["source_task"] for r in rows["vmap"]] == [r["source_task"] for r in rows["loop"]]
    assert [r["lr"] for r in rows["vmap"]] == pytest.approx([r["lr"] for r in rows["loop"]], rel=1e-6)
    assert not vectorised("auto", torch.device("cpu")) and vectorised("auto", torch.device("cuda"))
    assert vectorised("vmap", torch.device("cpu")) and not vectorised("loop", torch.device("cuda"))


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_fit_with_the_hook_trains_exactly_as_without(strategy: str) -> None:
    # Measuring mid-training changes nothing downstream: the same validation and test numbers, bit for bit.
    bench = build(BenchmarkConfig(name="regression2", shots=5, query=5))
    learner_cfg = LearnerConfig(learner="maml", hidden=[8, 8], bias_transformation=3, inner_steps=1, inner_lr=0.01)
    train_cfg = TrainConfig(iterations=4, meta_batch=4, lr=0.01, val_interval=2, val_episodes=2, eval_episodes=2)
    settings = TransferenceSettings(sources_per_mode=2, targets_per_mode=1, at=(2,))
    hook = make_transference_hook(bench, train_cfg, settings, strategy=strategy)  # type: ignore[arg-type]
    with_hook = fit(learner_cfg, train_cfg, bench, hooks=[hook])
    without = fit(learner_cfg, train_cfg, bench)
    assert {r["iteration"] for r in hook.rows} == {2}
    assert with_hook.final_val_metric == without.final_val_metric
    assert [e["value_after"] for e in with_hook.episodes] == [e["value_after"] for e in without.episodes]


def _running_batchnorm_model(learner: str, bench: Benchmark, **extra: object) -> Learner:
    """A float64 learner with 'running' BatchNorm whose statistics sit away from their (0, 1) start, so
    that scoring targets on them is a real check."""
    cfg = LearnerConfig(learner=learner, channels=[4, 4], embedding_dim=6, inner_steps=1, norm="running", **extra)
    torch.manual_seed(0)
    model = build_learner(cfg, bench).double()
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(torch.rand_like(b) + (0.5 if name.endswith("running_var") else -0.5))
    return model


@pytest.mark.parametrize(
    ("learner", "extra"),
    [("protonet", {}), ("mprotonet", {}), ("maml", {}), ("kml", {"base": "maml", "first_order": True})],
)
def test_running_batchnorm_strategies_agree_and_leave_buffers_alone(learner: str, extra: dict[str, object]) -> None:
    # With 'running' BatchNorm the targets are scored on the running statistics: the per-source loop must not
    # move them between sources, so it equals vmap, and neither strategy changes any buffer of the model.
    bench = _image_benchmark()
    model = _running_batchnorm_model(learner, bench, **extra)
    before = {name: b.clone() for name, b in model.named_buffers()}
    assert before, "the model has running statistics"
    sources = _float64(bench.tasks("train", [0, 0, 1, 1], [1, 2, 3, 4]))
    targets = _float64(bench.tasks("test", [0, 1], [5, 6]))
    slow = reference_loop_transference(model, model.params(), sources, targets, alpha=0.05, include_self=True)
    fast = measure_transference(model, model.params(), sources, targets, chunk_size=2, alpha=0.05, include_self=True)
    torch.testing.assert_close(fast.loss_before, slow.loss_before, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(fast.loss_after, slow.loss_after, rtol=1e-6, atol=1e-9)
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers())


def test_hook_strategies_agree_with_running_batchnorm() -> None:
    # The hook's loop and vmap strategies give the same rows with 'running' BatchNorm, and after each
    # measurement the model's buffers equal those before it.
    bench = _image_benchmark()
    learner = _running_batchnorm_model("protonet", bench)
    before = {name: b.clone() for name, b in learner.named_buffers()}
    train_cfg = TrainConfig(iterations=1)
    rows = {}
    for strategy in ("loop", "vmap"):
        hook = make_transference_hook(
            bench, train_cfg, TransferenceSettings(sources_per_mode=2, targets_per_mode=1), strategy=strategy
        )
        hook.sources, hook.targets = _float64(hook.sources), _float64(hook.targets)
        hook(1, learner, bench)
        assert all(torch.equal(b, before[name]) for name, b in learner.named_buffers())
        rows[strategy] = hook.rows
    assert [r["lr"] for r in rows["loop"]] == pytest.approx([r["lr"] for r in rows["vmap"]], rel=1e-6)
