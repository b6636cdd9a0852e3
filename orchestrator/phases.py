"""A study's phases as one stream of trial configs, so that one Tune experiment runs the whole study.

Each phase is a *stage* that hands out trial configs: the ablation grid (and the confirm re-runs) are fixed
lists, the search phase asks Optuna for each of its trials, and the confirm stage waits until every search
trial has finished before it ranks them. Stages are drawn from in the study's phase order, but there is no
barrier between them: when the last ablation trials run, free slots already start search trials. Running
one experiment instead of one per phase keeps Tune's actors (with torch and the benchmark loaded) alive
across phases, and no slot idles while a phase drains. :class:`StudyStages` holds no Ray type: Tune's
search algorithm around it is :func:`mmlo.orchestrator.ray_engine.study_searcher`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mmlo.orchestrator import ledger
from mmlo.orchestrator.checkpoints import latest_checkpoints
from mmlo.orchestrator.eta import CONFIRM_PENDING, expected_seconds, label
from mmlo.orchestrator.plan import TrialSpec
from mmlo.orchestrator.ranking import confirm_plan

if TYPE_CHECKING:
    from mmlo.orchestrator.progress import StudyProgress
    from mmlo.orchestrator.session import Run


class Suggests(Protocol):
    """What a sampled stage asks for its configs and tells of its trials (an OptunaSearch)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None: ...

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None: ...

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None: ...


#: A stage has nothing more to hand out.
DONE = object()
#: No stage has anything more to hand out: the study's trials are all handed out.
FINISHED = object()


class Stage:
    """Hands out the trial configs of one phase; ``next`` returns a config, None (not now) or DONE."""

    def next(self, trial_id: str) -> Any:
        raise NotImplementedError

    def on_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Tune reported an intermediate result of one of this stage's trials."""

    def on_complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        """One of this stage's trials ended."""


class Planned(Stage):
    """A fixed list of trial configs (the ablation grid, the confirm re-runs), in the given order."""

    def __init__(self, configs: Sequence[dict[str, Any]]) -> None:
        self._configs = list(configs)

    def next(self, trial_id: str) -> Any:
        return self._configs.pop(0) if self._configs else DONE


class Sampled(Stage):
    """``count`` trials sampled by Optuna, at most ``limit`` of them running at once."""

    def __init__(self, searcher: Suggests, count: int, limit: int) -> None:
        self._searcher, self._count, self._limit = searcher, count, limit
        self._issued = self._running = 0

    @property
    def finished(self) -> bool:
        """Every trial of the stage has been handed out and has ended."""
        return self._issued == self._count and self._running == 0

    def next(self, trial_id: str) -> Any:
        if self._issued == self._count:
            return DONE
        if self._running >= self._limit:
            return None
        config = self._searcher.suggest(trial_id)
        self._issued += 1
        self._running += 1
        return config

    def on_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self._searcher.on_trial_result(trial_id, result)

    def on_complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        self._searcher.on_trial_complete(trial_id, result, error)
        self._running -= 1


class AfterSearch(Stage):
    """Trial configs that can only be chosen once a search stage has finished (the confirm re-runs)."""

    def __init__(self, search: Sampled | None, choose: Callable[[], Sequence[dict[str, Any]]]) -> None:
        self._search, self._choose = search, choose
        self._configs: list[dict[str, Any]] | None = None

    def next(self, trial_id: str) -> Any:
        if self._configs is None:
            if self._search is not None and not self._search.finished:
                return None
            self._configs = list(self._choose())
        return self._configs.pop(0) if self._configs else DONE


class StudyStages:
    """A whole study's trial configs: drawn from its stages in phase order (Tune's search algorithm wraps it,
    :func:`mmlo.orchestrator.ray_engine.study_searcher`)."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self._stages = list(stages)
        self._owner: dict[str, Stage] = {}

    def __bool__(self) -> bool:
        return bool(self._stages)

    def suggest(self, trial_id: str) -> Any:
        """The next trial's config, None (not now) or :data:`FINISHED`."""
        while self._stages:
            stage = self._stages[0]
            config = stage.next(trial_id)
            if config is DONE:
                self._stages.pop(0)
                continue
            if config is not None:
                self._owner[trial_id] = stage
            return config
        return FINISHED

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._owner:
            self._owner[trial_id].on_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._owner:
            self._owner.pop(trial_id).on_complete(trial_id, result, error)


def study_stages(
    run: Run, ablation: Sequence[TrialSpec], n_search: int, fits: int, progress: StudyProgress
) -> StudyStages:
    """The study's phases in order, as stages of one Tune experiment (what is left of each)."""
    study = run.study
    stages: list[Stage] = []
    search: Sampled | None = None
    for phase in study.resolved_phases:
        if phase == "ablation" and ablation:
            longest_first = sorted(ablation, key=lambda t: -expected_seconds(run, t))
            stages.append(Planned(with_checkpoints(run, longest_first)))
        elif phase == "search" and n_search:
            search = _search_stage(run, n_search, fits)
            stages.append(search)
        elif phase == "confirm":
            stages.append(AfterSearch(search, lambda: _confirm_configs(run, progress)))
    return StudyStages(stages)


def _search_stage(run: Run, n_trials: int, fits: int) -> Sampled:
    """Optuna through OptunaSearch, its journal in the run directory, interrupted trials closed first."""
    from mmlo.orchestrator.ray_engine import make_searcher
    from mmlo.orchestrator.search import base_point, enqueue, journal_storage, reconcile_journal

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
    confirm = [t for t in confirm_plan(run) if t.trial_id not in done]
    for spec in confirm:
        progress.claim(CONFIRM_PENDING, spec.trial_id, label(spec), expected_seconds(run, spec), spec.iterations)
    progress.drop(CONFIRM_PENDING)
    return with_checkpoints(run, confirm)


def with_checkpoints(run: Run, specs: Sequence[TrialSpec]) -> list[dict[str, Any]]:
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
