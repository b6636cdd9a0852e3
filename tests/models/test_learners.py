"""Learners: the vectorised meta-batch equals the per-task loop, MAML's inner loop matches hand-derived math,
routing, parameter counts and configuration errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from mmlo.models._meta_learner import MetaLearner, sub_params
from mmlo.models.base import Params
from mmlo.models.config import LearnerConfig
from mmlo.models.encoders import ConvEncoder
from mmlo.models.learners import MAML, build_learner, reference_loop_outputs
from mmlo.models.modulation import KernelModulation, LayerModulation
from mmlo.models.networks import MLP, ConvNet, LinearLayer
from mmlo.tasks.base import Benchmark, Kind, Split, TaskBatch


class TinyBenchmark(Benchmark):
    """Random tasks of tiny shapes: images ``3 x size x size`` (ways-way) or 1-d regression, 2 modes."""

    def __init__(self, kind: Kind, *, size: int = 8, ways: int = 3, shots: int = 2, query: int = 2) -> None:
        self.name = f"tiny-{kind}"
        self.kind = kind
        self.modes = ("first", "second")
        self.input_shape = (3, size, size) if kind == "classification" else (1,)
        self.output_dim = ways if kind == "classification" else 1
        self.ways, self.shots, self.query = ways, shots, query

    def tasks(self, split: Split, modes: Sequence[int], seeds: Sequence[int]) -> TaskBatch:
        rows = []
        for mode, seed in zip(modes, seeds, strict=True):
            g = torch.Generator().manual_seed(int(seed))
            if self.kind == "classification":
                n_s, n_q = self.ways * self.shots, self.ways * self.query
                sx, qx = (
                    torch.rand(n_s, *self.input_shape, generator=g),
                    torch.rand(n_q, *self.input_shape, generator=g),
                )
                sy = torch.arange(self.ways).repeat_interleave(self.shots)
                qy = torch.arange(self.ways).repeat_interleave(self.query)
            else:
                sx = torch.rand(self.shots, 1, generator=g) * 10 - 5
                qx = torch.rand(self.query, 1, generator=g) * 10 - 5
                amplitude = torch.rand(1, generator=g) * 2
                sy, qy = amplitude * torch.sin(sx) + mode, amplitude * torch.sin(qx) + mode
            rows.append((sx, sy, qx, qy))
        sx, sy, qx, qy = (torch.stack(column) for column in zip(*rows, strict=True))
        return TaskBatch(sx, sy, qx, qy, torch.tensor(list(modes)), torch.tensor(list(seeds)))


def _double(batch: TaskBatch) -> TaskBatch:
    def double(t: torch.Tensor) -> torch.Tensor:
        return t.double() if t.is_floating_point() else t

    return TaskBatch(
        double(batch.support_x),
        double(batch.support_y),
        double(batch.query_x),
        double(batch.query_y),
        batch.mode,
        batch.seed,
    )


def _tiny(kind: Kind, seed: int = 0, /, **overrides: object) -> tuple[MetaLearner, TaskBatch]:
    """A float64 learner with tiny widths and a 4-task meta-batch over both modes (``seed`` positional only, so
    that ``overrides`` may hold any configuration key)."""
    benchmark = TinyBenchmark(kind)
    settings: dict[str, object] = dict(
        channels=[4, 4], hidden=[8, 8], bias_transformation=3, embedding_dim=6, inner_steps=2, inner_lr=0.1
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    learner = build_learner(LearnerConfig(**settings), benchmark).double()
    assert isinstance(learner, MetaLearner)
    return learner, _double(benchmark.tasks("train", [0, 1, 1, 0], [11, 12, 13, 14]))


def _meta_gradient(params: Params, loss: torch.Tensor) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)]


EVERY_LEARNER: list[tuple[Kind, dict[str, object]]] = [
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
    ("classification", dict(learner="kml", query_embedding=True, transductive=True)),
    # The MMAML-Classification network: stride 2, global average pool, BN without affine, xavier init.
    ("classification", dict(learner="maml", downsample="stride", pool="mean", bn_affine=False, init="xavier")),
    ("classification", dict(learner="mmaml", downsample="stride", pool="mean", bn_affine=False, init="xavier")),
    ("classification", dict(learner="kml", downsample="stride", pool="mean", bn_affine=False, init="xavier")),
    ("classification", dict(learner="multi_maml", norm="running", pool="mean", bn_affine=False)),
    ("classification", dict(learner="kml", base="maml", norm="running", inner_grad_clip=0.1)),
    ("classification", dict(learner="mmaml", norm="running", inner_grad_clamp=0.5)),  # per-task fast weights
]

#: The conv backbone's execution strategies (``ConvNet.strategy``): each must give the same numbers.
STRATEGIES = ["per-task", "grouped"]


def _cases_with_strategies() -> list[tuple[Kind, dict[str, object], str]]:
    return [(k, o, s) for k, o in EVERY_LEARNER for s in (STRATEGIES if k == "classification" else ["auto"])]


@pytest.mark.parametrize(("kind", "overrides", "strategy"), _cases_with_strategies(), ids=lambda v: str(v))
def test_vectorised_equals_reference_loop(kind: Kind, overrides: dict[str, object], strategy: str) -> None:
    # One batched call over the meta-batch gives the per-task loop's losses and meta-gradient (tasks never mix),
    # in training and in evaluation (where metric_before is computed), with either conv strategy.
    learner, batch = _tiny(kind, **overrides)
    if isinstance(learner.backbone, ConvNet):
        learner.backbone.strategy = strategy
    else:
        assert strategy == "auto"  # only the conv backbone has strategies
    if isinstance(learner.encoder, ConvEncoder):
        learner.encoder.strategy = strategy
    params = learner.params()
    batched = learner.task_outputs(params, batch)
    looped = reference_loop_outputs(learner, params, batch)
    torch.testing.assert_close(batched.loss, looped.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.metric, looped.metric, atol=1e-6, rtol=0)
    assert batched.metric_before is None and looped.metric_before is None  # a training pass does not compute it
    for g_batched, g_looped in zip(
        _meta_gradient(params, batched.loss.sum()), _meta_gradient(params, looped.loss.sum()), strict=True
    ):
        torch.testing.assert_close(g_batched, g_looped, atol=1e-6, rtol=0)
    evaluated = learner.task_outputs(params, batch, training=False)
    looped = reference_loop_outputs(learner, params, batch, training=False)
    torch.testing.assert_close(evaluated.loss, looped.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(evaluated.metric, looped.metric, atol=1e-6, rtol=0)
    if learner.config.base_algorithm == "maml":
        torch.testing.assert_close(evaluated.metric_before, looped.metric_before, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kind", "overrides"), [c for c in EVERY_LEARNER if c[0] == "classification"], ids=str)
def test_conv_strategies_give_the_same_outputs_gradients_and_running_statistics(
    kind: Kind, overrides: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per-task convolutions (CPU; channels-last or plain layout; oneDNN's or as matrix products; MAML's fast
    # weights as per-task lists or as [T, ...] tensors) and the grouped layout (accelerators) give the same
    # losses, meta-gradient and running BatchNorm statistics, to float64 rounding: which one runs never moves a
    # study's results.
    from mmlo.models import networks

    learner, batch = _tiny(kind, **overrides)
    backbone = learner.backbone
    assert isinstance(backbone, ConvNet)
    params = learner.params()
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    results = []
    every_conv_a_product = 10**9  # networks.MATMUL_ROWS: every channels-last convolution as a matrix product
    variants = (
        ("grouped", True, True, 0),
        ("per-task", True, True, 0),
        ("per-task", True, True, every_conv_a_product),
        ("per-task", False, True, 0),
        ("per-task", True, False, 0),
    )
    for strategy, channels_last, fast_weight_lists, matmul_rows in variants:
        monkeypatch.setattr(networks, "MATMUL_ROWS", matmul_rows)
        if isinstance(learner, MAML):  # MAML's fast weights as per-task lists, or as [T, ...] tensors
            monkeypatch.setattr(learner, "per_task_fast_weights", fast_weight_lists)
        learner.load_state_dict(state)
        backbone.strategy, backbone.channels_last = strategy, channels_last
        if isinstance(learner.encoder, ConvEncoder):  # the image task encoder follows the same strategy and layout
            learner.encoder.strategy, learner.encoder.channels_last = strategy, channels_last
        out = learner.task_outputs(params, batch)
        buffers = {k: v.clone() for k, v in learner.named_buffers()}
        results.append((out.loss, _meta_gradient(params, out.loss.sum()), buffers))
    loss_a, grads_a, buffers_a = results[0]
    for loss_b, grads_b, buffers_b in results[1:]:
        torch.testing.assert_close(loss_a, loss_b, atol=1e-12, rtol=0)
        for g_a, g_b in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(g_a, g_b, atol=1e-12, rtol=1e-10)
        for k in buffers_a:
            torch.testing.assert_close(buffers_a[k], buffers_b[k], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (dict(learner="maml"), True),
        (dict(learner="mmaml"), True),  # FiLM: scale and shift only
        (dict(learner="mmaml", downsample="stride", pool="mean", bn_affine=False, init="xavier"), True),
        (dict(learner="multi_maml"), False),  # routed θ: one network per mode
        (dict(learner="multi_maml", learn_inner_lr=True), False),
        (dict(learner="mmaml", modulation="softmax", inner_grad_clip=0.1), False),  # the clip needs whole gradients
        (dict(learner="kml", base="maml"), False),  # a kernel factor per task
    ],
    ids=str,
)
def test_maml_holds_per_task_fast_weights_where_it_applies(overrides: dict[str, object], expected: bool) -> None:
    # The per-task-list path is really taken for plain MAML and FiLM-MMAML on the per-task conv path (the
    # strategy tests above then compare it with the [T, ...] path), and only there.
    learner, batch = _tiny("classification", **overrides)
    assert isinstance(learner, MAML)
    params = learner.params()
    taus = learner._taus(params, batch.support_x, batch.support_y, training=True)
    theta, route = learner._route(sub_params(params, "backbone."), batch)
    steps = learner._step_sizes(params, batch)
    for strategy, on in (("per-task", expected), ("grouped", False)):
        learner.backbone.strategy = strategy  # type: ignore[assignment]
        assert learner._per_task_lists(theta, steps, taus, batch, route) is on
    learner.backbone.strategy = "per-task"  # type: ignore[assignment]
    learner.per_task_fast_weights = False
    assert learner._per_task_lists(theta, steps, taus, batch, route) is False


def test_the_conv_strategy_follows_the_device() -> None:
    # auto: one ordinary convolution per task on CPU, the grouped layout on accelerators.
    from mmlo.models.networks import conv_strategy

    assert conv_strategy(torch.device("cpu")) == "per-task"
    assert conv_strategy(torch.device("cuda")) == "grouped"


def _linear_maml(**overrides: object) -> tuple[MAML, TaskBatch]:
    """MAML on y = w x + b (no hidden layer, no bias transformation) with w = 0.5, b = 0.1, α = 0.1.

    One task: support x = (1, 2), y = (1, 3); query x = 3, y = 2.
    """
    settings: dict[str, object] = dict(learner="maml", hidden=[], bias_transformation=0, inner_steps=1, inner_lr=0.1)
    settings.update(overrides)
    learner = build_learner(LearnerConfig(**settings), TinyBenchmark("regression")).double()
    assert isinstance(learner, MAML)
    with torch.no_grad():
        _head(learner).weight.fill_(0.5)
        _head(learner).bias.fill_(0.1)
    f64 = torch.float64
    batch = TaskBatch(
        support_x=torch.tensor([[[1.0], [2.0]]], dtype=f64),
        support_y=torch.tensor([[[1.0], [3.0]]], dtype=f64),
        query_x=torch.tensor([[[3.0]]], dtype=f64),
        query_y=torch.tensor([[[2.0]]], dtype=f64),
        mode=torch.tensor([0]),
        seed=torch.tensor([0]),
    )
    return learner, batch


def _head(learner: MAML) -> LinearLayer:
    """The regression MLP's output layer."""
    assert isinstance(learner.backbone, MLP)
    return learner.backbone.head


