"""A study's phases as one Tune search algorithm, so that one Tune experiment runs the whole study.

Each phase is a *stage* that hands out trial configs: the ablation grid (and the confirm re-runs) are fixed
lists, the search phase asks Optuna for each of its trials, and the confirm stage waits until every search
trial has finished before it ranks them. Stages are drawn from in the study's phase order, but there is no
barrier between them: when the last ablation trials run, free slots already start search trials. Running
one experiment instead of one per phase keeps Tune's actors (with torch and the benchmark loaded) alive
across phases, and no slot idles while a phase drains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ray.tune.search import Searcher

if TYPE_CHECKING:
    from ray.tune.search.optuna import OptunaSearch

#: A stage has nothing more to hand out.
DONE = object()


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

    def __init__(self, searcher: OptunaSearch, count: int, limit: int) -> None:
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


class StudySearcher(Searcher):
    """Tune's search algorithm for a whole study: draws configs from its stages in phase order."""

    def __init__(self, stages: Sequence[Stage], metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self._stages = list(stages)
        self._owner: dict[str, Stage] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        # The stages carry their own spaces; Tune's param_space only adds constants.
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        while self._stages:
            stage = self._stages[0]
            config = stage.next(trial_id)
            if config is DONE:
                self._stages.pop(0)
                continue
            if config is not None:
                self._owner[trial_id] = stage
            return config
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._owner:
            self._owner[trial_id].on_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._owner:
            self._owner.pop(trial_id).on_complete(trial_id, result, error)
