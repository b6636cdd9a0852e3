"""``mmlo study``: run a study's phases (ablation -> search -> confirm) on Ray Tune, results to Parquet.

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
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmlo.models.allocator import choose as choose_allocator
from mmlo.orchestrator import lease, ledger, provenance, sink
from mmlo.orchestrator.checkpoints import latest_checkpoints
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.estimate import PHASE_START_S, SESSION_OVERHEAD_S, estimate_trials, makespan
from mmlo.orchestrator.phases import AfterSearch, Planned, Sampled, Stage, StudySearcher
from mmlo.orchestrator.plan import (
    TrialSpec,
    ablation_trials,
    confirm_trials,
    search_iterations,
    search_trial,
)
from mmlo.orchestrator.progress import StudyProgress, duration
from mmlo.orchestrator.recovery import rerun_damaged
from mmlo.orchestrator.search import NUMBER_KEY, SearchSpace, compile_space
from mmlo.orchestrator.spec import Study, dump_study, spec_changes
from mmlo.orchestrator.summary import local_concurrency
from mmlo.orchestrator.trainable import reuse_actors, trial_actor_class, trial_constants, trial_from_config
from mmlo.storage import (
    LOGS_DIR,
    SPEC_FILE,
    RunStore,
    StorageError,
    StorageFull,
    join_location,
    normalise_location,
    first_line,
    shown,
    storage_full,
)

#: What Ray and Tune read from the environment: the legacy (quiet) reporter, our own Ctrl-C handling.
RAY_ENVIRONMENT = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Tune warns on stdout when checkpoints force snapshots of its experiment state; the ledger, not that
    # snapshot, is what a resume relies on.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Ray runs workers at nice 15 by default, as background work; a study's trials are the work itself,
    # and at nice 15 any other process on the machine starves them.
    "RAY_worker_niceness": "0",
}
LOGGERS = ("ray", "optuna", "filelock")
DRIVER_LOG = "driver.log"
#: Ray namespace of a study's driver (its trial actors are listed under it in the dashboard).
RAY_NAMESPACE = "mmlo"
#: Status-line entries that stand for trials not created yet (search trials get their id from Optuna).
SEARCH_PENDING, CONFIRM_PENDING = "search pending ", "confirm pending "


@dataclass
class Run:
    """One session of one study: where it writes, what is left, and how it is shown."""

    study: Study
    study_file: Path
    run_dir: RunStore
    output: str
    address: str | None
    max_concurrent: int | None
    space: SearchSpace | None
    benchmark: Any
    expected: dict[str, float | None] = field(default_factory=dict)
    session: int = 1
    #: Why ``fits`` trials run at once (printed, and recorded per phase in provenance).
    fits_reason: str = ""
    #: Where this session's driver log is (on this machine, also for a run on an object store).
    logs: Path = Path()

    @property
    def higher_is_better(self) -> bool:
        return self.benchmark.kind == "classification"

    @property
    def metric(self) -> str:
        from mmlo.models.evaluation import metric_name

        return metric_name(self.benchmark.kind)

    def resume_command(self) -> str:
        return resume_command(self.study_file, self.output, self.address, self.max_concurrent)


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
    _check_run_dir(run_dir, study, resume)
    benchmark = _driver_benchmark(study, address)
    run_dir.write_text(SPEC_FILE, dump_study(study))
    record = provenance.start_session(
        run_dir,
        study,
        {"name": benchmark.name, "kind": benchmark.kind, "modes": list(benchmark.modes), "fingerprint": benchmark.fingerprint()},
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


def resume_command(study_file: Path, output: str, address: str | None, max_concurrent: int | None) -> str:
    """The command that resumes a study: the same file, run directory, cluster and cap, plus --resume."""
    words = ["mmlo", "study", str(study_file.resolve()), "--out", output, "--resume"]
    if address:
        words += ["--address", address]
    if max_concurrent:
        words += ["--max-concurrent", str(max_concurrent)]
    return shlex.join(words)


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


def _check_run_dir(run_dir: RunStore, study: Study, resume: bool) -> None:
    recorded_text = run_dir.read_text(SPEC_FILE)
    if not resume:
        if recorded_text is not None:
            raise UserError(
                f"{run_dir} already holds a run of '{study.name}' ({len(ledger.finished(run_dir))} finished "
                "trials): add --resume to finish it, or choose another --out (or delete the folder) to start over"
            )
        return
    if recorded_text is None:
        raise UserError(f"--resume: there is no run to resume at {run_dir} (start it without --resume)")
    recorded = yaml.safe_load(recorded_text) or {}
    changes = spec_changes(recorded, study.model_dump(mode="json"))
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise UserError(
            f"--resume: the study changed since {run_dir} was started, and its results would no longer be "
            f"comparable. Changed: {shown}. Restore the file, or run the new spec into another --out"
        )


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
    with _logs_to_file(run.logs / DRIVER_LOG) as attach, _ray(run, dashboard, attach) as resources:
        fits, reason = local_concurrency(study, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
        if run.max_concurrent is not None and run.max_concurrent < fits:
            fits, reason = run.max_concurrent, reason + f", capped by --max-concurrent={run.max_concurrent}"
        if fits < 1:
            raise UserError(
                f"no trial fits on this cluster ({reason}): lower resources.cpus_per_trial/gpus_per_trial "
                "or run with --address on a cluster that has them"
            )
        run.fits_reason = reason
        print(f"{fits} trial(s) at once ({reason}); {_expected_line(run, ablation, n_search, fits)}", flush=True)
        progress = StudyProgress(higher_is_better=run.higher_is_better, metric=run.metric, concurrency=fits)
        _plan_display(run, progress, done, ablation, n_search)
        with _sigterm_as_interrupt():
            _run_tuner(run, _stages(run, ablation, n_search, fits, progress), fits, progress)
        progress.close()
    _write_tables(run)
    final = ledger.finished(run_dir)
    failed = sorted(t for t, r in final.items() if r["state"] == "failed")
    if failed:
        print(
            f"{len(failed)} trial(s) failed (reasons in trials.parquet, `mmlo status {shlex.quote(run_dir.where())}`): "
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


def _label(spec: TrialSpec) -> str:
    return f"{spec.arm} s{spec.seed}" if spec.phase != "search" else spec.arm


def _expected(run: Run, spec: TrialSpec) -> float:
    """Expected seconds of a trial (its iterations when nothing was timed: the ETA then learns the rate)."""
    seconds = run.expected.get(spec.trial_id)
    if seconds is None and spec.phase == "search":
        seconds = run.expected.get("search-000")
    if seconds is None and spec.phase == "confirm":
        seconds = run.expected.get("search-000")
        if seconds is not None:
            seconds *= spec.iterations / max(1, search_iterations(run.study))
    return seconds if seconds is not None else float(spec.iterations)


def _expected_line(run: Run, ablation: Sequence[TrialSpec], n_search: int, fits: int) -> str:
    """The expected duration: every trial left dealt longest-first onto the slots, plus starting Ray and the
    actors and writing the report (an upper bound when ASHA may stop search trials early)."""
    if not run.expected or any(run.expected.get(t.trial_id) is None for t in ablation):
        return "expected duration: shown live (ETA) once the first trials report"
    study = run.study
    seconds = [_expected(run, t) for t in ablation]
    if n_search:
        seconds += [_expected(run, search_trial(study, 0, {}))] * n_search
    if study.confirm is not None and "confirm" in study.resolved_phases and study.search is not None:
        probe = confirm_trials(study, [search_trial(study, 0, {})])[0]
        done = sum(1 for r in ledger.finished(run.run_dir).values() if r["phase"] == "confirm")
        seconds += [_expected(run, probe)] * max(0, study.confirm.top_k * len(study.seeds) - done)
    total = makespan(seconds, fits) + PHASE_START_S + SESSION_OVERHEAD_S
    ceiling = " at most" if n_search and study.scheduler.type == "asha" else ""
    return f"expected duration{ceiling} ~{duration(total)} (timed one step of each arm on this machine)"


def _plan_display(
    run: Run, progress: StudyProgress, done: dict[str, dict[str, Any]], ablation: Sequence[TrialSpec], n_search: int
) -> None:
    study = run.study
    for record in done.values():
        spec = TrialSpec.from_json(record["spec"]) if record.get("spec") else None
        if spec is not None:
            progress.plan(spec.trial_id, _label(spec), _expected(run, spec), spec.iterations, record["state"])
    for spec in ablation:
        progress.plan(spec.trial_id, _label(spec), _expected(run, spec), spec.iterations)
    placeholder = search_trial(study, 0, {}) if study.search is not None else None
    for i in range(n_search if placeholder is not None else 0):
        progress.plan(f"{SEARCH_PENDING}{i}", "search", _expected(run, placeholder), placeholder.iterations)
    if study.confirm is not None and "confirm" in study.resolved_phases and placeholder is not None:
        probe = confirm_trials(study, [placeholder])[0]
        confirmed = sum(1 for r in done.values() if r["phase"] == "confirm")
        for i in range(max(0, study.confirm.top_k * len(study.seeds) - confirmed)):
            progress.plan(f"{CONFIRM_PENDING}{i}", "confirm", _expected(run, probe), probe.iterations)


class _LogFile(logging.FileHandler):
    """The driver log. A line it cannot write (its disk is full) is dropped: logging would print a traceback
    per line on the terminal, and the study says itself why it stops."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextmanager
