"""One trial: one call of :func:`mmlo.models.training.fit` in a worker of the engine (Ray Tune).

The engine (:mod:`mmlo.orchestrator.ray_engine`, where ``tune.report`` lives: ray#49454, reporting APIs churn)
calls :func:`run_trial` with the trial's config and an :class:`Engine` to report through. A trial may run on
any node of a cluster, which shares no file system with the driver: everything it needs comes in its Tune config (the
resolved spec, the run directory's location) or from the run's store, and everything it writes goes there. It

- checks (and on first use prepares) the benchmark's data on its own node, and fails at once, naming the
  node and the missing path, when the data is not there;
- records the node it ran on, its device (CPU or the GPU Ray gave it) and the GPU's peak memory;
- sets torch's thread count to the trial's CPU share and trains on CUDA when the worker has a GPU;
- resumes from the engine's checkpoint of the trial (a Tune retry) or from the checkpoint the driver found for an
  interrupted trial of an earlier session;
- writes the trial's part files (record, validation rows, test episodes, transference rows) into the ledger
  itself, and reports only scalars to the engine, plus a checkpoint whenever ``fit`` wrote one;
- holds back the last validation's report until the test episodes are written, so that a scheduler
  decision on the final report can never cut a finished trial short of its evaluation;
- records an exception, a NaN/inf loss (``TrainingDiverged``) or an out-of-memory error as ``failed`` with
  its reason, then re-raises it, so that Tune applies the study's retries and the search tells Optuna FAIL.

``MMLO_FAIL_ARM=<arm name>`` in the environment makes that arm's trials fail on purpose, and ``MMLO_FAULTS``
(:mod:`mmlo.orchestrator.faults`) gives them a NaN or a SIGKILL mid-training (the fault tests).
``resources.memory_limit_mb`` caps each worker's memory, so that a trial that needs more is recorded as out of
memory. A full disk under the run directory is not the trial's failure: such a trial stays unfinished.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.orchestrator import faults, ledger, sink
from mmlo.orchestrator.plan import TrialSpec, measures_transference, search_trial
from mmlo.orchestrator.search import NUMBER_KEY
from mmlo.orchestrator.spec import Study, parse_study
from mmlo.storage import RunStore, storage_full
from mmlo.tasks.base import Benchmark

FAIL_ARM_ENV = "MMLO_FAIL_ARM"
#: How torch's CPU allocator words a failed allocation (a RuntimeError, unlike CUDA's OutOfMemoryError).
CPU_ALLOCATOR_FAILED = "DefaultCPUAllocator: can't allocate memory"

#: A reused actor runs many trials of one study: the benchmark (its image banks) is built once per worker.
_benchmarks: dict[str, Benchmark] = {}


class DeliberateFailure(RuntimeError):
    """Raised for the arm named by ``MMLO_FAIL_ARM`` (fault-handling tests)."""


class Engine(Protocol):
    """What a trial asks of the engine that runs it (:class:`mmlo.orchestrator.ray_engine.TuneSession`)."""

    def node(self) -> dict[str, str | None]:
        """The node the trial runs on: ``node_hostname``, ``node_ip``, ``node_id``."""

    def restored_checkpoint(self, into: Path) -> Path | None:
        """The engine's own checkpoint of this trial (a retry), copied into ``into``; None on a first attempt."""

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        """Report scalars, and a checkpoint folder the engine keeps (and this may then delete)."""


def trial_constants(run_dir: RunStore, study: Study) -> dict[str, Any]:
    """What every trial's Tune config carries: where the run directory is and the resolved spec itself (a
    trial on another node cannot read the driver's files)."""
    return {"run_dir": run_dir.uri, "spec": study.model_dump(mode="json"), "cpus": study.resources.cpus_per_trial}


def reuse_actors(address: str | None, study: Study) -> bool:
    """Whether one actor runs trial after trial or each trial gets its own.

    On this machine, reuse (a fresh actor costs ~2 s of start-up plus the torch import: on the default study
    about 15 % of its wall time). On a cluster (``--address``) and with GPUs, one actor per trial: trials are
    long there, each actor then carries its trial's id in the cluster's dashboard, and a trial's GPU memory
    goes back to the device when it ends.
    """
    return address is None and study.resources.gpus_per_trial == 0


