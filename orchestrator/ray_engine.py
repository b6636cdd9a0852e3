"""Ray and Ray Tune, the engine a study runs on: the one module of mmlo that imports Ray.

Everything Ray-specific is here, each behind one function: starting (or joining) a cluster and sending its
log lines to the driver log, the dashboard, the Tune experiment (trainable actor, search algorithm, ASHA,
callback), the Tune-side reporting of a trial, OptunaSearch and the private Ray APIs mmlo relies on. The
rest of the orchestrator hands this module plain objects (stages, trial events, a trial function) and never
sees a Ray type; Ray is imported inside the functions, after :data:`RAY_ENVIRONMENT` is in place.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmlo.orchestrator import provenance
from mmlo.orchestrator.search import NUMBER_KEY, SearchSpace, objectives, start_point, tpe_sampler
from mmlo.orchestrator.spec import Study

if TYPE_CHECKING:
    import optuna
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search.optuna import OptunaSearch

    from mmlo.orchestrator.phases import StudyStages
    from mmlo.orchestrator.session import Run
    from mmlo.orchestrator.trial_events import TrialEvents

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
#: Ray namespace of a study's driver (its trial actors are listed under it in the dashboard).
RAY_NAMESPACE = "mmlo"
#: Ray's words for a trial actor that vanished (its process or its whole node), not a Python error in it.
ACTOR_LOST = ("actor died", "is unavailable", "actor is dead", "worker died", "node died", "died unexpectedly")


# --- The driver's cluster and logs -------------------------------------------------------------------------


class _LogFile(logging.FileHandler):
    """The driver log. A line it cannot write (its disk is full) is dropped: logging would print a traceback
    per line on the terminal, and the study says itself why it stops."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextmanager
def logs_to_file(path: Path) -> Iterator[Callable[[], None]]:
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
def ray_cluster(
    run: Run, dashboard: bool, attach_logs: Callable[[], None], env_vars: dict[str, str] | None
) -> Iterator[dict[str, float]]:
    """A Ray cluster for the session (local by default, or ``--address``); yields its total resources.

    ``env_vars`` go into the local cluster's workers (the allocator preload); with ``--address`` they are not
    passed, since the library's path on other nodes is unknown.
    """
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        dashboard_error = ray_dashboard_missing()
        with_dashboard = dashboard and dashboard_error is None
        where = f"cluster at {run.address}" if run.address else f"local cluster, {local_cpus()} CPUs"
        print(f"starting Ray ({where}) ...", flush=True)
        kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
        if run.address:
            context = ray.init(address=run.address, namespace=RAY_NAMESPACE, **kwargs)
        else:
            context = ray.init(
                num_cpus=local_cpus(),
                include_dashboard=with_dashboard,
                dashboard_host="127.0.0.1",
                object_store_memory=256 * 2**20,
                runtime_env={"env_vars": env_vars} if env_vars else None,
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


def local_cpus() -> int:
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


def node_died(node_id: str, wait_s: float) -> bool:
    """Whether the cluster counts node ``node_id`` as dead within ``wait_s`` (Ray notices a lost node after a
    few missed heartbeats)."""
    import ray

    deadline = time.monotonic() + wait_s
    while True:
        alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        if not alive.get(node_id, False):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def actor_lost(error_text: str) -> bool:
    """Whether Ray's error text says a trial's actor vanished (its process or node), not that it raised."""
    return any(marker in error_text.lower() for marker in ACTOR_LOST)


# --- The trial side: what a trial tells Tune -----------------------------------------------------------------


def node_identity() -> dict[str, str | None]:
    """The node this process runs on: its host name, the IP address and the node id Ray knows it by."""
    import socket

    import ray
    import ray.util

    if not ray.is_initialized():  # outside Ray (tests): the host alone
        return {"node_hostname": socket.gethostname(), "node_ip": None, "node_id": None}
    return {
        "node_hostname": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


class TuneSession:
    """What a trial running under Tune reads from and tells it (:class:`mmlo.orchestrator.trainable.Engine`)."""

    def node(self) -> dict[str, str | None]:
        return node_identity()

    def restored_checkpoint(self, into: Path) -> Path | None:
        """Tune's own checkpoint of this trial (a retry), copied into ``into``; None on a first attempt."""
        from ray import tune

        checkpoint = tune.get_checkpoint()
        return None if checkpoint is None else Path(checkpoint.to_directory(str(into)))

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        """Report scalars (and a checkpoint, which Tune copies into its storage before this returns)."""
        import shutil

        from ray import tune

        if checkpoint is None:
            tune.report(dict(metrics))
            return
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))
        shutil.rmtree(checkpoint, ignore_errors=True)


