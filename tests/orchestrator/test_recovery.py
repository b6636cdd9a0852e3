from __future__ import annotations

from pathlib import Path

import optuna
import polars as pl

from mmlo.orchestrator import ledger
from mmlo.orchestrator.recovery import rerun_damaged
from mmlo.orchestrator.search import journal_storage
from mmlo.storage import RunStore


def damage(run: RunStore, trial_id: str) -> None:
    """A record cut off mid-file, as a failing disk or an interrupted copy leaves it."""
    ledger.write_record(run, {"trial_id": trial_id, "state": "completed", "phase": "ablation"})
    path = Path(run.path(f"parts/{trial_id}/trial.json"))
    path.write_bytes(path.read_bytes()[:20])


def test_damaged_ablation_record_is_named_and_left_for_its_trial_to_rewrite(tmp_path: Path) -> None:
    # the line names the file and where the trial restarts; the folder (progress, checkpoints) stays
    run = RunStore.open(tmp_path / "r")
    damage(run, "ablation-00-s0")
    ledger.append_progress(run, "ablation-00-s0", {"iteration": 2, "val_metric": 0.5})
    lines = rerun_damaged(run, "r")
    assert lines == [
        f"damaged trial record {run.path('parts/ablation-00-s0/trial.json')} (unreadable): "
        "ablation-00-s0 runs again from scratch (no checkpoint)"
    ]
    assert ledger.read_progress(run, "ablation-00-s0")[0]["iteration"] == 2
    assert "ablation-00-s0" not in ledger.finished(run)


def test_damaged_search_record_requeues_its_point_once(tmp_path: Path) -> None:
    # a finished search trial's point is queued again; one the journal still has RUNNING is left to the
    # search phase (which queues it itself); both damaged folders are removed
    (tmp_path / "r").mkdir()
    run = RunStore.open(tmp_path / "r")
    storage = journal_storage(run)
    study = optuna.create_study(study_name="r", storage=storage)
    done = study.ask()
    done.suggest_float("lr", 0.001, 0.1)
    study.tell(done, 0.5)
    running = study.ask()
    running.suggest_float("lr", 0.001, 0.1)
    damage(run, "search-000")
    damage(run, "search-001")
    lines = rerun_damaged(run, "r")
    assert [line.rsplit(": ", 1)[1] for line in lines] == [
        "search trial 0's point runs again",
        "search trial 1's point runs again",
    ]
    assert not run.exists("parts/search-000") and not run.exists("parts/search-001")
    waiting = optuna.load_study(study_name="r", storage=storage).get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == {"lr": done.params["lr"]}


def test_nothing_damaged_nothing_printed(tmp_path: Path) -> None:
    # a healthy run directory (or none yet) costs one listing and prints nothing
    assert rerun_damaged(RunStore.open(tmp_path / "absent"), "r") == []


def test_damaged_episodes_and_transference_parts(tmp_path: Path) -> None:
    # a completed trial whose episodes.parquet is cut short becomes unfinished (it runs again); an unreadable
    # transference part is removed and the line names the command that measures it again
    run = RunStore.open(tmp_path / "r")
    ledger.write_record(run, {"trial_id": "ablation-00-s0", "state": "completed", "phase": "ablation"})
    ledger.write_record(run, {"trial_id": "ablation-01-s0", "state": "completed", "phase": "ablation"})
    frame = pl.DataFrame({"x": list(range(100))})
    ledger.write_episodes(run, "ablation-00-s0", frame)
    ledger.write_episodes(run, "ablation-01-s0", frame)
    ledger.write_transference(run, "ablation-01-s0", 4, frame)
    for rel in ("parts/ablation-00-s0/episodes.parquet", "parts/ablation-01-s0/transference-00000004.parquet"):
        path = Path(run.path(rel))
        path.write_bytes(path.read_bytes()[:50])
    lines = rerun_damaged(run, "r")
    assert lines[0].endswith("episodes.parquet (unreadable): ablation-00-s0 runs again from scratch (no checkpoint)")
    assert "transference-00000004.parquet (unreadable): removed" in lines[1]
    assert f"mmlo transference {run} --trial ablation-01-s0 --checkpoint 4" in lines[1]
    assert sorted(ledger.finished(run)) == ["ablation-01-s0"]
    assert ledger.damaged_tables(run) == []
    assert ledger.read_table(run, "parts/ablation-01-s0/episodes.parquet") is not None