def load_resolved_study(config: dict[str, Any]) -> Study:
    """The resolved spec a trial's Tune config carries, the one every trial of the run trains from."""
    return parse_study(config["spec"], "the study's resolved spec")


def trial_from_config(study: Study, config: dict[str, Any]) -> TrialSpec:
    """The trial a Tune config describes: a planned trial, or a search trial from Optuna's sample."""
    if config.get(NUMBER_KEY) is not None:
        assert study.search is not None
        params = {name: config[name] for name in study.search.space if name in config}
        return search_trial(study, int(config[NUMBER_KEY]), params)
    return TrialSpec.from_json(config["trial"])


def config_trial_id(config: dict[str, Any]) -> str:
    """The id of the trial a Tune config describes (a search trial's comes from its Optuna number)."""
    if config.get(NUMBER_KEY) is not None:
        return f"search-{int(config[NUMBER_KEY]):03d}"
    return str(config["trial"]["trial_id"])


def config_phase(config: dict[str, Any]) -> str:
    """The phase of the trial a Tune config describes."""
    return "search" if config.get(NUMBER_KEY) is not None else str(config["trial"]["phase"])


def _benchmark(study: Study, where: dict[str, str | None]) -> Benchmark:
    """The study's benchmark on this node: its data prepared here on first use, then built once per worker."""
    from mmlo.tasks.errors import DataMissingError
    from mmlo.tasks.registry import get_benchmark, prepare_here

    key = study.benchmark.model_dump_json()
    if key not in _benchmarks:
        try:
            prepare_here(study.benchmark)
            _benchmarks[key] = get_benchmark(study.benchmark)
        except DataMissingError as err:
            raise DataMissingError(f"on node {where['node_hostname']} ({where['node_ip']}): {err}") from None
    return _benchmarks[key]


def device_record(device: Any) -> dict[str, Any]:
    """The device a trial trained on and, on a GPU, its peak memory (MiB) as torch counted it."""
    import torch

    if device.type != "cuda":
        return {"device": "cpu", "peak_gpu_memory_mb": None}
    return {
        "device": torch.cuda.get_device_name(device),
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
    }


def failure_reason(err: BaseException) -> str:
    """One line naming what went wrong: the exception type and its first message line."""
    import torch

    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        kind = "out of memory"
    elif CPU_ALLOCATOR_FAILED in text:
        # torch reports a failed CPU allocation as a RuntimeError whose message begins with its C++ assertion.
        kind, text = "out of memory", text[text.index(CPU_ALLOCATOR_FAILED) :]
    else:
        kind = type(err).__name__
    return f"{kind}: {text}" if text else kind


def base_record(
    spec: TrialSpec, study: Study, learner: LearnerConfig, train: TrainConfig, benchmark: Benchmark
) -> dict[str, Any]:
    """The trial's record while it runs: ids, budget and configuration (counts and results come later)."""
    from mmlo.models.allocator import process_allocator
    from mmlo.models.evaluation import metric_name
    from mmlo.models.learners import build_learner

    counts = build_learner(learner, benchmark).parameter_counts()
    return {
        "study": study.name,
        "phase": spec.phase,
        "trial_id": spec.trial_id,
        "arm": spec.arm,
        "seed": spec.seed,
        "state": "running",
        "failure_reason": None,
        "iterations_done": 0,
        "budget_iterations": train.iterations,
        "wall_seconds": None,
        "seconds_per_iteration": None,
        **{f"params_{k}": counts.get(k) for k in ("backbone", "encoder", "generator", "total")},
        "metric_name": metric_name(benchmark.kind),
        "val_metric": None,
        "peak_memory_mb": None,
        "allocator": process_allocator(),
        **sink.config_columns(learner, train),
        "spec": spec.to_json(),
        "updated": time.time(),
    }


