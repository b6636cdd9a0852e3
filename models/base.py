"""The learner interface: every meta-learner is a function of a parameter dict and a batch of tasks.

Parameters are data (``dict[str, Tensor]`` of ``named_parameters()``); a learner never mutates them while
adapting, so the same code serves meta-training, evaluation, and transference look-ahead steps
(``θ - α ∇L_i`` is just another dict). A whole meta-batch is one vectorised call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from mmlo.models.config import LearnerConfig
from mmlo.tasks.base import TaskBatch

Params = dict[str, torch.Tensor]


@dataclass
class TaskOutput:
    """Per-task results of one batched call (every tensor is ``[T]``).

    ``loss`` is the post-adaptation query loss (differentiable w.r.t. the parameters); ``metric`` is the
    post-adaptation query metric (accuracy for classification, MSE for regression); ``metric_before`` is
    the query metric after modulation but before any inner-loop step (MMAML's "pre-update" number), or
    None for learners that do not adapt by gradient steps (ProtoNet family).
    """

    loss: torch.Tensor
    metric: torch.Tensor
    metric_before: torch.Tensor | None = None


class Learner(nn.Module, ABC):
    """A meta-learner: backbone (+ task encoder + modulation generator) with one functional entry point."""

    config: LearnerConfig

    @abstractmethod
    def task_outputs(self, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
        """Adapt to each task's support set and score its query set, for all tasks at once."""

    def forward(self, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
        return self.task_outputs(self.params(), batch, training=training)

    def params(self) -> Params:
        """The learner's current parameters as a dict (views, not copies)."""
        return dict(self.named_parameters())

    @abstractmethod
    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per component: ``backbone``, ``encoder``, ``generator`` and ``total``."""
