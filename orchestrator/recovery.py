"""What a resumed study does with trial records it cannot read: name them, and run their trials again.

Every ledger file is written atomically, so a record is unreadable only after damage from outside the study (a
disk error, a hand edit, a copy that stopped half-way). Such a record never stops a resume. Its trial counts as
unfinished, its path is printed, and it runs again:

- an ablation or confirm trial from the last checkpoint Tune confirmed for it, or from scratch without one
  (the driver plans it as any interrupted trial); when that checkpoint is its last iteration's, only its test
  episodes are evaluated again;
- a search trial from scratch at the same point: its part files are removed and the point its Optuna trial
  sampled is queued, so the search runs it again under a new number. The old Optuna trial keeps the outcome it
  was told (the search's history is not rewritten), and the search still ends with ``search.trials`` trials
  that have records.
"""

from __future__ import annotations

import warnings

from mmlo.orchestrator import ledger
from mmlo.orchestrator.checkpoints import latest_checkpoints
from mmlo.storage import RunStore

SEARCH_PREFIX = "search-"


def rerun_damaged(run_dir: RunStore, study_name: str) -> list[str]:
    """Prepare the trials whose records are unreadable to run again; returns one line per trial to print."""
    lines = []
    requeue: list[int] = []
    damaged = ledger.damaged_trials(run_dir)
    checkpoints = latest_checkpoints(run_dir) if damaged else {}
    for trial_id, where in sorted(damaged.items()):
        number = _search_number(trial_id)
        if number is None:
            start = f"from {checkpoints[trial_id]}" if trial_id in checkpoints else "from scratch (no checkpoint)"
            lines.append(f"damaged trial record {where} (unreadable): {trial_id} runs again {start}")
            continue
        ledger.remove_trial(run_dir, trial_id)
        requeue.append(number)
        lines.append(f"damaged trial record {where} (unreadable): search trial {number}'s point runs again")
    if requeue:
        _requeue_points(run_dir, study_name, requeue)
    return lines


def _search_number(trial_id: str) -> int | None:
    digits = trial_id.removeprefix(SEARCH_PREFIX)
    return int(digits) if trial_id.startswith(SEARCH_PREFIX) and digits.isdigit() else None


def _requeue_points(run_dir: RunStore, study_name: str, numbers: list[int]) -> None:
    """Queue the points Optuna sampled for ``numbers``. A trial still RUNNING in the journal is left alone: the
    search phase closes it as interrupted and queues its point itself."""
    import optuna

    from mmlo.orchestrator.search import enqueue, journal_storage

    storage = journal_storage(run_dir)
    try:
        trials = {t.number: t for t in optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)}
    except KeyError:  # no journal: the search never started
        return
    points = [
        dict(trials[n].params) for n in numbers if n in trials and trials[n].state != optuna.trial.TrialState.RUNNING
    ]
    with warnings.catch_warnings():
        # Optuna marks enqueue_trial experimental; the driver's terminal shows the study, not that warning.
        warnings.simplefilter("ignore")
        enqueue(storage, study_name, points)