def _logs_to_file(path: Path) -> Iterator[Callable[[], None]]:
    """Send Ray's, Tune's and Optuna's log records to ``path`` instead of the terminal, for the duration.

    Yields a function that installs the file handler again: ``ray.init(configure_logging=False)`` clears the
    ``ray`` logger's handlers, after which Python would print its warnings on stderr.
    """
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    # Ray installs its own terminal handler when imported: import first, then take its place.
    import optuna
    import ray.tune  # noqa: F401

    optuna.logging.disable_default_handler()
    handler = _LogFile(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in (*LOGGERS, "py.warnings")]
    saved = [(logger, list(logger.handlers), logger.propagate) for logger in loggers]

    def attach() -> None:
        for logger in loggers:
            logger.handlers, logger.propagate = [handler], False

    attach()
    logging.captureWarnings(True)
    try:
        yield attach
    finally:
        optuna.logging.enable_default_handler()
        logging.captureWarnings(False)
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


@contextmanager
def _ray(run: Run, dashboard: bool, attach_logs: Callable[[], None]) -> Iterator[dict[str, float]]:
    """A Ray cluster for the session (local by default, or ``--address``); yields its total resources."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        dashboard_error = ray_dashboard_missing()
        with_dashboard = dashboard and dashboard_error is None
        where = f"cluster at {run.address}" if run.address else f"local cluster, {_local_cpus()} CPUs"
        print(f"starting Ray ({where}) ...", flush=True)
        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if run.address:
            context = ray.init(address=run.address, namespace=RAY_NAMESPACE, **kwargs)
        else:
            # Image trials start on jemalloc where it is installed (models/allocator.py). Not for --address:
            # the library's path on other nodes is unknown, and a missing preload only prints errors there.
            allocator, _ = choose_allocator(run.benchmark.kind)
            context = ray.init(
                num_cpus=_local_cpus(),
                include_dashboard=with_dashboard,
                dashboard_host="127.0.0.1",
                object_store_memory=256 * 2**20,
                runtime_env={"env_vars": allocator} if allocator else None,
                namespace=RAY_NAMESPACE,
                **kwargs,
            )
        attach_logs()
        _link_session_logs(run.logs, context)
        url = getattr(context, "dashboard_url", "") or ""
        if dashboard and not with_dashboard and run.address is None:
            print(f"dashboard: not started ({dashboard_error}; `make setup` installs it)", flush=True)
        elif url:
            url = url if url.startswith("http") else f"http://{url}"
            provenance.record_dashboard(run.run_dir, url)
            announce_when_up(url, label="dashboard" if run.address is None else "cluster dashboard")
    try:
        yield {k: float(v) for k, v in ray.cluster_resources().items()}
    finally:
        if started_here:
            ray.shutdown()


def ray_dashboard_missing() -> str | None:
    """Why Ray's dashboard cannot start here (a missing package of ``ray[default]``), or None when it can."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return None if error is None else f"Ray's dashboard needs ray[default]: {error}"


