from __future__ import annotations

from typing import Any

from mmlo.orchestrator.phases import FINISHED, AfterSearch, Planned, Sampled, StudyStages


class FakeOptuna:
    """Records what the study searcher forwards; suggests numbered configs."""

    def __init__(self) -> None:
        self.number = 0
        self.results: list[tuple[str, dict[str, Any]]] = []
        self.completed: list[tuple[str, bool]] = []

    def suggest(self, trial_id: str) -> dict[str, Any]:
        self.number += 1
        return {"optuna_number": self.number - 1}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.results.append((trial_id, result))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        self.completed.append((trial_id, error))


def test_stages_in_order_with_a_search_limit_and_confirm_after_search() -> None:
    # the grid first; then at most `limit` search trials at once; confirm only once every search trial ended
    optuna = FakeOptuna()
    search = Sampled(optuna, count=3, limit=2)
    chosen: list[str] = []

    def ranked() -> list[dict[str, Any]]:
        chosen.append("ranked")
        return [{"trial": "c0"}, {"trial": "c1"}]

    confirm = AfterSearch(search, ranked)
    searcher = StudyStages([Planned([{"trial": "a0"}, {"trial": "a1"}]), search, confirm])
    assert searcher.suggest("t1") == {"trial": "a0"}
    assert searcher.suggest("t2") == {"trial": "a1"}
    assert searcher.suggest("t3") == {"optuna_number": 0}
    assert searcher.suggest("t4") == {"optuna_number": 1}
    assert searcher.suggest("t5") is None  # two search trials running: the limit
    searcher.on_trial_result("t3", {"val_metric": 0.5})
    searcher.on_trial_complete("t1")  # a grid trial: nothing reaches Optuna
    searcher.on_trial_complete("t3", {"val_metric": 0.6})
    assert optuna.results == [("t3", {"val_metric": 0.5})] and optuna.completed == [("t3", False)]
    assert searcher.suggest("t5") == {"optuna_number": 2}
    assert searcher.suggest("t6") is None and not chosen  # search trials still running: confirm waits
    searcher.on_trial_complete("t4", error=True)
    assert searcher.suggest("t6") is None
    searcher.on_trial_complete("t5", {"val_metric": 0.7})
    assert optuna.completed[-2:] == [("t4", True), ("t5", False)]
    assert searcher.suggest("t6") == {"trial": "c0"} and chosen == ["ranked"]
    assert searcher.suggest("t7") == {"trial": "c1"}
    assert searcher.suggest("t8") == FINISHED


def test_confirm_without_search_this_session_and_empty_confirm() -> None:
    # a resumed study whose search finished earlier confirms at once; nothing to confirm finishes
    searcher = StudyStages([AfterSearch(None, lambda: [])])
    assert searcher.suggest("t1") == FINISHED
    searcher = StudyStages([AfterSearch(None, lambda: [{"trial": "c0"}])])
    assert searcher.suggest("t1") == {"trial": "c0"}


def test_tunes_searcher_draws_from_the_stages() -> None:
    # the Ray adapter hands Tune the stages' configs, and Tune's FINISHED once they are all handed out
    from ray.tune.search import Searcher

    from mmlo.orchestrator.ray_engine import study_searcher

    optuna = FakeOptuna()
    stages = StudyStages([Planned([{"trial": "a0"}]), Sampled(optuna, count=1, limit=1)])
    searcher = study_searcher(stages, "val_metric", "max")
    assert isinstance(searcher, Searcher)
    assert searcher.suggest("t1") == {"trial": "a0"}
    assert searcher.suggest("t2") == {"optuna_number": 0}
    searcher.on_trial_result("t2", {"val_metric": 0.1})
    searcher.on_trial_complete("t2", {"val_metric": 0.2})
    assert optuna.results == [("t2", {"val_metric": 0.1})] and optuna.completed == [("t2", False)]
    assert searcher.suggest("t3") == Searcher.FINISHED
