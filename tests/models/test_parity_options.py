"""The MMAML authors' options (issue 12): element-wise inner clamp, encoder depth/width, per-component clipping.

Numbers are derived by hand on MAML for y = w x + b (the closed form of test_learners.py), on two known
gradient groups, and against ``nn.LSTM`` for the stacked BiLSTM.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from pydantic import ValidationError

from mmlo.models._meta_learner import MetaLearner
from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.models.encoders import LSTMEncoder, SetEncoder, build_encoder
from mmlo.models.learners import build_learner
from mmlo.models.networks import MLP, LinearLayer
from mmlo.models.training import clip_per_component
from mmlo.tasks.base import Benchmark, Kind, Split, TaskBatch

F64 = torch.float64


class _Regression(Benchmark):
    """Only the shape of a 1-d, two-mode regression benchmark (the tests build their own batches)."""

    name, modes, input_shape, output_dim = "shape-only", ("a", "b"), (1,), 1
    kind: Kind = "regression"
    ways, shots, query = 1, 2, 1

    def tasks(self, split: Split, modes: Sequence[int], seeds: Sequence[int]) -> TaskBatch:
        raise NotImplementedError


def _head(learner: MetaLearner) -> LinearLayer:
    """The regression MLP's output layer."""
    assert isinstance(learner.backbone, MLP) and isinstance(learner.backbone.head, LinearLayer)
    return learner.backbone.head


def _linear_maml(**overrides: object) -> tuple[MetaLearner, TaskBatch]:
    """MAML on y = w x + b with w = 0.5, b = 0.1, α = 0.1, one inner step.

    One task: support x = (1, 2), y = (1, 3); query x = 3, y = 2. Support residuals (-0.4, -1.9), so the
    inner gradient of the 2-point MSE is (∇w, ∇b) = (Σ r x, Σ r) = (-4.2, -2.3).
    """
    settings: dict[str, object] = dict(learner="maml", hidden=[], bias_transformation=0, inner_steps=1, inner_lr=0.1)
    settings.update(overrides)
    learner = build_learner(LearnerConfig.model_validate(settings), _Regression()).double()
    assert isinstance(learner, MetaLearner)
    with torch.no_grad():
        _head(learner).weight.fill_(0.5)
        _head(learner).bias.fill_(0.1)
    batch = TaskBatch(
        support_x=torch.tensor([[[1.0], [2.0]]], dtype=F64),
        support_y=torch.tensor([[[1.0], [3.0]]], dtype=F64),
        query_x=torch.tensor([[[3.0]]], dtype=F64),
        query_y=torch.tensor([[[2.0]]], dtype=F64),
        mode=torch.tensor([0]),
        seed=torch.tensor([0]),
    )
    return learner, batch


def test_inner_clamp_bounds_each_element_of_the_inner_gradient() -> None:
    # Clamp 3: (∇w, ∇b) = (-4.2, -2.3) -> (-3, -2.3); w' = 0.8, b' = 0.33; query 2.4 + 0.33 - 2 = 0.73 -> 0.5329.
    # Clamp 2: (-2, -2); w' = 0.7, b' = 0.3; query 0.4 -> 0.16. (A norm clip to 3 would give (-2.63, -1.44).)
    learner, batch = _linear_maml(inner_grad_clamp=3.0)
    torch.testing.assert_close(learner(batch).loss, torch.tensor([0.5329], dtype=F64))
    learner, batch = _linear_maml(inner_grad_clamp=2.0)
    torch.testing.assert_close(learner(batch).loss, torch.tensor([0.16], dtype=F64))
    learner, batch = _linear_maml(inner_grad_clamp=10.0)  # inactive: MAML's unclipped 1.1881
    torch.testing.assert_close(learner(batch).loss, torch.tensor([1.1881], dtype=F64))


def test_a_clamped_element_passes_no_second_order_gradient() -> None:
    # Clamp 3 holds ∇w at -3 (a constant): w' = w + 0.3, so dw'/dw = 1, dw'/db = 0; ∇b = Σ(w x + b - y) is
    # free: db'/dw = -α Σx = -0.3, db'/db = 1 - 2α = 0.8. ∂L/∂(w', b') = 2·0.73·(3, 1) = (4.38, 1.46):
    # ∂L/∂w = 4.38 - 1.46·0.3 = 3.942, ∂L/∂b = 1.46·0.8 = 1.168.
    learner, batch = _linear_maml(inner_grad_clamp=3.0)
    learner(batch).loss.sum().backward()
    torch.testing.assert_close(_head(learner).weight.grad, torch.tensor([[3.942]], dtype=F64))
    torch.testing.assert_close(_head(learner).bias.grad, torch.tensor([1.168], dtype=F64))


def test_inner_clamp_on_the_mlp_equals_the_unclamped_loop_when_inactive() -> None:
    # With a clamp no gradient reaches, the dense (clamped) inner loop gives the factored loop's numbers.
    def run(**extra: object) -> torch.Tensor:
        torch.manual_seed(0)
        cfg = LearnerConfig.model_validate(
            dict(learner="mmaml", hidden=[8, 8], bias_transformation=3, embedding_dim=6, inner_lr=0.1, inner_steps=2)
            | extra
        )
        learner = build_learner(cfg, _Regression()).double()
        g = torch.Generator().manual_seed(3)
        x = torch.rand(4, 7, 1, generator=g, dtype=F64) * 10 - 5
        batch = TaskBatch(x[:, :4], torch.sin(x[:, :4]), x[:, 4:], torch.sin(x[:, 4:]), torch.tensor([0, 1, 0, 1]),
                          torch.arange(4))
        return learner(batch).loss

    torch.testing.assert_close(run(inner_grad_clamp=1e6), run())
    assert not torch.allclose(run(inner_grad_clamp=1e-4), run())