def _local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _link_session_logs(logs: Path, context: Any) -> None:
    """``<logs>/ray`` points at this session's Ray logs on this machine (raylet, workers, trial output)."""
    session = getattr(context, "address_info", {}).get("session_dir")
    if not session:
        return
    link = logs / "ray"
    link.unlink(missing_ok=True)
    link.symlink_to(Path(session) / "logs", target_is_directory=True)


def announce_when_up(url: str, timeout_s: float = 60.0, label: str = "dashboard") -> threading.Thread:
    """Print the dashboard URL once it answers HTTP (any status: 401 means up, with token auth), never before
    (ray#6123: a printed link that is dead); the probe runs in a background thread, which is returned."""

    def probe() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url, timeout=2).close()
            except urllib.error.HTTPError:
                pass
            except OSError:
                time.sleep(1.0)
                continue
            print(f"{label}: {url}", flush=True)
            return

    thread = threading.Thread(target=probe, name="mmlo-dashboard-probe", daemon=True)
    thread.start()
    return thread


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


def _with_checkpoints(run: Run, specs: Sequence[TrialSpec]) -> list[dict[str, Any]]:
    """Tune configs of planned trials; an interrupted trial resumes from the last checkpoint an earlier
    session persisted."""
    found = latest_checkpoints(run.run_dir)
    out = []
    for spec in specs:
        trial = spec.to_json()
        if spec.trial_id in found:
            trial["resume_from"] = found[spec.trial_id]
        out.append({"trial": trial})
    return out