def _transference_hook(study: Study, spec: TrialSpec, train: TrainConfig, benchmark: Benchmark) -> Any:
    """The study's transference measurement, for ablation trials of the arms it names."""
    t = study.transference
    if t is None or not measures_transference(study, spec):
        return None
    from mmlo.models.transference import make_transference_hook

    return make_transference_hook(benchmark, train, t.settings())


def run_trial(config: dict[str, Any], engine: Engine) -> None:
    """One trial (``config``: ``run_dir``, ``cpus``, and the trial or Optuna's sample), reporting to ``engine``."""
    import torch

    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    run_dir = RunStore.open(config["run_dir"])
    study = load_resolved_study(config)
    limit_memory(study.resources.memory_limit_mb)
    spec = trial_from_config(study, config)
    ids = {"study": study.name, "phase": spec.phase, "trial_id": spec.trial_id, "arm": spec.arm, "seed": spec.seed}
    where = engine.node()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The actor's log (the dashboard's "Log" link) says which trial a reused actor is running.
    print(f"mmlo {study.name}/{spec.trial_id} ({spec.arm}, seed {spec.seed}) starts on {device}", flush=True)
    record: dict[str, Any] = {
        **ids,
        "state": "running",
        "budget_iterations": spec.iterations,
        "spec": spec.to_json(),
        **where,
        **device_record(device),
    }
    started = time.perf_counter()
    try:
        learner_cfg, train_cfg = spec.learner_config(study), spec.train_config(study)
        benchmark = _benchmark(study, where)
        record = {
            **base_record(spec, study, learner_cfg, train_cfg, benchmark),
            **where,
            **device_record(device),
            **_earlier_attempts(run_dir, spec.trial_id),
        }
        with tempfile.TemporaryDirectory(prefix=f"mmlo-{spec.trial_id}-resume-") as scratch:
            resume_from = _resume_point(engine, config, run_dir, Path(scratch))
            resumed_at, resumed_elapsed = _checkpoint_progress(resume_from) if resume_from is not None else (0, 0.0)
            ledger.rewind(run_dir, spec.trial_id, resumed_at)
            record.update(iterations_done=resumed_at, wall_seconds=resumed_elapsed)
            ledger.write_record(run_dir, record)
            if os.environ.get(FAIL_ARM_ENV) == spec.arm:
                raise DeliberateFailure(f"{FAIL_ARM_ENV}={spec.arm} asks this arm's trials to fail")
            _train(engine, study, run_dir, spec, ids, record, (learner_cfg, train_cfg), benchmark, resume_from, device)
    except Exception as err:
        if storage_full(err):
            # Not the trial's fault, and its record could not be written anyway: it stays unfinished, and the
            # driver stops the study so that --resume runs it again once there is space.
            raise
        reason = failure_reason(err)
        if reason.startswith("out of memory") and study.resources.memory_limit_mb is not None:
            reason += f" (resources.memory_limit_mb: {study.resources.memory_limit_mb})"
        record.update(
            {
                "state": "failed",
                "failure_reason": reason,
                "wall_seconds": time.perf_counter() - started,
                "updated": time.time(),
            }
        )
        ledger.write_record(run_dir, record)
        raise


def limit_memory(limit_mb: int | None) -> None:
    """Cap this worker's data segment (RLIMIT_DATA) at ``limit_mb`` MiB, or lift an earlier cap: past it,
    allocations fail (torch raises, and the trial is recorded as out of memory) instead of the kernel's OOM
    killer ending a process of its choice. A reused actor runs trials of one study, so the cap is the same for
    each of them; the hard limit, which only root may raise, is left as it is."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = hard if limit_mb is None else limit_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _earlier_attempts(run_dir: RunStore, trial_id: str) -> dict[str, Any]:
    """What the driver noted of this trial's failed attempts before Tune retried it (the retry keeps it)."""
    earlier = ledger.read_record(run_dir, trial_id) or {}
    return {"retries": int(earlier.get("retries") or 0), "retry_reasons": earlier.get("retry_reasons")}