@pytest.mark.parametrize("meta_sgd", [False, True], ids=["factored", "dense"])
def test_one_inner_step_on_a_linear_model_equals_the_closed_form(meta_sgd: bool) -> None:
    # Support residuals (-0.4, -1.9): ∇w = Σ r x = -4.2, ∇b = Σ r = -2.3 (MSE over 2 points);
    # w' = 0.92, b' = 0.33; query 0.92·3 + 0.33 - 2 = 1.09 -> loss 1.1881; before: (1.6 - 2)² = 0.16.
    learner, batch = _linear_maml(learn_inner_lr=meta_sgd)
    assert learner(batch).metric_before is None  # meta-training never reads it
    out = learner(batch, training=False)
    torch.testing.assert_close(out.loss, torch.tensor([1.1881], dtype=torch.float64))
    torch.testing.assert_close(out.metric, torch.tensor([1.1881], dtype=torch.float64))
    assert out.metric_before is not None
    torch.testing.assert_close(out.metric_before, torch.tensor([0.16], dtype=torch.float64))


def test_second_order_meta_gradient_equals_the_closed_form() -> None:
    # dw'/dw = 1 - α·Σx² = 0.5, dw'/db = db'/dw = -α·Σx = -0.3, db'/db = 1 - α·2 = 0.8, ∂L/∂(w', b') = (6.54, 2.18):
    # ∂L/∂w = 6.54·0.5 - 2.18·0.3 = 2.616, ∂L/∂b = -6.54·0.3 + 2.18·0.8 = -0.218.
    learner, batch = _linear_maml()
    learner(batch).loss.sum().backward()
    torch.testing.assert_close(_head(learner).weight.grad, torch.tensor([[2.616]], dtype=torch.float64))
    torch.testing.assert_close(_head(learner).bias.grad, torch.tensor([-0.218], dtype=torch.float64))


