"""Meta-training one learner, independent of Ray: ``fit`` is what a trial runs, and it also runs alone.

The outer loop is Adam on the mean post-adaptation query loss of a meta-batch (equal shares of every
mode), with optional step decay of the learning rate and global gradient-norm clipping. Every
``val_interval`` iterations the learner is scored on fixed validation episodes and ``report`` receives
scalar metrics (and, every ``checkpoint_every`` validations, a checkpoint directory). After training the
final model is evaluated on the study's fixed test episodes (:mod:`mmlo.models.evaluation`).

Seeds come in separate streams: the training seed fixes the initialisation and, per iteration, the
meta-batch (a generator keyed by ``(seed, iteration)``, so a resumed run draws exactly the tasks an
uninterrupted one would); the study's ``eval_seed`` fixes the validation and test episodes, shared by every
arm. On CPU, resuming from a checkpoint gives bit-identical results to a run that was never interrupted.

Run alone for debugging (:func:`train_alone`)::

    mmlo train --benchmark regression2 --learner mmaml --iterations 200
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mmlo.models.allocator import reuse_large_allocations
from mmlo.models.base import Learner
from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.models.evaluation import evaluate, mean_ci95, metric_name, mode_means
from mmlo.models.learners import build_learner
from mmlo.tasks.base import Benchmark

Report = Callable[[dict[str, float], Path | None], None]

#: Name of the state file inside a checkpoint directory.
CHECKPOINT_FILE = "state.pt"
_CHECKPOINT_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The meta-loss or the meta-gradient became NaN or infinite; the trial cannot continue."""


class Hook(Protocol):
    """Called after the outer step of each iteration in ``iterations`` (transference analysis uses this)."""

    @property
    def iterations(self) -> frozenset[int]: ...

    def __call__(self, iteration: int, learner: Learner, benchmark: Benchmark) -> None: ...