def _trial_id(config: dict[str, Any]) -> str:
    if config.get(NUMBER_KEY) is not None:
        return f"search-{int(config[NUMBER_KEY]):03d}"
    return str(config["trial"]["trial_id"])


def _phase_of(config: dict[str, Any]) -> str:
    return "search" if config.get(NUMBER_KEY) is not None else str(config["trial"]["phase"])


def _tune_callback(run: Run, progress: StudyProgress) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """Feeds the status line, records trials Ray stopped or lost, refreshes the tables; ``phases`` holds
        each phase's first start, last end (monotonic seconds) and trial count."""

        def __init__(self) -> None:
            self.phases: dict[str, tuple[float, float, int]] = {}

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            trial_id = _trial_id(trial.config)
            if not progress.knows(trial_id):
                spec = search_trial(run.study, int(trial.config[NUMBER_KEY]), {})
                progress.claim(SEARCH_PENDING, trial_id, trial_id, _expected(run, spec), spec.iterations)
            phase = _phase_of(trial.config)
            now = time.monotonic()
            first, last, count = self.phases.get(phase, (now, now, 0))
            self.phases[phase] = (first, last, count + 1)
            progress.phase = phase
            progress.started(trial_id)
            progress.tick()

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
            progress.result(
                _trial_id(trial.config), int(result.get("iteration", 0)), float(result.get("elapsed_s", 0.0)), result.get("val_metric")
            )
            progress.tick()

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._ended(trial, error=None)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._ended(trial, error=_failure_text(run, trial))

        def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            reason = _failure_text(run, trial)
            note_retry(run.run_dir, _trial_id(trial.config), reason)
            progress.note(f"  retry   {_trial_id(trial.config):<24} after: {reason}")

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            progress.tick()

        def _ended(self, trial: Any, error: str | None) -> None:
            trial_id = _trial_id(trial.config)
            if error is not None and storage_full(error):
                # The trial did not fail; the storage did. Its record stays unfinished for --resume.
                raise StorageFull(f"{trial_id}: {error}")
            phase = _phase_of(trial.config)
            first, _, count = self.phases.get(phase, (time.monotonic(), 0.0, 1))
            self.phases[phase] = (first, time.monotonic(), count)
            record = finalize_record(run, trial_id, trial.config, trial.last_result or {}, error)
            note = f"  ({record.get('failure_reason')})" if record["state"] == "failed" else ""
            progress.finished(
                trial_id,
                record["state"],
                int(record.get("iterations_done") or 0),
                record.get("val_metric"),
                record.get("wall_seconds"),
                note,
            )
            _write_tables(run)

    return Progress()


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "the trial's worker died (see logs/ray)"


#: Ray's words for a trial actor that vanished (its process or its whole node), not a Python error in it.
_ACTOR_LOST = ("actor died", "is unavailable", "actor is dead", "worker died", "node died", "died unexpectedly")


def _failure_text(run: Run, trial: Any, wait_s: float = 20.0) -> str:
    """Why a trial failed, in words: for a lost actor, whether its node died (Ray notices a lost node after a
    few missed heartbeats, so this waits up to ``wait_s``) or only its worker process."""
    text = _error_text(trial)
    if not any(marker in text.lower() for marker in _ACTOR_LOST):
        return text
    # Ray follows its verdict with a paragraph of guesses (the OOM killer, `ray stop`, a segfault); the verdict
    # and the exit type are what the record needs.
    text = text.split(" Worker exit detail:", 1)[0].strip()
    record = ledger.read_record(run.run_dir, _trial_id(trial.config)) or {}
    node_id = record.get("node_id")
    if not node_id:
        return text
    where = f"node {record.get('node_hostname')} ({record.get('node_ip')}, id {str(node_id)[:12]})"
    # The cluster this driver started has one node, this machine: it cannot have died under a running driver.
    if run.address is not None and _node_died(node_id, wait_s):
        return f"{where} died during the trial: {text}"
    return f"the trial's worker process on {where} died: {text}"


