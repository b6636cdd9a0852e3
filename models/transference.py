"""Task-level transference (KML paper, method.md §4): how one SGD step on a source task moves a target loss.

At parameters θ, for a source task T_i and a target task T_j::

    θ_{i}    = θ - α ∇_θ L_i(Q_i; θ, S_i)          one look-ahead step on the source's meta-loss
    LR_{i→j} = L_j(Q_j; θ_i, S_j) / L_j(Q_j; θ, S_j)

L is the learner's post-adaptation query loss, ``learner.task_outputs(params, batch).loss``: prototypes from
the support set for the ProtoNet family, the loss after the inner loop for the MAML family, each task with
its own modulation for modulated learners. So the measure works for every :class:`Learner` unchanged.
LR < 1 is positive transfer, LR > 1 negative, and near 1 neutral: :func:`transfer_class` is the one rule,
shared with the report (it lives in ``mmlo.reports.tables``, which must not load torch). LR_{i→i} is
self-transference.

:func:`measure_transference` has no Python loop over sources: the per-source meta-gradients are one
``vmap(grad(...))`` over the source axis (per mode, so that learners which route by the mode label see a
plain tensor), and the target losses of all look-ahead parameters are one ``vmap`` over the stacked
parameters. :func:`reference_loop_transference` computes the same numbers (to 1e-6, tested) one source at a
time with plain autograd; on CPU it is the faster of the two, and the fit hook picks by device
(:func:`vectorised`). Neither changes the learner's buffers ('running' BatchNorm statistics): sources are
scored in training mode, as a meta-training step scores them, but a measurement observes the model and
scores every target on the same statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.func import grad, vmap

from mmlo.models.base import Learner, Params
from mmlo.models.config import TrainConfig
from mmlo.reports.tables import transfer_class
from mmlo.tasks.base import Benchmark, Split, TaskBatch, episode_seed


@dataclass(frozen=True)
class TransferenceResult:
    """Loss ratios of every (source, target) pair at one parameter point.

    ``lr``, ``loss_before`` and ``loss_after`` are float64 ``[S, T]`` (``lr = loss_after / loss_before``
    exactly, row by row); ``source_mode``/``source_seed`` are ``[S]`` and ``target_mode``/``target_seed``
    ``[T]`` (mode indices and task seeds); ``source_split`` names each source's split (self sources come from
    the target split); ``is_self`` is bool ``[S, T]``, true where the source task is the target task.
    """

    lr: torch.Tensor
    loss_before: torch.Tensor
    loss_after: torch.Tensor
    source_mode: torch.Tensor
    source_seed: torch.Tensor
    source_split: tuple[str, ...]
    target_mode: torch.Tensor
    target_seed: torch.Tensor
    target_split: str
    is_self: torch.Tensor
    alpha: float

    def rows(self, modes: Sequence[str], neutral_band: float) -> list[dict[str, Any]]:
        """One row per (source, target) pair with the columns of ``transference.parquet`` that the measure
        knows: source/target split, mode name and task seed, ``self``, both losses, ``lr``, ``alpha`` and
        ``neutral_band`` (the caller adds study, trial and iteration)."""
        lr = self.lr.tolist()
        before = self.loss_before.tolist()
        after = self.loss_after.tolist()
        is_self = self.is_self.tolist()
        source_mode = self.source_mode.tolist()
        source_seed = self.source_seed.tolist()
        target_mode = self.target_mode.tolist()
        target_seed = self.target_seed.tolist()
        out: list[dict[str, Any]] = []
        for i in range(len(source_seed)):
            for j in range(len(target_seed)):
                out.append(
                    {
                        "source_split": self.source_split[i],
                        "target_split": self.target_split,
                        "source_mode": modes[source_mode[i]],
                        "target_mode": modes[target_mode[j]],
                        "source_task": int(source_seed[i]),
                        "target_task": int(target_seed[j]),
                        "self": bool(is_self[i][j]),
                        "loss_before": float(before[i][j]),
                        "loss_after": float(after[i][j]),
                        "lr": float(lr[i][j]),
                        "alpha": float(self.alpha),
                        "neutral_band": float(neutral_band),
                    }
                )
        return out


def summarise(rows: Iterable[dict[str, Any]], neutral_band: float | None = None) -> list[dict[str, Any]]:
    """Per (self, source mode, target mode): ``n``, ``mean``, ``median`` of LR and the shares of positive,
    neutral and negative transfer (KML paper: ProtoNet 28/9/63 %).

    Self-transference pairs (``self`` true) are summarised apart from the cross-task pairs, so a mode's
    diagonal never mixes LR_{i→i} into the mean transference from the mode to itself. ``neutral_band``
    defaults to each row's own. Undefined ratios (NaN, a target with zero loss) count in ``n`` only.
    """
    groups: dict[tuple[bool, str, str], list[tuple[float, float]]] = {}
    for row in rows:
        band = row["neutral_band"] if neutral_band is None else neutral_band
        key = (bool(row["self"]), str(row["source_mode"]), str(row["target_mode"]))
        groups.setdefault(key, []).append((float(row["lr"]), float(band)))
    out: list[dict[str, Any]] = []
    for (is_self, source_mode, target_mode), values in groups.items():
        lr = np.array([v for v, _ in values], dtype=np.float64)
        lr = lr[~np.isnan(lr)]
        classes = [transfer_class(v, band) for v, band in values]
        defined = max(1, lr.size)
        out.append(
            {
                "self": is_self,
                "source_mode": source_mode,
                "target_mode": target_mode,
                "n": len(values),
                "mean": float(lr.mean()) if lr.size else math.nan,
                "median": float(np.median(lr)) if lr.size else math.nan,
                "positive": classes.count("positive") / defined,
                "neutral": classes.count("neutral") / defined,
                "negative": classes.count("negative") / defined,
            }
        )
    return out


def _self_sources(sources: TaskBatch, targets: TaskBatch, include_self: bool) -> tuple[TaskBatch, int]:
    """The source batch, with the targets appended when self-transference is asked for."""
    if not include_self:
        return sources, 0
    merged = TaskBatch(
        **{
            name: torch.cat([getattr(sources, name), getattr(targets, name)])
            for name in ("support_x", "support_y", "query_x", "query_y", "mode", "seed")
        }
    )
    return merged, targets.num_tasks


def _result(
    before: torch.Tensor,
    after: torch.Tensor,
    sources: TaskBatch,
    source_split: tuple[str, ...],
    targets: TaskBatch,
    target_split: Split,
    alpha: float,
) -> TransferenceResult:
    source_mode, source_seed = sources.mode.cpu(), sources.seed.cpu()
    target_mode, target_seed = targets.mode.cpu(), targets.seed.cpu()
    # A task is (split, mode, seed): the same triple is the same task, whichever batch it was built for.
    same_split = torch.tensor([s == target_split for s in source_split], dtype=torch.bool)
    is_self = (
        same_split[:, None]
        & (source_mode[:, None] == target_mode[None, :])
        & (source_seed[:, None] == target_seed[None, :])
    )
    return TransferenceResult(
        lr=after / before,
        loss_before=before,
        loss_after=after,
        source_mode=source_mode,
        source_seed=source_seed,
        source_split=source_split,
        target_mode=target_mode,
        target_seed=target_seed,
        target_split=target_split,
        is_self=is_self,
        alpha=alpha,
    )


def _detached(params: Params) -> Params:
    return {name: p.detach() for name, p in params.items()}


@contextmanager
def _module_mode(learner: Learner, training: bool) -> Iterator[None]:
    """Put the learner's modules in train or eval mode for a block (as fit and evaluate do), then restore."""
    was_training = learner.training
    learner.train(training)
    try:
        yield
    finally:
        learner.train(was_training)


