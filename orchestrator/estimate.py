"""Expected durations, printed before a study starts (so a user knows whether to wait or to go home).

Each distinct learner configuration of the plan is timed in the driver for one outer step (after a warm-up
step, which also loads the training images) and one evaluation batch, on the trial's CPU share. A trial is
then expected to take ``iterations x step + evaluation batches x batch + start-up``, and a phase the
makespan of its trials dealt longest-first onto the slots that run at once. Timing runs every arm once
before Ray starts, so an arm that cannot even be built fails here, in seconds; that arm's trials are then
recorded as failed by their own workers, with the same error.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmlo.orchestrator.plan import TrialSpec, measures_transference, reports_per_trial
from mmlo.orchestrator.spec import Study
from mmlo.tasks.base import Benchmark

#: Seconds a trial spends outside ``fit``: actor reuse, building the benchmark, writing parts.
TRIAL_OVERHEAD_S = 1.0
#: Seconds a phase spends starting its actors (a fresh Python process importing torch and mmlo) and the
#: session spends starting Ray and writing the report: measured on a 2-core machine.
PHASE_START_S = 9.0
SESSION_OVERHEAD_S = 15.0


@dataclass(frozen=True)
class StepTiming:
    """Seconds of one outer step and of one evaluation batch (``meta_batch`` tasks) of one configuration,
    and of one transference measurement at the study's size (0 when the trial measures none)."""

    step_s: float
    eval_batch_s: float
    transference_s: float = 0.0


def time_configuration(study: Study, spec: TrialSpec, benchmark: Benchmark, threads: int) -> StepTiming | None:
    """Time one outer step and one evaluation batch of ``spec``'s configuration; None if it cannot run."""
    import torch

    from mmlo.models.learners import build_learner

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        learner_cfg, train_cfg = spec.learner_config(study), spec.train_config(study)
        torch.manual_seed(0)
        learner = build_learner(learner_cfg, benchmark)
        optimizer = torch.optim.Adam(learner.parameters(), lr=train_cfg.lr)
        rng = np.random.default_rng(0)
        batches = [benchmark.meta_batch("train", train_cfg.meta_batch, rng) for _ in range(2)]

        def step(batch: object) -> None:
            optimizer.zero_grad(set_to_none=True)
            learner.task_outputs(learner.params(), batch, training=True).loss.mean().backward()  # type: ignore[arg-type]
            optimizer.step()

        step(batches[0])
        tic = time.perf_counter()
        step(batches[1])
        step_s = time.perf_counter() - tic
        learner.eval()
        tic = time.perf_counter()
        learner.task_outputs(learner.params(), batches[0], training=False)
        eval_batch_s = time.perf_counter() - tic
        transference_s = _time_transference(study, spec, learner, benchmark)
    except Exception:  # noqa: BLE001 - the trial itself will fail and record why
        return None
    finally:
        torch.set_num_threads(previous)
    return StepTiming(step_s, eval_batch_s, transference_s)


def _time_transference(study: Study, spec: TrialSpec, learner: object, benchmark: Benchmark) -> float:
    """One measurement with one source and one target per mode, scaled to the study's pairs (the cost
    grows with sources x targets: every look-ahead point is scored on every target)."""
    t = study.transference
    if t is None or not measures_transference(study, spec):
        return 0.0
    from mmlo.models.transference import TransferenceSettings, make_transference_hook

    train = spec.train_config(study)
    hook = make_transference_hook(benchmark, train, TransferenceSettings(sources_per_mode=1, targets_per_mode=1))
    tic = time.perf_counter()
    hook(train.iterations, learner, benchmark)  # type: ignore[arg-type]
    once = time.perf_counter() - tic
    # Self-transference appends the targets to the sources.
    pairs = (t.sources_per_mode + t.targets_per_mode) * t.targets_per_mode
    return once * pairs / 2 * len(t.at or [train.iterations])


def trial_seconds(study: Study, spec: TrialSpec, timing: StepTiming, modes: int) -> float:
    """Expected wall seconds of one trial from its configuration's step timing."""
    train = spec.train_config(study)
    reports = reports_per_trial(train.iterations, train.val_interval)
    eval_batches = (
        reports * math.ceil(train.val_episodes / train.meta_batch) + math.ceil(train.eval_episodes / train.meta_batch)
    ) * modes
    return (
        TRIAL_OVERHEAD_S
        + train.iterations * timing.step_s
        + eval_batches * timing.eval_batch_s
        + timing.transference_s
    )


def estimate_trials(
    study: Study, specs: Sequence[TrialSpec], benchmark: Benchmark, threads: int
) -> dict[str, float | None]:
    """Expected seconds per trial id (None where the configuration could not be timed)."""
    timings: dict[str, StepTiming | None] = {}
    out: dict[str, float | None] = {}
    modes = len(benchmark.modes)
    for spec in specs:
        measures = measures_transference(study, spec)
        key = spec.learner_config(study).model_dump_json() + f"|{spec.train_config(study).meta_batch}|{measures}"
        if key not in timings:
            timings[key] = time_configuration(study, spec, benchmark, threads)
        timing = timings[key]
        out[spec.trial_id] = trial_seconds(study, spec, timing, modes) if timing is not None else None
    return out


def makespan(seconds: Sequence[float], slots: int) -> float:
    """Wall time of running jobs of these durations on ``slots`` parallel slots, longest first."""
    if not seconds:
        return 0.0
    ends = [0.0] * max(1, slots)
    for s in sorted(seconds, reverse=True):
        heapq.heapreplace(ends, ends[0] + s)
    return max(ends)
