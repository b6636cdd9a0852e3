"""What a resumed study does with part files it cannot read: name them, and run their trials again.

Every ledger file is written atomically, so a part file is unreadable only after damage from outside the study
(a disk error, a hand edit, a copy that stopped half-way). Such a file never stops a resume: its path is
printed, and a trial whose record or test episodes (``episodes.parquet``) cannot be read counts as unfinished
and runs again:

- an ablation or confirm trial from the last checkpoint Tune confirmed for it, or from scratch without one
  (the driver plans it as any interrupted trial); when that checkpoint is its last iteration's, only its test
  episodes are evaluated again;
- a search trial from scratch at the same point: its part files are removed and the point its Optuna trial
  sampled is queued, so the search runs it again under a new number. The old Optuna trial keeps the outcome it
  was told (the search's history is not rewritten), and the search still ends with ``search.trials`` trials
  that have records.

An unreadable ``transference-<iteration>.parquet`` is removed (its rows are left out of the table), and the
line names the ``mmlo transference`` command that measures that checkpoint again.
"""

from __future__ import annotations

import warnings

from mmlo.orchestrator import ledger
from mmlo.orchestrator.checkpoints import latest_checkpoints
from mmlo.storage import RunStore

SEARCH_PREFIX = "search-"


def rerun_damaged(run_dir: RunStore, study_name: str) -> list[str]:
    """Prepare the trials whose part files are unreadable to run again; returns one line per file to print."""
    lines: list[str] = []
    requeue: list[int] = []
    found: dict[str, str] = {}

    def restart(trial_id: str) -> str:
        if not found:
            found.update(latest_checkpoints(run_dir))
        return f"from {found[trial_id]}" if trial_id in found else "from scratch (no checkpoint)"

    damaged = ledger.damaged_trials(run_dir)
    for trial_id, where in sorted(damaged.items()):
        number = _search_number(trial_id)
        if number is None:
            lines.append(f"damaged trial record {where} (unreadable): {trial_id} runs again {restart(trial_id)}")
            continue
        ledger.remove_trial(run_dir, trial_id)
        requeue.append(number)
        lines.append(f"damaged trial record {where} (unreadable): search trial {number}'s point runs again")
    for rel in ledger.damaged_tables(run_dir):
        trial_id, name = rel.split("/")[1], rel.rsplit("/", 1)[-1]
        if trial_id in damaged:  # it runs again anyway, and rewinding deletes its episodes
            continue
        where = run_dir.where(rel)
        run_dir.delete(rel)
        record = ledger.read_record(run_dir, trial_id) or {}
        number = _search_number(trial_id)
        if name.startswith(ledger.TRANSFERENCE_PREFIX):
            iteration = int(name.removeprefix(ledger.TRANSFERENCE_PREFIX).split(".")[0])
            lines.append(
                f"damaged part file {where} (unreadable): removed; `mmlo transference {run_dir} --trial {trial_id} "
                f"--checkpoint {iteration}` measures it again while that checkpoint is kept"
            )
        elif record.get("state") != "completed":
            lines.append(f"damaged part file {where} (unreadable): removed")
        elif number is not None:
            ledger.remove_trial(run_dir, trial_id)
            requeue.append(number)
            lines.append(f"damaged part file {where} (unreadable): search trial {number}'s point runs again")
        else:
            # An unfinished record makes the driver plan the trial again, from its last checkpoint.
            ledger.write_record(run_dir, {**record, "state": "running"})
            lines.append(f"damaged part file {where} (unreadable): {trial_id} runs again {restart(trial_id)}")
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
        search = optuna.load_study(study_name=study_name, storage=storage)
        trials = {t.number: t for t in search.get_trials(deepcopy=False)}
    except KeyError:  # no journal: the search never started
        return
    points = [
        dict(trials[n].params) for n in numbers if n in trials and trials[n].state != optuna.trial.TrialState.RUNNING
    ]
    with warnings.catch_warnings():
        # Optuna marks enqueue_trial experimental; the driver's terminal shows the study, not that warning.
        warnings.simplefilter("ignore")
        enqueue(storage, study_name, points)