@contextmanager
def _source_pass(learner: Learner) -> Iterator[None]:
    """Training mode for a block, with the learner's buffers put back on exit.

    A source is scored as a meta-training step scores it, and a plain training pass moves 'running'
    BatchNorm statistics. Targets are scored on those statistics, so without the restore every later ratio
    of the per-source loop would be measured against statistics drifted by the earlier sources (vmap's
    batched pass never writes them), and the measurement would change the model it measures.
    """
    saved = [(b, b.detach().clone()) for b in learner.buffers()]
    try:
        with _module_mode(learner, True):
            yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _shared_labels(group: TaskBatch) -> tuple[torch.Tensor, torch.Tensor, tuple[int | None, int | None]]:
    """``support_y`` and ``query_y`` of a group, each as one task's labels if every task has the same ones."""
    labels: list[torch.Tensor] = []
    dims: list[int | None] = []
    for y in (group.support_y, group.query_y):
        shared = bool(torch.equal(y, y[:1].expand_as(y)))
        labels.append(y[0] if shared else y)
        dims.append(None if shared else 0)
    return labels[0], labels[1], (dims[0], dims[1])


def source_gradients(learner: Learner, params: Params, sources: TaskBatch) -> Params:
    """Per-source meta-gradients ``∇_θ L_i(θ)``, stacked on a leading source axis ``[S, *shape]``.

    One ``vmap(grad(...))`` over the sources of each mode; each source is scored as a one-task batch in
    training mode, the loss whose gradient a meta-training step would take, and the learner's buffers are
    left as they were.
    """
    theta = _detached(params)
    out = {name: p.new_zeros((sources.num_tasks, *p.shape)) for name, p in theta.items()}
    for mode in torch.unique(sources.mode).tolist():
        index = torch.nonzero(sources.mode == mode).squeeze(1)
        group = sources.select(index)
        # The mode label stays an ordinary tensor inside vmap, so oracle learners can route on it.
        mode_label = group.mode[:1]

        def source_loss(
            p: Params,
            support_x: torch.Tensor,
            support_y: torch.Tensor,
            query_x: torch.Tensor,
            query_y: torch.Tensor,
            seed: torch.Tensor,
            mode_label: torch.Tensor = mode_label,
        ) -> torch.Tensor:
            task = TaskBatch(
                support_x=support_x.unsqueeze(0),
                support_y=support_y.unsqueeze(0),
                query_x=query_x.unsqueeze(0),
                query_y=query_y.unsqueeze(0),
                mode=mode_label,
                seed=seed.unsqueeze(0),
            )
            return learner.task_outputs(p, task, training=True).loss.sum()

        # Labels shared by every source (class-major episodes) stay unbatched: learners may use ops that
        # have no vmap rule for batched values (F.one_hot checks its input's range).
        support_y, query_y, y_dims = _shared_labels(group)
        with _source_pass(learner):
            grads = vmap(grad(source_loss), in_dims=(None, 0, y_dims[0], 0, y_dims[1], 0))(
                theta, group.support_x, support_y, group.query_x, query_y, group.seed
            )
        for name in out:
            out[name][index] = grads[name]
    return out


