"""``mmlo bench``: seconds per meta-iteration of mmlo's learners against the loop a user writes by hand.

Each case times full meta-iterations (post-adaptation query loss of a meta-batch, meta-gradient, Adam step)
three ways on the same batches in one process: ``Learner.task_outputs`` (mmlo's learner, whatever strategy it
picks for the device: see :func:`mmlo.models.networks.conv_strategy`), the *baseline*, and
:func:`mmlo.models.learners.reference_loop_outputs` (mmlo's own per-task loop). The baseline of an image case is
the *textbook loop* (:func:`textbook_maml`, :func:`textbook_protonet`): the papers' network and maths written
one task at a time in plain functional torch, as a researcher would without mmlo; regression's baseline is
mmlo's per-task loop. ``ratio_vs_baseline`` is baseline time over learner time (above 1: mmlo is faster),
``ratio`` the same against mmlo's loop; ``cpu_*`` are process CPU times.

The three run in interleaved rounds (after a warm-up each) and each reports its fastest round, so that a
machine shared with other work slows all of them alike and then only adds time. Batches are drawn before
timing, so task sampling is not counted. Image cases use random pixels: no dataset is needed.

Each case runs in a fresh spawned process per thread count, so that its peak resident memory is its own:
``peak_rss_mb`` is read after the learner's first round, ``loop_peak_rss_mb`` at the end. Case processes get
the allocator study trials get (``allocator="auto"``: jemalloc for image cases where it is installed, see
:mod:`mmlo.models.allocator`), or the one forced; each row names the one it ran on.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from mmlo.models.base import Learner, Params, TaskOutput
from mmlo.models.config import LearnerConfig
from mmlo.tasks.base import Benchmark, Split, TaskBatch
from mmlo.tasks.config import BenchmarkConfig

#: Warm-up meta-iterations of each method before timing (first-call allocations, lazy initialisation).
WARMUP = 1
#: Distinct pre-drawn batches cycled through by the timed iterations.
BATCH_POOL = 3
#: Conv blocks of the papers' image networks.
BLOCKS = 4
#: The MMAML-Classification / KML image network: 4 x [conv 3x3 stride 2, BatchNorm without affine, ReLU],
#: 32-64-128-256 channels, global average pool (then a linear head for the MAML family), xavier init.
PAPER_NET: dict[str, Any] = dict(
    channels=[32, 64, 128, 256], downsample="stride", pool="mean", bn_affine=False, init="xavier"
)
#: Image sizes of the image cases: Omniglot's and mini-ImageNet's.
IMAGE_SIZES = (28, 84)


@dataclass(frozen=True)
class BenchCase:
    """One timed configuration: a learner on a benchmark with a fixed meta-batch."""

    learner: LearnerConfig
    meta_batch: int
    #: ``None`` for regression2; else the side of the random square images.
    image_size: int | None


class RandomImages(Benchmark):
    """5-way 1-shot 15-query tasks of uniform random pixels, two modes: a dataset-free timing workload."""

    kind = "classification"
    modes = ("noise_a", "noise_b")
    output_dim = 5

    def __init__(self, image_size: int, ways: int = 5, shots: int = 1, query: int = 15) -> None:
        self.name = f"random{image_size}"
        self.input_shape = (3, image_size, image_size)
        self.ways, self.shots, self.query = ways, shots, query
        self.output_dim = ways

    def tasks(self, split: Split, modes: Sequence[int], seeds: Sequence[int]) -> TaskBatch:
        """Random images seeded per task; labels ``0..ways-1`` in blocks of ``shots`` / ``query``."""
        gen = torch.Generator()
        support, query = [], []
        for seed in seeds:
            gen.manual_seed(int(seed))
            support.append(torch.rand((self.ways * self.shots, *self.input_shape), generator=gen))
            query.append(torch.rand((self.ways * self.query, *self.input_shape), generator=gen))
        t = len(seeds)
        return TaskBatch(
            support_x=torch.stack(support),
            support_y=torch.arange(self.ways).repeat_interleave(self.shots).expand(t, -1).contiguous(),
            query_x=torch.stack(query),
            query_y=torch.arange(self.ways).repeat_interleave(self.query).expand(t, -1).contiguous(),
            mode=torch.as_tensor(list(modes), dtype=torch.int64),
            seed=torch.as_tensor([int(s) for s in seeds], dtype=torch.int64),
        )


def _cases() -> dict[str, BenchCase]:
    # MMAML-Regression's settings: MAML plain; MMAML with the BiLSTM encoder and inner gradients clipped at 10.
    regression = {"inner_lr": 0.001, "inner_steps": 5, "first_order": False}
    cases = {
        "regression2-maml": BenchCase(LearnerConfig(learner="maml", **regression), 50, None),
        "regression2-mmaml": BenchCase(
            LearnerConfig(learner="mmaml", encoder="lstm", inner_grad_clip=10.0, **regression), 50, None
        ),
    }
    # MMAML-Classification's: 5 second-order inner steps at step size 0.05, meta-batch 10, on its network.
    images = {
        "maml": LearnerConfig(learner="maml", inner_lr=0.05, inner_steps=5, **PAPER_NET),
        "mmaml": LearnerConfig(learner="mmaml", inner_lr=0.05, inner_steps=5, **PAPER_NET),
        "protonet": LearnerConfig(learner="protonet", **PAPER_NET),
        "kml-protonet": LearnerConfig(learner="kml", base="protonet", **PAPER_NET),
    }
    for size in IMAGE_SIZES:
        for name, cfg in images.items():
            cases[f"{name}-{size}"] = BenchCase(cfg, 10, size)
    return cases


#: Every case, in the order they run by default.
CASES: dict[str, BenchCase] = _cases()


# The textbook loop: what a user writes from the papers, one task at a time, in plain functional torch.
# It reads the learner's own parameters (so both compute the same numbers from the same weights) but
# none of mmlo's code: F.conv2d / F.batch_norm on each task's images, torch.autograd.grad for MAML's
# inner steps, a per-task modulated kernel for KML.


#: FiLM's (γ, β) for each block.
Film = list[tuple[torch.Tensor, torch.Tensor]]


def _paper_net(
    p: Params,
    x: torch.Tensor,
    film: Film | None = None,
    kernels: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """One task's images through the MMAML-Classification conv net: features ``[B, C]``."""
    h = x
    for i in range(BLOCKS):
        w, b = p[f"blocks.{i}.weight"], p[f"blocks.{i}.bias"]
        if kernels is not None:
            w, b = w * kernels[i][0], b + kernels[i][1]
        h = F.conv2d(h, w, b, stride=2, padding=1)
        h = F.batch_norm(h, None, None, training=True)
        if film is not None:
            gamma, beta = film[i]
            h = h * (1.0 + gamma).view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
        h = F.relu(h)
    return h.mean(dim=(2, 3))