@dataclass
class FitResult:
    """What one training run produced.

    ``seconds_per_iteration`` counts outer steps only (no validation, no test evaluation) and only those run
    by this call; ``wall_seconds`` is the whole call. ``peak_memory_mb`` is the process's peak resident
    memory on CPU, the peak allocated accelerator memory on CUDA. ``episodes`` holds one row per test
    episode (see :func:`mmlo.models.evaluation.evaluate`); ``test_metric`` is their mean over modes of the
    per-mode means.
    """

    iterations_done: int
    wall_seconds: float
    seconds_per_iteration: float
    parameter_counts: dict[str, int]
    final_val_metric: float
    metric_name: str
    peak_memory_mb: float
    episodes: list[dict[str, Any]] = field(default_factory=list)
    test_metric: float = math.nan


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of a training seed (``init``, ``meta_batch``, ``torch``)."""
    digest = hashlib.sha256(f"mmlo.training:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def meta_batch_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator that draws the task seeds of meta-batch ``iteration`` (1-based)."""
    return np.random.default_rng([stream_seed(seed, "meta_batch"), iteration])


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """Outer learning rate at ``iteration`` (1-based): ``lr * factor ** floor((iteration - 1) / every)``."""
    if cfg.lr_decay_every is None:
        return cfg.lr
    return cfg.lr * cfg.lr_decay_factor ** ((iteration - 1) // cfg.lr_decay_every)


#: Top-level parameter prefixes of the task encoder and generator (MMAML code's "embedding model");
#: every other parameter (the backbone θ, Meta-SGD's step sizes) belongs to the model.
ENCODER_PREFIXES = ("encoder", "modulation")


def clip_per_component(learner: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the meta-gradient norm of the model (θ) and of the encoder + generator separately, each to max_norm.

    As the MMAML-Regression code clips its model and its embedding model (two ``clip_grad_norm_`` calls).
    Returns the global norm before clipping (both groups together), for the divergence check.
    """
    groups: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for name, p in learner.named_parameters():
        if p.grad is not None:
            groups[name.split(".", 1)[0] in ENCODER_PREFIXES].append(p)
    norms = [torch.nn.utils.clip_grad_norm_(ps, max_norm) for ps in groups.values() if ps]
    return torch.stack(norms).norm() if norms else torch.zeros(())


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _validate(learner: Learner, benchmark: Benchmark, cfg: TrainConfig) -> dict[str, float]:
    rows = evaluate(learner, benchmark, "val", cfg.val_episodes, cfg.eval_seed, cfg.meta_batch)
    per_mode = mode_means(rows)
    metrics = {"val_metric": float(np.mean(list(per_mode.values())))}
    metrics.update({f"val_{mode}": value for mode, value in per_mode.items()})
    return metrics


def _identity(learner_cfg: LearnerConfig, benchmark: Benchmark) -> dict[str, str]:
    return {"learner_config": learner_cfg.model_dump_json(), "benchmark": benchmark.fingerprint()}


def save_checkpoint(
    directory: Path,
    learner: Learner,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    identity: dict[str, str],
) -> Path:
    """Write model, optimizer, RNG and loop state into ``directory`` atomically (temp dir + rename)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    payload = {
        "format": _CHECKPOINT_FORMAT,
        **identity,
        **state,
        "model": learner.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    torch.save(payload, tmp / CHECKPOINT_FILE)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory


def load_checkpoint(directory: Path, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safe loading: ``weights_only=True``)."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    if payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {payload.get('format')}, expected {_CHECKPOINT_FORMAT}")
    return payload


def fit(
    learner_cfg: LearnerConfig,
    train_cfg: TrainConfig,
    benchmark: Benchmark,
    *,
    report: Report | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    hooks: Sequence[Hook] = (),
    device: str | None = None,
) -> FitResult:
    """Meta-train a fresh learner for ``train_cfg.iterations`` outer steps, then evaluate it on test episodes.

    ``report(metrics, checkpoint)`` is called after every validation (every ``val_interval`` iterations and
    after the last one) with scalar metrics ``iteration, elapsed_s, train_loss`` (mean since the previous
    report), ``val_metric`` (mean over modes), ``val_<mode>``, ``lr``; ``checkpoint`` is the directory
    written under ``checkpoint_dir`` at every ``checkpoint_every``-th validation and after the last
    iteration, else None. ``resume_from`` continues from such a directory (the learner configuration and
    the benchmark must match; the remaining budget comes from ``train_cfg``). ``device`` defaults to CPU.
    Raises :class:`TrainingDiverged` on a NaN or infinite meta-loss or meta-gradient.
    """
    started = time.perf_counter()
    reuse_large_allocations()
    torch_device = torch.device(device or "cpu")
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    torch.manual_seed(stream_seed(train_cfg.seed, "init"))
    learner = build_learner(learner_cfg, benchmark).to(torch_device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=train_cfg.lr)
    torch.manual_seed(stream_seed(train_cfg.seed, "torch"))
    identity = _identity(learner_cfg, benchmark)

    done, validations, elapsed_before = 0, 0, 0.0
    final_val = math.nan
    if resume_from is not None:
        payload = load_checkpoint(Path(resume_from), torch_device)
        for key, value in identity.items():
            if payload[key] != value:
                raise ValueError(f"checkpoint {resume_from} has another {key}: {payload[key]} != {value}")
        learner.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["torch_rng"].cpu())
        done, validations = int(payload["iteration"]), int(payload["validations"])
        elapsed_before, final_val = float(payload["elapsed_s"]), float(payload["val_metric"])

    first = done + 1
    step_seconds, loss_sum, loss_count, lr = 0.0, 0.0, 0, learning_rate(train_cfg, max(done, 1))
    learner.train()
    for iteration in range(first, train_cfg.iterations + 1):
        tic = time.perf_counter()
        lr = learning_rate(train_cfg, iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = benchmark.meta_batch("train", train_cfg.meta_batch, meta_batch_rng(train_cfg.seed, iteration))
        optimizer.zero_grad(set_to_none=True)
        loss = learner.task_outputs(learner.params(), batch.to(torch_device), training=True).loss.mean()
        loss_value = float(loss.item())
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"meta-loss is {loss_value} at iteration {iteration}")
        loss.backward()
        if train_cfg.grad_clip is not None and train_cfg.grad_clip_per_component:
            norm = clip_per_component(learner, train_cfg.grad_clip)
        elif train_cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(learner.parameters(), train_cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in learner.parameters() if p.grad is not None])
        if not math.isfinite(float(norm)):
            raise TrainingDiverged(f"meta-gradient norm is {float(norm)} at iteration {iteration}")
        optimizer.step()
        step_seconds += time.perf_counter() - tic
        loss_sum += loss_value
        loss_count += 1
        done = iteration
        for hook in hooks:
            if iteration in hook.iterations:
                hook(iteration, learner, benchmark)

        last = iteration == train_cfg.iterations
        if iteration % train_cfg.val_interval and not last:
            continue
        val = _validate(learner, benchmark, train_cfg)
        learner.train()
        validations += 1
        final_val = val["val_metric"]
        elapsed = elapsed_before + time.perf_counter() - started
        metrics: dict[str, float] = {
            "iteration": iteration,
            "elapsed_s": elapsed,
            "train_loss": loss_sum / loss_count,
            **val,
            "lr": lr,
        }
        loss_sum, loss_count = 0.0, 0
        checkpoint: Path | None = None
        if checkpoint_dir is not None and (validations % train_cfg.checkpoint_every == 0 or last):
            state = {"iteration": iteration, "validations": validations, "elapsed_s": elapsed, "val_metric": final_val}
            checkpoint = save_checkpoint(
                Path(checkpoint_dir) / f"checkpoint_{iteration:08d}", learner, optimizer, state, identity
            )
        if report is not None:
            report(metrics, checkpoint)

    episodes = evaluate(learner, benchmark, "test", train_cfg.eval_episodes, train_cfg.eval_seed, train_cfg.meta_batch)
    per_mode = mode_means(episodes)
    ran = done - first + 1
    return FitResult(
        iterations_done=done,
        wall_seconds=time.perf_counter() - started,
        seconds_per_iteration=step_seconds / ran if ran > 0 else math.nan,
        parameter_counts=learner.parameter_counts(),
        final_val_metric=final_val,
        metric_name=metric_name(benchmark.kind),
        peak_memory_mb=_peak_memory_mb(torch_device),
        episodes=episodes,
        test_metric=float(np.mean(list(per_mode.values()))),
    )