def target_losses(learner: Learner, stacked: Params, targets: TaskBatch) -> torch.Tensor:
    """``L_j(θ_k)``, ``[K, T]``, for every stacked parameter point ``θ_k`` (leading axis ``K``) and target ``j``.

    One ``vmap`` over the parameter axis; the targets are scored in evaluation mode, as the evaluation
    protocol scores test episodes.
    """

    def losses(p: Params) -> torch.Tensor:
        return learner.task_outputs(p, targets, training=False).loss

    with _module_mode(learner, False):
        return vmap(losses)(stacked).detach()


def _chunks(mode: torch.Tensor, chunk_size: int | None) -> list[torch.Tensor]:
    """Source indices in groups of one mode and at most ``chunk_size`` sources each."""
    chunks: list[torch.Tensor] = []
    for m in torch.unique(mode).tolist():
        index = torch.nonzero(mode == m).squeeze(1)
        chunks.extend(torch.split(index, chunk_size or len(index)))
    return chunks


def measure_transference(
    learner: Learner,
    params: Params,
    sources: TaskBatch,
    targets: TaskBatch,
    *,
    alpha: float,
    source_split: Split = "train",
    target_split: Split = "test",
    include_self: bool = False,
    chunk_size: int | None = None,
) -> TransferenceResult:
    """LR(i → j) for every source ``i`` and target ``j``, vectorised over sources and targets.

    Sources are processed per mode, in chunks of at most ``chunk_size`` (default: a whole mode at once) to
    bound memory: one ``vmap(grad)`` gives the chunk's meta-gradients, and one ``vmap`` over the stacked
    look-ahead points ``[θ, θ - α g_1, ...]`` gives every target loss. Each chunk's own ``L_j(θ)`` is the
    denominator of its rows, so a source with a zero gradient has LR exactly 1. ``include_self`` appends
    the targets to the sources, which yields the self-transference LR_{j→j}.
    """
    all_sources, n_self = _self_sources(sources, targets, include_self)
    split_names = (source_split,) * sources.num_tasks + (target_split,) * n_self
    theta = _detached(params)
    before = torch.empty((all_sources.num_tasks, targets.num_tasks), dtype=torch.float64)
    after = torch.empty_like(before)
    for index in _chunks(all_sources.mode.cpu(), chunk_size):
        grads = source_gradients(learner, theta, all_sources.select(index.to(all_sources.mode.device)))
        stacked = {name: torch.cat([p[None], p[None] - alpha * grads[name]]) for name, p in theta.items()}
        losses = target_losses(learner, stacked, targets).double().cpu()
        before[index] = losses[:1].expand(len(index), -1)
        after[index] = losses[1:]
    return _result(before, after, all_sources, split_names, targets, target_split, alpha)