def test_first_order_meta_gradient_drops_exactly_the_inner_jacobian() -> None:
    # First order treats ∇L(S) as a constant, so the meta-gradient is ∂L/∂(w', b') = (2·1.09·3, 2·1.09) = (6.54, 2.18).
    learner, batch = _linear_maml(first_order=True)
    out = learner(batch)
    torch.testing.assert_close(out.loss, torch.tensor([1.1881], dtype=torch.float64))
    out.loss.sum().backward()
    torch.testing.assert_close(_head(learner).weight.grad, torch.tensor([[6.54]], dtype=torch.float64))
    torch.testing.assert_close(_head(learner).bias.grad, torch.tensor([2.18], dtype=torch.float64))


def test_meta_sgd_learns_one_step_size_per_parameter() -> None:
    # ∂L/∂α_w = ∂L/∂w' · (-∇w) = 6.54·4.2 = 27.468 and ∂L/∂α_b = 2.18·2.3 = 5.014; α starts at inner_lr.
    learner, batch = _linear_maml(learn_inner_lr=True)
    learner(batch).loss.sum().backward()
    lrs = dict(learner.inner_lr.named_parameters())
    torch.testing.assert_close(lrs["head__weight"].detach(), torch.tensor([[0.1]], dtype=torch.float64))
    torch.testing.assert_close(lrs["head__weight"].grad, torch.tensor([[27.468]], dtype=torch.float64))
    torch.testing.assert_close(lrs["head__bias"].grad, torch.tensor([5.014], dtype=torch.float64))
    assert learner.parameter_counts() == {"backbone": 4, "encoder": 0, "generator": 0, "total": 4}