def train_alone(
    learner_cfg: LearnerConfig,
    train_cfg: TrainConfig,
    benchmark: Benchmark,
    *,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    device: str | None = None,
) -> FitResult:
    """``mmlo train``: train without Ray, print each report as one JSON line, then per-mode test means ± 95 % CI."""

    def show(metrics: dict[str, float], checkpoint: Path | None) -> None:
        line: dict[str, float | str] = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
        if checkpoint is not None:
            line["checkpoint"] = str(checkpoint)
        print(json.dumps(line), flush=True)

    result = fit(
        learner_cfg,
        train_cfg,
        benchmark,
        report=show,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        device=device,
    )
    print(
        f"{learner_cfg.learner} on {benchmark.name}: {result.iterations_done} iterations, "
        f"{result.seconds_per_iteration * 1e3:.1f} ms/iteration, peak {result.peak_memory_mb:.0f} MB, "
        f"parameters {result.parameter_counts}"
    )
    for mode in benchmark.modes:
        rows = [r for r in result.episodes if r["mode"] == mode]
        after, half = mean_ci95([r["value_after"] for r in rows])
        text = f"  test {mode:>14} {result.metric_name} after {after:.4f} ± {half:.4f}"
        if rows and rows[0]["value_before"] is not None:
            before, half_before = mean_ci95([r["value_before"] for r in rows])
            text += f"   before {before:.4f} ± {half_before:.4f}"
        print(text)
    print(f"  test {'mean':>14} {result.metric_name} after {result.test_metric:.4f}")
    return result
