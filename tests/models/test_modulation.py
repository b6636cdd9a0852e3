"""Modulations: FiLM is kernel scaling, KML's variants and rank, the generators' sizes for the authors' net.

The identity behind KML (method.md §3): for output channel c,
``(1 + γ_c)(W_c * x + b_c) + β_c = ((1 + γ_c) W_c) * x + ((1 + γ_c) b_c + β_c)``, so FiLM on a conv layer
equals a KML kernel factor whose rows are ``(1 + γ_c) ⊗ 1`` plus a bias shift ``Δb_c = γ_c b_c + β_c``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmlo.models.base import Params
from mmlo.models.modulation import (
    FiLM,
    KernelModulation,
    LayerShape,
    SigmoidModulation,
    SoftmaxModulation,
    build_modulation,
    conv_factors,
    full_kernel_outputs,
)
from mmlo.models.networks import ConvNet

AUTHORS_CHANNELS = [32, 64, 128, 256]


def _constant(head: nn.Module, value: torch.Tensor | float) -> None:
    """Make a generator head (a linear layer) ignore υ and always output ``value``."""
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.as_tensor(value, dtype=head.bias.dtype).expand_as(head.bias))


def _head(kml: KernelModulation, name: str) -> nn.Linear:
    head = kml.get_submodule(name)
    assert isinstance(head, nn.Linear)
    return head


def _tiny_net() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet((3, 8, 8), [4, 6], norm="none").double()


def test_authors_kml_factor_sizes() -> None:
    # The (v, u) heads of the 32-64-128-256 net are the authors' (32,27), (192,96), (384,192), (768,384).
    shapes = ConvNet((3, 84, 84), AUTHORS_CHANNELS).layer_shapes
    assert [s.factors for s in shapes] == [(32, 27), (192, 96), (384, 192), (768, 384)]
    assert conv_factors(64, 32, 3, first=False) == (192, 96)


def test_generator_outputs_and_parameters_for_the_authors_net() -> None:
    # KML: 2,555 outputs vs 388,416 for every kernel element and bias (152x); 329,595 vs FiLM's 123,840 parameters.
    shapes = ConvNet((3, 84, 84), AUTHORS_CHANNELS).layer_shapes
    layers = range(4)
    kml = KernelModulation(shapes, layers, 128)
    film = FiLM(shapes, layers, 128)
    assert kml.outputs == 91 + 352 + 704 + 1408 == 2555
    assert full_kernel_outputs(shapes, layers) == 864 + 32 + 18432 + 64 + 73728 + 128 + 294912 + 256 == 388416
    assert full_kernel_outputs(shapes, layers) // kml.outputs == 152
    assert sum(p.numel() for p in kml.parameters()) == 129 * 2555 == 329595
    assert film.outputs == 2 * (32 + 64 + 128 + 256) == 960
    assert sum(p.numel() for p in film.parameters()) == 128 * 960 + 960 == 123840


def test_kml_parameters_scale_with_rank_and_layers() -> None:
    # Rank r multiplies the (v + u) heads only; unmodulated layers get no heads at all.
    shapes = ConvNet((3, 84, 84), AUTHORS_CHANNELS).layer_shapes
    rank2 = KernelModulation(shapes, [0, 2], 128, rank=2)
    assert rank2.outputs == 2 * (32 + 27) + 32 + 2 * (384 + 192) + 128
    assert sum(p.numel() for p in rank2.parameters()) == 129 * rank2.outputs


def test_film_is_kernel_scaling_on_a_conv_net() -> None:
    # FiLM's (γ, β) equal a KML kernel factor (1+γ) ⊗ 1 (row-major reshape) with Δb = γ·b + β, layer by layer.
    net = _tiny_net()
    params: Params = dict(net.named_parameters())
    shapes = net.layer_shapes
    embedding = torch.randn(2, 5, dtype=torch.float64)
    film = FiLM(shapes, [0, 1], 5).double()
    kml = KernelModulation(shapes, [0, 1], 5).double()
    torch.manual_seed(1)
    for i, shape in enumerate(shapes):
        gamma, beta = torch.randn(shape.channels, dtype=torch.float64), torch.randn(shape.channels, dtype=torch.float64)
        _constant(film.heads[str(i)], torch.cat([gamma, beta]))
        rows_per_channel = shape.factors[0] // shape.channels
        _constant(kml.g1[str(i)], (1 + gamma).repeat_interleave(rows_per_channel))
        _constant(kml.g2[str(i)], 1.0)
        _constant(kml.g3[str(i)], gamma * params[f"blocks.{i}.bias"].detach() + beta)
    x = torch.rand(2, 3, 3, 8, 8, dtype=torch.float64)
    by_film = net.run(params, x, film(embedding))
    by_kml = net.run(params, x, kml(embedding))
    torch.testing.assert_close(by_kml, by_film, atol=1e-12, rtol=1e-12)
    assert not torch.allclose(by_film, net.run(params, x))


def test_residual_kml_with_zero_mask_is_the_unmodulated_network() -> None:
    # W ⊙ (J + 0) = W and b + 0 = b: residual KML with M = 0, Δb = 0 leaves the network unchanged.
    net = _tiny_net()
    params: Params = dict(net.named_parameters())
    kml = KernelModulation(net.layer_shapes, [0, 1], 5, variant="residual", rank=2).double()
    for heads in (kml.g1, kml.g2, kml.g3):
        for head in heads.values():
            _constant(head, 0.0)
    x = torch.rand(3, 2, 3, 8, 8, dtype=torch.float64)
    taus = kml(torch.randn(3, 5, dtype=torch.float64))
    assert taus[0] is not None and torch.equal(taus[0].kernel, torch.ones(3, 4, 3, 3, 3, dtype=torch.float64))
    torch.testing.assert_close(net.run(params, x, taus), net.run(params, x), atol=0, rtol=0)


def test_multiplicative_kml_with_unit_mask_is_the_unmodulated_network() -> None:
    # W ⊙ 1 = W: the multiplicative variant's identity point is M = 1 (its initial bias), Δb = 0.
    net = _tiny_net()
    params: Params = dict(net.named_parameters())
    kml = KernelModulation(net.layer_shapes, [0, 1], 5).double()
    for i in ("0", "1"):
        _constant(kml.g1[i], 1.0)
        _constant(kml.g2[i], 1.0)
        _constant(kml.g3[i], 0.0)
    x = torch.rand(3, 2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(net.run(params, x, kml(torch.randn(3, 5, dtype=torch.float64))), net.run(params, x))


@pytest.mark.parametrize("variant", ["multiplicative", "residual"])
def test_rank_r_is_the_sum_of_r_outer_products(variant: str) -> None:
    # M = Σ_k g1_k ⊗ g2_k reshaped row-major to the kernel; the residual variant adds J.
    torch.manual_seed(2)
    shape = LayerShape((6, 4, 3, 3), conv_factors(6, 4, 3, first=False))
    kml = KernelModulation([shape], [0], 7, variant=variant, rank=3).double()
    embedding = torch.randn(2, 7, dtype=torch.float64)
    tau = kml(embedding)[0]
    assert tau is not None and tau.kernel is not None and tau.bias is not None
    g1 = kml.g1["0"](embedding).view(2, 3, 18)
    g2 = kml.g2["0"](embedding).view(2, 3, 12)
    for t in range(2):
        mask = torch.stack([torch.outer(g1[t, k], g2[t, k]) for k in range(3)]).sum(dim=0)
        expected = mask.reshape(6, 4, 3, 3) + (1.0 if variant == "residual" else 0.0)
        torch.testing.assert_close(tau.kernel[t], expected)
    torch.testing.assert_close(tau.bias, kml.g3["0"](embedding))


def test_kml_starts_at_the_identity_in_expectation() -> None:
    # With υ = 0 the heads output their biases: M = 1 (multiplicative) or 0 (residual), Δb = 0, for any rank.
    shape = LayerShape((5, 7), (5, 7))
    zero = torch.zeros(1, 4)
    for variant in ("multiplicative", "residual"):
        tau = KernelModulation([shape], [0], 4, variant=variant, rank=4)(zero)[0]
        assert tau is not None and tau.kernel is not None and tau.bias is not None
        torch.testing.assert_close(tau.kernel, torch.ones(1, 5, 7))
        torch.testing.assert_close(tau.bias, torch.zeros(1, 5))


def test_kml_authors_init_starts_at_small_random_modulations() -> None:
    # kml_init authors (KML-Classification's plain linear heads): with υ = 0 the heads output their default
    # biases, each in U(±1/√E), so M = g1 ⊗ g2 has entries of both signs and |M| <= 1/E, far from the identity;
    # the heads' weights are the same draws as with identity (only the biases differ).
    shape = LayerShape((16, 12), (16, 12))
    embedding_dim = 32
    zero = torch.zeros(1, embedding_dim)
    torch.manual_seed(3)
    authors = KernelModulation([shape], [0], embedding_dim, init="authors")
    torch.manual_seed(3)
    identity = KernelModulation([shape], [0], embedding_dim)
    tau = authors(zero)[0]
    assert tau is not None and tau.kernel is not None and tau.bias is not None
    assert tau.kernel.abs().max() <= 1 / embedding_dim and (tau.kernel > 0).any() and (tau.kernel < 0).any()
    assert tau.bias.abs().max() <= embedding_dim**-0.5 and tau.bias.abs().max() > 0
    for head in ("g1.0", "g2.0", "g3.0"):
        torch.testing.assert_close(_head(authors, head).weight, _head(identity, head).weight)
    assert not torch.equal(_head(authors, "g1.0").bias, _head(identity, "g1.0").bias)
    with pytest.raises(ValueError, match="unknown KML initialisation"):
        KernelModulation([shape], [0], embedding_dim, init="xavier")


def test_kml_init_reaches_the_learner() -> None:
    # LearnerConfig.kml_init picks the generator's initialisation through build_modulation
    shapes = ConvNet((3, 16, 16), [4, 4]).layer_shapes
    for init in ("identity", "authors"):
        modulation = build_modulation("kml", shapes, None, 8, kml_init=init)
        assert isinstance(modulation, KernelModulation) and modulation.init == init


def test_channel_modulations_follow_their_formulas() -> None:
    # FiLM scale 1+γ and shift β; sigmoid σ(τ); softmax over the channels (sums to 1 per task).
    shape = LayerShape((3, 2), (3, 2))
    embedding = torch.randn(4, 5)
    film = FiLM([shape], [0], 5)
    raw = film.heads["0"](embedding)
    tau = film(embedding)[0]
    assert tau is not None and tau.scale is not None and tau.shift is not None
    torch.testing.assert_close(tau.scale, 1 + raw[:, :3])
    torch.testing.assert_close(tau.shift, raw[:, 3:])
    sigmoid = SigmoidModulation([shape], [0], 5)
    tau = sigmoid(embedding)[0]
    assert tau is not None and tau.scale is not None and tau.shift is None
    torch.testing.assert_close(tau.scale, torch.sigmoid(sigmoid.heads["0"](embedding)))
    softmax = SoftmaxModulation([shape], [0], 5)
    tau = softmax(embedding)[0]
    assert tau is not None and tau.scale is not None
    torch.testing.assert_close(tau.scale.sum(-1), torch.ones(4))


def test_only_the_chosen_layers_are_modulated() -> None:
    # modulated_layers picks the layers; the others get τ = None.
    shapes = [LayerShape((3, 2), (3, 2)), LayerShape((4, 3), (4, 3))]
    for name in ("film", "sigmoid", "softmax", "kml"):
        modulation = build_modulation(name, shapes, [1], 5)
        assert modulation is not None
        taus = modulation(torch.randn(2, 5))
        assert taus[0] is None and taus[1] is not None
    assert build_modulation("none", shapes, None, 5) is None


def test_bad_layers_and_factors_are_refused() -> None:
    # Layer indices must exist and be distinct; KML factors must multiply to the kernel size.
    shapes = [LayerShape((3, 2), (3, 2))]
    with pytest.raises(ValueError, match="modulated layers"):
        FiLM(shapes, [1], 4)
    with pytest.raises(ValueError, match="modulated layers"):
        FiLM(shapes, [0, 0], 4)
    with pytest.raises(ValueError, match="do not multiply"):
        LayerShape((3, 2), (2, 2))
