"""Backbones evaluated functionally on a whole meta-batch: the regression MLP and the 4-block conv net.

Every parameter a backbone reads from its ``params`` dict is either *shared* by all T tasks (the
parameter's own shape) or *per task* (a leading T axis: MAML's adapted weights, KML's modulated kernels,
an oracle's per-mode weights routed to each task). The forward passes handle both in one call for the whole
meta-batch, building one graph; the conv net picks how per device (:func:`conv_strategy`): on CPU one ordinary
convolution per task and layer on views of the per-task tensors (oneDNN runs these faster than a grouped one),
channels-last with BatchNorm on the feature map's rows, a kernel's layout and algorithm chosen by the size of
its work (:func:`per_task_block`); elsewhere, and under a caller's torch.func transform, without any loop over
tasks:

- linear layers use ``F.linear`` (shared) or a batched ``baddbmm`` (per task);
- conv layers run in the *grouped layout* ``[B, T*C, H, W]``: task t owns channels ``t*C .. t*C+C-1``,
  so a conv with ``groups=T`` applies each task's kernel to its own images only, and BatchNorm on that
  layout computes statistics per task and channel, as MAML's transductive BN does per task.

A backbone built with ``copies=M`` (the oracle multi_* learners) holds ``M`` independently initialised
networks stacked on a leading axis; the learner routes them to tasks (``params[mode]``) before the call.

The regression MLP is also a :class:`FactoredBackbone`: MAML may adapt its linear layers in a factored
low-rank form instead of a per-task copy of each weight, and it writes out its own backward pass
(:meth:`MLP.backpropagate`); the conv net needs neither.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mmlo.models._torch_private import is_functorch_wrapped
from mmlo.models.base import Params
from mmlo.models.modulation import LayerModulation, LayerShape, conv_factors

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def _uniform(shape: Sequence[int], fan_in: int, copies: int | None) -> nn.Parameter:
    """PyTorch's default Linear/Conv2d initialisation, U(±1/√fan_in), for one or ``copies`` networks."""
    lead = () if copies is None else (copies,)
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*lead, *shape).uniform_(-bound, bound))


def _xavier(shape: Sequence[int], fan_in: int, fan_out: int, copies: int | None) -> nn.Parameter:
    """Xavier-uniform weights, U(±√(6 / (fan_in + fan_out))), for one or ``copies`` networks (each its own draw)."""
    lead = () if copies is None else (copies,)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return nn.Parameter(torch.empty(*lead, *shape).uniform_(-bound, bound))


def per_task(param: torch.Tensor, dims: int, tasks: int) -> torch.Tensor:
    """``param`` as ``[T, *shape]``: shared parameters (``dims`` dimensions) are broadcast over tasks."""
    return param if param.dim() == dims + 1 else param.expand(tasks, *param.shape)


def grouped(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W]`` -> the grouped layout ``[B, T*C, H, W]``.

    On CPU the result is channels-last, which oneDNN's convolutions run about a quarter faster (vmap,
    as in transference, cannot change memory formats: there it stays as it is).
    """
    tasks, batch, channels = x.shape[:3]
    h = x.transpose(0, 1).reshape(batch, tasks * channels, *x.shape[3:])
    if h.device.type != "cpu" or is_functorch_wrapped(h):
        return h
    return h.contiguous(memory_format=torch.channels_last)


def ungrouped(h: torch.Tensor, tasks: int) -> torch.Tensor:
    """The grouped layout ``[B, T*C, H, W]`` -> ``[T, B, C, H, W]``."""
    return h.view(h.shape[0], tasks, -1, *h.shape[2:]).transpose(0, 1)


def task_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``h @ Wᵀ + b`` for ``h`` ``[T, B, in]``, with a shared or per-task weight and bias."""
    if weight.dim() == 2:
        # A shared weight stays one matmul even when the bias is per task (MAML's adapted bias).
        return F.linear(h, weight, bias) if bias.dim() == 1 else F.linear(h, weight) + bias.unsqueeze(1)
    tasks = h.shape[0]
    return torch.baddbmm(per_task(bias, 1, tasks).unsqueeze(1), h, per_task(weight, 2, tasks).transpose(1, 2))


