"""``mmlo bench``: seconds per meta-iteration of the vectorised learners against a per-task loop.

Each case times full meta-iterations (post-adaptation query loss of a meta-batch, meta-gradient, Adam
step) of ``Learner.task_outputs``, then of :func:`mmlo.models.learners.reference_loop_outputs` (the same
math, one task at a time) on the same batches in the same process, and prints the ratio (loop time over
vectorised time: above 1 means the vectorised call is faster), in wall-clock and in process CPU time. Batches are drawn before timing, so task
sampling is not counted. Image cases use random pixels: no dataset is needed.

Each case runs in a fresh spawned process, so that its peak resident memory is its own:
``peak_rss_mb`` is read after the vectorised timing, ``loop_peak_rss_mb`` after the loop's. Case
processes get the allocator study trials get (``allocator="auto"``: jemalloc for image cases where it is
installed, see :mod:`mmlo.models.allocator`), or the one forced; each row names the one it ran on.
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
from typing import Any

import torch

from mmlo.models.base import Learner, TaskOutput
from mmlo.models.config import LearnerConfig
from mmlo.tasks.base import Benchmark, Split, TaskBatch
from mmlo.tasks.config import BenchmarkConfig

#: Warm-up meta-iterations before timing (first-call allocations, lazy initialisation).
WARMUP = 1
#: Distinct pre-drawn batches cycled through by the timed iterations.
BATCH_POOL = 3


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
    images = {
        "protonet": LearnerConfig(learner="protonet"),
        "mprotonet": LearnerConfig(learner="mprotonet"),
        "kml-protonet": LearnerConfig(learner="kml", base="protonet"),
        "mmaml": LearnerConfig(learner="mmaml", inner_lr=0.05, inner_steps=5),
    }
    for size in (32, 84):
        for name, cfg in images.items():
            cases[f"{name}-{size}"] = BenchCase(cfg, 10, size)
    return cases


#: Every case, in the order they run by default.
CASES: dict[str, BenchCase] = _cases()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _seconds_per_iteration(
    learner: Learner,
    outputs: Callable[..., TaskOutput],
    batches: Sequence[TaskBatch],
    iterations: int,
    device: torch.device,
) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per meta-iteration (CPU time is the steadier figure on a shared
    machine: other processes stretch the wall clock, not this process's CPU time). On a GPU the clock is
    read after the device has finished the queued work."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)

    def step(batch: TaskBatch) -> None:
        optimizer.zero_grad(set_to_none=True)
        outputs(learner, learner.params(), batch, training=True).loss.mean().backward()
        optimizer.step()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(WARMUP):
        step(batches[i % len(batches)])
    synchronize()
    tic, cpu = time.perf_counter(), time.process_time()
    for i in range(iterations):
        step(batches[i % len(batches)])
    synchronize()
    return (time.perf_counter() - tic) / iterations, (time.process_time() - cpu) / iterations


def run_case(name: str, iterations: int, threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Time one case in this process on ``device``: vectorised first, then the per-task loop on the same
    batches."""
    import numpy as np

    from mmlo.models.allocator import process_allocator, reuse_large_allocations
    from mmlo.models.learners import build_learner, reference_loop_outputs
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
    gpu_peak: dict[str, Any] = {}
    if on.type == "cuda":
        torch.cuda.reset_peak_memory_stats(on)
    vectorised, vectorised_cpu = _seconds_per_iteration(
        learner, lambda m, p, b, training: m.task_outputs(p, b, training=training), batches, iterations, on
    )
    peak = _peak_rss_mb()
    if on.type == "cuda":
        gpu_peak["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(on) / 2**20
        torch.cuda.reset_peak_memory_stats(on)
    loop, loop_cpu = _seconds_per_iteration(learner, reference_loop_outputs, batches, iterations, on)
    if on.type == "cuda":
        gpu_peak["loop_peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(on) / 2**20
        gpu_peak["gpu"] = torch.cuda.get_device_name(on)
    return {
        "case": name,
        "seconds_per_iteration": vectorised,
        "loop_seconds_per_iteration": loop,
        "ratio": loop / vectorised,
        "peak_rss_mb": peak,
        "loop_peak_rss_mb": _peak_rss_mb(),
        "cpu_seconds_per_iteration": vectorised_cpu,
        "loop_cpu_seconds_per_iteration": loop_cpu,
        "cpu_ratio": loop_cpu / vectorised_cpu,
        "iterations": iterations,
        "threads": threads,
        "meta_batch": case.meta_batch,
        "params_total": learner.parameter_counts()["total"],
        "allocator": process_allocator(),
        "device": on.type,
        **gpu_peak,
    }


def run_bench(
    cases: list[str] | None,
    iterations: int,
    as_json: bool,
    threads: int = 1,
    allocator: str = "auto",
    device: str = "cpu",
) -> int:
    """Run the named cases (default: all of :data:`CASES`), each in a fresh process; print as they finish.

    ``as_json`` prints one JSON object per line (keys ``case, seconds_per_iteration,
    loop_seconds_per_iteration, ratio, peak_rss_mb, allocator`` and more), else a table. ``allocator``
    is ``auto`` (as studies: jemalloc for image cases), ``jemalloc`` or ``system``. Returns the exit
    code: 0, or 2 for an unknown case name or allocator, or a device this machine does not have.
    """
    from mmlo.models.allocator import choose

    names = list(cases) if cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"error: unknown bench case(s) {unknown}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    if iterations < 1:
        print("error: --iterations must be at least 1", file=sys.stderr)
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
            f"{'case':<20} {'ms/iter':>9} {'loop ms/iter':>13} {'ratio':>7} {'cpu ms/iter':>12} "
            f"{'loop cpu ms':>12} {'cpu ratio':>10} {'peak RSS MB':>12}  allocator",
            flush=True,
        )
    spawn = multiprocessing.get_context("spawn")
    notes = set()
    for name in names:
        environment, description = choose("regression" if CASES[name].image_size is None else "classification", allocator)
        if not environment and description != "system malloc":
            notes.add(description)
        with _environment(environment), ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            row = pool.submit(run_case, name, iterations, threads, device).result()
        if as_json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{name:<20} {row['seconds_per_iteration'] * 1e3:>9.1f} "
                f"{row['loop_seconds_per_iteration'] * 1e3:>13.1f} {row['ratio']:>6.2f}x "
                f"{row['cpu_seconds_per_iteration'] * 1e3:>12.1f} {row['loop_cpu_seconds_per_iteration'] * 1e3:>12.1f} "
                f"{row['cpu_ratio']:>9.2f}x {row['peak_rss_mb']:>12.0f}  {row['allocator']}",
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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mmlo.orchestrator.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", choices=list(CASES), help="repeatable; default: all")
    parser.add_argument("--iterations", type=int, default=5, help="timed meta-iterations per case")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--allocator", choices=["auto", "jemalloc", "system"], default="auto")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ns = parser.parse_args()
    sys.exit(run_bench(ns.case, ns.iterations, ns.json, ns.threads, ns.allocator, ns.device))