@pytest.mark.parametrize("meta_sgd", [False, True], ids=["factored", "dense"])
def test_inner_gradient_clipping_rescales_to_the_global_norm(meta_sgd: bool) -> None:
    # ‖(∇w, ∇b)‖ = √(4.2² + 2.3²); clipped to 1 the step is α·(4.2, 2.3)/‖·‖.
    learner, batch = _linear_maml(inner_grad_clip=1.0, learn_inner_lr=meta_sgd)
    norm = (4.2**2 + 2.3**2) ** 0.5
    w, b = 0.5 + 0.1 * 4.2 / norm, 0.1 + 0.1 * 2.3 / norm
    torch.testing.assert_close(learner(batch).loss, torch.tensor([(3 * w + b - 2) ** 2], dtype=torch.float64))
    unclipped, _ = _linear_maml(inner_grad_clip=10.0, learn_inner_lr=meta_sgd)
    torch.testing.assert_close(unclipped(batch).loss, torch.tensor([1.1881], dtype=torch.float64))


WRITTEN_OUT: list[dict[str, object]] = [
    dict(learner="maml"),
    dict(learner="maml", hidden=[], bias_transformation=0),
    dict(learner="maml", bias_transformation=0, first_order=True),
    dict(learner="multi_maml", inner_grad_clip=0.05),
    dict(learner="mmaml"),
    dict(learner="mmaml", encoder="lstm", modulation="sigmoid", inner_grad_clip=0.05),
    dict(learner="mmaml", modulation="softmax", inner_steps=3),
]


