"""Learners: the vectorised meta-batch equals the per-task loop, MAML's inner loop matches hand-derived math,
routing, parameter counts and configuration errors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from mmlo.models.base import Learner, Params
from mmlo.models.config import LearnerConfig
from mmlo.models.learners import MAML, build_learner, reference_loop_outputs
from mmlo.tasks.base import Benchmark, Split, TaskBatch


class TinyBenchmark(Benchmark):
    """Random tasks of tiny shapes: images ``3 x size x size`` (ways-way) or 1-d regression, 2 modes."""

    def __init__(self, kind: str, *, size: int = 8, ways: int = 3, shots: int = 2, query: int = 2) -> None:
        self.name = f"tiny-{kind}"
        self.kind = kind  # type: ignore[assignment]
        self.modes = ("first", "second")
        self.input_shape = (3, size, size) if kind == "classification" else (1,)
        self.output_dim = ways if kind == "classification" else 1
        self.ways, self.shots, self.query = ways, shots, query

    def tasks(self, split: Split, modes: Sequence[int], seeds: Sequence[int]) -> TaskBatch:
        rows = []
        for mode, seed in zip(modes, seeds):
            g = torch.Generator().manual_seed(int(seed))
            if self.kind == "classification":
                n_s, n_q = self.ways * self.shots, self.ways * self.query
                sx, qx = torch.rand(n_s, *self.input_shape, generator=g), torch.rand(n_q, *self.input_shape, generator=g)
                sy = torch.arange(self.ways).repeat_interleave(self.shots)
                qy = torch.arange(self.ways).repeat_interleave(self.query)
            else:
                sx = torch.rand(self.shots, 1, generator=g) * 10 - 5
                qx = torch.rand(self.query, 1, generator=g) * 10 - 5
                amplitude = torch.rand(1, generator=g) * 2
                sy, qy = amplitude * torch.sin(sx) + mode, amplitude * torch.sin(qx) + mode
            rows.append((sx, sy, qx, qy))
        sx, sy, qx, qy = (torch.stack(column) for column in zip(*rows))
        return TaskBatch(sx, sy, qx, qy, torch.tensor(list(modes)), torch.tensor(list(seeds)))


def _double(batch: TaskBatch) -> TaskBatch:
    return TaskBatch(
        *(t.double() if t.is_floating_point() else t for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)),
        batch.mode,
        batch.seed,
    )


def _tiny(kind: str, seed: int = 0, **overrides: object) -> tuple[Learner, TaskBatch]:
    """A float64 learner with tiny widths and a 4-task meta-batch over both modes."""
    benchmark = TinyBenchmark(kind)
    settings: dict[str, object] = dict(
        channels=[4, 4], hidden=[8, 8], bias_transformation=3, embedding_dim=6, inner_steps=2, inner_lr=0.1
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    learner = build_learner(LearnerConfig(**settings), benchmark).double()  # type: ignore[arg-type]
    return learner, _double(benchmark.tasks("train", [0, 1, 1, 0], [11, 12, 13, 14]))


def _meta_gradient(params: Params, loss: torch.Tensor) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]


EVERY_LEARNER: list[tuple[str, dict[str, object]]] = [
    ("regression", dict(learner="maml")),
    ("regression", dict(learner="multi_maml")),
    ("regression", dict(learner="mmaml")),
    ("regression", dict(learner="mmaml", encoder="lstm", modulation="sigmoid")),
    ("regression", dict(learner="mmaml", modulation="softmax", first_order=True)),
    ("regression", dict(learner="kml", base="maml")),
    ("regression", dict(learner="kml", base="maml", kml_variant="residual", kml_rank=2, modulated_layers=[1])),
    ("regression", dict(learner="mmaml", learn_inner_lr=True, inner_grad_clip=0.5)),
    ("classification", dict(learner="maml")),
    ("classification", dict(learner="maml", downsample="stride", norm="none", first_order=True)),
    ("classification", dict(learner="multi_maml", learn_inner_lr=True)),
    ("classification", dict(learner="mmaml")),
    ("classification", dict(learner="mmaml", modulation="softmax", inner_grad_clip=0.1)),
    ("classification", dict(learner="kml", base="maml", kml_variant="residual")),
    ("classification", dict(learner="protonet")),
    ("classification", dict(learner="multi_protonet")),
    ("classification", dict(learner="mprotonet", modulation="sigmoid")),
    ("classification", dict(learner="kml")),
    ("classification", dict(learner="kml", kml_rank=3, transductive=True, downsample="stride")),
]


@pytest.mark.parametrize(("kind", "overrides"), EVERY_LEARNER, ids=lambda v: str(v))
def test_vectorised_equals_reference_loop(kind: str, overrides: dict[str, object]) -> None:
    # One batched call over the meta-batch gives the per-task loop's losses and meta-gradient (tasks never mix).
    learner, batch = _tiny(kind, **overrides)
    params = learner.params()
    batched = learner.task_outputs(params, batch)
    looped = reference_loop_outputs(learner, params, batch)
    torch.testing.assert_close(batched.loss, looped.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.metric, looped.metric, atol=1e-6, rtol=0)
    if batched.metric_before is not None or looped.metric_before is not None:
        torch.testing.assert_close(batched.metric_before, looped.metric_before, atol=1e-6, rtol=0)
    for g_batched, g_looped in zip(_meta_gradient(params, batched.loss.sum()), _meta_gradient(params, looped.loss.sum())):
        torch.testing.assert_close(g_batched, g_looped, atol=1e-6, rtol=0)
