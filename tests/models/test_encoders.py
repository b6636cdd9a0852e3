"""Task encoders: υ per task from its support set only, the set encoders' (in)variances, sizes."""

from __future__ import annotations

import pytest
import torch

from mmlo.models.base import Params
from mmlo.models.encoders import ConvEncoder, LSTMEncoder, SetEncoder, build_encoder


def _embed(encoder: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return encoder.embed(dict(encoder.named_parameters()), x, y)  # type: ignore[operator]


def test_conv_encoder_is_the_papers_architecture() -> None:
    # 4 x conv3x3 (32-64-128-256, with BN affine) + Linear(256, 128): the parameter count of method.md §3.
    encoder = ConvEncoder(3, [32, 64, 128, 256], 128)
    convs = sum(c_out * c_in * 9 + c_out + 2 * c_out for c_in, c_out in [(3, 32), (32, 64), (64, 128), (128, 256)])
    assert sum(p.numel() for p in encoder.parameters()) == convs + 256 * 128 + 128
    x = torch.rand(2, 5, 3, 32, 32)
    upsilon = _embed(encoder, x, torch.zeros(2, 5, dtype=torch.long))
    assert upsilon.shape == (2, 128) and bool((upsilon >= 0).all())


def test_conv_encoder_is_a_mean_over_support_images_per_task() -> None:
    # υ ignores labels and support order, and one task's images never change another task's υ.
    torch.manual_seed(0)
    encoder = ConvEncoder(3, [4, 8], 6).double()
    x = torch.rand(3, 4, 3, 8, 8, dtype=torch.float64)
    labels = torch.zeros(3, 4, dtype=torch.long)
    upsilon = _embed(encoder, x, labels)
    torch.testing.assert_close(_embed(encoder, x[:, [2, 0, 3, 1]], labels + 1), upsilon)
    other = x.clone()
    other[2] = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(_embed(encoder, other, labels)[:2], upsilon[:2])
    torch.testing.assert_close(_embed(encoder, x[1:2], labels[1:2]), upsilon[1:2])


@pytest.mark.parametrize("norm", ["transductive", "running", "none"])
def test_conv_encoder_strategies_give_the_same_embedding_gradients_and_running_statistics(norm: str) -> None:
    # Task by task (CPU) and the grouped layout (accelerators): the same υ, gradients and running BN statistics,
    # to float64 rounding, in training (tracking) and in evaluation.
    torch.manual_seed(2)
    encoder = ConvEncoder(3, [4, 8], 6, norm=norm).double()
    x = torch.rand(3, 4, 3, 8, 8, dtype=torch.float64)
    labels = torch.zeros(3, 4, dtype=torch.long)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    results = []
    for strategy in ("grouped", "per-task"):
        encoder.load_state_dict(state)
        encoder.strategy = strategy
        params: Params = dict(encoder.named_parameters())
        upsilon = encoder.embed(params, x, labels, track=True)
        weights = torch.linspace(-1, 1, upsilon.numel(), dtype=torch.float64).view_as(upsilon)
        grads = torch.autograd.grad((upsilon * weights).sum(), list(params.values()))
        evaluated = encoder.embed(params, x, labels, training=False)
        results.append((upsilon, grads, {k: v.clone() for k, v in encoder.named_buffers()}, evaluated))
    (u_a, g_a, b_a, e_a), (u_b, g_b, b_b, e_b) = results
    torch.testing.assert_close(u_a, u_b, atol=1e-12, rtol=0)
    torch.testing.assert_close(e_a, e_b, atol=1e-12, rtol=0)
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert b_a.keys() == b_b.keys()
    for k in b_a:
        torch.testing.assert_close(b_a[k], b_b[k], atol=1e-12, rtol=0)
    if norm == "running":
        assert not torch.equal(b_a["blocks.0.running_mean"], state["blocks.0.running_mean"])  # tracking moved them


def test_set_encoder_mean_pools_over_pairs() -> None:
    # The MLP set encoder is invariant to the order of the (x, y) support pairs, sees y, and is bounded by tanh.
    torch.manual_seed(1)
    encoder = SetEncoder(2, 8).double()
    x, y = torch.randn(2, 5, 1, dtype=torch.float64), torch.randn(2, 5, 1, dtype=torch.float64)
    upsilon = _embed(encoder, x, y)
    order = [4, 2, 0, 1, 3]
    torch.testing.assert_close(_embed(encoder, x[:, order], y[:, order]), upsilon)
    assert not torch.allclose(_embed(encoder, x, -y), upsilon)
    assert bool((_embed(encoder, x, 100 * y).abs() <= 1).all())


def test_lstm_encoder_concatenates_both_directions() -> None:
    # υ = [final forward state, final backward state], each embedding_dim / 2 wide; odd sizes are refused.
    torch.manual_seed(2)
    encoder = LSTMEncoder(2, 6).double()
    x, y = torch.randn(3, 5, 1, dtype=torch.float64), torch.randn(3, 5, 1, dtype=torch.float64)
    upsilon = _embed(encoder, x, y)
    _, (final, _) = encoder.lstm(torch.cat([x, y], dim=-1))
    torch.testing.assert_close(upsilon, torch.cat([final[0], final[1]], dim=-1))
    assert upsilon.shape == (3, 6)
    with pytest.raises(ValueError, match="even"):
        LSTMEncoder(2, 5)


def test_build_encoder_matches_the_benchmark_kind() -> None:
    # Images take the conv encoder; regression the mlp (default) or lstm set encoder; mismatches are refused.
    assert isinstance(build_encoder("classification", None, (3, 8, 8), 5, 4, channels=[4], norm="none"), ConvEncoder)
    assert isinstance(build_encoder("regression", None, (1,), 1, 4, channels=[4], norm="none"), SetEncoder)
    assert isinstance(build_encoder("regression", "lstm", (1,), 1, 4, channels=[4], norm="none"), LSTMEncoder)
    with pytest.raises(ValueError, match="conv task encoder"):
        build_encoder("classification", "lstm", (3, 8, 8), 5, 4, channels=[4], norm="none")
    with pytest.raises(ValueError, match="mlp or lstm"):
        build_encoder("regression", "conv", (1,), 1, 4, channels=[4], norm="none")
