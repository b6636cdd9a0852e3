"""What the MAML and ProtoNet families share: a backbone θ, an optional task encoder h and modulation
generator g, oracle routing, and the per-task query loss and metric.

Parameters live under four prefixes: ``backbone.`` (θ), ``encoder.`` (h), ``modulation.`` (g) and, with
``learn_inner_lr`` (Meta-SGD), ``inner_lr.`` (one step size per backbone parameter element). Oracle
multi_* learners stack one backbone per mode on a leading axis and route each task to its mode's network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmlo.models.base import Learner, Params
from mmlo.models.config import LearnerConfig
from mmlo.models.encoders import TaskEncoder
from mmlo.models.modulation import LayerModulation, Modulation
from mmlo.models.networks import Backbone
from mmlo.tasks.base import TaskBatch

#: τ per modulatable layer of every task (None: no modulation, or none for that layer).
Taus = Sequence[LayerModulation | None] | None


def sub_params(params: Params, prefix: str) -> Params:
    """The entries of ``params`` under ``prefix``, keyed without it."""
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


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
        embedding = self.encoder.embed(sub_params(params, "encoder."), x, y, training=training, track=training)
        return self.modulation.generate(sub_params(params, "modulation."), embedding)

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
