"""The search's Optuna storage in a run directory, on a file system and on an object store (moto S3)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from mmlo.orchestrator.search import JOURNAL_FILE, JOURNAL_SEGMENTS, journal_storage
from mmlo.storage import RunStore


def _run_three_trials(store: RunStore) -> list[tuple[int, float | None, str]]:
    study = optuna.create_study(study_name="s", storage=journal_storage(store), load_if_exists=True)
    for value in (0.3, 0.1):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, value)
    study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # left running, as a crashed driver would
    return [(t.number, t.value, t.state.name) for t in study.get_trials()]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RunStore:
    if request.param == "local":
        return RunStore.open(tmp_path / "run")
    return RunStore.open(f"s3://runs/{tmp_path.name}/run?{request.getfixturevalue('s3_endpoint')}")


def test_a_new_driver_reads_back_every_trial(store: RunStore) -> None:
    # a fresh storage object (a resumed driver) sees the same trials, values and states, the running one too
    before = _run_three_trials(store)
    reopened = optuna.load_study(study_name="s", storage=journal_storage(RunStore.open(store.uri)))
    assert [(t.number, t.value, t.state.name) for t in reopened.get_trials()] == before
    assert before[-1][2] == "RUNNING"
    assert reopened.best_value == 0.1


def test_where_the_journal_lives(store: RunStore, tmp_path: Path) -> None:
    # a file system keeps Optuna's own journal file; an object store keeps numbered segments that concatenate to it
    _run_three_trials(store)
    if store.is_local:
        assert store.list() == [JOURNAL_FILE]
        return
    segments = store.list(JOURNAL_SEGMENTS)
    assert segments == sorted(segments) and len(segments) > 3
    joined = tmp_path / "joined.journal"
    joined.write_text("".join(store.read_text(s) or "" for s in segments))
    backend = JournalFileBackend(str(joined))
    from_file = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(backend))
    assert [t.value for t in from_file.get_trials()] == [0.3, 0.1, None]