def _node_died(node_id: str, wait_s: float) -> bool:
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        if not alive.get(node_id, False):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def note_retry(run_dir: RunStore, trial_id: str, reason: str) -> None:
    """Count a failed attempt of a trial that Tune runs again (``resources.max_failures``), with its reason; the
    retried trial keeps both in its record."""
    record = ledger.read_record(run_dir, trial_id)
    if record is None:
        return
    record["retries"] = int(record.get("retries") or 0) + 1
    record["retry_reasons"] = "; ".join(r for r in (record.get("retry_reasons"), reason) if r)
    ledger.write_record(run_dir, record)


def finalize_record(
    run: Run, trial_id: str, config: dict[str, Any], result: dict[str, Any], error: str | None
) -> dict[str, Any]:
    """The final record of a trial that ended: the worker's own if it wrote one, else what the driver saw.

    A worker always finalises a trial it completes or that raises; the driver fills in the rest: a search
    trial the scheduler stopped (``stopped_early``, with the iterations it used) and a trial whose worker
    died without a word (``failed``, with Ray's error).
    """
    record = ledger.read_record(run.run_dir, trial_id)
    if record is not None and record.get("state") in ledger.FINAL_STATES:
        return record
    if record is None:
        spec = trial_from_config(run.study, config)
        record = {
            "study": run.study.name,
            "phase": spec.phase,
            "trial_id": trial_id,
            "arm": spec.arm,
            "seed": spec.seed,
            "budget_iterations": spec.iterations,
            "spec": spec.to_json(),
        }
    iteration = int(result.get("iteration", record.get("iterations_done") or 0))
    record.update(
        {
            "iterations_done": iteration,
            "wall_seconds": result.get("elapsed_s", record.get("wall_seconds")),
            "val_metric": result.get("val_metric", record.get("val_metric")),
            "updated": time.time(),
        }
    )
    if error is not None:
        record.update({"state": "failed", "failure_reason": error})
    elif iteration < int(record["budget_iterations"]):
        record.update({"state": "stopped_early", "failure_reason": None})
    else:
        record.update({"state": "failed", "failure_reason": "the trial ended without writing its results"})
    ledger.write_record(run.run_dir, record)
    return record


def _stages(
    run: Run, ablation: Sequence[TrialSpec], n_search: int, fits: int, progress: StudyProgress
) -> list[Stage]:
    """The study's phases in order, as stages of one Tune experiment (what is left of each)."""
    study, stages = run.study, []
    search: Sampled | None = None
    for phase in study.resolved_phases:
        if phase == "ablation" and ablation:
            longest_first = sorted(ablation, key=lambda t: -_expected(run, t))
            stages.append(Planned(_with_checkpoints(run, longest_first)))
        elif phase == "search" and n_search:
            search = _search_stage(run, n_search, fits)
            stages.append(search)
        elif phase == "confirm":
            stages.append(AfterSearch(search, lambda: _confirm_configs(run, progress)))
    return stages


def _search_stage(run: Run, n_trials: int, fits: int) -> Sampled:
    """Optuna through OptunaSearch, its journal in the run directory, interrupted trials closed first."""
    from mmlo.orchestrator.search import base_point, enqueue, journal_storage, make_searcher, reconcile_journal

    study = run.study
    assert study.search is not None and run.space is not None
    storage = journal_storage(run.run_dir)
    searched = {
        int(r["trial_id"].removeprefix("search-")): r for r in ledger.records(run.run_dir) if r.get("phase") == "search"
    }
    finished = {n: r for n, r in searched.items() if r.get("state") in ledger.FINAL_STATES}
    costs = (study.search.cost,) if study.search.cost else ()
    enqueue(storage, study.name, reconcile_journal(storage, study.name, finished, costs))
    point, why_not = base_point(study)
    if study.search.start_from_base and point is None:
        print(f"search: starts without its base arm's configuration ({why_not})", flush=True)
    for number, record in searched.items():
        if number not in finished:
            ledger.remove_trial(run.run_dir, record["trial_id"])
    limit = min(fits, study.search.max_concurrent or fits)
    searcher = make_searcher(study, run.space, storage, "val_metric", "max" if run.higher_is_better else "min")
    return Sampled(searcher, n_trials, limit)


