"""Task-aware modulation (method.md §2-§3): a generator g(υ) turns a task embedding υ into per-layer τ.

One small interface, :class:`Modulation`, with one implementation per modulation type. A generator only
*produces* τ as a :class:`LayerModulation` per layer; the backbone applies it at a fixed place
(conv -> BN -> modulation -> ReLU for images, linear -> modulation -> ReLU for regression), so every
modulation acts through the same four hooks:

- ``kernel`` and ``bias`` change the layer's parameters: ``W' = W ⊙ kernel``, ``b' = b + bias`` (KML);
- ``scale`` and ``shift`` change its normalised activations per channel: ``h' = h * scale + shift``
  (FiLM: ``scale = 1 + γ``, ``shift = β``; sigmoid: ``scale = σ(τ)``; softmax: ``scale = softmax(τ)``).

Each generator head is one linear map on υ, as in the MMAML and KML code. τ is computed once per task and
held fixed during MAML's inner loop: only the backbone θ is adapted; the encoder and the generator learn
through the query loss (meta-gradient).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmlo.models.base import Params

#: How KML's generator heads start (``LearnerConfig.kml_init``).
KML_INITS = ("identity", "authors")


@dataclass(frozen=True)
class LayerShape:
    """One modulatable layer of a backbone: its weight shape and KML's rank-1 factorisation of it.

    ``weight`` is ``(C_out, C_in, k, k)`` for a conv layer or ``(out, in)`` for a linear layer; the layer
    has ``weight[0]`` output channels (and bias entries). ``factors`` is KML's ``(v, u)`` with
    ``v * u`` equal to the kernel's element count: the ``v x u`` matrix ``g1(υ) ⊗ g2(υ)`` is reshaped
    row-major to ``weight``.
    """

    weight: tuple[int, ...]
    factors: tuple[int, int]

    def __post_init__(self) -> None:
        if self.factors[0] * self.factors[1] != self.kernel_elements:
            raise ValueError(f"KML factors {self.factors} do not multiply to the {self.weight} kernel")

    @property
    def channels(self) -> int:
        """Output channels (conv) or units (linear): the size of the bias, γ and β."""
        return self.weight[0]

    @property
    def kernel_elements(self) -> int:
        return math.prod(self.weight)


def conv_factors(c_out: int, c_in: int, kernel: int, *, first: bool) -> tuple[int, int]:
    """KML's ``(v, u)`` for a conv kernel, following the authors' sizes (method.md §3).

    The input layer uses ``(C_out, C_in·k·k)`` (32 x 27 for RGB input), every later layer
    ``(C_out·k, C_in·k)`` (192 x 96, 384 x 192, 768 x 384 for 32-64-128-256 channels).
    """
    return (c_out, c_in * kernel * kernel) if first else (c_out * kernel, c_in * kernel)


@dataclass(frozen=True)
class LayerModulation:
    """τ of one layer for T tasks; a field left None leaves that part of the layer unchanged.

    ``kernel`` is ``[T, *weight]`` (the weight becomes ``W ⊙ kernel``), ``bias`` is ``[T, C]`` (added to
    the layer's bias), ``scale`` and ``shift`` are ``[T, C]`` (applied per channel after normalisation).
    """

    kernel: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None


class Modulation(nn.Module, ABC):
    """A generator g(υ) -> τ for the chosen layers of a backbone.

    Parameters are the generator heads; ``generate`` is functional in them, like the learners.
    """

    name: str

    def __init__(self, shapes: Sequence[LayerShape], layers: Sequence[int], embedding_dim: int) -> None:
        super().__init__()
        bad = [i for i in layers if not 0 <= i < len(shapes)]
        if bad or len(set(layers)) != len(layers):
            raise ValueError(f"modulated layers {list(layers)} must be distinct indices in 0..{len(shapes) - 1}")
        self.shapes = tuple(shapes)
        self.layers = tuple(sorted(layers))
        self.embedding_dim = embedding_dim

    @abstractmethod
    def generate(self, params: Params, embedding: torch.Tensor) -> list[LayerModulation | None]:
        """τ for every layer of the backbone (None for layers that are not modulated).

        ``params`` holds this module's parameters under their ``named_parameters()`` names;
        ``embedding`` is υ, ``[T, embedding_dim]``.
        """

    @property
    @abstractmethod
    def outputs(self) -> int:
        """How many numbers the generator produces per task (the size of τ)."""

    def forward(self, embedding: torch.Tensor) -> list[LayerModulation | None]:
        return self.generate(dict(self.named_parameters()), embedding)


def _head(params: Params, name: str, embedding: torch.Tensor) -> torch.Tensor:
    return F.linear(embedding, params[f"{name}.weight"], params[f"{name}.bias"])


class _ChannelModulation(Modulation):
    """Modulations that act on activations per channel, with ``per_channel`` generator outputs each."""

    per_channel: int

    def __init__(self, shapes: Sequence[LayerShape], layers: Sequence[int], embedding_dim: int) -> None:
        super().__init__(shapes, layers, embedding_dim)
        self.heads = nn.ModuleDict(
            {str(i): nn.Linear(embedding_dim, self.per_channel * shapes[i].channels) for i in self.layers}
        )

    @property
    def outputs(self) -> int:
        return sum(self.per_channel * self.shapes[i].channels for i in self.layers)

    def generate(self, params: Params, embedding: torch.Tensor) -> list[LayerModulation | None]:
        taus: list[LayerModulation | None] = [None] * len(self.shapes)
        for i in self.layers:
            taus[i] = self._layer(_head(params, f"heads.{i}", embedding))
        return taus

    @abstractmethod
    def _layer(self, tau: torch.Tensor) -> LayerModulation: ...


class FiLM(_ChannelModulation):
    """MMAML's default: ``x * (1 + γ) + β`` per channel, with (γ, β) = Linear(υ) of size 2·C per layer."""

    name = "film"
    per_channel = 2

    def _layer(self, tau: torch.Tensor) -> LayerModulation:
        gamma, beta = tau.chunk(2, dim=-1)
        return LayerModulation(scale=1.0 + gamma, shift=beta)


class SigmoidModulation(_ChannelModulation):
    """MMAML's sigmoid gating: ``x * σ(τ)`` per channel."""

    name = "sigmoid"
    per_channel = 1

    def _layer(self, tau: torch.Tensor) -> LayerModulation:
        return LayerModulation(scale=torch.sigmoid(tau))


class SoftmaxModulation(_ChannelModulation):
    """MMAML's softmax attention: ``x * softmax(τ)`` with the softmax taken over the channels."""

    name = "softmax"
    per_channel = 1

    def _layer(self, tau: torch.Tensor) -> LayerModulation:
        return LayerModulation(scale=torch.softmax(tau, dim=-1))


class KernelModulation(Modulation):
    """KML (Abdollahzadeh et al. 2021): every element of every modulated kernel gets its own factor.

    ``M = reshape(Σ_k g1_k(υ) ⊗ g2_k(υ))`` (rank ``r`` = number of outer products, row-major reshape to
    the kernel), ``Δb = g3(υ)``; ``multiplicative``: ``W' = W ⊙ M`` (the authors' code), ``residual``:
    ``W' = W ⊙ (J + M)`` (the paper's equation); ``b' = b + Δb``. g1, g2, g3 are single linear heads.

    Initialisation (``init``): the heads' weights always use PyTorch's default, U(±1/√fan_in), which also
    makes the r components differ. With ``identity`` (mmlo's default) their biases start every task at the
    unmodulated network in expectation: ``M = 1`` (multiplicative) or ``M = 0`` (residual) and ``Δb = 0``.
    With ``authors`` (the KML authors' code, whose heads are plain linear layers) the biases keep PyTorch's
    default too, so g1 and g2 start as small random vectors: the multiplicative ``M = g1 ⊗ g2`` is a small
    random mask around 0 (every kernel element scaled by a small random factor of either sign, which the
    following BatchNorm rescales), the residual ``J + M`` a small random perturbation of 1, ``Δb`` small.
    """

    name = "kml"

    def __init__(
        self,
        shapes: Sequence[LayerShape],
        layers: Sequence[int],
        embedding_dim: int,
        *,
        variant: str = "multiplicative",
        rank: int = 1,
        init: str = "identity",
    ) -> None:
        super().__init__(shapes, layers, embedding_dim)
        if variant not in ("multiplicative", "residual"):
            raise ValueError(f"unknown KML variant '{variant}'")
        if rank < 1:
            raise ValueError("KML rank must be >= 1")
        if init not in KML_INITS:
            raise ValueError(f"unknown KML initialisation '{init}'; choose one of {', '.join(KML_INITS)}")
        self.variant = variant
        self.rank = rank
        self.init = init
        self.g1 = nn.ModuleDict()
        self.g2 = nn.ModuleDict()
        self.g3 = nn.ModuleDict()
        for i in self.layers:
            v, u = shapes[i].factors
            g1, g2 = nn.Linear(embedding_dim, rank * v), nn.Linear(embedding_dim, rank * u)
            g3 = nn.Linear(embedding_dim, shapes[i].channels)
            if init == "identity":
                self._start_at_identity(g1, g2, g3)
            self.g1[str(i)], self.g2[str(i)], self.g3[str(i)] = g1, g2, g3

    def _start_at_identity(self, g1: nn.Linear, g2: nn.Linear, g3: nn.Linear) -> None:
        """Biases that make ``M = Σ_k (r^-½)(r^-½) = 1`` (multiplicative) or ``M = 0`` (residual), ``Δb = 0``."""
        factor_bias = self.rank**-0.5
        with torch.no_grad():
            g1.bias.fill_(factor_bias if self.variant == "multiplicative" else 0.0)
            g2.bias.fill_(factor_bias)
            g3.bias.zero_()

    @property
    def outputs(self) -> int:
        return sum(self.rank * sum(self.shapes[i].factors) + self.shapes[i].channels for i in self.layers)

    def generate(self, params: Params, embedding: torch.Tensor) -> list[LayerModulation | None]:
        tasks = embedding.shape[0]
        taus: list[LayerModulation | None] = [None] * len(self.shapes)
        for i in self.layers:
            shape = self.shapes[i]
            v, u = shape.factors
            left = _head(params, f"g1.{i}", embedding).view(tasks, self.rank, v)
            right = _head(params, f"g2.{i}", embedding).view(tasks, self.rank, u)
            mask = torch.bmm(left.transpose(1, 2), right).view(tasks, *shape.weight)
            kernel = mask if self.variant == "multiplicative" else 1.0 + mask
            taus[i] = LayerModulation(kernel=kernel, bias=_head(params, f"g3.{i}", embedding))
        return taus


def full_kernel_outputs(shapes: Sequence[LayerShape], layers: Sequence[int]) -> int:
    """Generator outputs needed to produce every kernel element and bias of ``layers`` directly.

    The comparison point of KML's factorisation: 388,416 for the authors' 32-64-128-256 conv net,
    versus 2,555 factorised outputs.
    """
    return sum(shapes[i].kernel_elements + shapes[i].channels for i in layers)


def build_modulation(
    name: str,
    shapes: Sequence[LayerShape],
    layers: Sequence[int] | None,
    embedding_dim: int,
    *,
    variant: str = "multiplicative",
    rank: int = 1,
    kml_init: str = "identity",
) -> Modulation | None:
    """The generator for modulation ``name`` (None for ``none``); ``layers`` None means every layer."""
    chosen = tuple(range(len(shapes))) if layers is None else tuple(layers)
    if name == "none":
        return None
    if name == "kml":
        return KernelModulation(shapes, chosen, embedding_dim, variant=variant, rank=rank, init=kml_init)
    kinds: dict[str, type[_ChannelModulation]] = {
        "film": FiLM,
        "sigmoid": SigmoidModulation,
        "softmax": SoftmaxModulation,
    }
    if name not in kinds:
        raise ValueError(f"unknown modulation '{name}'")
    return kinds[name](shapes, chosen, embedding_dim)
