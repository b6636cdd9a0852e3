"""The ProtoNet family (``protonet``, ``multi_protonet``, ``mprotonet``, ``kml`` with ``base: protonet``).

No inner loop: a task is adapted to by averaging its support embeddings into class prototypes, so the whole
meta-batch is one backbone pass and a few batched matrix products (:class:`ProtoNet` states the maths).
"""

from __future__ import annotations

import torch

from mmlo.models._meta_learner import MetaLearner, sub_params
from mmlo.models.base import Params, TaskOutput
from mmlo.tasks.base import TaskBatch


class ProtoNet(MetaLearner):
    """Prototypical networks (Snell et al. 2017) and their modulated variants MProtoNet and KML.

    Support and query images go through the backbone in one pass per task (as in Snell et al.'s code,
    so transductive BatchNorm sees both); prototypes are the mean support embedding per class, logits
    the negative squared Euclidean distance, the loss the query cross-entropy. τ comes from the support
    set only. With ``transductive``, prototypes are refined once with the query soft labels (one soft
    k-means step, the KML authors' default): ``p_c = (Σ_S z + Σ_Q softmax(-d)_c z) / (n_c + Σ_Q softmax(-d)_c)``.
    With ``query_embedding`` (the KML authors' other quirk), the query images are embedded in a pass of
    their own, modulated by υ computed from the query images. ``metric_before`` is None: there is no
    gradient adaptation.
    """

    def task_outputs(self, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
        """Embed, build prototypes from the support set, and score the query set, for all tasks at once.

        With ``training`` False (evaluation) nothing is kept for a meta-gradient and 'running' BatchNorm
        uses its running statistics.
        """
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            taus = self._taus(params, batch.support_x, batch.support_y, training=training)
            theta, route = self._route(sub_params(params, "backbone."), batch)
            if self.config.query_embedding and taus is not None:
                # The image encoder never reads labels, so handing it the query labels leaks nothing.
                query_taus = self._taus(params, batch.query_x, batch.query_y, training=training)
                support = self.backbone.run(
                    theta, batch.support_x, taus, route=route, training=training, track=training
                )
                query = self.backbone.run(
                    theta, batch.query_x, query_taus, route=route, training=training, track=training
                )
            else:
                n_support = batch.support_x.shape[1]
                images = torch.cat([batch.support_x, batch.query_x], dim=1)
                features = self.backbone.run(theta, images, taus, route=route, training=training, track=training)
                support, query = features[:, :n_support], features[:, n_support:]
            # A comparison, not F.one_hot, whose range check is data-dependent and breaks under vmap.
            classes = torch.arange(self.outputs, device=support.device)
            onehot = (batch.support_y.unsqueeze(-1) == classes).to(support.dtype)
            sums, counts = torch.bmm(onehot.transpose(1, 2), support), onehot.sum(1)
            logits = -_squared_distances(query, sums / counts.clamp(min=1).unsqueeze(-1))
            if self.config.transductive:
                soft = torch.softmax(logits, dim=-1)
                refined = (sums + torch.bmm(soft.transpose(1, 2), query)) / (counts + soft.sum(1)).unsqueeze(-1)
                logits = -_squared_distances(query, refined)
            loss, metric = self._loss_and_metric(logits, batch.query_y)
        return TaskOutput(loss=loss, metric=metric, metric_before=None)


def _squared_distances(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``‖q - p‖²`` for ``query`` ``[T, Q, D]`` and ``prototypes`` ``[T, N, D]`` -> ``[T, Q, N]``.

    Expanded as ``‖q‖² - 2 q·p + ‖p‖²`` so that no ``[T, Q, N, D]`` difference tensor is built.
    """
    cross = torch.bmm(query, prototypes.transpose(1, 2))
    return query.pow(2).sum(-1, keepdim=True) - 2.0 * cross + prototypes.pow(2).sum(-1).unsqueeze(1)