def reference_loop_transference(
    learner: Learner,
    params: Params,
    sources: TaskBatch,
    targets: TaskBatch,
    *,
    alpha: float,
    source_split: Split = "train",
    target_split: Split = "test",
    include_self: bool = False,
) -> TransferenceResult:
    """The same measure, one source at a time with ``torch.autograd.grad`` and no vmap.

    It checks :func:`measure_transference` in tests, and it is the faster strategy on CPU (see
    :func:`vectorised`): one ordinary forward and backward per source, no grouped convolutions.
    """
    all_sources, n_self = _self_sources(sources, targets, include_self)
    split_names = (source_split,) * sources.num_tasks + (target_split,) * n_self
    theta = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    with _module_mode(learner, False):
        before = learner.task_outputs(_detached(theta), targets, training=False).loss.detach().double()[None]
    after_rows: list[torch.Tensor] = []
    for i in range(all_sources.num_tasks):
        with _source_pass(learner):
            loss = learner.task_outputs(theta, all_sources.select([i]), training=True).loss.sum()
            grads = torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
        moved = {
            name: (p if g is None else p - alpha * g).detach()
            for (name, p), g in zip(theta.items(), grads, strict=True)
        }
        with _module_mode(learner, False):
            after_rows.append(learner.task_outputs(moved, targets, training=False).loss.detach().double())
    after = torch.stack(after_rows)
    return _result(before.expand_as(after), after, all_sources, split_names, targets, target_split, alpha)


def fixed_tasks(benchmark: Benchmark, split: Split, per_mode: int, eval_seed: int) -> TaskBatch:
    """``per_mode`` tasks of every mode on ``split``, task ``i`` of a mode seeded ``episode_seed(eval_seed,
    split, mode, i)``: every arm and seed of a study measures transference on the same tasks, and targets on
    the test split are the study's first evaluation episodes."""
    modes = [m for m in range(len(benchmark.modes)) for _ in range(per_mode)]
    seeds = [episode_seed(eval_seed, split, benchmark.modes[m], i % per_mode) for i, m in enumerate(modes)]
    return benchmark.tasks(split, modes, seeds)


Strategy = Literal["auto", "vmap", "loop"]