@pytest.mark.parametrize("overrides", WRITTEN_OUT, ids=str)
def test_written_out_inner_loop_equals_the_autograd_inner_loop(
    overrides: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The regression MLP's hand-written backward pass gives autograd's inner steps, losses and exact
    # second-order meta-gradient (float64, to rounding), with clipping active or not, and is the path taken.
    from mmlo.models.networks import MLP

    calls: list[int] = []
    backpropagate = MLP.backpropagate

    def counted(*a: Any, **k: Any) -> tuple[Params, Params]:
        calls.append(1)
        return backpropagate(*a, **k)

    monkeypatch.setattr(MLP, "backpropagate", counted)
    learner, batch = _tiny("regression", **overrides)
    assert isinstance(learner, MAML)
    params = learner.params()
    written = learner.task_outputs(params, batch)
    assert len(calls) == learner.config.inner_steps
    written_before = learner.task_outputs(params, batch, training=False).metric_before
    learner.written_out_inner_loop = False
    calls.clear()
    reference = learner.task_outputs(params, batch)
    assert not calls
    torch.testing.assert_close(written.loss, reference.loss, atol=1e-12, rtol=0)
    reference_before = learner.task_outputs(params, batch, training=False).metric_before
    torch.testing.assert_close(written_before, reference_before, atol=1e-12, rtol=0)
    for g_written, g_reference in zip(
        _meta_gradient(params, written.loss.sum()), _meta_gradient(params, reference.loss.sum()), strict=True
    ):
        torch.testing.assert_close(g_written, g_reference, atol=1e-12, rtol=0)


def test_kernel_modulated_regression_keeps_the_autograd_inner_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # KML multiplies kernels per task (W ⊙ M), which the factored, written-out backward does not cover.
    from mmlo.models.networks import MLP

    monkeypatch.setattr(MLP, "backpropagate", lambda *a, **k: pytest.fail("written-out path taken"))
    learner, batch = _tiny("regression", learner="kml", base="maml")
    assert torch.isfinite(learner(batch).loss).all()


def test_an_inactive_clip_is_left_out_without_changing_the_meta_gradient() -> None:
    # Clip far above every inner gradient: the factor is None (not applied). Under torch.func the factor is
    # always applied (clamped to 1); both give the same loss and meta-gradient, so leaving it out is exact.
    from mmlo.models._maml import _clip_factor

    three_four = {"w": torch.tensor([[3.0, 4.0]])}
    assert _clip_factor(three_four, {}, {}, 5.5) is None
    torch.testing.assert_close(_clip_factor(three_four, {}, {}, 1.0), torch.tensor([0.2]))
    learner, batch = _tiny("regression", learner="mmaml", inner_grad_clip=1e6)
    params = {k: v.detach() for k, v in learner.params().items()}
    plain = learner.task_outputs({k: v.requires_grad_() for k, v in params.items()}, batch).loss.sum()
    applied = torch.func.grad(lambda p: learner.task_outputs(p, batch).loss.sum())(params)
    for (name, g_applied), g_plain in zip(applied.items(), _meta_gradient(params, plain), strict=True):
        torch.testing.assert_close(g_plain, g_applied, atol=1e-12, rtol=0, msg=name)


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("regression", dict(learner="mmaml")),
        ("regression", dict(learner="kml", base="maml", inner_grad_clip=0.3)),
        ("classification", dict(learner="mmaml", norm="transductive")),
        ("classification", dict(learner="maml", learn_inner_lr=True)),
    ],
    ids=lambda v: str(v),
)
def test_second_order_meta_gradient_matches_finite_differences(kind: Kind, overrides: dict[str, object]) -> None:
    # The directional derivative of the query loss along random directions equals <meta-gradient, direction>.
    learner, batch = _tiny(kind, 3, **overrides)
    params = {k: v.detach() for k, v in learner.params().items()}
    gradient = _meta_gradient(
        params, learner.task_outputs({k: v.requires_grad_() for k, v in params.items()}, batch).loss.sum()
    )
    generator = torch.Generator().manual_seed(4)
    eps = 1e-6
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in params.items()}
        with torch.no_grad():
            plus = learner.task_outputs({k: v + eps * direction[k] for k, v in params.items()}, batch, training=True)
            minus = learner.task_outputs({k: v - eps * direction[k] for k, v in params.items()}, batch, training=True)
        numeric = (plus.loss.sum() - minus.loss.sum()) / (2 * eps)
        analytic = sum((g * direction[k]).sum() for g, k in zip(gradient, params, strict=True))
        torch.testing.assert_close(numeric, analytic, rtol=1e-5, atol=1e-7)