def tune_trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial (:func:`mmlo.orchestrator.trainable.run_trial`) under Tune."""
    from mmlo.orchestrator.trainable import run_trial

    run_trial(config, TuneSession())


def trial_actor_class(study_name: str, fresh_actors: bool) -> type:
    """The Tune trainable: :func:`tune_trial` in an actor named for the dashboard (``ray list actors``).

    Ray reads an actor's name once, when it starts. An actor that runs one trial is named
    ``mmlo <study>/<trial id>``; an actor that Tune reuses for trial after trial is ``mmlo <study> trial
    runner`` (the trial it runs now is in the status line, ``mmlo status`` and its log lines).
    """
    from ray.tune.trainable import wrap_function

    base: Any = wrap_function(tune_trial)

    class MmloTrial(base):
        _name = "mmlo_trial"

        def __repr__(self) -> str:
            return f"mmlo {study_name}/{self.trial_name}" if fresh_actors else f"mmlo {study_name} trial runner"

    return MmloTrial


# --- The search: OptunaSearch and ASHA -----------------------------------------------------------------------


# OptunaSearch keeps its Optuna study and the Tune-trial -> Optuna-trial map in private attributes, and has no
# hook to tell a trial's outcome itself; these three functions are the only places that read them
# (tests/orchestrator/test_search.py checks them against the installed Ray, so an upgrade fails loudly).
def pending_optuna_trial(searcher: OptunaSearch, trial_id: str) -> optuna.Trial | None:
    """The Optuna trial of a Tune trial that has not been told its outcome yet, else None."""
    if trial_id in searcher._completed_trials:
        return None
    trial: optuna.Trial | None = searcher._ot_trials.get(trial_id)
    return trial


def optuna_study(searcher: OptunaSearch) -> optuna.Study:
    """The Optuna study an OptunaSearch asks and tells."""
    # OptunaSearch sets it to None in __init__ and to the study once Tune hands it the search properties.
    return searcher._ot_study  # type: ignore[return-value]  # Ray does not annotate it: mypy infers None


def mark_told(searcher: OptunaSearch, trial_id: str) -> None:
    """Record that a Tune trial's outcome was told to Optuna (OptunaSearch then ignores it)."""
    searcher._completed_trials.add(trial_id)


def make_searcher(
    study: Study, space: SearchSpace, storage: optuna.storages.BaseStorage, metric: str, mode: str
) -> OptunaSearch:
    """An OptunaSearch over ``space`` that tells Optuna which trials stopped before their full budget.

    A fresh search (no trial in the journal yet) has the base arm's point enqueued first; a resumed one
    already holds it. With ``search.cost``, OptunaSearch gets a list of metrics and modes, which makes
    its study multi-objective (Optuna's TPE then ranks trials by non-domination).
    """
    from ray.tune.search.optuna import OptunaSearch

    from mmlo.orchestrator.plan import search_iterations
    from mmlo.orchestrator.search import has_trials

    metrics, modes = objectives(study, metric, mode)
    point = start_point(study)
    points = [point] if point is not None and not has_trials(storage, study.name) else None

    class BudgetAwareOptunaSearch(OptunaSearch):
        """Tells trials that stopped short of ``iterations`` as PRUNED, non-finite scores as FAIL."""

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            import optuna

            ot_trial = pending_optuna_trial(self, trial_id)
            if error or not result or ot_trial is None:
                super().on_trial_complete(trial_id, result, error)
                return
            ot_study = optuna_study(self)
            value = result.get(metrics[0])
            if value is None or not math.isfinite(float(value)):
                ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            elif result.get("iteration", 0) < search_iterations(study):
                # A multi-objective study takes no intermediate values: TPE then ranks its pruned trials last.
                if len(metrics) == 1:
                    ot_trial.report(float(value), int(result.get("training_iteration", 0)))
                ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            else:
                told = [float(v) for v in (result.get(m) for m in metrics) if v is not None]
                if len(told) < len(metrics) or not all(math.isfinite(v) for v in told):
                    ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                else:
                    ot_study.tell(ot_trial, told if len(told) > 1 else told[0])
            mark_told(self, trial_id)

    return BudgetAwareOptunaSearch(
        space=space,
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        points_to_evaluate=points,
        sampler=tpe_sampler(study),
        study_name=study.name,
        storage=storage,
    )