def _task_embedding(p: Params, x: torch.Tensor) -> torch.Tensor:
    """υ of one task: the conv encoder on its support images, averaged."""
    h = x
    for i in range(BLOCKS):
        h = F.conv2d(h, p[f"encoder.blocks.{i}.weight"], p[f"encoder.blocks.{i}.bias"], stride=2, padding=1)
        h = F.batch_norm(h, None, None, p[f"encoder.blocks.{i}.bn_weight"], p[f"encoder.blocks.{i}.bn_bias"],
                         training=True)
        h = F.relu(h)
    h = F.relu(F.linear(h.mean(dim=(2, 3)), p["encoder.project.weight"], p["encoder.project.bias"]))
    return h.mean(dim=0)


def _film(p: Params, u: torch.Tensor) -> Film:
    """(γ, β) of every block from υ."""
    heads = [F.linear(u, p[f"modulation.heads.{i}.weight"], p[f"modulation.heads.{i}.bias"]) for i in range(BLOCKS)]
    return [tuple(head.chunk(2)) for head in heads]  # type: ignore[misc]


def _kml(p: Params, u: torch.Tensor, shapes: list[torch.Size]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(M, Δb) of every block from υ: M is the outer product g1(υ) ⊗ g2(υ) reshaped to the kernel."""
    out = []
    for i, shape in enumerate(shapes):
        g1 = F.linear(u, p[f"modulation.g1.{i}.weight"], p[f"modulation.g1.{i}.bias"])
        g2 = F.linear(u, p[f"modulation.g2.{i}.weight"], p[f"modulation.g2.{i}.bias"])
        g3 = F.linear(u, p[f"modulation.g3.{i}.weight"], p[f"modulation.g3.{i}.bias"])
        out.append((torch.outer(g1, g2).view(shape), g3))
    return out


def textbook_maml(learner: Learner, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
    """MAML / MMAML (FiLM): for each task, ``inner_steps`` second-order SGD steps on the support loss, then the
    query loss (``learner`` supplies only the step size and step count)."""
    cfg = learner.config
    backbone = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
    losses, accuracies = [], []
    for t in range(batch.num_tasks):
        film = _film(params, _task_embedding(params, batch.support_x[t])) if cfg.resolved_modulation == "film" else None
        fast = dict(backbone)

        def logits(weights: Params, x: torch.Tensor, film: Film | None = film) -> torch.Tensor:
            return F.linear(_paper_net(weights, x, film=film), weights["head.weight"], weights["head.bias"])

        for _ in range(cfg.inner_steps):
            loss = F.cross_entropy(logits(fast, batch.support_x[t]), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {k: w - cfg.inner_lr * g for (k, w), g in zip(fast.items(), grads, strict=True)}
        out = logits(fast, batch.query_x[t])
        losses.append(F.cross_entropy(out, batch.query_y[t]))
        accuracies.append((out.argmax(-1) == batch.query_y[t]).float().mean())
    return TaskOutput(loss=torch.stack(losses), metric=torch.stack(accuracies))


def textbook_protonet(learner: Learner, params: Params, batch: TaskBatch, *, training: bool = True) -> TaskOutput:
    """ProtoNet / KML-ProtoNet: for each task, embed support and query together, prototypes are the class means
    of the support embeddings (class-major support), logits the negative squared distances."""
    backbone = {k[len("backbone."):]: v for k, v in params.items() if k.startswith("backbone.")}
    shapes = [backbone[f"blocks.{i}.weight"].shape for i in range(BLOCKS)]
    ways = cast(int, learner.outputs)  # a meta-learner's class count (an nn.Module attribute to mypy)
    n_support = batch.support_x.shape[1]
    losses, accuracies = [], []
    for t in range(batch.num_tasks):
        kernels = _kml(params, _task_embedding(params, batch.support_x[t]), shapes) if learner.encoder else None
        z = _paper_net(backbone, torch.cat([batch.support_x[t], batch.query_x[t]]), kernels=kernels)
        prototypes = z[:n_support].view(ways, n_support // ways, -1).mean(1)
        out = -(z[n_support:].unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)
        losses.append(F.cross_entropy(out, batch.query_y[t]))
        accuracies.append((out.argmax(-1) == batch.query_y[t]).float().mean())
    return TaskOutput(loss=torch.stack(losses), metric=torch.stack(accuracies))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


Outputs = Callable[..., TaskOutput]


class _Timer:
    """Meta-iterations (query loss of a meta-batch, meta-gradient, Adam step) of one way of computing the
    losses, timed in rounds so that several ways interleave in one process.

    On a GPU the clock is read after the device has finished the queued work.
    """

    def __init__(self, learner: Learner, outputs: Outputs, batches: Sequence[TaskBatch], device: torch.device):
        self.learner, self.outputs, self.batches, self.device = learner, outputs, batches, device
        self.optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        self.done = 0
        #: (wall, CPU) seconds per iteration of every round.
        self.rounds: list[tuple[float, float]] = []

    def _step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        batch = self.batches[self.done % len(self.batches)]
        self.outputs(self.learner, self.learner.params(), batch, training=True).loss.mean().backward()
        self.optimizer.step()
        self.done += 1

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def warm_up(self) -> None:
        for _ in range(WARMUP):
            self._step()
        self._synchronize()

    def time_round(self, iterations: int) -> None:
        tic, cpu = time.perf_counter(), time.process_time()
        for _ in range(iterations):
            self._step()
        self._synchronize()
        self.rounds.append(((time.perf_counter() - tic) / iterations, (time.process_time() - cpu) / iterations))

    def best(self) -> tuple[float, float]:
        """The fastest round's wall-clock and CPU seconds per iteration: other processes only ever add time."""
        return min(r[0] for r in self.rounds), min(r[1] for r in self.rounds)


def run_case(name: str, iterations: int, threads: int = 1, device: str = "cpu", rounds: int = 3) -> dict[str, Any]:
    """Time one case in this process on ``device``: mmlo's learner (vectorised), the baseline (the textbook
    loop for image cases, mmlo's own per-task loop for regression) and mmlo's per-task loop, on the same
    batches, in ``rounds`` interleaved rounds of ``iterations`` meta-iterations each."""
    import numpy as np

    from mmlo.models.allocator import process_allocator, reuse_large_allocations
    from mmlo.models.learners import build_learner, reference_loop_outputs
    from mmlo.models.networks import conv_strategy
    from mmlo.tasks.regression import build

    reuse_large_allocations()
    torch.set_num_threads(threads)
    case = CASES[name]
    bench: Benchmark
    if case.image_size is None:
        bench = build(BenchmarkConfig(name="regression2", shots=5, query=5))
    else:
        bench = RandomImages(case.image_size)
    on = torch.device(device)
    rng = np.random.default_rng(0)
    batches = [bench.meta_batch("train", case.meta_batch, rng).to(on) for _ in range(BATCH_POOL)]
    torch.manual_seed(0)
    learner = build_learner(case.learner, bench).to(on)
    textbook: Outputs | None = None
    if case.image_size is not None:
        textbook = textbook_maml if case.learner.base_algorithm == "maml" else textbook_protonet
    gpu_peak: dict[str, Any] = {}
    if on.type == "cuda":
        torch.cuda.reset_peak_memory_stats(on)
    vectorised = _Timer(learner, lambda m, p, b, training: m.task_outputs(p, b, training=training), batches, on)
    vectorised.warm_up()
    vectorised.time_round(iterations)
    peak = _peak_rss_mb()
    if on.type == "cuda":
        gpu_peak["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(on) / 2**20
        torch.cuda.reset_peak_memory_stats(on)
    loop = _Timer(learner, reference_loop_outputs, batches, on)
    baseline = loop if textbook is None else _Timer(learner, textbook, batches, on)
    timers = [vectorised, baseline] + ([loop] if loop is not baseline else [])
    for timer in timers[1:]:
        timer.warm_up()
    for r in range(rounds):
        for timer in timers if r else timers[1:]:
            timer.time_round(iterations)
    if on.type == "cuda":
        gpu_peak["loop_peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(on) / 2**20
        gpu_peak["gpu"] = torch.cuda.get_device_name(on)
    (wall, cpu), (base_wall, base_cpu), (loop_wall, loop_cpu) = vectorised.best(), baseline.best(), loop.best()
    return {
        "case": name,
        "threads": threads,
        "seconds_per_iteration": wall,
        "baseline": "loop" if textbook is None else "textbook",
        "baseline_seconds_per_iteration": base_wall,
        "ratio_vs_baseline": base_wall / wall,
        "loop_seconds_per_iteration": loop_wall,
        "ratio": loop_wall / wall,
        "cpu_seconds_per_iteration": cpu,
        "baseline_cpu_seconds_per_iteration": base_cpu,
        "cpu_ratio_vs_baseline": base_cpu / cpu,
        "loop_cpu_seconds_per_iteration": loop_cpu,
        "cpu_ratio": loop_cpu / cpu,
        "peak_rss_mb": peak,
        "loop_peak_rss_mb": _peak_rss_mb(),
        "strategy": conv_strategy(on) if case.image_size is not None else "vectorised",
        "iterations": iterations,
        "rounds": rounds,
        "meta_batch": case.meta_batch,
        "image_size": case.image_size,
        "params_total": learner.parameter_counts()["total"],
        "allocator": process_allocator(),
        "device": on.type,
        **gpu_peak,
    }


def run_bench(
    cases: list[str] | None,
    iterations: int,
    as_json: bool,
    threads: Sequence[int] = (1, 2),
    allocator: str = "auto",
    device: str = "cpu",
    rounds: int = 3,
) -> int:
    """Run the named cases (default: all of :data:`CASES`) at each thread count, each in a fresh process;
    print as they finish.

    ``as_json`` prints one JSON object per line (keys ``case, threads, seconds_per_iteration, baseline,
    baseline_seconds_per_iteration, ratio_vs_baseline, loop_seconds_per_iteration, ratio, peak_rss_mb,
    allocator`` and more), else a table. ``allocator`` is ``auto`` (as studies: jemalloc for image cases),
    ``jemalloc`` or ``system``. Returns the exit code: 0, or 2 for an unknown case name or allocator, a
    thread count below 1, or a device this machine does not have.
    """
    from mmlo.models.allocator import choose

    names = list(cases) if cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"error: unknown bench case(s) {unknown}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    if iterations < 1 or rounds < 1:
        print("error: --iterations and --rounds must be at least 1", file=sys.stderr)
        return 2
    if not threads or min(threads) < 1:
        print("error: --threads must be at least 1", file=sys.stderr)
        return 2
    if device not in ("cpu", "cuda"):
        print(f"error: unknown device '{device}'; choose cpu or cuda", file=sys.stderr)
        return 2
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: torch sees no CUDA device on this machine (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    if allocator not in ("auto", "jemalloc", "system"):
        print(f"error: unknown allocator '{allocator}'; choose auto, jemalloc or system", file=sys.stderr)
        return 2
    if not as_json:
        print(
            f"{'case':<18} {'thr':>3} {'ms/iter':>9} {'baseline ms':>12} {'vs base':>8} {'loop ms':>9} "
            f"{'vs loop':>8} {'cpu vs base':>12} {'peak RSS MB':>12}  strategy, allocator",
            flush=True,
        )
    spawn = multiprocessing.get_context("spawn")
    notes = set()
    for name in names:
        kind = "regression" if CASES[name].image_size is None else "classification"
        environment, description = choose(kind, allocator)
        if not environment and description != "system malloc":
            notes.add(description)
        for count in threads:
            with _environment(environment), ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                row = pool.submit(run_case, name, iterations, count, device, rounds).result()
            if as_json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{name:<18} {count:>3} {row['seconds_per_iteration'] * 1e3:>9.1f} "
                    f"{row['baseline_seconds_per_iteration'] * 1e3:>12.1f} {row['ratio_vs_baseline']:>7.2f}x "
                    f"{row['loop_seconds_per_iteration'] * 1e3:>9.1f} {row['ratio']:>7.2f}x "
                    f"{row['cpu_ratio_vs_baseline']:>11.2f}x {row['peak_rss_mb']:>12.0f}  "
                    f"{row['strategy']}, {row['allocator']}",
                    flush=True,
                )
    for note in sorted(notes):
        print(f"note: {note}", file=sys.stderr)
    return 0


@contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes spawned inside the block (they read them at exec)."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