def test_no_inner_steps_means_the_metric_before_is_the_metric() -> None:
    # With inner_steps 0 MAML does not adapt: the post-adaptation metric equals the pre-update one.
    learner, batch = _tiny("classification", learner="mmaml", inner_steps=0)
    out = learner(batch, training=False)
    assert out.metric_before is not None
    torch.testing.assert_close(out.metric, out.metric_before)


@pytest.mark.parametrize("name", ["mmaml", "kml", "multi_maml", "protonet"])
def test_evaluation_mode_keeps_no_meta_graph(name: str) -> None:
    # training=False (or no_grad) still adapts, gives the training-mode numbers (transductive BN), and keeps no graph.
    extra = {"base": "maml"} if name == "kml" else {}
    learner, batch = _tiny("classification", learner=name, **extra)
    trained = learner(batch)
    evaluated = learner(batch, training=False)
    with torch.no_grad():
        silent = learner(batch)
    for out in (evaluated, silent):
        assert out.loss.grad_fn is None
        torch.testing.assert_close(out.loss, trained.loss.detach())


def test_oracle_learners_route_each_task_to_its_modes_network() -> None:
    # multi_*: a task's loss depends only on its own mode's stacked network.
    for name in ("multi_maml", "multi_protonet"):
        learner, batch = _tiny("classification", learner=name)
        params = learner.params()
        out = learner.task_outputs(params, batch)
        first_mode = batch.mode == 0
        moved = {k: v.detach().clone() for k, v in params.items()}
        for k in moved:
            moved[k][1] += 0.5
        changed = learner.task_outputs(moved, batch)
        torch.testing.assert_close(changed.loss[first_mode], out.loss[first_mode])
        assert not torch.allclose(changed.loss[~first_mode], out.loss[~first_mode])
        grads = _meta_gradient(params, out.loss[first_mode].sum())
        assert all(bool((g[1] == 0).all()) for g in grads)


