"""Backbones: shapes, per-task weights without loops, per-task BatchNorm, running statistics, factored layers."""

from __future__ import annotations

import math
from typing import cast

import pytest
import torch
import torch.nn.functional as F

from mmlo.models.base import Params
from mmlo.models.modulation import LayerModulation
from mmlo.models.networks import (
    MLP,
    ConvBlock,
    ConvNet,
    LinearLayer,
    conv_output_size,
    grouped,
    task_conv2d,
    task_linear,
    ungrouped,
)


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


STRATEGIES = ["per-task", "grouped"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_transductive_batch_norm_normalises_each_task_on_its_own(strategy: str) -> None:
    # conv -> BN with batch statistics per task: task t is normalised over its own (B, H, W), whatever the others hold.
    torch.manual_seed(1)
    net = ConvNet((3, 8, 8), [4], norm="transductive", downsample="stride").double()
    net.strategy = strategy
    params: Params = dict(net.named_parameters())
    x = torch.rand(2, 5, 3, 8, 8, dtype=torch.float64)
    x[1] = x[1] * 10 + 3
    out = net.run(params, x).view(2, 5, 4, 4, 4)
    for t in range(2):
        z = F.conv2d(x[t], params["blocks.0.weight"], params["blocks.0.bias"], stride=2, padding=1)
        mean, var = z.mean(dim=(0, 2, 3), keepdim=True), z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(out[t], F.relu((z - mean) / torch.sqrt(var + 1e-5)))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_running_batch_norm_tracks_and_then_uses_running_statistics(strategy: str) -> None:
    # A tracked training pass moves running stats by momentum 0.1 towards the mean over tasks; eval then uses them.
    torch.manual_seed(2)
    net = ConvNet((3, 4, 4), [2], norm="running", downsample="stride").double()
    net.strategy = strategy
    params: Params = dict(net.named_parameters())
    x = torch.rand(2, 3, 3, 4, 4, dtype=torch.float64)
    net.run(params, x, training=True, track=True)
    z = torch.stack(
        [F.conv2d(x[t], params["blocks.0.weight"], params["blocks.0.bias"], stride=2, padding=1) for t in range(2)]
    )
    task_means = z.mean(dim=(1, 3, 4))
    task_vars = z.var(dim=(1, 3, 4), unbiased=True)
    block = cast(ConvBlock, net.blocks[0])
    torch.testing.assert_close(block.running_mean, 0.1 * task_means.mean(0))
    torch.testing.assert_close(block.running_var, 0.9 + 0.1 * task_vars.mean(0))
    out = net.run(params, x, training=False).view(2, 3, 2, 2, 2)
    expected = (z - block.running_mean.view(1, 1, 2, 1, 1)) / torch.sqrt(block.running_var.view(1, 1, 2, 1, 1) + 1e-5)
    torch.testing.assert_close(out, F.relu(expected))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stacked_networks_route_running_statistics_per_copy(strategy: str) -> None:
    # Oracle copies keep their own running statistics; only copies that saw tasks move.
    net = ConvNet((3, 4, 4), [2], norm="running", downsample="stride", copies=3).double()
    net.strategy = strategy
    params = {k: v[torch.tensor([2, 2])] for k, v in net.named_parameters()}
    net.run(params, torch.rand(2, 3, 3, 4, 4, dtype=torch.float64), route=torch.tensor([2, 2]), track=True)
    block = cast(ConvBlock, net.blocks[0])
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
    layers = [cast(LinearLayer, layer) for layer in net.layers]
    weights = torch.cat([layers[1].weight.flatten(), layers[0].weight.flatten()])
    assert abs(weights.std().item() - 0.01) < 0.0005
    assert not layers[0].bias.any() and not net.head.bias.any() and not net.bias_transformation.any()


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


def test_the_mmaml_classification_network_pools_globally_before_its_head() -> None:
    # pool 'mean': features = the last block's channels (256), whatever the image size; the head reads 256 -> 5.
    # Parameters: convs 3·32·9+32 + 32·64·9+64 + 64·128·9+128 + 128·256·9+256 = 388,416, head 256·5+5 = 1,285.
    for size in (28, 84):
        net = ConvNet((3, size, size), [32, 64, 128, 256], downsample="stride", pool="mean", bn_affine=False, outputs=5)
        assert net.features == 256 and net.out_features == 5
        assert net.run(dict(net.named_parameters()), torch.rand(2, 3, 3, size, size)).shape == (2, 3, 5)
        assert sum(p.numel() for p in net.parameters()) == 388416 + 1285
    flat = ConvNet((3, 84, 84), [32, 64, 128, 256], downsample="stride")
    assert flat.features == 256 * 6 * 6
    assert sum(p.numel() for p in flat.parameters()) == 388416 + 2 * (32 + 64 + 128 + 256)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_global_average_pool_is_the_mean_of_the_flattened_map(strategy: str) -> None:
    # The 'mean' embedding is the spatial mean of the 'flatten' embedding's feature map, task by task.
    torch.manual_seed(5)
    flat = ConvNet((3, 8, 8), [4, 6], downsample="stride").double()
    mean = ConvNet((3, 8, 8), [4, 6], downsample="stride", pool="mean").double()
    flat.strategy = mean.strategy = strategy
    params: Params = dict(flat.named_parameters())
    x = torch.rand(3, 2, 3, 8, 8, dtype=torch.float64)
    expected = flat.run(params, x).view(3, 2, 6, 2, 2).mean(dim=(3, 4))
    torch.testing.assert_close(mean.run(params, x), expected)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batch_norm_without_affine_has_no_scale_or_shift(strategy: str) -> None:
    # bn_affine False: no bn_weight/bn_bias parameters, and the output is the affine BN's at scale 1, shift 0.
    torch.manual_seed(6)
    plain = ConvNet((3, 8, 8), [4], downsample="stride", bn_affine=False).double()
    affine = ConvNet((3, 8, 8), [4], downsample="stride").double()
    plain.strategy = affine.strategy = strategy
    assert set(dict(plain.named_parameters())) == {"blocks.0.weight", "blocks.0.bias"}
    assert {"blocks.0.bn_weight", "blocks.0.bn_bias"} <= set(dict(affine.named_parameters()))
    params: Params = dict(plain.named_parameters())
    x = torch.rand(2, 3, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(plain.run(params, x), affine.run({**dict(affine.named_parameters()), **params}, x))


def test_xavier_init_draws_weights_within_the_glorot_bound_and_zero_biases() -> None:
    # xavier: U(±√(6 / (fan_in + fan_out))) with fan = channels · 3 · 3 (conv) or features (head); biases 0.
    # Block 2 (64 -> 128): bound √(6 / (576 + 1152)) = 0.0589; head 256 -> 5: √(6 / 261) = 0.1516.
    torch.manual_seed(7)
    net = ConvNet((3, 84, 84), [32, 64, 128, 256], downsample="stride", pool="mean", init="xavier", outputs=5, copies=2)
    blocks = [cast(ConvBlock, block) for block in net.blocks]
    for block, (c_in, c_out) in zip(blocks, [(3, 32), (32, 64), (64, 128), (128, 256)], strict=True):
        bound = math.sqrt(6 / (9 * c_in + 9 * c_out))
        assert block.weight.abs().max() <= bound and block.weight.abs().max() > 0.95 * bound
        assert not block.bias.any()
    assert math.isclose(math.sqrt(6 / (576 + 1152)), 0.0589, abs_tol=1e-4)
    head_bound = math.sqrt(6 / 261)
    assert net.head is not None
    assert net.head.weight.abs().max() <= head_bound and net.head.weight.abs().max() > 0.9 * head_bound
    assert not net.head.bias.any()
    assert not torch.equal(blocks[1].weight[0], blocks[1].weight[1])  # each copy its own draw
    default = ConvNet((3, 84, 84), [32, 64, 128, 256], downsample="stride")
    assert cast(ConvBlock, default.blocks[1]).bias.any()  # PyTorch's default init keeps random biases


def test_unknown_architecture_options_are_refused() -> None:
    # pool and init name a known choice.
    with pytest.raises(ValueError, match="pool"):
        ConvNet((3, 8, 8), [4], pool="max")
    with pytest.raises(ValueError, match="init"):
        ConvNet((3, 8, 8), [4], init="kaiming")
