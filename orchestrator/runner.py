"""``mmlo study``: run a study's phases (ablation -> search -> confirm) on Ray Tune, results to Parquet.

This module is the session's order of work; each step is its own module: the resume checks
(:mod:`~mmlo.orchestrator.resume`), the expected durations (:mod:`~mmlo.orchestrator.eta`), the phases as
stages (:mod:`~mmlo.orchestrator.phases`), the confirm ranking (:mod:`~mmlo.orchestrator.ranking`), the trial
events (:mod:`~mmlo.orchestrator.trial_events`), and Ray itself (:mod:`~mmlo.orchestrator.ray_engine`).

The driver plans the trials (:mod:`mmlo.orchestrator.plan`), prints how many run at once and how long the
study should take, starts (or joins) a Ray cluster, and runs one Tune experiment per phase with
``reuse_actors``; Ray's and Optuna's log lines go to ``<run>/logs/driver.log`` and a compact status line
(:mod:`mmlo.orchestrator.progress`) replaces Tune's tables. Each finished trial refreshes the Parquet tables.

Resuming (``--resume``) is driven by the run directory's ledger, not by Tune's experiment snapshot: every
trial whose record is final is skipped, an interrupted ablation or confirm trial restarts from the last
checkpoint an earlier session persisted, and an interrupted search trial is told FAIL to Optuna and its
point re-queued, so the search keeps its history (the Optuna journal) and runs exactly ``search.trials``
trials in all. A resume whose spec differs from the recorded one is refused, naming what changed.

A driver holds the run directory's lease (:mod:`mmlo.orchestrator.lease`) from the moment it opens it until
it exits, so a second driver on the same run is refused. Unreadable part files are named and their trials run
again (:mod:`mmlo.orchestrator.recovery`); storage that fills up stops the study with one message and the
resume command, and the trials it interrupted stay unfinished.
"""

from __future__ import annotations

import hashlib
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmlo.models.allocator import choose as choose_allocator
from mmlo.orchestrator import lease, ledger, provenance, ray_engine, sink
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.estimate import estimate_trials
from mmlo.orchestrator.eta import expected_line, plan_display
from mmlo.orchestrator.phases import study_stages
from mmlo.orchestrator.plan import ablation_trials, search_trial
from mmlo.orchestrator.progress import StudyProgress
from mmlo.orchestrator.recovery import rerun_damaged
from mmlo.orchestrator.resume import check_run_dir, resume_command
from mmlo.orchestrator.search import compile_space
from mmlo.orchestrator.session import Run
from mmlo.orchestrator.spec import Study, dump_study
from mmlo.orchestrator.summary import local_concurrency
from mmlo.orchestrator.trial_events import TrialEvents
from mmlo.storage import (
    DRIVER_LOG,
    LOGS_DIR,
    SPEC_FILE,
    TRIALS_FILE,
    RunStore,
    StorageError,
    StorageFull,
    first_line,
    join_location,
    normalise_location,
    shown,
    storage_full,
)

__all__ = ["Run", "resume_command", "run_study"]


def run_study(
    study: Study,
    *,
    study_file: Path | str,
    out: Path | str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    resume: bool = False,
    dashboard: bool = True,
) -> int:
    """Run (or, with ``resume``, finish) ``study``; returns the exit code (0: every trial has a final state).

    Raises :class:`UserError` for what the user must fix (a bad search space, a run directory that exists or
    whose spec changed), ``DataMissingError`` when the benchmark's data is absent, and ``KeyboardInterrupt``
    after a clean stop on Ctrl-C (the CLI exits 130), having printed the command that resumes.
    """
    with ExitStack() as held:
        try:
            return _run_study(
                study, held, study_file=study_file, out=out, address=address, max_concurrent=max_concurrent,
                resume=resume, dashboard=dashboard,
            )
        except Exception as err:
            if not storage_full(err):
                raise
            output = normalise_location(out) if out is not None else study.output
            raise StorageFull(
                f"the storage under {shown(join_location(output, study.name))} is full (no space left on the device, "
                "or the quota is used up); the study stopped. Finished trials are kept and every table holds its "
                "last complete version. Free space there, then resume with:\n  "
                + resume_command(Path(study_file), output, address, max_concurrent)
            ) from None