def test_clip_and_clamp_are_exclusive_and_need_sensible_values() -> None:
    with pytest.raises(ValidationError, match="not both"):
        LearnerConfig(learner="mmaml", inner_grad_clip=10, inner_grad_clamp=10)
    with pytest.raises(ValidationError, match="greater than 0"):
        LearnerConfig(learner="mmaml", inner_grad_clamp=0)


class _TwoGroups(torch.nn.Module):
    """Parameters under the learners' prefixes: the model (backbone) and the embedding model (encoder, modulation)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.zeros(2, dtype=F64))})
        self.encoder = torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.zeros(1, dtype=F64))})
        self.modulation = torch.nn.ParameterDict({"w": torch.nn.Parameter(torch.zeros(1, dtype=F64))})


def test_per_component_clipping_clips_the_model_and_the_encoder_separately() -> None:
    # Model gradient (3, 4): norm 5 -> (1.2, 1.6). Encoder 6 and generator 8: one norm 10 -> 1.2 and 1.6.
    # One global clip would scale all by 2/√125 instead. Returns the norm before clipping, √125.
    # (clip_grad_norm_ divides by norm + 1e-6, hence the tolerance.)
    module = _TwoGroups()
    module.backbone["w"].grad = torch.tensor([3.0, 4.0], dtype=F64)
    module.encoder["w"].grad = torch.tensor([6.0], dtype=F64)
    module.modulation["w"].grad = torch.tensor([8.0], dtype=F64)
    norm = clip_per_component(module, 2.0)
    torch.testing.assert_close(float(norm), 125**0.5)
    torch.testing.assert_close(module.backbone["w"].grad, torch.tensor([1.2, 1.6], dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(module.encoder["w"].grad, torch.tensor([1.2], dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(module.modulation["w"].grad, torch.tensor([1.6], dtype=F64), rtol=0, atol=1e-6)


def test_per_component_clipping_leaves_small_groups_alone() -> None:
    # Model norm 0.5 < 2 stays; encoder + generator norm 10 is clipped to 2 alone.
    module = _TwoGroups()
    module.backbone["w"].grad = torch.tensor([0.3, 0.4], dtype=F64)
    module.encoder["w"].grad = torch.tensor([6.0], dtype=F64)
    module.modulation["w"].grad = torch.tensor([8.0], dtype=F64)
    clip_per_component(module, 2.0)
    torch.testing.assert_close(module.backbone["w"].grad, torch.tensor([0.3, 0.4], dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(module.encoder["w"].grad, torch.tensor([1.2], dtype=F64), rtol=0, atol=1e-6)


def test_per_component_clipping_needs_a_clip_norm() -> None:
    with pytest.raises(ValidationError, match="needs grad_clip"):
        TrainConfig(grad_clip_per_component=True)
    assert TrainConfig(grad_clip=2.0, grad_clip_per_component=True).grad_clip_per_component


def test_stacked_bilstm_equals_nn_lstm() -> None:
    # The MMAML-Regression encoder: 2 BiLSTM layers, 40 hidden units per direction, υ = the top layer's
    # forward state at the last point and backward state at the first: nn.LSTM's final h_n of layer 2.
    torch.manual_seed(4)
    encoder = LSTMEncoder(2, 80, layers=2).double()
    assert encoder.lstm.num_layers == 2 and encoder.lstm.hidden_size == 40
    # nn.LSTM's parameter count: per layer and direction 4H(in + H) + 8H; in = 2, then 80.
    assert sum(p.numel() for p in encoder.parameters()) == 2 * (160 * 42 + 320) + 2 * (160 * 120 + 320)
    x, y = torch.randn(3, 5, 1, dtype=F64), torch.randn(3, 5, 1, dtype=F64)
    upsilon = encoder.embed(dict(encoder.named_parameters()), x, y)
    _, (final, _) = encoder.lstm(torch.cat([x, y], dim=-1))
    torch.testing.assert_close(upsilon, torch.cat([final[2], final[3]], dim=-1))


def test_encoder_depth_and_width_options() -> None:
    # build_encoder passes layers/hidden on; a BiLSTM's υ is 2 x hidden, so a mismatched embedding_dim is refused.
    lstm = build_encoder("regression", "lstm", (1,), 1, 80, channels=[4], norm="none", layers=2, hidden=40)
    assert isinstance(lstm, LSTMEncoder) and lstm.lstm.num_layers == 2 and lstm.lstm.hidden_size == 40
    mlp = build_encoder("regression", "mlp", (1,), 1, 8, channels=[4], norm="none", layers=3, hidden=16)
    assert isinstance(mlp, SetEncoder) and len(mlp.layers) == 3 and mlp.layers[2].weight.shape == (16, 16)
    assert mlp.embed(dict(mlp.named_parameters()), torch.zeros(2, 4, 1), torch.zeros(2, 4, 1)).shape == (2, 8)
    with pytest.raises(ValueError, match="embedding_dim 80"):
        build_encoder("regression", "lstm", (1,), 1, 64, channels=[4], norm="none", hidden=40)
    with pytest.raises(ValueError, match="conv encoder follows"):
        build_encoder("classification", None, (3, 8, 8), 5, 4, channels=[4], norm="none", layers=2)
    with pytest.raises(ValidationError, match="embedding_dim 80, not 64"):
        LearnerConfig(learner="mmaml", encoder="lstm", encoder_hidden=40, embedding_dim=64)
