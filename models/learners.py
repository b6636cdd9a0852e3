"""The meta-learners of method.md §2: the MAML family and the ProtoNet family, vectorised over tasks.

Learner names map to a base algorithm, a modulation and an oracle flag (``mmlo.models.config.LEARNERS``):

- ``maml``, ``multi_maml``, ``mmaml``, ``kml`` with ``base: maml`` -> :class:`MAML`: inner SGD steps on
  the support set from θ (second order by default), outer loss on the query set. With a modulation, the
  task encoder's υ and the generator's τ are computed once from the support set and held fixed while θ
  is adapted.
- ``protonet``, ``multi_protonet``, ``mprotonet``, ``kml`` (``base: protonet``) -> :class:`ProtoNet`:
  class prototypes are the mean support embedding, logits the negative squared Euclidean distance.

Parameters live under four prefixes: ``backbone.`` (θ), ``encoder.`` (h), ``modulation.`` (g) and, with
``learn_inner_lr`` (Meta-SGD), ``inner_lr.`` (one step size per backbone parameter element). Oracle
multi_* learners stack one backbone per mode on a leading axis and route each task to its mode's network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmlo.models.base import Learner, Params, TaskOutput
from mmlo.models.config import LearnerConfig
from mmlo.models.encoders import TaskEncoder, build_encoder
from mmlo.models.modulation import LayerModulation, Modulation, build_modulation
from mmlo.models.networks import MLP, Backbone, ConvNet
from mmlo.tasks.base import Benchmark, TaskBatch

Taus = Sequence[LayerModulation | None] | None


def _sub(params: Params, prefix: str) -> Params:
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


def _lr_key(name: str) -> str:
    return name.replace(".", "__")


class MetaLearner(Learner):
    """What both families share: a backbone, an optional task encoder + generator, oracle routing."""

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
        super().__init__()
        if (encoder is None) != (modulation is None):
            raise ValueError("a modulated learner needs both a task encoder and a generator")
        self.config = config
        self.backbone = backbone
        self.encoder = encoder
        self.modulation = modulation
        self.kind = kind
        self.outputs = outputs

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of θ (``backbone``, with Meta-SGD's step sizes), h (``encoder``), g (``generator``)."""
        counts = {"backbone": 0, "encoder": 0, "generator": 0}
        component = {"backbone": "backbone", "inner_lr": "backbone", "encoder": "encoder", "modulation": "generator"}
        for name, p in self.named_parameters():
            counts[component[name.split(".", 1)[0]]] += p.numel()
        return {**counts, "total": sum(counts.values())}

    def _taus(self, params: Params, x: torch.Tensor, y: torch.Tensor, *, training: bool) -> Taus:
        """τ per layer for every task, from υ = h(x, y) (the support set, unless a quirk says otherwise)."""
        if self.encoder is None or self.modulation is None:
            return None
        embedding = self.encoder.embed(_sub(params, "encoder."), x, y, training=training, track=training)
        return self.modulation.generate(_sub(params, "modulation."), embedding)

    def _route(self, params: Params, batch: TaskBatch) -> tuple[Params, torch.Tensor | None]:
        """Oracle learners: each task gets its mode's network (``[T, ...]``); others share θ."""
        if not self.config.per_mode:
            return params, None
        return {k: v[batch.mode] for k, v in params.items()}, batch.mode

    def _loss_and_metric(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task query loss and metric: cross-entropy and accuracy, or MSE and MSE."""
        if self.kind == "regression":
            loss = (out - target).square().mean(dim=(1, 2))
            return loss, loss.detach()
        tasks, n = target.shape
        loss = F.cross_entropy(out.reshape(tasks * n, -1), target.reshape(-1), reduction="none").view(tasks, n)
        accuracy = (out.argmax(-1) == target).to(out.dtype).mean(1)
        return loss.mean(1), accuracy


class MAML(MetaLearner):
    """MAML (Finn et al. 2017) and its modulated variants MMAML (FiLM/sigmoid/softmax) and KML-on-MAML.

    For each task: τ = g(h(S)); θ_0 = θ; θ_{k+1} = θ_k - α ⊙ clip(∇_θ L(S; θ_k, τ)); loss = L(Q; θ_K, τ).
    The inner gradients of all tasks come from one backward pass of the summed support losses, taken
    with respect to per-task copies of θ (``[T, ...]``), so tasks never mix; it also runs under a
    caller's ``vmap``/``grad`` (transference) and under ``torch.no_grad`` (evaluation still adapts).
    Second order unless ``first_order`` (which treats each inner gradient as a constant); α is
    ``inner_lr`` or, with ``learn_inner_lr``, a learned tensor per parameter (Meta-SGD);
    ``inner_grad_clip`` rescales each task's inner gradient to at most that global norm.

    Linear layers whose kernel is not modulated are adapted in factored form when α is a scalar: with
    ``W̃ = [W | b]`` and ``h̃ = [h, 1]``, the gradient of ``z = W̃ h̃`` is ``δᵀ h̃`` (δ = ∂L/∂z, one row per
    support point), so after k steps ``W̃_k = W̃_0 - α Σ_j δ_jᵀ h̃_j`` and ``W̃_k x̃ = W̃_0 x̃ - α Σ_j (x̃·h̃_j) δ_j``.
    The network reads the shared ``W̃_0`` plus these low-rank terms instead of a ``[T, out, in]`` copy per
    task: the same numbers at a fraction of the memory traffic (the regression MLP's whole inner loop).

    When every layer is factored (the regression MLP without kernel modulation, scalar α, outside any
    caller's torch.func transform), the inner gradients are not taken with autograd at all: δ comes from
    the MLP's written-out backward pass (:meth:`MLP.backpropagate`), made of ordinary differentiable
    operations, so the meta-gradient is still exactly second order but autograd differentiates the graph
    once instead of building a differentiable backward graph per step (``written_out_inner_loop``).
    """

    #: Take the regression MLP's inner gradients from its written-out backward pass where it applies
    #: (False forces the autograd path everywhere; tests compare the two).
    written_out_inner_loop: bool = True

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
        statistics. ``metric_before`` is the query metric of the modulated, not yet adapted network.
        """
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            taus = self._taus(params, batch.support_x, batch.support_y, training=training)
            theta, route = self._route(_sub(params, "backbone."), batch)
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

        Returns the adapted parameters as the backbone reads them: per-task tensors, plus the base
        weight and bias and the ``.left``/``.right`` low-rank factors of factored linear layers.
        """
        cfg = self.config
        tasks, n_support = batch.num_tasks, batch.support_x.shape[1]
        factored = {} if isinstance(steps, dict) else self.backbone.low_rank_layers(taus)
        base = {f"{p}.{part}": theta[f"{p}.{part}"] for p in factored for part in ("weight", "bias")}
        dense = {k: v if route is not None else v.expand(tasks, *v.shape) for k, v in theta.items() if k not in base}
        if not isinstance(steps, dict) and self._written_out(theta, factored):
            return self._adapt_written_out(base, dense, steps, taus, batch, route, training=training)
        factors: Params = {}
        for _ in range(cfg.inner_steps):
            probes = {p: batch.support_x.new_zeros(tasks, n_support, width) for p, width in factored.items()}

            def support_loss(weights: Params, probes: Params) -> tuple[torch.Tensor, Params]:
                inputs: Params = {}
                probed = {f"{p}.probe": v for p, v in probes.items()}
                out = self.backbone.run(
                    {**base, **factors, **weights, **probed},
                    batch.support_x,
                    taus,
                    route=route,
                    training=training,
                    capture=inputs if factored else None,
                )
                return self._loss_and_metric(out, batch.support_y)[0].sum(), inputs

            grads, deltas, inputs = _inner_gradients(support_loss, dense, probes, create_graph=not cfg.first_order)
            dense, factors = self._step(dense, factors, grads, deltas, inputs, steps)
        return {**base, **factors, **dense}

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
        dense = {k: v - (steps[k] if isinstance(steps, dict) else steps) * grads[k] for k, v in dense.items()}
        factors = dict(factors)
        for p, delta in deltas.items():
            left, right = -steps * delta, inputs[p]  # type: ignore[operator]  # factored layers only with a scalar α
            if f"{p}.left" in factors:
                left = torch.cat([factors[f"{p}.left"], left], dim=1)
                right = torch.cat([factors[f"{p}.right"], right], dim=1)
            factors[f"{p}.left"], factors[f"{p}.right"] = left, right
        return dense, factors

    def _written_out(self, theta: Params, factored: dict[str, int]) -> bool:
        """Whether the inner loop can use the backbone's written-out backward pass (see the class docstring)."""
        # The written-out pass starts from the MSE's gradient: regression only.
        if not (self.written_out_inner_loop and isinstance(self.backbone, MLP) and self.kind == "regression"):
            return False
        every_layer = {f"layers.{i}" for i in range(len(self.backbone.layers))} | {"head"}
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        return set(factored) == every_layer and not any(wrapped(t) for t in theta.values())

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
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    if any(wrapped(t) for t in (*weights.values(), *probes.values())):
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
    if not torch._C._functorch.is_functorch_wrapped_tensor(factor) and bool((factor > 1.0).all()):
        return None
    return factor.clamp(max=1.0)


class ProtoNet(MetaLearner):
    """Prototypical networks (Snell et al. 2017) and their modulated variants MProtoNet and KML.

    Support and query images go through the backbone in one pass per task (as in Snell et al.'s code,
    so transductive BatchNorm sees both); prototypes are the mean support embedding per class, logits
    the negative squared Euclidean distance, the loss the query cross-entropy. τ comes from the support
    set only. With ``transductive``, prototypes are refined once with the query soft labels (one soft
    k-means step, the KML authors' default): ``p_c = (Σ_S z + Σ_Q softmax(-d)_c z) / (n_c + Σ_Q softmax(-d)_c)``.
    With ``query_embedding`` (the KML authors' other quirk), the query images are embedded in a pass of
    their own, modulated by υ computed from the query images. ``metric_before`` is None: there is no
    gradient adaptation.
    """

    def task_outputs(self, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
        """Embed, build prototypes from the support set, and score the query set, for all tasks at once.

        With ``training`` False (evaluation) nothing is kept for a meta-gradient and 'running' BatchNorm
        uses its running statistics.
        """
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            taus = self._taus(params, batch.support_x, batch.support_y, training=training)
            theta, route = self._route(_sub(params, "backbone."), batch)
            if self.config.query_embedding and taus is not None:
                # The image encoder never reads labels, so handing it the query labels leaks nothing.
                query_taus = self._taus(params, batch.query_x, batch.query_y, training=training)
                support = self.backbone.run(
                    theta, batch.support_x, taus, route=route, training=training, track=training
                )
                query = self.backbone.run(
                    theta, batch.query_x, query_taus, route=route, training=training, track=training
                )
            else:
                n_support = batch.support_x.shape[1]
                images = torch.cat([batch.support_x, batch.query_x], dim=1)
                features = self.backbone.run(theta, images, taus, route=route, training=training, track=training)
                support, query = features[:, :n_support], features[:, n_support:]
            # A comparison, not F.one_hot, whose range check is data-dependent and breaks under vmap.
            classes = torch.arange(self.outputs, device=support.device)
            onehot = (batch.support_y.unsqueeze(-1) == classes).to(support.dtype)
            sums, counts = torch.bmm(onehot.transpose(1, 2), support), onehot.sum(1)
            logits = -_squared_distances(query, sums / counts.clamp(min=1).unsqueeze(-1))
            if self.config.transductive:
                soft = torch.softmax(logits, dim=-1)
                refined = (sums + torch.bmm(soft.transpose(1, 2), query)) / (counts + soft.sum(1)).unsqueeze(-1)
                logits = -_squared_distances(query, refined)
            loss, metric = self._loss_and_metric(logits, batch.query_y)
        return TaskOutput(loss=loss, metric=metric, metric_before=None)


def _squared_distances(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``‖q - p‖²`` for ``query`` ``[T, Q, D]`` and ``prototypes`` ``[T, N, D]`` -> ``[T, Q, N]``.

    Expanded as ``‖q‖² - 2 q·p + ‖p‖²`` so that no ``[T, Q, N, D]`` difference tensor is built.
    """
    cross = torch.bmm(query, prototypes.transpose(1, 2))
    return query.pow(2).sum(-1, keepdim=True) - 2.0 * cross + prototypes.pow(2).sum(-1).unsqueeze(1)


def build_learner(cfg: LearnerConfig, benchmark: Benchmark) -> Learner:
    """The learner ``cfg`` describes, sized for ``benchmark`` (its kind, input shape, outputs and modes)."""
    algorithm = cfg.base_algorithm
    kind = benchmark.kind
    copies = len(benchmark.modes) if cfg.per_mode else None
    backbone: Backbone
    if kind == "regression":
        if algorithm != "maml":
            raise ValueError(
                f"regression supports the MAML family only; learner '{cfg.learner}' uses {algorithm}"
                + (" (set base: maml)" if cfg.learner == "kml" else "")
            )
        backbone = MLP(
            benchmark.input_shape[0],
            cfg.hidden,
            benchmark.output_dim,
            bias_transformation=cfg.bias_transformation,
            copies=copies,
        )
    else:
        backbone = ConvNet(
            benchmark.input_shape,
            cfg.channels,
            downsample=cfg.downsample,
            norm=cfg.norm,
            outputs=benchmark.output_dim if algorithm == "maml" else None,
            copies=copies,
        )
    modulation = build_modulation(
        cfg.resolved_modulation,
        backbone.layer_shapes,
        cfg.modulated_layers,
        cfg.embedding_dim,
        variant=cfg.kml_variant,
        rank=cfg.kml_rank,
    )
    encoder = None
    if modulation is not None:
        encoder = build_encoder(
            kind,
            cfg.encoder,
            benchmark.input_shape,
            benchmark.output_dim,
            cfg.embedding_dim,
            channels=cfg.channels,
            norm=cfg.norm,
        )
    learner_class = MAML if algorithm == "maml" else ProtoNet
    return learner_class(cfg, backbone, encoder, modulation, kind=kind, outputs=benchmark.output_dim)


def reference_loop_outputs(learner: Learner, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
    """The same math one task at a time in a Python loop: the baseline for equivalence tests and benches."""
    outputs = [learner.task_outputs(params, batch.select([i]), training=training) for i in range(batch.num_tasks)]
    before = [o.metric_before for o in outputs]
    return TaskOutput(
        loss=torch.cat([o.loss for o in outputs]),
        metric=torch.cat([o.metric for o in outputs]),
        metric_before=None if any(b is None for b in before) else torch.cat(before),  # type: ignore[misc]
    )