def _run_study(
    study: Study,
    held: ExitStack,
    *,
    study_file: Path | str,
    out: Path | str | None,
    address: str | None,
    max_concurrent: int | None,
    resume: bool,
    dashboard: bool,
) -> int:
    """:func:`run_study`, holding the run directory's lease in ``held`` from the moment it is known."""
    wall_start = time.perf_counter()
    output = normalise_location(out) if out is not None else study.output
    study = study.model_copy(update={"output": output})
    phases = study.resolved_phases
    space = compile_space(study, study_file) if {"search", "confirm"} & set(phases) else None
    where = "--out" if out is not None else "output"
    try:
        run_dir = RunStore.open(output).child(study.name)
        run_dir.check_reachable()
        # Before anything reads or writes the run directory: a second driver would run the same trials twice.
        # Writing the lease is also the check that the driver can write there at all.
        held.enter_context(lease.hold(run_dir))
    except StorageError as err:
        raise UserError(f"{where}: {err}") from None
    except OSError as err:
        raise UserError(f"{where}: {run_dir}: cannot write the run directory here ({first_line(err)})") from None
    check_run_dir(run_dir, study, resume)
    benchmark = _driver_benchmark(study, address)
    run_dir.write_text(SPEC_FILE, dump_study(study))
    record = provenance.start_session(
        run_dir,
        study,
        {
            "name": benchmark.name,
            "kind": benchmark.kind,
            "modes": list(benchmark.modes),
            "fingerprint": benchmark.fingerprint(),
        },
        resumed=resume,
        sampler=_sampler_record(study),
        address=address,
    )
    run = Run(study, Path(study_file), run_dir, output, address, max_concurrent, space, benchmark)
    run.session = len(record["sessions"])
    run.logs = _logs_dir(run_dir)
    outcome = "failed"
    try:
        code = _run(run, dashboard)
        outcome = "completed"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except Exception as err:
        if storage_full(err):
            outcome = "storage full"
        raise
    finally:
        _close_session(run, outcome, time.perf_counter() - wall_start)
        if outcome == "interrupted":
            done = len(ledger.finished(run_dir))
            print(
                f"\ninterrupted: {done} of {study.trial_count()} trials finished and are kept in {run_dir}\n"
                f"resume with:\n  {run.resume_command()}",
                flush=True,
            )
    # The report is written after the session is closed, so its header has the finished time and wall time.
    _write_report(run_dir)
    print(f"results: mmlo results {shlex.quote(run_dir.where())}", flush=True)
    return code


def _close_session(run: Run, outcome: str, wall_s: float) -> None:
    """Rewrite the tables, record the session's end, keep the driver log. On full storage each step is still
    tried (every write is atomic: one that fails leaves the last complete version), then the error is raised."""
    full: OSError | None = None
    for step in (
        lambda: _write_tables(run),
        lambda: provenance.finish_session(run.run_dir, outcome, wall_s),
        lambda: _keep_driver_log(run),
    ):
        try:
            step()
        except OSError as err:
            if not storage_full(err):
                raise
            full = full or err
    if full is not None:
        raise full