def search_scheduler(study: Study) -> TrialScheduler | None:
    """ASHA on the search trials' validation reports (one rung unit = one validation); every other trial of
    the study runs its full budget untouched."""
    if study.scheduler.type != "asha" or study.search is None:
        return None
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    from mmlo.orchestrator.plan import reports_per_trial, search_iterations
    from mmlo.orchestrator.search import grace_period

    def searched(trial: Any) -> bool:
        return trial.config.get(NUMBER_KEY) is not None

    class SearchOnlyASHA(AsyncHyperBandScheduler):
        """ASHA that sees only search trials."""

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            if searched(trial):
                super().on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            if searched(trial):
                return str(super().on_trial_result(tune_controller, trial, result))
            return TrialScheduler.CONTINUE

        def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
            if searched(trial):
                super().on_trial_complete(tune_controller, trial, result)

        def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
            if searched(trial):
                super().on_trial_remove(tune_controller, trial)

    return SearchOnlyASHA(
        time_attr="training_iteration",
        max_t=reports_per_trial(search_iterations(study), study.budget.val_interval),
        grace_period=grace_period(study),
        reduction_factor=study.scheduler.reduction_factor,
    )


# --- The Tune experiment -------------------------------------------------------------------------------------


def study_searcher(stages: StudyStages, metric: str, mode: str) -> Any:
    """Tune's search algorithm for a whole study: Tune's Searcher over
    :class:`~mmlo.orchestrator.phases.StudyStages`."""
    from ray.tune.search import Searcher

    from mmlo.orchestrator.phases import FINISHED

    class StudySearcher(Searcher):
        def set_search_properties(
            self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
        ) -> bool:
            # The stages carry their own spaces; Tune's param_space only adds constants.
            return True

        # Ray annotates Searcher.suggest as Optional[Dict]; its docstring (and Tune) take dict | FINISHED | None.
        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
            config = stages.suggest(trial_id)
            return Searcher.FINISHED if config is FINISHED else config

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            stages.on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            stages.on_trial_complete(trial_id, result, error)

    return StudySearcher(metric=metric, mode=mode)


def _tune_callback(events: TrialEvents) -> Any:
    """Tune's callback, forwarding each trial's start, results and end to ``events`` (the trial's Tune
    config, last result and error text)."""
    from ray import tune

    class Progress(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            events.started(trial.config)

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            events.result(trial.config, result)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            events.ended(trial.config, trial.last_result or {}, error=None)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            failure = events.failure_text(trial.config, error_text(trial))
            events.ended(trial.config, trial.last_result or {}, error=failure)

        def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            events.retried(trial.config, events.failure_text(trial.config, error_text(trial)))

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            events.tick()

    return Progress()


def error_text(trial: Any) -> str:
    """The last line of a Tune trial's error file: what went wrong, in Ray's words."""
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return "the trial's worker died (see logs/ray)"


def run_tuner(run: Run, stages: StudyStages, fits: int, events: TrialEvents) -> None:
    """One Tune experiment for the whole session: every stage's trials, ``fits`` at a time, reused actors."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from mmlo.orchestrator.trainable import config_trial_id, reuse_actors, trial_constants

    study = run.study
    mode = "max" if run.higher_is_better else "min"
    reuse = reuse_actors(run.address, study)
    trainable = tune.with_resources(
        trial_actor_class(study.name, fresh_actors=not reuse),
        {"cpu": study.resources.cpus_per_trial, "gpu": study.resources.gpus_per_trial},
    )
    trainable.__qualname__ = "MmloTrial"  # the class name the dashboard lists

    def trial_dirname(trial: Any) -> str:
        return config_trial_id(trial.config)

    storage_path, storage_filesystem = run.run_dir.tune_storage()
    tuner = tune.Tuner(
        trainable,
        param_space=trial_constants(run.run_dir, study),
        tune_config=tune.TuneConfig(
            search_alg=study_searcher(stages, "val_metric", mode),
            scheduler=search_scheduler(study),
            metric="val_metric",
            mode=mode,
            num_samples=study.trial_count(),
            reuse_actors=reuse,
            max_concurrent_trials=fits,
            trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=f"study-{run.session}",
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            verbose=0,
            callbacks=[_tune_callback(events), JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=study.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            log_to_file=True,
        ),
    )
    tuner.fit()
