"""Backbones: shapes, per-task weights without loops, per-task BatchNorm, running statistics, factored layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmlo.models.modulation import LayerModulation
from mmlo.models.networks import MLP, ConvNet, conv_output_size, grouped, task_conv2d, task_linear, ungrouped


def test_conv_output_sizes() -> None:
    # 84 -> 42 -> 21 -> 10 -> 5 with max-pools; 84 -> 42 -> 21 -> 11 -> 6 with stride-2 'same' convs.
    assert conv_output_size(84, 4, "maxpool") == 5
    assert conv_output_size(84, 4, "stride") == 6
    assert conv_output_size(32, 4, "maxpool") == 2
    assert ConvNet((3, 84, 84), [32, 64, 128, 256]).features == 256 * 5 * 5
    assert ConvNet((3, 84, 84), [64] * 4, outputs=5).out_features == 5


def test_grouped_layout_round_trip() -> None:
    # [T, B, C, H, W] -> [B, T*C, H, W] puts task t's channels at t*C..t*C+C-1 and back again.
    x = torch.randn(3, 2, 4, 5, 5)
    g = grouped(x)
    assert g.shape == (2, 12, 5, 5)
    torch.testing.assert_close(g[1, 4:8], x[1, 1])
    torch.testing.assert_close(ungrouped(g, 3), x)


def test_per_task_conv_and_linear_equal_a_loop() -> None:
    # A grouped conv / batched matmul with per-task weights equals each task's own F.conv2d / F.linear.
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64)
    w, b = torch.randn(3, 5, 4, 3, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    out = ungrouped(task_conv2d(grouped(x), w, b, 3, stride=1), 3)
    for t in range(3):
        torch.testing.assert_close(out[t], F.conv2d(x[t], w[t], b[t], padding=1))
    h = torch.randn(3, 4, 7, dtype=torch.float64)
    lw, lb = torch.randn(3, 2, 7, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    for weight, bias in ((lw, lb), (lw[0], lb), (lw[0], lb[0])):
        out = task_linear(h, weight, bias)
        for t in range(3):
            w_t = weight[t] if weight.dim() == 3 else weight
            b_t = bias[t] if bias.dim() == 2 else bias
            torch.testing.assert_close(out[t], F.linear(h[t], w_t, b_t))


def test_transductive_batch_norm_normalises_each_task_on_its_own() -> None:
    # conv -> BN with batch statistics per task: task t is normalised over its own (B, H, W), whatever the others hold.
    torch.manual_seed(1)
    net = ConvNet((3, 8, 8), [4], norm="transductive", downsample="stride").double()
    params = dict(net.named_parameters())
    x = torch.rand(2, 5, 3, 8, 8, dtype=torch.float64)
    x[1] = x[1] * 10 + 3
    out = net.run(params, x).view(2, 5, 4, 4, 4)
    for t in range(2):
        z = F.conv2d(x[t], params["blocks.0.weight"], params["blocks.0.bias"], stride=2, padding=1)
        mean, var = z.mean(dim=(0, 2, 3), keepdim=True), z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(out[t], F.relu((z - mean) / torch.sqrt(var + 1e-5)))


def test_running_batch_norm_tracks_and_then_uses_running_statistics() -> None:
    # A tracked training pass moves running stats by momentum 0.1 towards the mean over tasks; eval then uses them.
    torch.manual_seed(2)
    net = ConvNet((3, 4, 4), [2], norm="running", downsample="stride").double()
    params = dict(net.named_parameters())
    x = torch.rand(2, 3, 3, 4, 4, dtype=torch.float64)
    net.run(params, x, training=True, track=True)
    z = torch.stack(
        [F.conv2d(x[t], params["blocks.0.weight"], params["blocks.0.bias"], stride=2, padding=1) for t in range(2)]
    )
    task_means = z.mean(dim=(1, 3, 4))
    task_vars = z.var(dim=(1, 3, 4), unbiased=True)
    block = net.blocks[0]
    torch.testing.assert_close(block.running_mean, 0.1 * task_means.mean(0))
    torch.testing.assert_close(block.running_var, 0.9 + 0.1 * task_vars.mean(0))
    out = net.run(params, x, training=False).view(2, 3, 2, 2, 2)
    expected = (z - block.running_mean.view(1, 1, 2, 1, 1)) / torch.sqrt(block.running_var.view(1, 1, 2, 1, 1) + 1e-5)
    torch.testing.assert_close(out, F.relu(expected))


def test_stacked_networks_route_running_statistics_per_copy() -> None:
    # Oracle copies keep their own running statistics; only copies that saw tasks move.
    net = ConvNet((3, 4, 4), [2], norm="running", downsample="stride", copies=3).double()
    params = {k: v[torch.tensor([2, 2])] for k, v in net.named_parameters()}
    net.run(params, torch.rand(2, 3, 3, 4, 4, dtype=torch.float64), route=torch.tensor([2, 2]), track=True)
    block = net.blocks[0]
    assert torch.equal(block.running_mean[:2], torch.zeros(2, 2, dtype=torch.float64))
    assert not torch.equal(block.running_mean[2], torch.zeros(2, dtype=torch.float64))


def test_mlp_with_bias_transformation_by_hand() -> None:
    # y = head(relu(W [x, β] + b)): the learned bias transformation β is concatenated to every input.
    net = MLP(1, [2], 1, bias_transformation=1).double()
    p = {
        "bias_transformation": torch.tensor([2.0], dtype=torch.float64),
        "layers.0.weight": torch.tensor([[1.0, 1.0], [-1.0, 0.5]], dtype=torch.float64),
        "layers.0.bias": torch.tensor([0.0, 0.0], dtype=torch.float64),
        "head.weight": torch.tensor([[1.0, 3.0]], dtype=torch.float64),
        "head.bias": torch.tensor([0.5], dtype=torch.float64),
    }
    x = torch.tensor([[[1.0], [4.0]]], dtype=torch.float64)
    # x=1: hidden relu([3, 0]) = [3, 0] -> 3.5; x=4: hidden relu([6, -3]) = [6, 0] -> 6.5
    torch.testing.assert_close(net.run(p, x), torch.tensor([[[3.5], [6.5]]], dtype=torch.float64))


def test_mlp_starts_like_the_authors_regression_network() -> None:
    # MMAML-Regression's initialisation: weights N(0, 0.01²), zero biases, zero bias transformation.
    torch.manual_seed(4)
    net = MLP(1, [100, 100], 1, bias_transformation=20, copies=2)
    weights = torch.cat([net.layers[1].weight.flatten(), net.layers[0].weight.flatten()])
    assert abs(weights.std().item() - 0.01) < 0.0005
    assert not net.layers[0].bias.any() and not net.head.bias.any() and not net.bias_transformation.any()


def test_factored_linear_layer_equals_the_dense_update() -> None:
    # [W | b] + leftᵀ [right | 1] applied through the factors equals the materialised per-task weight and bias.
    torch.manual_seed(3)
    net = MLP(1, [4], 1, bias_transformation=2).double()
    params = dict(net.named_parameters())
    left, right = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 5, 1, dtype=torch.float64)
    factored = net.run({**params, "layers.0.left": left, "layers.0.right": right}, x)
    dense_weight = params["layers.0.weight"] + torch.bmm(left.transpose(1, 2), right)
    dense_bias = params["layers.0.bias"] + left.sum(1)
    dense = net.run({**params, "layers.0.weight": dense_weight, "layers.0.bias": dense_bias}, x)
    torch.testing.assert_close(factored, dense)
    assert set(net.low_rank_layers(None)) == {"layers.0", "head"}
    kernel = LayerModulation(kernel=torch.ones(2, 4, 3, dtype=torch.float64))
    assert set(net.low_rank_layers([kernel])) == {"head"}


def test_images_too_small_for_the_blocks_are_refused() -> None:
    # Four halvings need at least 16 pixels with max-pools.
    with pytest.raises(ValueError, match="too small"):
        ConvNet((3, 8, 8), [4, 4, 4, 4])
