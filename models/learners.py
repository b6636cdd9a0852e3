"""The meta-learners of method.md §2 behind the small :class:`~mmlo.models.base.Learner` surface.

Learner names map to a base algorithm, a modulation and an oracle flag (``mmlo.models.config.LEARNERS``);
:func:`build_learner` sizes the one a configuration names for a benchmark. Each family lives in a private
module that states its maths first and its speed paths after:

- ``maml``, ``multi_maml``, ``mmaml``, ``kml`` with ``base: maml`` -> :class:`MAML` (``_maml.py``): inner SGD
  steps on the support set from θ (second order by default), outer loss on the query set. With a
  modulation, the task encoder's υ and the generator's τ are computed once from the support set and held
  fixed while θ is adapted.
- ``protonet``, ``multi_protonet``, ``mprotonet``, ``kml`` (``base: protonet``) -> :class:`ProtoNet`
  (``_protonet.py``): class prototypes are the mean support embedding, logits the negative squared
  Euclidean distance.

What both share (parameter prefixes, oracle routing, the query loss and metric) is ``_meta_learner.py``.
"""

from __future__ import annotations

import torch

from mmlo.models._maml import MAML
from mmlo.models._protonet import ProtoNet
from mmlo.models.base import Learner, Params, TaskOutput
from mmlo.models.config import LearnerConfig
from mmlo.models.encoders import build_encoder
from mmlo.models.modulation import build_modulation
from mmlo.models.networks import MLP, Backbone, ConvNet
from mmlo.tasks.base import Benchmark, TaskBatch

__all__ = ["MAML", "ProtoNet", "build_learner", "reference_loop_outputs"]


def build_learner(cfg: LearnerConfig, benchmark: Benchmark) -> Learner:
    """The learner ``cfg`` describes, sized for ``benchmark`` (its kind, input shape, outputs and modes)."""
    algorithm = cfg.base_algorithm
    kind = benchmark.kind
    copies = len(benchmark.modes) if cfg.per_mode else None
    backbone: Backbone
    if kind == "regression":
        if algorithm != "maml":
            raise ValueError(
                f"regression supports the MAML family only; learner '{cfg.learner}' uses {algorithm}"
                + (" (set base: maml)" if cfg.learner == "kml" else "")
            )
        backbone = MLP(
            benchmark.input_shape[0],
            cfg.hidden,
            benchmark.output_dim,
            bias_transformation=cfg.bias_transformation,
            copies=copies,
        )
    else:
        backbone = ConvNet(
            benchmark.input_shape,
            cfg.channels,
            downsample=cfg.downsample,
            norm=cfg.norm,
            outputs=benchmark.output_dim if algorithm == "maml" else None,
            copies=copies,
            pool=cfg.pool,
            bn_affine=cfg.bn_affine,
            init=cfg.init,
        )
    modulation = build_modulation(
        cfg.resolved_modulation,
        backbone.layer_shapes,
        cfg.modulated_layers,
        cfg.embedding_dim,
        variant=cfg.kml_variant,
        rank=cfg.kml_rank,
        kml_init=cfg.kml_init,
    )
    encoder = None
    if modulation is not None:
        encoder = build_encoder(
            kind,
            cfg.encoder,
            benchmark.input_shape,
            benchmark.output_dim,
            cfg.embedding_dim,
            channels=cfg.channels,
            norm=cfg.norm,
            layers=cfg.encoder_layers,
            hidden=cfg.encoder_hidden,
        )
    learner_class = MAML if algorithm == "maml" else ProtoNet
    return learner_class(cfg, backbone, encoder, modulation, kind=kind, outputs=benchmark.output_dim)


def reference_loop_outputs(learner: Learner, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
    """The same math one task at a time in a Python loop: the baseline for equivalence tests and benches."""
    outputs = [learner.task_outputs(params, batch.select([i]), training=training) for i in range(batch.num_tasks)]
    before = [o.metric_before for o in outputs if o.metric_before is not None]
    return TaskOutput(
        loss=torch.cat([o.loss for o in outputs]),
        metric=torch.cat([o.metric for o in outputs]),
        metric_before=torch.cat(before) if len(before) == len(outputs) else None,
    )