def _reference_protonet_logits(
    support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, ways: int, refine: bool
) -> torch.Tensor:
    """Snell et al.'s logits (and one soft k-means refinement) for one task, with explicit loops."""
    prototypes = torch.stack([support[labels == c].mean(0) for c in range(ways)])
    logits = -(torch.cdist(query, prototypes) ** 2)
    if refine:
        soft = torch.softmax(logits, dim=-1)
        prototypes = torch.stack(
            [
                (support[labels == c].sum(0) + (soft[:, c : c + 1] * query).sum(0))
                / ((labels == c).sum() + soft[:, c].sum())
                for c in range(ways)
            ]
        )
        logits = -(torch.cdist(query, prototypes) ** 2)
    return logits


@pytest.mark.parametrize("transductive", [False, True])
def test_protonet_scores_queries_by_distance_to_support_prototypes(transductive: bool) -> None:
    # Prototypes are class means of the support embedding; loss = CE of -‖q - p‖² (optionally refined once).
    learner, batch = _tiny("classification", learner="protonet", transductive=transductive)
    params = learner.params()
    out = learner.task_outputs(params, batch)
    features = learner.backbone.run(
        {k.removeprefix("backbone."): v for k, v in params.items()}, torch.cat([batch.support_x, batch.query_x], dim=1)
    )
    n_support = batch.support_x.shape[1]
    for t in range(batch.num_tasks):
        logits = _reference_protonet_logits(
            features[t, :n_support], batch.support_y[t], features[t, n_support:], 3, transductive
        )
        loss = torch.nn.functional.cross_entropy(logits, batch.query_y[t])
        accuracy = (logits.argmax(-1) == batch.query_y[t]).double().mean()
        torch.testing.assert_close(out.loss[t], loss)
        torch.testing.assert_close(out.metric[t], accuracy)
    assert out.metric_before is None


def test_parameter_counts_of_the_authors_kml_and_mprotonet() -> None:
    # 84x84 RGB, 32-64-128-256, 128-d υ: generator 329,595 (KML) vs 123,840 (FiLM); same backbone and encoder.
    benchmark = TinyBenchmark("classification", size=84, ways=5)
    convs = sum(o * i * 9 + o + 2 * o for i, o in [(3, 32), (32, 64), (64, 128), (128, 256)])
    encoder = convs + 256 * 128 + 128
    kml = build_learner(LearnerConfig(learner="kml"), benchmark).parameter_counts()
    film = build_learner(LearnerConfig(learner="mprotonet"), benchmark).parameter_counts()
    assert kml == {"backbone": convs, "encoder": encoder, "generator": 329595, "total": convs + encoder + 329595}
    assert film == {"backbone": convs, "encoder": encoder, "generator": 123840, "total": convs + encoder + 123840}
    mmaml = build_learner(LearnerConfig(learner="mmaml"), benchmark).parameter_counts()
    assert mmaml["backbone"] == convs + 256 * 5 * 5 * 5 + 5
    oracle = build_learner(LearnerConfig(learner="multi_protonet"), benchmark).parameter_counts()
    assert oracle == {"backbone": 2 * convs, "encoder": 0, "generator": 0, "total": 2 * convs}


def test_regression_parameter_counts_of_mmamls_network() -> None:
    # MLP 3 x 100 on [x, 20-d bias transformation]: 20 + 21·100+100 + 2·(100·100+100) + 101 = 22,521.
    learner = build_learner(LearnerConfig(learner="maml"), TinyBenchmark("regression"))
    assert learner.parameter_counts()["backbone"] == 20 + 2100 + 100 + 2 * 10100 + 101 == 22521


