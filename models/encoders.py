"""Task encoders h(S) -> υ: one embedding per task, computed from its support set (method.md §3).

Images: MMAML's and KML's conv encoder, 4 x [conv3x3 stride 2 -> BN -> ReLU], global average pool,
Linear(C, embedding_dim) + ReLU per image, then the mean over the support images. Regression: a set
encoder over the (x, y) support pairs, either an MLP with mean pooling (order-invariant) or MMAML's
bidirectional LSTM (the two directions' final states). Encoders are functional in their parameters and
batched over tasks like the backbones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmlo.models.base import Params
from mmlo.models.networks import ConvBlock, LinearLayer, conv_block, grouped, task_linear


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
        tasks, batch = support_x.shape[:2]
        h = grouped(support_x)
        for i, block in enumerate(self.blocks):
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


class SetEncoder(TaskEncoder):
    """Regression: υ = tanh(Linear(mean over support pairs of MLP([x, y]))), MLP = two ReLU layers.

    Mean pooling makes υ independent of the order of the support pairs. The final tanh bounds υ as the
    BiLSTM's hidden states are bounded: an unbounded υ (targets reach ±18 on the linear family) lets
    FiLM's scales grow until MAML's inner steps diverge within a few dozen meta-iterations.
    """

    def __init__(self, in_features: int, embedding_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [LinearLayer(in_features, embedding_dim, None), LinearLayer(embedding_dim, embedding_dim, None)]
        )
        self.pooled = LinearLayer(embedding_dim, embedding_dim, None)
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

    υ is the concatenation of the forward and backward final hidden states, embedding_dim/2 wide each.
    The parameters are ``nn.LSTM``'s (same names, initialisation and gate order i, f, g, o), but the
    recurrence is written out step by step over the support points: ``nn.LSTM`` has no vmap rule, and
    transference runs every learner under ``vmap``.
    """

    def __init__(self, in_features: int, embedding_dim: int) -> None:
        super().__init__()
        if embedding_dim % 2:
            raise ValueError(f"the BiLSTM encoder needs an even embedding_dim, not {embedding_dim}")
        self.lstm = nn.LSTM(in_features, embedding_dim // 2, batch_first=True, bidirectional=True)
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
        pairs = torch.cat([support_x, support_y], dim=-1)
        forward = _lstm_final_state(params, "", pairs, reverse=False)
        backward = _lstm_final_state(params, "_reverse", pairs, reverse=True)
        return torch.cat([forward, backward], dim=-1)


def _lstm_final_state(params: Params, suffix: str, x: torch.Tensor, *, reverse: bool) -> torch.Tensor:
    """Final hidden state of one direction of a one-layer LSTM over ``x`` ``[T, K, in]`` (zero initial state)."""
    w_hh = params[f"lstm.weight_hh_l0{suffix}"]
    inputs = F.linear(x, params[f"lstm.weight_ih_l0{suffix}"], params[f"lstm.bias_ih_l0{suffix}"])
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    c = torch.zeros_like(h)
    steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    for k in steps:
        gates = torch.addmm(inputs[:, k], h, w_hh.t()) + params[f"lstm.bias_hh_l0{suffix}"]
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return h


def build_encoder(
    kind: str,
    encoder: str | None,
    input_shape: Sequence[int],
    output_dim: int,
    embedding_dim: int,
    *,
    channels: Sequence[int],
    norm: str,
) -> TaskEncoder:
    """The task encoder for a benchmark ``kind``; ``encoder`` None picks conv (images) or mlp (regression).

    The conv encoder uses the backbone's channel widths (32-64-128-256 by default, as in the papers).
    """
    if kind == "classification":
        if encoder not in (None, "conv"):
            raise ValueError(f"image benchmarks need the conv task encoder, not '{encoder}'")
        return ConvEncoder(input_shape[0], channels, embedding_dim, norm=norm)
    pair_features = input_shape[0] + output_dim
    if encoder in (None, "mlp"):
        return SetEncoder(pair_features, embedding_dim)
    if encoder == "lstm":
        return LSTMEncoder(pair_features, embedding_dim)
    raise ValueError(f"regression benchmarks need the mlp or lstm task encoder, not '{encoder}'")
