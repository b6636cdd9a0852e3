"""The MAML family (``maml``, ``multi_maml``, ``mmaml``, ``kml`` with ``base: maml``): :class:`MAML`.

The maths, per task: τ = g(h(S)); θ_0 = θ; θ_{k+1} = θ_k - α ⊙ clip(∇_θ L(S; θ_k, τ)); loss = L(Q; θ_K, τ).
The class says it in three methods: the outer step (``task_outputs``), the inner loop (``_adapt``) and one
inner SGD step (``_step``).

The speed paths come after them. The inner gradients of all tasks are taken in one of three ways, which give
the same numbers (the tests compare them):

1. autograd (``_inner_gradients``): one backward pass of the summed support losses, taken with respect to
   per-task copies of θ (``[T, ...]``), so tasks never mix; plain ``torch.autograd.grad`` costs about a third
   less time per inner step than ``torch.func.grad``;
2. ``torch.func.grad`` in its place where a caller's torch.func transform (transference's
   ``vmap(grad(...))``) has wrapped the tensors: the only one that composes there;
3. the regression MLP's written-out backward pass (``_adapt_written_out``, :meth:`MLP.backpropagate`).

Under all three, when α is a scalar, a :class:`FactoredBackbone` adapts every linear layer whose kernel is
not modulated in factored form, without a per-task copy of its weight. With ``W̃ = [W | b]`` and
``h̃ = [h, 1]``, the gradient of ``z = W̃ h̃`` is ``δᵀ h̃`` (δ = ∂L/∂z, one row per support point), so after
k steps ``W̃_k = W̃_0 - α Σ_j δ_jᵀ h̃_j`` and ``W̃_k x̃ = W̃_0 x̃ - α Σ_j (x̃·h̃_j) δ_j``. The network reads the
shared ``W̃_0`` plus these low-rank terms instead of a ``[T, out, in]`` copy per task: the same numbers at a
fraction of the memory traffic (the regression MLP's whole inner loop). When every layer is factored (the
regression MLP without kernel modulation, outside any caller's torch.func transform), δ comes from the MLP's
written-out backward pass (path 3), made of ordinary differentiable operations, so the meta-gradient is still
exactly second order but autograd differentiates the graph once instead of building a differentiable
backward graph per step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from mmlo.models._meta_learner import MetaLearner, Taus, sub_params
from mmlo.models._torch_private import is_functorch_wrapped
from mmlo.models.base import Params, TaskOutput
from mmlo.models.config import LearnerConfig
from mmlo.models.encoders import TaskEncoder
from mmlo.models.modulation import Modulation
from mmlo.models.networks import MLP, Backbone, ConvNet, FactoredBackbone
from mmlo.tasks.base import TaskBatch


def _lr_key(name: str) -> str:
    return name.replace(".", "__")


class MAML(MetaLearner):
    """MAML (Finn et al. 2017) and its modulated variants MMAML (FiLM/sigmoid/softmax) and KML-on-MAML.

    For each task: τ = g(h(S)); θ_0 = θ; θ_{k+1} = θ_k - α ⊙ clip(∇_θ L(S; θ_k, τ)); loss = L(Q; θ_K, τ).
    With a modulation, the task encoder's υ and the generator's τ are computed once from the support set
    and held fixed while θ is adapted. Second order unless ``first_order`` (which treats each inner
    gradient as a constant); α is ``inner_lr`` or, with ``learn_inner_lr``, a learned tensor per parameter
    (Meta-SGD); ``inner_grad_clip`` rescales each task's inner gradient to at most that global norm. The
    inner loop also runs under a caller's ``vmap``/``grad`` (transference) and under ``torch.no_grad``
    (evaluation still adapts). How it is computed fast: the module docstring.
    """

    #: Take the regression MLP's inner gradients from its written-out backward pass where it applies
    #: (False forces the autograd path everywhere; tests compare the two).
    written_out_inner_loop: bool = True
    #: Hold the fast weights as per-task lists on a conv backbone's per-task path where it applies (False keeps
    #: the ``[T, ...]`` tensors there; tests compare the two).
    per_task_fast_weights: bool = True

    def __init__(
        self,
        config: LearnerConfig,
        backbone: Backbone,
        encoder: TaskEncoder | None,
        modulation: Modulation | None,
        *,
        kind: str,
        outputs: int,
    ) -> None:
        super().__init__(config, backbone, encoder, modulation, kind=kind, outputs=outputs)
        if config.learn_inner_lr:
            self.inner_lr = nn.ParameterDict(
                {
                    _lr_key(name): nn.Parameter(torch.full_like(p, config.inner_lr))
                    for name, p in backbone.named_parameters()
                }
            )

    def task_outputs(self, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
        """Adapt θ to each task's support set and score the query set; see the class docstring.

        With ``training`` False (evaluation) or under ``torch.no_grad()``, the inner loop still takes its
        gradient steps but nothing is kept for a meta-gradient, and 'running' BatchNorm uses its running
        statistics. ``metric_before`` is the query metric of the modulated, not yet adapted network, in
        evaluation only: a training pass (``training`` True) leaves it None, since meta-training never reads
        it and it would cost a forward pass of every query set.
        """
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            taus = self._taus(params, batch.support_x, batch.support_y, training=training)
            theta, route = self._route(sub_params(params, "backbone."), batch)
            metric_before = None
            if not training:
                with torch.no_grad():
                    before = self.backbone.run(theta, batch.query_x, taus, route=route, training=training)
                    metric_before = self._loss_and_metric(before, batch.query_y)[1]
            fast = self._adapt(theta, self._step_sizes(params, batch), taus, batch, route, training=training)
            out = self.backbone.run(fast, batch.query_x, taus, route=route, training=training, track=training)
            loss, metric = self._loss_and_metric(out, batch.query_y)
        return TaskOutput(loss=loss, metric=metric, metric_before=metric_before)

    def _step_sizes(self, params: Params, batch: TaskBatch) -> dict[str, torch.Tensor] | float:
        if not self.config.learn_inner_lr:
            return self.config.inner_lr
        lrs = {name: params[f"inner_lr.{_lr_key(name)}"] for name, _ in self.backbone.named_parameters()}
        return self._route(lrs, batch)[0]

    def _adapt(
        self,
        theta: Params,
        steps: dict[str, torch.Tensor] | float,
        taus: Taus,
        batch: TaskBatch,
        route: torch.Tensor | None,
        *,
        training: bool,
    ) -> Params:
        """The inner loop: ``inner_steps`` SGD steps on the support loss, per task, τ held fixed.

        θ is held as per-task tensors (``dense``, ``[T, ...]``) and, for layers adapted in factored form, as
        the shared weight and bias (``base``). Returns the adapted parameters as the backbone reads them:
        the per-task tensors, plus ``base`` and the ``.left``/``.right`` low-rank factors.
        """
        tasks = batch.num_tasks
        factored = self._factored_layers(steps, taus)
        base = {f"{p}.{part}": theta[f"{p}.{part}"] for p in factored for part in ("weight", "bias")}
        dense = {k: v if route is not None else v.expand(tasks, *v.shape) for k, v in theta.items() if k not in base}
        if not isinstance(steps, dict) and self._written_out(theta, factored):
            return self._adapt_written_out(base, dense, steps, taus, batch, route, training=training)
        if self._per_task_lists(theta, steps, taus, batch, route):
            return self._adapt_task_major(theta, steps, taus, batch, training=training)
        dense, factors = self._inner_loop(dense, base, factored, steps, taus, batch, route, training=training)
        return {**base, **factors, **dense}

    def _inner_loop(
        self,
        dense: Params,
        base: Params,
        factored: dict[str, int],
        steps: dict[str, torch.Tensor] | float,
        taus: Taus,
        batch: TaskBatch,
        route: torch.Tensor | None,
        *,
        training: bool,
        listed: bool = False,
    ) -> tuple[Params, Params]:
        """``inner_steps`` steps of every task in ``batch`` together: the adapted ``dense`` weights (per-task
        tensors, or with ``listed`` per-task-list keys) and the low-rank ``factors`` of the factored layers."""
        tasks, n_support = batch.num_tasks, batch.support_x.shape[1]

        def support_loss(weights: Params, probes: Params, fixed: Params) -> tuple[torch.Tensor, Params]:
            inputs: Params = {}
            probed = {f"{p}.probe": v for p, v in probes.items()}
            out = self._support_pass(
                {**fixed, **(_gathered(weights) if listed else weights), **probed},
                batch.support_x,
                taus,
                route=route,
                training=training,
                capture=inputs if factored else None,
            )
            return self._loss_and_metric(out, batch.support_y)[0].sum(), inputs

        factors: Params = {}
        for _ in range(self.config.inner_steps):
            # A factored layer's δ is the gradient of a zero probe added to its output.
            probes = {p: batch.support_x.new_zeros(tasks, n_support, width) for p, width in factored.items()}
            loss = functools.partial(support_loss, fixed={**base, **factors})
            grads, deltas, inputs = _inner_gradients(loss, dense, probes, create_graph=not self.config.first_order)
            dense, factors = self._step(dense, factors, grads, deltas, inputs, steps)
        return dense, factors

    def _adapt_task_major(
        self, theta: Params, steps: dict[str, torch.Tensor] | float, taus: Taus, batch: TaskBatch, *, training: bool
    ) -> Params:
        """``_adapt`` on a conv backbone's per-task path (see :meth:`_per_task_lists`): the fast weights as
        per-task lists, and the tasks adapted one after another, each through all its steps.

        Each task's weights are a distinct view of the shared θ (key ``name<TAB>t``), so the inner gradients
        come per task, never unbound from or stacked into ``[T, ...]`` copies; the kernels are in the memory
        format the backbone runs them in, so the fast weights are born in it. Task-major order keeps one
        task's weights and activations in cache through its steps (step-major order, all tasks per step,
        measured ~5 % slower per meta-iteration at 28 px on CPU). The numbers are the same either way.
        """
        laid = cast(ConvNet, self.backbone).laid_out(theta)
        adapted: Params = {}
        for t in range(batch.num_tasks):
            dense = {f"{k}{_TASK}0": v.view_as(v) for k, v in laid.items()}
            one, tau = batch.select(slice(t, t + 1)), _task_taus(taus, t)
            dense, _ = self._inner_loop(dense, {}, {}, steps, tau, one, None, training=training, listed=True)
            adapted.update({f"{k}{_TASK}{t}": dense[f"{k}{_TASK}0"] for k in laid})
        return _gathered(adapted)

    def _per_task_lists(
        self,
        theta: Params,
        steps: dict[str, torch.Tensor] | float,
        taus: Taus,
        batch: TaskBatch,
        route: torch.Tensor | None,
    ) -> bool:
        """Whether the inner loop holds the fast weights as per-task lists: a conv backbone that runs task by
        task (CPU), shared θ, a scalar α, no global-norm clip (it needs each task's whole gradient) and τ
        without kernel or bias terms (FiLM's scale and shift read per task as they are)."""
        if not self.per_task_fast_weights or not isinstance(self.backbone, ConvNet):
            return False
        if not self.backbone._per_task(batch.support_x):
            return False
        if route is not None or isinstance(steps, dict) or self.config.inner_grad_clip is not None:
            return False
        if any(tau is not None and (tau.kernel is not None or tau.bias is not None) for tau in taus or ()):
            return False
        return not any(is_functorch_wrapped(t) for t in theta.values())

    def _step(
        self,
        dense: Params,
        factors: Params,
        grads: Params,
        deltas: Params,
        inputs: Params,
        steps: dict[str, torch.Tensor] | float,
    ) -> tuple[Params, Params]:
        """One inner SGD step from the support gradients of every task (``grads`` of per-task tensors,
        ``deltas`` and ``inputs`` of factored layers): first order or evaluation keeps them constant, the
        clip rescales each task's whole gradient, per-task tensors move by ``-α g`` and every factored layer
        appends its ``(-α δ, input)`` rows to its ``.left``/``.right`` factors."""
        cfg = self.config
        if cfg.first_order or not torch.is_grad_enabled():
            grads = {k: g.detach() for k, g in grads.items()}
            deltas = {k: d.detach() for k, d in deltas.items()}
            inputs = {k: h.detach() for k, h in inputs.items()}
        scale = None if cfg.inner_grad_clip is None else _clip_factor(grads, deltas, inputs, cfg.inner_grad_clip)
        if scale is not None:
            grads = {k: g * scale.view(-1, *[1] * (g.dim() - 1)) for k, g in grads.items()}
            deltas = {k: d * scale.view(-1, 1, 1) for k, d in deltas.items()}
        if cfg.inner_grad_clamp is not None:  # element-wise (MMAML code); no layer is factored then
            grads = {k: g.clamp(-cfg.inner_grad_clamp, cfg.inner_grad_clamp) for k, g in grads.items()}
        if isinstance(steps, dict):
            dense = {k: v - steps[k] * grads[k] for k, v in dense.items()}
        else:  # one fused kernel, whose backward is one scaling instead of a negation and a scaling
            dense = {k: torch.add(v, grads[k], alpha=-steps) for k, v in dense.items()}
        factors = dict(factors)
        for p, delta in deltas.items():
            left, right = -steps * delta, inputs[p]  # type: ignore[operator]  # factored layers only with a scalar α
            if f"{p}.left" in factors:
                left = torch.cat([factors[f"{p}.left"], left], dim=1)
                right = torch.cat([factors[f"{p}.right"], right], dim=1)
            factors[f"{p}.left"], factors[f"{p}.right"] = left, right
        return dense, factors

    def _factored_layers(self, steps: dict[str, torch.Tensor] | float, taus: Taus) -> dict[str, int]:
        """The layers adapted in factored form (prefix -> output width): a factored backbone's, when α is a
        scalar (Meta-SGD's α per element does not factor)."""
        if isinstance(steps, dict) or not isinstance(self.backbone, FactoredBackbone):
            return {}
        if self.config.inner_grad_clamp is not None:  # a clamped δᵀh̃ is not low-rank: adapt densely
            return {}
        return self.backbone.low_rank_layers(taus)

    def _support_pass(
        self,
        params: Params,
        x: torch.Tensor,
        taus: Taus,
        *,
        route: torch.Tensor | None,
        training: bool,
        capture: Params | None,
    ) -> torch.Tensor:
        """The backbone on the support set; with ``capture``, a factored backbone also records the input of
        every factored layer."""
        if capture is None:
            return self.backbone.run(params, x, taus, route=route, training=training)
        assert isinstance(self.backbone, FactoredBackbone)
        return self.backbone.run(params, x, taus, route=route, training=training, capture=capture)

    def _written_out(self, theta: Params, factored: dict[str, int]) -> bool:
        """Whether the inner loop can use the backbone's written-out backward pass (see the module docstring)."""
        # The written-out pass starts from the MSE's gradient: regression only.
        if not (self.written_out_inner_loop and isinstance(self.backbone, MLP) and self.kind == "regression"):
            return False
        every_layer = {f"layers.{i}" for i in range(len(self.backbone.layers))} | {"head"}
        return set(factored) == every_layer and not any(is_functorch_wrapped(t) for t in theta.values())

    def _adapt_written_out(
        self,
        base: Params,
        dense: Params,
        step: float,
        taus: Taus,
        batch: TaskBatch,
        route: torch.Tensor | None,
        *,
        training: bool,
    ) -> Params:
        """``_adapt`` for a fully factored MLP, with δ from :meth:`MLP.backpropagate` instead of autograd.

        ``base`` holds every layer's weight and bias as θ has them, ``dense`` the per-task rest.

        The MSE's gradient ``∂L/∂out = 2 (out - y) / (B·out)`` starts the backward pass; every layer's
        update is the pair (``-α δ``, input), appended to its ``.left``/``.right`` factors.
        """
        mlp = self.backbone
        assert isinstance(mlp, MLP)
        factors: Params = {}
        for _ in range(self.config.inner_steps):
            inputs: Params = {}
            current = {**base, **factors, **dense}
            out = mlp.run(current, batch.support_x, taus, route=route, training=training, capture=inputs)
            delta = (out - batch.support_y) * (2.0 / (out.shape[1] * out.shape[2]))
            deltas, grads = mlp.backpropagate(current, inputs, delta, taus)
            dense, factors = self._step(dense, factors, grads, deltas, inputs, step)
        return {**base, **factors, **dense}


#: Separates a parameter's name from the task index in the per-task-list keys of ``MAML._adapt``.
_TASK = "\t"


def _task_taus(taus: Taus, t: int) -> Taus:
    """τ of task ``t`` alone (every field sliced to ``[1, ...]``)."""
    if taus is None:
        return None
    return [
        None
        if tau is None
        else dataclasses.replace(
            tau, **{f.name: v[t : t + 1] for f in dataclasses.fields(tau) if (v := getattr(tau, f.name)) is not None}
        )
        for tau in taus
    ]


def _gathered(flat: Params) -> Params:
    """Per-task-list keys (``name<TAB>t``, tasks in order) -> ``name`` -> the list of per-task tensors, which
    :meth:`ConvNet.run` reads on its per-task path."""
    lists: dict[str, list[torch.Tensor]] = {}
    for key, value in flat.items():
        lists.setdefault(key.split(_TASK)[0], []).append(value)
    return cast(Params, lists)


def _inner_gradients(
    support_loss: Callable[[Params, Params], tuple[torch.Tensor, Params]],
    weights: Params,
    probes: Params,
    *,
    create_graph: bool,
) -> tuple[Params, Params, Params]:
    """Gradients of the summed support loss w.r.t. the per-task weights and the δ probes, and its aux.

    Plain ``torch.autograd.grad`` is the fast path (about a third less time per inner step than
    ``torch.func.grad``); inside a caller's torch.func transform (transference's ``vmap(grad(...))``)
    tensors are functorch-wrapped and only ``torch.func.grad`` composes, so that path is taken there.
    Without an outer graph (evaluation) the weights become fresh leaves and nothing is kept.
    """
    if any(is_functorch_wrapped(t) for t in (*weights.values(), *probes.values())):
        (grads, deltas), aux = torch.func.grad(support_loss, argnums=(0, 1), has_aux=True)(weights, probes)
        return grads, deltas, aux
    outer = torch.is_grad_enabled()
    with torch.enable_grad():
        # Views made under no_grad report requires_grad without being in any graph: always re-leaf them.
        leaves = {k: v if outer and v.requires_grad else v.detach().requires_grad_() for k, v in weights.items()}
        probes = {k: v.requires_grad_() for k, v in probes.items()}
        loss, aux = support_loss(leaves, probes)
        found = torch.autograd.grad(loss, [*leaves.values(), *probes.values()], create_graph=create_graph and outer)
    return (
        dict(zip(leaves, found[: len(leaves)], strict=True)),
        dict(zip(probes, found[len(leaves) :], strict=True)),
        aux,
    )


def _clip_factor(grads: Params, deltas: Params, inputs: Params, max_norm: float) -> torch.Tensor | None:
    """Per-task factor that rescales the whole inner gradient to a global norm of at most max_norm.

    A factored layer's gradient ``δᵀ [h, 1]`` (weight and bias) has squared norm ``Σ (δ δᵀ) ⊙ (h hᵀ + 1)``,
    computed without forming the ``[out, in]`` product. Returns None when no task's gradient reaches
    ``max_norm``: the factor is then 1 for every task and, being clamped, has zero derivative, so leaving
    it out changes neither the step nor the meta-gradient, and the norm's graph is never differentiated.
    (Under a caller's torch.func transform, where values cannot be inspected, the factor is always applied.)
    """
    squares = [g.pow(2).flatten(1).sum(1) for g in grads.values()]
    for p, delta in deltas.items():
        inner = torch.baddbmm(delta.new_ones(()), inputs[p], inputs[p].transpose(1, 2))
        gram = torch.bmm(delta, delta.transpose(1, 2)) * inner
        squares.append(gram.flatten(1).sum(1))
    factor = max_norm / (torch.stack(squares).sum(0).sqrt() + 1e-12)
    if not is_functorch_wrapped(factor) and bool((factor > 1.0).all()):
        return None
    return factor.clamp(max=1.0)