def _driver_benchmark(study: Study, address: str | None) -> Any:
    """The benchmark as the driver sees it (kind, modes, fingerprint), its data prepared here first.

    On this machine's own cluster the data is rendered or checked once here, never by trials racing each
    other. With ``--address`` the trials run on other machines, which check their own data before training
    (a trial on a node without it fails, naming the node and the path): data missing here is only a warning.
    """
    from mmlo.tasks.datacmd import prepare
    from mmlo.tasks.errors import DataMissingError
    from mmlo.tasks.registry import benchmark_kind, benchmark_modes, get_benchmark

    try:
        prepare(study.benchmark.name, config=study.benchmark)
        return get_benchmark(study.benchmark)
    except DataMissingError as err:
        if address is None:
            raise
        print(f"note: the benchmark's data is not on this machine ({err}); each trial checks its own node", flush=True)
    modes = tuple(study.benchmark.modes or benchmark_modes(study.benchmark.name))
    return _Described(study.benchmark.name, benchmark_kind(study.benchmark.name), modes)


@dataclass(frozen=True)
class _Described:
    """What the driver knows of a benchmark whose data is only on the cluster's nodes."""

    name: str
    kind: str
    modes: tuple[str, ...]

    def fingerprint(self) -> str | None:
        return None


def _logs_dir(run_dir: RunStore) -> Path:
    """This session's log folder: ``<run>/logs`` on a file system; on an object store, a folder on this machine
    (the driver log is copied into the run directory when the session ends)."""
    if run_dir.local_path is not None:
        path = run_dir.local_path / LOGS_DIR
    else:
        from mmlo.tasks.offline4 import cache_root

        digest = hashlib.sha256(run_dir.uri.encode()).hexdigest()[:10]
        path = cache_root() / "driver-logs" / f"{run_dir.name}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _keep_driver_log(run: Run) -> None:
    if run.run_dir.is_local:
        return
    log = run.logs / DRIVER_LOG
    try:
        if log.exists():
            run.run_dir.write_bytes(f"{LOGS_DIR}/driver-session-{run.session}.log", log.read_bytes())
    except OSError as err:
        print(f"note: could not copy the driver log into the run directory ({err}); it is at {log}", file=sys.stderr)


def _sampler_record(study: Study) -> dict[str, Any] | None:
    """How the search samples and judges (provenance ``seeds.search``): the report reads its base arm, start
    point, cost and ASHA rungs from here."""
    if study.search is None:
        return None
    from mmlo.orchestrator.plan import search_base
    from mmlo.orchestrator.search import base_point, grace_period, rung_iterations, startup_trials

    point, why_not = base_point(study)
    return {
        "sampler": "TPESampler",
        "seed": study.search.sampler_seed,
        "n_startup_trials": startup_trials(study),
        "constant_liar": True,
        "training_seed": study.search.seed if study.search.seed is not None else study.seeds[0],
        "base_arm": search_base(study),
        "start_point": point if study.search.start_from_base else None,
        "start_note": why_not if study.search.start_from_base else "search.start_from_base is off",
        "cost": study.search.cost,
        "scheduler": {
            "type": study.scheduler.type,
            "grace_period": grace_period(study) if study.scheduler.type == "asha" else None,
            "reduction_factor": study.scheduler.reduction_factor if study.scheduler.type == "asha" else None,
            "rung_iterations": rung_iterations(study),
        },
    }