def test_configurations_the_benchmark_cannot_run_are_refused() -> None:
    # Regression supports the MAML family only, and says how to run KML on it.
    regression = TinyBenchmark("regression")
    with pytest.raises(ValueError, match="MAML family"):
        build_learner(LearnerConfig(learner="protonet"), regression)
    with pytest.raises(ValueError, match="base: maml"):
        build_learner(LearnerConfig(learner="kml"), regression)
    assert isinstance(build_learner(LearnerConfig(learner="kml", base="maml"), regression), MAML)


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("regression", dict(learner="mmaml")),
        ("regression", dict(learner="mmaml", encoder="lstm")),
        ("classification", dict(learner="kml", base="maml", norm="running")),
        ("classification", dict(learner="kml", transductive=True)),
        ("classification", dict(learner="multi_protonet")),
    ],
    ids=lambda v: str(v),
)
def test_learners_compose_with_torch_func_transforms(kind: Kind, overrides: dict[str, object]) -> None:
    # vmap(grad(loss of a one-task batch)) over tasks gives each task's own meta-gradient (transference's use).
    learner, batch = _tiny(kind, **overrides)
    theta = {k: v.detach() for k, v in learner.params().items()}

    def one_task(p: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        task = TaskBatch(sx[None], sy[None], qx[None], qy[None], batch.mode[:1], batch.seed[:1])
        return learner.task_outputs(p, task).loss.sum()

    same_mode = batch.select(torch.nonzero(batch.mode == batch.mode[0]).squeeze(1))
    columns = (same_mode.support_x, same_mode.support_y, same_mode.query_x, same_mode.query_y)
    batched = torch.func.vmap(torch.func.grad(one_task), in_dims=(None, 0, 0, 0, 0))(theta, *columns)
    for t in range(same_mode.num_tasks):
        single = torch.func.grad(one_task)(theta, *(c[t] for c in columns))
        for k in theta:
            torch.testing.assert_close(batched[k][t], single[k], atol=1e-6, rtol=0)


def test_query_embedding_modulates_the_query_pass_with_the_querys_own_upsilon() -> None:
    # KML authors' quirk: the query features use υ(query images); by default both passes use υ(support).
    learner, batch = _tiny("classification", learner="kml", query_embedding=True)
    params = learner.params()
    out = learner.task_outputs(params, batch)
    backbone = {k.removeprefix("backbone."): v for k, v in params.items() if k.startswith("backbone.")}
    encoder = {k.removeprefix("encoder."): v for k, v in params.items() if k.startswith("encoder.")}
    generator = {k.removeprefix("modulation."): v for k, v in params.items() if k.startswith("modulation.")}
    modulation, task_encoder = learner.modulation, learner.encoder
    assert modulation is not None and task_encoder is not None

    def taus(x: torch.Tensor, y: torch.Tensor) -> list[LayerModulation | None]:
        return modulation.generate(generator, task_encoder.embed(encoder, x, y))

    support = learner.backbone.run(backbone, batch.support_x, taus(batch.support_x, batch.support_y))
    query = learner.backbone.run(backbone, batch.query_x, taus(batch.query_x, batch.query_y))
    for t in range(batch.num_tasks):
        logits = _reference_protonet_logits(support[t], batch.support_y[t], query[t], 3, False)
        torch.testing.assert_close(out.loss[t], torch.nn.functional.cross_entropy(logits, batch.query_y[t]))
    default, _ = _tiny("classification", learner="kml")
    assert not torch.allclose(default.task_outputs(params, batch).loss, out.loss)


def test_kml_init_option_builds_the_authors_generator() -> None:
    # LearnerConfig(kml_init='authors') builds KML heads at PyTorch's default, identity ones at M = 1
    benchmark = TinyBenchmark("classification")
    for init in ("identity", "authors"):
        learner = build_learner(LearnerConfig(learner="kml", channels=[4, 4], kml_init=init), benchmark)
        assert isinstance(learner, MetaLearner)
        assert isinstance(learner.modulation, KernelModulation) and learner.modulation.init == init