def task_conv2d(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tasks: int, *, stride: int) -> torch.Tensor:
    """A 'same'-padded conv on the grouped layout: each task's kernel sees only its own channels."""
    w = per_task(weight, 4, tasks)
    w = w.reshape(tasks * w.shape[1], *w.shape[2:])
    b = per_task(bias, 1, tasks).reshape(-1)
    return F.conv2d(h, w, b, stride=stride, padding=w.shape[-1] // 2, groups=tasks)


def channel_affine(h: torch.Tensor, tau: LayerModulation | None, *, grouped_layout: bool) -> torch.Tensor:
    """Apply τ's per-channel ``scale`` and ``shift`` to ``[B, T*C, H, W]`` or ``[T, B, C]`` activations."""
    if tau is None:
        return h

    def shaped(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(1, -1, 1, 1) if grouped_layout else v.unsqueeze(1)

    if tau.scale is not None and tau.shift is not None:
        return torch.addcmul(shaped(tau.shift), h, shaped(tau.scale))
    if tau.scale is not None:
        h = h * shaped(tau.scale)
    if tau.shift is not None:
        h = h + shaped(tau.shift)
    return h


def modulated(
    weight: torch.Tensor, bias: torch.Tensor, tau: LayerModulation | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's parameters after τ's kernel factor and bias shift (per task when modulated)."""
    if tau is None:
        return weight, bias
    if tau.kernel is not None:
        weight = weight * tau.kernel
    if tau.bias is not None:
        bias = bias + tau.bias
    return weight, bias


class ConvBlock(nn.Module):
    """Parameters (and BN running statistics) of one conv3x3 -> BN block, for one or ``copies`` networks.

    ``init`` 'default' is PyTorch's Conv2d initialisation, 'xavier' xavier-uniform weights and zero biases;
    without ``affine`` BatchNorm only normalises (no ``bn_weight``/``bn_bias``).
    """

    #: Buffers, registered only with norm 'running'.
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(
        self,
        c_in: int,
        c_out: int,
        norm: str,
        copies: int | None,
        kernel: int = 3,
        *,
        affine: bool = True,
        init: str = "default",
    ) -> None:
        super().__init__()
        lead = () if copies is None else (copies,)
        fan_in = c_in * kernel * kernel
        if init == "xavier":
            self.weight = _xavier((c_out, c_in, kernel, kernel), fan_in, c_out * kernel * kernel, copies)
            self.bias = nn.Parameter(torch.zeros(*lead, c_out))
        elif init == "default":
            self.weight = _uniform((c_out, c_in, kernel, kernel), fan_in, copies)
            self.bias = _uniform((c_out,), fan_in, copies)
        else:
            raise ValueError(f"unknown init '{init}'")
        self.norm = norm
        self.affine = affine
        if norm != "none" and affine:
            self.bn_weight = nn.Parameter(torch.ones(*lead, c_out))
            self.bn_bias = nn.Parameter(torch.zeros(*lead, c_out))
        if norm == "running":
            self.register_buffer("running_mean", torch.zeros(*lead, c_out))
            self.register_buffer("running_var", torch.ones(*lead, c_out))


def conv_block(
    block: ConvBlock,
    params: Params,
    prefix: str,
    h: torch.Tensor,
    tasks: int,
    tau: LayerModulation | None,
    *,
    stride: int,
    pool: bool,
    route: torch.Tensor | None,
    training: bool,
    track: bool,
) -> torch.Tensor:
    """conv -> BN -> modulation -> ReLU (-> 2x2 max-pool) on the grouped layout ``[B, T*C, H, W]``.

    ``route`` (``[T]`` network index per task) selects each task's BN running statistics for stacked
    oracle networks; ``track`` lets a training pass update those statistics.
    """
    weight, bias = modulated(params[f"{prefix}weight"], params[f"{prefix}bias"], tau)
    h = task_conv2d(h, weight, bias, tasks, stride=stride)
    if block.norm != "none":
        h = _task_batch_norm(block, params, prefix, h, tasks, route=route, training=training, track=track)
    h = F.relu(channel_affine(h, tau, grouped_layout=True))
    return F.max_pool2d(h, 2) if pool else h


def _task_batch_norm(
    block: ConvBlock,
    params: Params,
    prefix: str,
    h: torch.Tensor,
    tasks: int,
    *,
    route: torch.Tensor | None,
    training: bool,
    track: bool,
) -> torch.Tensor:
    """BatchNorm with statistics per task and channel ('transductive': always the task's own batch)."""
    weight = bias = None
    if block.affine:
        weight = per_task(params[f"{prefix}bn_weight"], 1, tasks).reshape(-1)
        bias = per_task(params[f"{prefix}bn_bias"], 1, tasks).reshape(-1)
    if block.norm == "running":
        mean_buf, var_buf = block.running_mean, block.running_var
        if not training:
            mean = (mean_buf[route] if route is not None else mean_buf.expand(tasks, -1)).reshape(-1)
            var = (var_buf[route] if route is not None else var_buf.expand(tasks, -1)).reshape(-1)
            return F.batch_norm(h, mean, var, weight, bias, training=False, eps=BN_EPS)
        # Statistics are state, not a function of the parameters: a caller's vmap/grad transform
        # (transference look-aheads) must not write them.
        if track and not is_functorch_wrapped(h):
            with torch.no_grad():
                _update_running(mean_buf, var_buf, h.detach(), tasks, route)
    return F.batch_norm(h, None, None, weight, bias, training=True, eps=BN_EPS)


def _update_running(
    mean_buf: torch.Tensor, var_buf: torch.Tensor, h: torch.Tensor, tasks: int, route: torch.Tensor | None
) -> None:
    """Move running statistics towards the mean over tasks of each task's batch statistics."""
    dims = [0, *range(2, h.dim())]
    _move_running(mean_buf, var_buf, h.mean(dims).view(tasks, -1), h.var(dims, unbiased=True).view(tasks, -1), route)


def _move_running(
    mean_buf: torch.Tensor, var_buf: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, route: torch.Tensor | None
) -> None:
    """:func:`_update_running` from each task's batch mean and (unbiased) variance, ``[T, C]``."""
    if route is None:
        mean_buf.lerp_(mean.mean(0), BN_MOMENTUM)
        var_buf.lerp_(var.mean(0), BN_MOMENTUM)
        return
    counts = torch.bincount(route, minlength=mean_buf.shape[0]).to(mean.dtype).unsqueeze(1)
    seen = counts.squeeze(1) > 0
    for buf, stat in ((mean_buf, mean), (var_buf, var)):
        target = torch.zeros_like(buf).index_add_(0, route, stat) / counts.clamp(min=1)
        buf[seen] = torch.lerp(buf[seen], target[seen], BN_MOMENTUM)


class LinearLayer(nn.Module):
    """Weight and bias of one linear layer, for one or ``copies`` networks."""

    def __init__(
        self, n_in: int, n_out: int, copies: int | None, *, weight_std: float | None = None, init: str = "default"
    ) -> None:
        """PyTorch's default initialisation, N(0, weight_std²) weights and zero biases when ``weight_std`` is
        given, or xavier-uniform weights and zero biases with ``init`` 'xavier'."""
        super().__init__()
        if init == "xavier":
            self.weight = _xavier((n_out, n_in), n_in, n_out, copies)
            self.bias = nn.Parameter(torch.zeros(*((copies,) if copies is not None else ()), n_out))
        else:
            self.weight = _uniform((n_out, n_in), n_in, copies)
            self.bias = _uniform((n_out,), n_in, copies)
        if weight_std is not None:
            with torch.no_grad():
                self.weight.normal_(0.0, weight_std)
                self.bias.zero_()


class Backbone(nn.Module, ABC):
    """A network θ evaluated functionally on T tasks; ``layer_shapes`` are its modulatable layers."""

    layer_shapes: tuple[LayerShape, ...]
    #: Width of the output: features (ProtoNet) or ``outputs`` (MAML's classifier / regression head).
    out_features: int

    @abstractmethod
    def run(
        self,
        params: Params,
        x: torch.Tensor,
        taus: Sequence[LayerModulation | None] | None = None,
        *,
        route: torch.Tensor | None = None,
        training: bool = True,
        track: bool = False,
    ) -> torch.Tensor:
        """``x`` ``[T, B, *input_shape]`` -> ``[T, B, out_features]``.

        ``params`` is keyed as this module's ``named_parameters()``, each shared or per task; ``taus`` is
        τ per modulatable layer; ``route`` the network index of each task (stacked oracle networks);
        ``training`` False makes 'running' BatchNorm use its running statistics, and ``track`` lets a
        training pass update them.
        """


class FactoredBackbone(Backbone):
    """A backbone whose linear layers MAML may adapt in factored low-rank form (the regression MLP).

    For each layer ``low_rank_layers`` lists, ``run`` also reads ``{prefix}.left`` ``[T, r, out]`` and
    ``{prefix}.right`` ``[T, r, in]``: the weight and bias together, ``[W_t | b_t] = [W | b] + leftᵀ [right | 1]``,
    so that ``h W_tᵀ + b_t = h Wᵀ + b + (h rightᵀ + 1) left``; and an optional ``{prefix}.probe`` ``[T, B, out]``
    added to the layer's output, whose gradient is δ.
    """

    @abstractmethod
    def run(
        self,
        params: Params,
        x: torch.Tensor,
        taus: Sequence[LayerModulation | None] | None = None,
        *,
        route: torch.Tensor | None = None,
        training: bool = True,
        track: bool = False,
        capture: Params | None = None,
    ) -> torch.Tensor:
        """As :meth:`Backbone.run`; ``capture``, when given, receives the input of every factored layer."""

    @abstractmethod
    def low_rank_layers(self, taus: Sequence[LayerModulation | None] | None) -> dict[str, int]:
        """Linear layers MAML may adapt in factored form (prefix -> output width), given τ. A layer whose
        kernel τ modulates is excluded: ``W ⊙ K`` breaks the factorisation."""


#: Weight scale of the regression MLP, as in the MMAML-Regression code (N(0, 0.01²) weights, zero biases).
INIT_STD = 0.01


class MLP(FactoredBackbone):
    """MMAML's regression network: [x, learned bias transformation] -> hidden layers with ReLU -> output.

    Each hidden layer is linear -> modulation -> ReLU; the bias transformation (Finn & Levine 2018) is a
    learned vector concatenated to every input, so that MAML can adapt an input-independent bias.
    Initialised as the authors' code does (:data:`INIT_STD`, zero biases and bias transformation); no
    normalisation layers (their ``--disable-norm``), so ``LearnerConfig.norm`` concerns images only.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        bias_transformation: int = 20,
        copies: int | None = None,
    ) -> None:
        super().__init__()
        lead = () if copies is None else (copies,)
        self.bias_size = bias_transformation
        if bias_transformation:
            self.bias_transformation = nn.Parameter(torch.zeros(*lead, bias_transformation))
        widths = [in_features + bias_transformation, *hidden]
        self.layers = nn.ModuleList(
            LinearLayer(a, b, copies, weight_std=INIT_STD) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = LinearLayer(widths[-1], out_features, copies, weight_std=INIT_STD)
        self.out_features = out_features
        self.layer_shapes = tuple(LayerShape((b, a), (b, a)) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def run(
        self,
        params: Params,
        x: torch.Tensor,
        taus: Sequence[LayerModulation | None] | None = None,
        *,
        route: torch.Tensor | None = None,
        training: bool = True,
        track: bool = False,
        capture: Params | None = None,
    ) -> torch.Tensor:
        tasks, batch = x.shape[:2]
        h = x
        if self.bias_size:
            bt = per_task(params["bias_transformation"], 1, tasks)
            h = torch.cat([h, bt.unsqueeze(1).expand(tasks, batch, self.bias_size)], dim=-1)
        for i in range(len(self.layers)):
            tau = taus[i] if taus is not None else None
            z = _factored_linear(params, f"layers.{i}", h, tau, capture)
            h = F.relu(channel_affine(z, tau, grouped_layout=False))
        return _factored_linear(params, "head", h, None, capture)

    def low_rank_layers(self, taus: Sequence[LayerModulation | None] | None) -> dict[str, int]:
        layers = {
            f"layers.{i}": shape.channels
            for i, shape in enumerate(self.layer_shapes)
            if taus is None or taus[i] is None or taus[i].kernel is None  # type: ignore[union-attr]
        }
        return {**layers, "head": self.out_features}

    def backpropagate(
        self,
        params: Params,
        inputs: Params,
        delta: torch.Tensor,
        taus: Sequence[LayerModulation | None] | None = None,
    ) -> tuple[Params, Params]:
        """The backward pass written out: ``δ = ∂L/∂z`` of every layer, and the bias transformation's gradient.

        ``inputs`` is what ``run(..., capture=inputs)`` recorded (every layer's input, so the next layer's
        input is this layer's ReLU output); ``delta`` is ``∂L/∂out`` ``[T, B, out]``. Every layer must be
        in factored form (``low_rank_layers`` lists them all: no kernel modulation). Returns
        ``({prefix: δ}, {"bias_transformation": gradient})``: with ``W̃ = [W | b]`` a layer's gradient is
        ``δᵀ [input, 1]``, which MAML keeps factored. Built from differentiable operations only (ReLU's
        derivative is its own backward kernel), so a meta-gradient through it is MAML's exact second-order one.
        """
        deltas = {"head": delta}
        gradient = _factored_linear_input_gradient(params, "head", delta)
        for i in reversed(range(len(self.layers))):
            prefix = f"layers.{i}"
            after = inputs[f"layers.{i + 1}"] if i + 1 < len(self.layers) else inputs["head"]
            delta = torch.ops.aten.threshold_backward(gradient, after, 0.0)
            tau = taus[i] if taus is not None else None
            if tau is not None and tau.scale is not None:
                delta = delta * tau.scale.unsqueeze(1)
            deltas[prefix] = delta
            if i > 0 or self.bias_size:
                gradient = _factored_linear_input_gradient(params, prefix, delta)
        dense = {"bias_transformation": gradient[..., -self.bias_size :].sum(1)} if self.bias_size else {}
        return deltas, dense


def _factored_linear(
    params: Params, prefix: str, h: torch.Tensor, tau: LayerModulation | None, capture: Params | None
) -> torch.Tensor:
    """A linear layer that also reads MAML's low-rank updates and δ probe (see :class:`FactoredBackbone`)."""
    weight, bias = modulated(params[f"{prefix}.weight"], params[f"{prefix}.bias"], tau)
    z = task_linear(h, weight, bias)
    left = params.get(f"{prefix}.left")
    if left is not None:
        # Every stored input row carries the bias column's implicit 1: (h rightᵀ + 1) in one call.
        coefficients = torch.baddbmm(h.new_ones(()), h, params[f"{prefix}.right"].transpose(1, 2))
        z = torch.baddbmm(z, coefficients, left)
    probe = params.get(f"{prefix}.probe")
    if probe is not None:
        z = z + probe
    if capture is not None:
        capture[prefix] = h
    return z


def _factored_linear_input_gradient(params: Params, prefix: str, delta: torch.Tensor) -> torch.Tensor:
    """``δ W_t`` (the gradient at a factored layer's input) for ``W_t = W + leftᵀ right`` without forming ``W_t``."""
    weight = params[f"{prefix}.weight"]
    gradient = torch.matmul(delta, weight)  # shared [out, in] or per task [T, out, in]
    left = params.get(f"{prefix}.left")
    if left is not None:
        gradient = torch.baddbmm(gradient, torch.bmm(delta, left.transpose(1, 2)), params[f"{prefix}.right"])
    return gradient


def conv_output_size(size: int, blocks: int, downsample: str) -> int:
    """Spatial size after ``blocks`` 'same' 3x3 convs that each halve it (stride 2, or a 2x2 max-pool)."""
    for _ in range(blocks):
        size = (size + 1) // 2 if downsample == "stride" else size // 2
    return size


class ConvNet(Backbone):
    """The 4-block conv backbone of MAML/MMAML/KML: [conv3x3 -> BN -> modulation -> ReLU -> downsample] x n.

    ``downsample`` is 'maxpool' (stride-1 conv then 2x2 max-pool, MAML) or 'stride' (stride-2 conv, the
    MMAML code). The last block's feature map is flattened (``pool`` 'flatten', MAML's and ProtoNet's code) or
    averaged over its positions ('mean', the MMAML-Classification code) into the features. With ``outputs``
    set (MAML family) a linear classifier maps the features to ``outputs`` logits; without it (ProtoNet
    family) the features are the embedding. ``bn_affine`` False drops BatchNorm's learned scale and shift;
    ``init`` 'xavier' initialises every weight xavier-uniform and every bias to zero (the MMAML code).
    """

    #: 'auto' (:func:`conv_strategy` of the input's device), 'per-task' or 'grouped'; tests compare them.
    strategy: str = "auto"
    #: Whether the per-task path runs channels-last (:func:`per_task_block`); False keeps the plain layout
    #: (tests compare the two).
    channels_last: bool = True

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        *,
        downsample: str = "maxpool",
        norm: str = "transductive",
        outputs: int | None = None,
        copies: int | None = None,
        pool: str = "flatten",
        bn_affine: bool = True,
        init: str = "default",
    ) -> None:
        super().__init__()
        if downsample not in ("maxpool", "stride"):
            raise ValueError(f"unknown downsample '{downsample}'")
        if pool not in ("flatten", "mean"):
            raise ValueError(f"unknown pool '{pool}'")
        if init not in ("default", "xavier"):
            raise ValueError(f"unknown init '{init}'")
        if norm not in ("transductive", "running", "none"):
            raise ValueError(f"unknown norm '{norm}'")
        in_channels, height, width = input_shape
        widths = [in_channels, *channels]
        self.blocks = nn.ModuleList(
            ConvBlock(a, b, norm, copies, affine=bn_affine, init=init)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.stride = 2 if downsample == "stride" else 1
        self.maxpool = downsample == "maxpool"
        self.global_pool = pool == "mean"
        side_h = conv_output_size(height, len(channels), downsample)
        side_w = conv_output_size(width, len(channels), downsample)
        if side_h < 1 or side_w < 1:
            raise ValueError(f"{height}x{width} images are too small for {len(channels)} downsampling blocks")
        self.features = channels[-1] * (1 if self.global_pool else side_h * side_w)
        self.head = LinearLayer(self.features, outputs, copies, init=init) if outputs is not None else None
        self.out_features = outputs if outputs is not None else self.features
        self.layer_shapes = tuple(
            LayerShape((b, a, 3, 3), conv_factors(b, a, 3, first=i == 0))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        )
        # Output positions of each block's convolution on this network's images (before any max-pool).
        before = 1 if self.stride == 2 else 0
        self.conv_positions = tuple(
            conv_output_size(height, i + before, downsample) * conv_output_size(width, i + before, downsample)
            for i in range(len(channels))
        )

    @property
    def conv_blocks(self) -> list[ConvBlock]:
        """The blocks, typed (an ``nn.ModuleList`` yields plain modules)."""
        return [cast(ConvBlock, block) for block in self.blocks]

    def run(
        self,
        params: Params,
        x: torch.Tensor,
        taus: Sequence[LayerModulation | None] | None = None,
        *,
        route: torch.Tensor | None = None,
        training: bool = True,
        track: bool = False,
    ) -> torch.Tensor:
        if self._per_task(x):
            features = self._run_per_task(params, x, taus, route=route, training=training, track=track)
        else:
            features = self._run_grouped(params, x, taus, route=route, training=training, track=track)
        if self.head is None:
            return features
        head_weight, head_bias = params["head.weight"], params["head.bias"]
        if isinstance(head_weight, list):  # per-task lists (MAML's fast weights on the per-task path)
            heads = zip(head_weight, _each_task(head_bias, 1, len(head_weight)), strict=True)
            return torch.stack([F.linear(f, w, b) for f, (w, b) in zip(features.unbind(0), heads, strict=True)])
        return task_linear(features, head_weight, head_bias)

    def _per_task(self, x: torch.Tensor) -> bool:
        """Whether this call runs task by task (see :func:`conv_strategy`): never inside a caller's torch.func
        transform, whose batching rules the grouped layout is written for."""
        strategy = conv_strategy(x.device) if self.strategy == "auto" else self.strategy
        return strategy == "per-task" and not is_functorch_wrapped(x)

    def _run_grouped(
        self,
        params: Params,
        x: torch.Tensor,
        taus: Sequence[LayerModulation | None] | None,
        *,
        route: torch.Tensor | None,
        training: bool,
        track: bool,
    ) -> torch.Tensor:
        """The features ``[T, B, features]`` of all tasks at once, in the grouped layout."""
        tasks, batch = x.shape[:2]
        h = grouped(x)
        for i, block in enumerate(self.conv_blocks):
            h = conv_block(
                block,
                params,
                f"blocks.{i}.",
                h,
                tasks,
                taus[i] if taus is not None else None,
                stride=self.stride,
                pool=self.maxpool,
                route=route,
                training=training,
                track=track,
            )
        if self.global_pool:
            h = h.mean(dim=(2, 3))
        return ungrouped(h, tasks).reshape(tasks, batch, -1)

    def _run_per_task(
        self,
        params: Params,
        x: torch.Tensor,
        taus: Sequence[LayerModulation | None] | None,
        *,
        route: torch.Tensor | None,
        training: bool,
        track: bool,
    ) -> torch.Tensor:
        """The features ``[T, B, features]``, one ordinary convolution (and BatchNorm) per task and layer.

        Per-task tensors are unbound into one view per task, shared ones read as they are: the graph holds the
        same numbers as the grouped layout's, built from the operations a per-task loop would call. With
        :attr:`channels_last`, each block runs as :func:`per_task_block` describes.
        """
        tasks = x.shape[0]
        hs = list(x.unbind(0))
        for i, block in enumerate(self.conv_blocks):
            prefix = f"blocks.{i}."
            tau = taus[i] if taus is not None else None
            weight, bias = modulated(params[f"{prefix}weight"], params[f"{prefix}bias"], tau)
            if self.channels_last and isinstance(weight, torch.Tensor) and weight.dim() == 4:
                weight = self._laid_out_kernel(i, weight)  # once for every task, not per task
            weights, biases = _each_task(weight, 4, tasks), _each_task(bias, 1, tasks)
            norm = _PerTaskNorm(block, params, prefix, tasks, route=route, training=training)
            scales = _each_task(tau.scale, 1, tasks) if tau is not None and tau.scale is not None else None
            shifts = _each_task(tau.shift, 1, tasks) if tau is not None and tau.shift is not None else None
            for t in range(tasks):
                hs[t] = per_task_block(
                    hs[t],
                    weights[t],
                    biases[t],
                    functools.partial(norm, t, track=track),
                    scale=scales[t] if scales is not None else None,
                    shift=shifts[t] if shifts is not None else None,
                    stride=self.stride,
                    maxpool=self.maxpool,
                    channels_last=self.channels_last,
                )
            norm.finish()
        if self.global_pool:
            return torch.stack([global_average(h) for h in hs])
        return torch.stack([h.flatten(1) for h in hs])

    def laid_out(self, params: Params) -> Params:
        """``params`` with every conv kernel in the memory format the per-task path runs it in
        (:func:`kernel_layout`), so that MAML's fast weights, and their gradients, are born in it instead of
        being converted at every step."""
        if not self.channels_last:
            return params
        laid = dict(params)
        for i in range(len(self.blocks)):
            key = f"blocks.{i}.weight"
            if key in laid and not isinstance(laid[key], list) and laid[key].dim() == 4:
                laid[key] = self._laid_out_kernel(i, laid[key])
        return laid

    def _laid_out_kernel(self, block: int, weight: torch.Tensor) -> torch.Tensor:
        if is_functorch_wrapped(weight):
            return weight
        return weight.contiguous(memory_format=kernel_layout(self.conv_positions[block]))


def per_task_block(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    stride: int,
    maxpool: bool,
    channels_last: bool,
) -> torch.Tensor:
    """One task's conv -> BN -> channel affine -> ReLU (-> 2x2 max-pool), images ``[B, C, H, W]``.

    With ``channels_last`` the images and the kernel are channels-last, for which oneDNN's convolutions and
    their first and second derivatives run 10-25 % faster than in the plain layout; BatchNorm, the affine
    and ReLU then work on the feature map's rows ``[B*H*W, C]`` (a view of channels-last memory), whose
    per-channel sums are reductions over the leading axis: in the 4-D channels-last layout PyTorch's
    reductions (BatchNorm's backward and double backward, the FiLM scale's gradient) ran up to 4x slower
    than in the plain layout and ate the convolutions' gain. Two small cases go another way: a map of at most
    :data:`PLAIN_POSITIONS` output positions per image is convolved in the plain layout (:func:`kernel_layout`),
    and at most :data:`MATMUL_ROWS` output rows as one matrix product (:func:`_conv_rows`). The numbers are the
    same on every path (tests compare them to float64 rounding). Under a caller's torch.func transform
    (transference's look-aheads on per-task weights), which cannot change memory formats, the block runs in
    the plain layout.
    """
    channels_last = channels_last and not (is_functorch_wrapped(h) or is_functorch_wrapped(weight))
    size = weight.shape[-1]
    padding = size // 2
    batch, channels = h.shape[0], weight.shape[0]
    height, width = ((side + 2 * padding - size) // stride + 1 for side in h.shape[2:])
    if not channels_last:
        h = F.conv2d(h.contiguous(), weight.contiguous(), bias, stride=stride, padding=padding)
    else:
        layout = kernel_layout(height * width)
        h, weight = h.contiguous(memory_format=torch.channels_last), weight.contiguous(memory_format=layout)
        if batch * height * width <= MATMUL_ROWS:
            h = _conv_rows(h, weight, bias, stride=stride, padding=padding)
        else:
            h = F.conv2d(h.contiguous(memory_format=layout), weight, bias, stride=stride, padding=padding)
        # The rows [B*H*W, C]: a view of channels-last memory (a copy of a plain-layout output).
        h = h.permute(0, 2, 3, 1).reshape(-1, channels) if h.dim() == 4 else h
    h = norm(h)
    shape = (1, channels, *[1] * (h.dim() - 2))
    if scale is not None and shift is not None:
        h = torch.addcmul(shift.view(shape), h, scale.view(shape))
    elif scale is not None:
        h = h * scale.view(shape)
    elif shift is not None:
        h = h + shift.view(shape)
    h = F.relu(h)
    if channels_last:
        h = h.view(batch, height, width, channels).permute(0, 3, 1, 2)
    return F.max_pool2d(h, 2) if maxpool else h


#: On the channels-last per-task path, a convolution with at most this many output rows (images x output
#: positions: MAML's 5 support images at the last block's 2x2 at 28 px) runs as one matrix product of the image
#: patches with the kernel (:func:`_conv_rows`): there oneDNN spends its time reordering the large kernel for a
#: few rows of work. Measured on 2 cores (1 thread, ms per meta-iteration, `mmlo bench` cases): maml-28
#: 438 -> 394, mmaml-28 519 -> 457, maml-84 unchanged; the threshold at 80 rows (the 4x4 block too) gained
#: less (423, 511), at 320 (ProtoNet's 80 images at 2x2) it lost (485, 573; ProtoNet 127 -> 148).
MATMUL_ROWS = 32
#: A convolution with at most this many output positions per image (the last block at 28 px) keeps its kernel,
#: and its images, in the plain layout: there oneDNN's channels-last kernels measured 12-20 % slower
#: (80 images 4x4 -> 2x2, forward and backward: 5.2 against 4.5 ms at 1 thread, 2.7 against 2.3 at 2).
PLAIN_POSITIONS = 4


def kernel_layout(positions: int) -> torch.memory_format:
    """The memory format of a kernel (and its images) on the channels-last per-task path, by the number of output
    positions per image of its convolution."""
    return torch.contiguous_format if positions <= PLAIN_POSITIONS else torch.channels_last


def _conv_rows(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, stride: int, padding: int) -> torch.Tensor:
    """A 'same' conv of channels-last images ``[B, C, H, W]`` as the output's rows ``[B*H'*W', C']``: each row is
    the product of one image patch with the kernel, read as the matrix ``[C', kh*kw*C]`` without a copy (the
    patch's entries in the kernel's own memory order: (C, kh, kw) plain, (kh, kw, C) channels-last)."""
    size = weight.shape[-1]
    x = F.pad(h.permute(0, 2, 3, 1), (0, 0, padding, padding, padding, padding))  # [B, H+2p, W+2p, C]
    patches = x.unfold(1, size, stride).unfold(2, size, stride)  # [B, H', W', C, kh, kw]
    if weight.is_contiguous():
        kernel = weight.reshape(weight.shape[0], -1)
    else:  # channels-last
        kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
        patches = patches.permute(0, 1, 2, 4, 5, 3)
    return torch.addmm(bias, patches.reshape(-1, kernel.shape[1]), kernel.t())


def global_average(h: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C]``, the mean over positions; a channels-last map is averaged over its rows."""
    if is_functorch_wrapped(h) or h.is_contiguous() or not h.is_contiguous(memory_format=torch.channels_last):
        return h.mean(dim=(2, 3))
    return h.permute(0, 2, 3, 1).reshape(h.shape[0], -1, h.shape[1]).mean(1)


def _each_task(param: torch.Tensor | list[torch.Tensor], dims: int, tasks: int) -> Sequence[torch.Tensor]:
    """``param`` for each task: a per-task list as it is (see :meth:`ConvNet.run`), views of a per-task tensor
    (``dims + 1`` dimensions), else the shared one."""
    if isinstance(param, list):
        return param
    return param.unbind(0) if param.dim() == dims + 1 else [param] * tasks


class _PerTaskNorm:
    """One block's BatchNorm, task by task, as :func:`_task_batch_norm` does it for all tasks at once."""

    def __init__(
        self,
        block: ConvBlock,
        params: Params,
        prefix: str,
        tasks: int,
        *,
        route: torch.Tensor | None,
        training: bool,
    ) -> None:
        self.block, self.route, self.training = block, route, training
        self.weights: Sequence[torch.Tensor | None] = [None] * tasks
        self.biases: Sequence[torch.Tensor | None] = [None] * tasks
        if block.norm != "none" and block.affine:
            self.weights = _each_task(params[f"{prefix}bn_weight"], 1, tasks)
            self.biases = _each_task(params[f"{prefix}bn_bias"], 1, tasks)
        self.running: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None
        if block.norm == "running" and not training:
            mean, var = block.running_mean, block.running_var
            if route is not None:
                mean, var = mean[route], var[route]
            self.running = _each_task(mean, 1, tasks), _each_task(var, 1, tasks)
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []

    def __call__(self, t: int, h: torch.Tensor, *, track: bool) -> torch.Tensor:
        if self.block.norm == "none":
            return h
        if self.running is not None:
            mean, var = self.running[0][t], self.running[1][t]
            return F.batch_norm(h, mean, var, self.weights[t], self.biases[t], training=False, eps=BN_EPS)
        if self.block.norm == "running" and track:
            dims = [0, *range(2, h.dim())]  # all but the channels: images and positions, or rows
            with torch.no_grad():
                self.means.append(h.mean(dim=dims))
                self.variances.append(h.var(dim=dims, unbiased=True))
        return F.batch_norm(h, None, None, self.weights[t], self.biases[t], training=True, eps=BN_EPS)

    def finish(self) -> None:
        """Move the running statistics once, from every task's batch statistics (a training pass that tracks)."""
        if self.means:
            with torch.no_grad():
                _move_running(
                    self.block.running_mean,
                    self.block.running_var,
                    torch.stack(self.means),
                    torch.stack(self.variances),
                    self.route,
                )


def conv_strategy(device: torch.device) -> str:
    """How a conv backbone runs a meta-batch on ``device`` ('auto'): 'per-task' on CPU, 'grouped' elsewhere.

    On CPU the work is compute-bound and oneDNN runs one ordinary convolution per task faster than one grouped
    convolution over all tasks (whose backward measured about 1.5x slower on 2 cores); on an accelerator the
    grouped layout batches the whole meta-batch into one kernel launch per layer.
    """
    return "per-task" if device.type == "cpu" else "grouped"