def _run(run: Run, dashboard: bool) -> int:
    study, run_dir = run.study, run.run_dir
    for line in rerun_damaged(run_dir, study.name):
        print(line, flush=True)
    done = ledger.finished(run_dir)
    ablation = [t for t in ablation_trials(study) if t.trial_id not in done]
    n_search = _search_left(run, done)
    print(
        f"study {study.name}: {study.trial_count()} trials ({_phase_counts(study)}), "
        f"{len(done)} already finished; run directory {run_dir}",
        flush=True,
    )
    if not run_dir.is_local:
        print(f"driver log (on this machine): {run.logs / DRIVER_LOG}", flush=True)
    threads = max(1, int(study.resources.cpus_per_trial))
    if run.address is None and study.resources.gpus_per_trial == 0:
        planned = list(ablation)
        if n_search and run.space is not None:
            planned.append(search_trial(study, 0, {}))
        run.expected = estimate_trials(study, planned, run.benchmark, threads)
    # Image trials start on jemalloc where it is installed (models/allocator.py). Not for --address: the
    # library's path on other nodes is unknown, and a missing preload only prints errors there.
    allocator = choose_allocator(run.benchmark.kind)[0] if run.address is None else None
    with (
        ray_engine.logs_to_file(run.logs / DRIVER_LOG) as attach,
        ray_engine.ray_cluster(run, dashboard, attach, allocator) as resources,
    ):
        fits, reason = local_concurrency(study, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
        if run.max_concurrent is not None and run.max_concurrent < fits:
            fits, reason = run.max_concurrent, reason + f", capped by --max-concurrent={run.max_concurrent}"
        if fits < 1:
            raise UserError(
                f"no trial fits on this cluster ({reason}): lower resources.cpus_per_trial/gpus_per_trial "
                "or run with --address on a cluster that has them"
            )
        run.fits_reason = reason
        print(f"{fits} trial(s) at once ({reason}); {expected_line(run, ablation, n_search, fits)}", flush=True)
        progress = StudyProgress(higher_is_better=run.higher_is_better, metric=run.metric, concurrency=fits)
        plan_display(run, progress, done, ablation, n_search)
        with _sigterm_as_interrupt():
            stages = study_stages(run, ablation, n_search, fits, progress)
            if stages:
                events = TrialEvents(run, progress, lambda: _write_tables(run))
                try:
                    ray_engine.run_tuner(run, stages, fits, events)
                finally:
                    _record_phases(run, events, fits)
        progress.close()
    _write_tables(run)
    final = ledger.finished(run_dir)
    failed = sorted(t for t, r in final.items() if r["state"] == "failed")
    if failed:
        print(
            f"{len(failed)} trial(s) failed (reasons in {TRIALS_FILE}, `mmlo status {shlex.quote(run_dir.where())}`): "
            + ", ".join(failed)
        )
    return 0


def _phase_counts(study: Study) -> str:
    parts = []
    if study.ablation_trials():
        parts.append(f"{len(study.arms)} arms x {len(study.seeds)} seeds")
    if study.search is not None and "search" in study.resolved_phases:
        parts.append(f"{study.search.trials} search")
    if study.confirm is not None and "confirm" in study.resolved_phases:
        parts.append(f"top {study.confirm.top_k} x {len(study.seeds)} seeds confirm")
    return ", ".join(parts)


def _search_left(run: Run, done: dict[str, dict[str, Any]]) -> int:
    study = run.study
    if study.search is None or "search" not in study.resolved_phases:
        return 0
    return max(0, study.search.trials - sum(1 for r in done.values() if r["phase"] == "search"))


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """``kill`` (SIGTERM) stops the study as cleanly as Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _record_phases(run: Run, events: TrialEvents, fits: int) -> None:
    """Provenance of each phase this session ran: trials at once and why, trial count, wall seconds."""
    study = run.study
    for phase, (first, last, trials) in events.phases.items():
        limit = fits
        reason = run.fits_reason
        if phase == "search" and study.search is not None and study.search.max_concurrent:
            limit = min(fits, study.search.max_concurrent)
            reason += f", search.max_concurrent={study.search.max_concurrent}"
        provenance.record_phase(run.run_dir, phase, limit, reason, trials, last - first)


def _write_tables(run: Run) -> None:
    sink.write_tables(
        run.run_dir, run.study.name, run.benchmark.modes, transference=run.study.transference is not None
    )


def _write_report(run_dir: RunStore) -> None:
    """The offline HTML report, when the reports package is installed; its errors never fail the study."""
    try:
        from mmlo.reports.html import write_report
    except ImportError:
        return
    try:
        path = write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - the Parquet tables are the study's result; the report is a view
        print(
            f"report: not written ({type(err).__name__}: {err}); "
            f"retry with `mmlo report {shlex.quote(run_dir.where())}`",
            file=sys.stderr,
        )
        return
    print(f"report: {path}", flush=True)
