"""Task encoders h(S) -> υ: one embedding per task, computed from its support set (method.md §3).

Images: MMAML's and KML's conv encoder, 4 x [conv3x3 stride 2 -> BN -> ReLU], global average pool,
Linear(C, embedding_dim) + ReLU per image, then the mean over the support images. Regression: a set
encoder over the (x, y) support pairs, either an MLP with mean pooling (order-invariant) or MMAML's
bidirectional LSTM (the two directions' final states). Encoders are functional in their parameters and
batched over tasks like the backbones.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mmlo.models._torch_private import is_functorch_wrapped
from mmlo.models.base import Params
from mmlo.models.networks import (
    ConvBlock,
    LinearLayer,
    _PerTaskNorm,
    conv_block,
    conv_strategy,
    global_average,
    grouped,
    kernel_layout,
    per_task_block,
    task_linear,
)


class TaskEncoder(nn.Module, ABC):
    """h(S): support set of T tasks -> υ ``[T, embedding_dim]``."""

    embedding_dim: int

    @abstractmethod
    def embed(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        *,
        training: bool = True,
        track: bool = False,
    ) -> torch.Tensor:
        """υ for each task; ``params`` keyed as this module's ``named_parameters()``."""


class ConvEncoder(TaskEncoder):
    """The image task encoder; it sees the support images only (not their labels)."""

    #: 'auto' (:func:`conv_strategy` of the input's device), 'per-task' or 'grouped'; tests compare them.
    strategy: str = "auto"
    #: Whether the per-task path runs channels-last, as :attr:`ConvNet.channels_last`.
    channels_last: bool = True

    def __init__(
        self, in_channels: int, channels: Sequence[int], embedding_dim: int, *, norm: str = "transductive"
    ) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.blocks = nn.ModuleList(ConvBlock(a, b, norm, None) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.project = LinearLayer(channels[-1], embedding_dim, None)
        self.embedding_dim = embedding_dim

    def embed(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        *,
        training: bool = True,
        track: bool = False,
    ) -> torch.Tensor:
        strategy = conv_strategy(support_x.device) if self.strategy == "auto" else self.strategy
        if strategy == "per-task" and not is_functorch_wrapped(support_x):
            return self._embed_per_task(params, support_x, training=training, track=track)
        tasks, batch = support_x.shape[:2]
        h = grouped(support_x)
        for i, block in enumerate(cast("Sequence[ConvBlock]", self.blocks)):
            h = conv_block(
                block,
                params,
                f"blocks.{i}.",
                h,
                tasks,
                None,
                stride=2,
                pool=False,
                route=None,
                training=training,
                track=track,
            )
        pooled = h.mean(dim=(2, 3)).reshape(batch, tasks, -1).transpose(0, 1)
        per_image = F.relu(task_linear(pooled, params["project.weight"], params["project.bias"]))
        return per_image.mean(dim=1)

    def _embed_per_task(self, params: Params, support_x: torch.Tensor, *, training: bool, track: bool) -> torch.Tensor:
        """``embed`` task by task (CPU, as :meth:`ConvNet.run` there): one ordinary convolution and BatchNorm per
        task and layer with the shared weights, the same numbers as the grouped layout."""
        tasks = support_x.shape[0]
        hs = list(support_x.unbind(0))
        for i, block in enumerate(cast("Sequence[ConvBlock]", self.blocks)):
            prefix = f"blocks.{i}."
            norm = _PerTaskNorm(block, params, prefix, tasks, route=None, training=training)
            weight, bias = params[f"{prefix}weight"], params[f"{prefix}bias"]
            if self.channels_last and not is_functorch_wrapped(weight):  # once, not per task
                positions = ((hs[0].shape[2] + 1) // 2) * ((hs[0].shape[3] + 1) // 2)  # stride-2 'same' conv
                weight = weight.contiguous(memory_format=kernel_layout(positions))
            for t in range(tasks):
                hs[t] = per_task_block(
                    hs[t],
                    weight,
                    bias,
                    functools.partial(norm, t, track=track),
                    scale=None,
                    shift=None,
                    stride=2,
                    maxpool=False,
                    channels_last=self.channels_last,
                )
            norm.finish()
        pooled = torch.stack([global_average(h) for h in hs])
        per_image = F.relu(F.linear(pooled, params["project.weight"], params["project.bias"]))
        return per_image.mean(dim=1)


class SetEncoder(TaskEncoder):
    """Regression: υ = tanh(Linear(mean over support pairs of MLP([x, y]))), MLP = ``layers`` ReLU layers.

    Mean pooling makes υ independent of the order of the support pairs. The final tanh bounds υ as the
    BiLSTM's hidden states are bounded: an unbounded υ (targets reach ±18 on the linear family) lets
    FiLM's scales grow until MAML's inner steps diverge within a few dozen meta-iterations. The MLP's
    width is ``hidden`` (default ``embedding_dim``).
    """

    def __init__(self, in_features: int, embedding_dim: int, *, layers: int = 2, hidden: int | None = None) -> None:
        super().__init__()
        width = hidden or embedding_dim
        widths = [in_features, *[width] * layers]
        self.layers = nn.ModuleList(LinearLayer(a, b, None) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.pooled = LinearLayer(width, embedding_dim, None)
        self.embedding_dim = embedding_dim

    def embed(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        *,
        training: bool = True,
        track: bool = False,
    ) -> torch.Tensor:
        h = torch.cat([support_x, support_y], dim=-1)
        for i in range(len(self.layers)):
            h = F.relu(task_linear(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]))
        return torch.tanh(F.linear(h.mean(dim=1), params["pooled.weight"], params["pooled.bias"]))


class LSTMEncoder(TaskEncoder):
    """Regression, MMAML's encoder: a bidirectional LSTM over the support pairs in their given order.

    ``layers`` stacked BiLSTM layers (each layer above the first reads both directions' hidden states at
    every step, as ``nn.LSTM`` does); υ is the concatenation of the top layer's forward and backward final
    hidden states, embedding_dim/2 wide each. The parameters are ``nn.LSTM``'s (same names, initialisation
    and gate order i, f, g, o), but the recurrence is written out step by step over the support points:
    ``nn.LSTM`` has no vmap rule, and transference runs every learner under ``vmap``.
    """

    def __init__(self, in_features: int, embedding_dim: int, *, layers: int = 1) -> None:
        super().__init__()
        if embedding_dim % 2:
            raise ValueError(f"the BiLSTM encoder needs an even embedding_dim, not {embedding_dim}")
        self.lstm = nn.LSTM(in_features, embedding_dim // 2, num_layers=layers, batch_first=True, bidirectional=True)
        self.num_layers = layers
        self.embedding_dim = embedding_dim

    def embed(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        *,
        training: bool = True,
        track: bool = False,
    ) -> torch.Tensor:
        h = torch.cat([support_x, support_y], dim=-1)
        for layer in range(self.num_layers):
            forward = _lstm_direction(params, f"l{layer}", h, reverse=False)
            backward = _lstm_direction(params, f"l{layer}_reverse", h, reverse=True)
            h = torch.cat([forward, backward], dim=-1)
        # The forward direction ends at the last point, the backward one at the first.
        half = self.embedding_dim // 2
        return torch.cat([h[:, -1, :half], h[:, 0, half:]], dim=-1)


def _lstm_direction(params: Params, suffix: str, x: torch.Tensor, *, reverse: bool) -> torch.Tensor:
    """Hidden states ``[T, K, H]`` (in input order) of one direction of one LSTM layer over ``x`` ``[T, K, in]``,
    from a zero initial state."""
    w_hh = params[f"lstm.weight_hh_{suffix}"]
    inputs = F.linear(x, params[f"lstm.weight_ih_{suffix}"], params[f"lstm.bias_ih_{suffix}"])
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    c = torch.zeros_like(h)
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    states: list[torch.Tensor] = []
    for k in steps:
        gates = torch.addmm(inputs[:, k], h, w_hh.t()) + params[f"lstm.bias_hh_{suffix}"]
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        states.append(h)
    if reverse:
        states.reverse()
    return torch.stack(states, dim=1)


def build_encoder(
    kind: str,
    encoder: str | None,
    input_shape: Sequence[int],
    output_dim: int,
    embedding_dim: int,
    *,
    channels: Sequence[int],
    norm: str,
    layers: int | None = None,
    hidden: int | None = None,
) -> TaskEncoder:
    """The task encoder for a benchmark ``kind``; ``encoder`` None picks conv (images) or mlp (regression).

    The conv encoder uses the backbone's channel widths (32-64-128-256 by default, as in the papers).
    ``layers`` and ``hidden`` (regression encoders only) set the depth and width: the BiLSTM's layer count
    and hidden units per direction (2 x hidden must be embedding_dim), or the mlp's ReLU layers and width.
    """
    if kind == "classification":
        if encoder not in (None, "conv"):
            raise ValueError(f"image benchmarks need the conv task encoder, not '{encoder}'")
        if layers is not None or hidden is not None:
            raise ValueError(
                "encoder_layers and encoder_hidden apply to regression encoders; the conv encoder follows 'channels'"
            )
        return ConvEncoder(input_shape[0], channels, embedding_dim, norm=norm)
    pair_features = input_shape[0] + output_dim
    if encoder in (None, "mlp"):
        return SetEncoder(pair_features, embedding_dim, layers=layers or 2, hidden=hidden)
    if encoder == "lstm":
        if hidden is not None and 2 * hidden != embedding_dim:
            raise ValueError(f"the BiLSTM's υ is 2 x encoder_hidden wide: set embedding_dim {2 * hidden}")
        return LSTMEncoder(pair_features, embedding_dim, layers=layers or 1)
    raise ValueError(f"regression benchmarks need the mlp or lstm task encoder, not '{encoder}'")