def vectorised(strategy: Strategy, device: torch.device) -> bool:
    """Whether ``strategy`` measures with vmap on ``device``.

    ``auto`` picks vmap on accelerators and the per-source loop on CPU: there the work is compute-bound,
    and vmap turns every convolution with per-source weights into a grouped convolution, which measured
    2-3x slower than one ordinary convolution per source (kml_ablation's conv-4 on 2 cores).
    """
    return strategy == "vmap" or (strategy == "auto" and device.type != "cpu")


@dataclass
class TransferenceHook:
    """A :func:`mmlo.models.training.fit` hook: after the outer step of each of ``iterations`` it measures
    transference of ``sources`` onto ``targets`` and appends the rows, with ``iteration``, to :attr:`rows`.

    Measuring leaves training untouched: both strategies leave the learner's buffers and module mode as they
    found them, and the torch RNG state is restored. :attr:`seconds` adds up the time spent measuring, to set
    against the training time.
    """

    iterations: frozenset[int]
    sources: TaskBatch
    targets: TaskBatch
    alpha: float
    neutral_band: float
    source_split: Split = "train"
    target_split: Split = "test"
    include_self: bool = True
    strategy: Strategy = "auto"
    chunk_size: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def __call__(self, iteration: int, learner: Learner, benchmark: Benchmark) -> None:
        started = time.perf_counter()
        device = next(iter(learner.parameters())).device
        common: dict[str, Any] = {
            "alpha": self.alpha,
            "source_split": self.source_split,
            "target_split": self.target_split,
            "include_self": self.include_self,
        }
        sources, targets = self.sources.to(device), self.targets.to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if vectorised(self.strategy, device):
                result = measure_transference(
                    learner, learner.params(), sources, targets, chunk_size=self.chunk_size, **common
                )
            else:
                result = reference_loop_transference(learner, learner.params(), sources, targets, **common)
        rows = result.rows(benchmark.modes, self.neutral_band)
        self.rows.extend({"iteration": iteration, **row} for row in rows)
        self.seconds += time.perf_counter() - started


@dataclass(frozen=True)
class TransferenceSettings:
    """What a study's ``transference`` block asks to measure (models never import the orchestrator: the spec's
    block turns itself into these settings, and ``mmlo transference`` overrides them field by field).

    ``sources_per_mode``/``targets_per_mode`` fixed tasks from ``source_split``/``target_split``; ``alpha`` is
    the look-ahead step (default: the outer learning rate); ``|1 - LR| < neutral_band`` counts as neutral;
    ``at`` are the iterations to measure at (default: the last one).
    """

    sources_per_mode: int = 10
    targets_per_mode: int = 2
    source_split: Split = "train"
    target_split: Split = "test"
    alpha: float | None = None
    neutral_band: float = 0.01
    at: tuple[int, ...] | None = None


def make_transference_hook(
    benchmark: Benchmark,
    train_cfg: TrainConfig,
    settings: TransferenceSettings | None = None,
    *,
    include_self: bool = True,
    strategy: Strategy = "auto",
    chunk_size: int | None = None,
) -> TransferenceHook:
    """The hook that measures what ``settings`` ask (default: :class:`TransferenceSettings`'s defaults).

    Sources and targets are fixed tasks drawn with :func:`fixed_tasks` from ``train_cfg.eval_seed``; ``alpha``
    defaults to the outer learning rate ``train_cfg.lr`` and ``at`` to the last iteration. Iterations beyond
    the budget are dropped.
    """
    s = settings if settings is not None else TransferenceSettings()
    wanted = s.at if s.at is not None else [train_cfg.iterations]
    iterations = frozenset(int(i) for i in wanted if 1 <= i <= train_cfg.iterations)
    return TransferenceHook(
        iterations=iterations,
        sources=fixed_tasks(benchmark, s.source_split, s.sources_per_mode, train_cfg.eval_seed),
        targets=fixed_tasks(benchmark, s.target_split, s.targets_per_mode, train_cfg.eval_seed),
        alpha=float(s.alpha if s.alpha is not None else train_cfg.lr),
        neutral_band=float(s.neutral_band),
        source_split=s.source_split,
        target_split=s.target_split,
        include_self=include_self,
        strategy=strategy,
        chunk_size=chunk_size,
    )