def _resume_point(engine: Engine, config: dict[str, Any], run_dir: RunStore, scratch: Path) -> Path | None:
    """The checkpoint to resume from, copied to this node: the engine's own (a retry of this trial) or the one
    the driver found in the run directory for a trial an earlier session left unfinished."""
    restored = engine.restored_checkpoint(scratch / "tune")
    if restored is not None:
        return restored
    found = config.get("trial", {}).get("resume_from")
    if not found:
        return None
    return run_dir.download_dir(found, scratch / "run") if not run_dir.is_local else Path(run_dir.path(found))


def _checkpoint_progress(directory: Path) -> tuple[int, float]:
    """The iteration a checkpoint was written at and the trial's training seconds until then."""
    import torch

    from mmlo.models.training import load_checkpoint

    payload = load_checkpoint(directory, torch.device("cpu"))
    return int(payload["iteration"]), float(payload["elapsed_s"])


def _train(
    engine: Engine,
    study: Study,
    run_dir: RunStore,
    spec: TrialSpec,
    ids: dict[str, Any],
    record: dict[str, Any],
    configs: tuple[LearnerConfig, TrainConfig],
    benchmark: Benchmark,
    resume_from: Path | None,
    device: Any,
) -> None:
    import torch

    from mmlo.models.training import fit

    learner_cfg, train_cfg = configs
    hook = _transference_hook(study, spec, train_cfg, benchmark)
    held: list[tuple[dict[str, float], Path | None]] = []
    last_report = {"elapsed_s": float(record.get("wall_seconds") or 0.0), "at": time.perf_counter()}

    def report(metrics: dict[str, float], checkpoint: Path | None) -> None:
        iteration = int(metrics["iteration"])
        ledger.append_progress(run_dir, spec.trial_id, {**ids, **metrics})
        if hook is not None and hook.rows:
            ledger.write_transference(run_dir, spec.trial_id, iteration, sink.transference_frame(hook.rows, ids))
            hook.rows.clear()
        record.update({"iterations_done": iteration, "val_metric": metrics["val_metric"], "updated": time.time()})
        ledger.write_record(run_dir, record)
        last_report.update(elapsed_s=float(metrics["elapsed_s"]), at=time.perf_counter())
        if iteration >= train_cfg.iterations:
            held.append((metrics, checkpoint))
            return
        engine.report(metrics, checkpoint)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix=f"mmlo-{spec.trial_id}-") as scratch:
        result = fit(
            learner_cfg,
            train_cfg,
            benchmark,
            report=report,
            checkpoint_dir=Path(scratch),
            resume_from=resume_from,
            hooks=[*([hook] if hook is not None else []), *faults.injected(spec.arm)],
            device=str(device),
        )
        ledger.write_episodes(run_dir, spec.trial_id, sink.episodes_frame(result.episodes, ids))
        record.update(
            {
                "state": "completed",
                "iterations_done": result.iterations_done,
                "wall_seconds": last_report["elapsed_s"] + time.perf_counter() - last_report["at"],
                "seconds_per_iteration": result.seconds_per_iteration,
                **{f"params_{k}": v for k, v in result.parameter_counts.items()},
                "val_metric": result.final_val_metric,
                "peak_memory_mb": result.peak_memory_mb,
                **device_record(device),
                "updated": time.time(),
            }
        )
        ledger.write_record(run_dir, record)
        if not held:
            # Resumed from the checkpoint of its last iteration (its record was lost): nothing was trained or
            # validated, only the test episodes ran again; Tune still needs the trial's final metric.
            held.append(({"iteration": result.iterations_done, "elapsed_s": record["wall_seconds"],
                          "val_metric": result.final_val_metric}, None))
        # The final report carries the costs a cost-aware search (search.cost) tells Optuna beside the metric.
        costs = {"seconds_per_iteration": result.seconds_per_iteration, "params_total": float(record["params_total"])}
        for metrics, checkpoint in held:
            engine.report({**metrics, "test_metric": result.test_metric, **costs}, checkpoint)