def _confirm_configs(run: Run, progress: StudyProgress) -> list[dict[str, Any]]:
    """The confirm re-runs, chosen once the search has finished (those not already finished)."""
    done = ledger.finished(run.run_dir)
    confirm = [t for t in _confirm_plan(run) if t.trial_id not in done]
    for spec in confirm:
        progress.claim(CONFIRM_PENDING, spec.trial_id, _label(spec), _expected(run, spec), spec.iterations)
    progress.drop(CONFIRM_PENDING)
    return _with_checkpoints(run, confirm)


def _trial_dirname(trial: Any) -> str:
    return _trial_id(trial.config)


def _run_tuner(run: Run, stages: list[Stage], fits: int, progress: StudyProgress) -> None:
    """One Tune experiment for the whole session: every stage's trials, ``fits`` at a time, reused actors."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from mmlo.orchestrator.search import search_scheduler

    if not stages:
        return
    study = run.study
    mode = "max" if run.higher_is_better else "min"
    callback = _tune_callback(run, progress)
    reuse = reuse_actors(run.address, study)
    trainable = tune.with_resources(
        trial_actor_class(study.name, fresh_actors=not reuse),
        {"cpu": study.resources.cpus_per_trial, "gpu": study.resources.gpus_per_trial},
    )
    trainable.__qualname__ = "MmloTrial"  # the class name the dashboard lists
    storage_path, storage_filesystem = run.run_dir.tune_storage()
    tuner = tune.Tuner(
        trainable,
        param_space=trial_constants(run.run_dir, study),
        tune_config=tune.TuneConfig(
            search_alg=StudySearcher(stages, "val_metric", mode),
            scheduler=search_scheduler(study),
            metric="val_metric",
            mode=mode,
            num_samples=study.trial_count(),
            reuse_actors=reuse,
            max_concurrent_trials=fits,
            trial_name_creator=_trial_dirname,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=f"study-{run.session}",
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            verbose=0,
            callbacks=[callback, JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=study.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            log_to_file=True,
        ),
    )
    try:
        tuner.fit()
    finally:
        for phase, (first, last, trials) in callback.phases.items():
            limit = fits
            reason = run.fits_reason
            if phase == "search" and study.search is not None and study.search.max_concurrent:
                limit = min(fits, study.search.max_concurrent)
                reason += f", search.max_concurrent={study.search.max_concurrent}"
            provenance.record_phase(run.run_dir, phase, limit, reason, trials, last - first)


def best_search_trials(run_dir: RunStore, study: Study, higher_is_better: bool) -> list[TrialSpec]:
    """The ``confirm.top_k`` best search trials that completed their full budget, best first.

    Trials that stopped early are never ranked: their scores come from a shorter budget. A trial of the base
    arm's own configuration is passed over when the ablation phase trains that arm: re-running it with the
    same seeds and budget would repeat those trials exactly, so the next best configuration is confirmed.
    """
    from mmlo.orchestrator.plan import search_base
    from mmlo.orchestrator.search import is_base_configuration

    assert study.confirm is not None
    full = [
        r
        for r in ledger.finished(run_dir).values()
        if r["phase"] == "search"
        and r["state"] == "completed"
        and r.get("val_metric") is not None
        and math.isfinite(r["val_metric"])
        and int(r["iterations_done"]) >= int(r["budget_iterations"])
    ]
    full.sort(key=lambda r: (-r["val_metric"] if higher_is_better else r["val_metric"], r["trial_id"]))
    specs = [TrialSpec.from_json(r["spec"]) for r in full]
    in_ablation = "ablation" in study.resolved_phases and any(a.name == search_base(study) for a in study.arms)
    if in_ablation:
        specs = [spec for spec in specs if not is_base_configuration(study, spec)]
    return specs[: study.confirm.top_k]


def _confirm_plan(run: Run) -> list[TrialSpec]:
    best = best_search_trials(run.run_dir, run.study, run.higher_is_better)
    if not best:
        print(
            "confirm: no search trial other than the base arm's own configuration completed its full budget; "
            "nothing to confirm",
            flush=True,
        )
    return confirm_trials(run.study, best)


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
            f"report: not written ({type(err).__name__}: {err}); retry with `mmlo report {shlex.quote(run_dir.where())}`",
            file=sys.stderr,
        )
        return
    print(f"report: {path}", flush=True)
