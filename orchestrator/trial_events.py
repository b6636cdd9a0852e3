"""What the driver does when a trial starts, reports, is retried or ends (the engine tells it each event).

It feeds the status line, records trials the engine stopped or lost before they could say so themselves
(the worker writes its own record otherwise), counts retries with their reasons, refreshes the Parquet tables
after each finished trial, and notes when each phase's first trial started and last one ended.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mmlo.orchestrator import ledger
from mmlo.orchestrator.eta import SEARCH_PENDING, expected_seconds
from mmlo.orchestrator.plan import search_trial
from mmlo.orchestrator.progress import StudyProgress
from mmlo.orchestrator.search import NUMBER_KEY
from mmlo.orchestrator.session import Run
from mmlo.orchestrator.trainable import config_phase, config_trial_id, trial_from_config
from mmlo.storage import RunStore, StorageFull, storage_full


class TrialEvents:
    """The driver's side of a session's trial events; ``phases`` holds each phase's first start, last end
    (monotonic seconds) and trial count."""

    def __init__(self, run: Run, progress: StudyProgress, write_tables: Callable[[], None]) -> None:
        self.run, self.progress, self._write_tables = run, progress, write_tables
        self.phases: dict[str, tuple[float, float, int]] = {}

    def tick(self) -> None:
        self.progress.tick()

    def started(self, config: dict[str, Any]) -> None:
        trial_id = config_trial_id(config)
        if not self.progress.knows(trial_id):
            spec = search_trial(self.run.study, int(config[NUMBER_KEY]), {})
            self.progress.claim(SEARCH_PENDING, trial_id, trial_id, expected_seconds(self.run, spec), spec.iterations)
        phase = config_phase(config)
        now = time.monotonic()
        first, last, count = self.phases.get(phase, (now, now, 0))
        self.phases[phase] = (first, last, count + 1)
        self.progress.phase = phase
        self.progress.started(trial_id)
        self.progress.tick()

    def result(self, config: dict[str, Any], result: dict[str, Any]) -> None:
        self.progress.result(
            config_trial_id(config),
            int(result.get("iteration", 0)),
            float(result.get("elapsed_s", 0.0)),
            result.get("val_metric"),
        )
        self.progress.tick()

    def retried(self, config: dict[str, Any], reason: str) -> None:
        note_retry(self.run.run_dir, config_trial_id(config), reason)
        self.progress.note(f"  retry   {config_trial_id(config):<24} after: {reason}")

    def ended(self, config: dict[str, Any], last_result: dict[str, Any], error: str | None) -> None:
        trial_id = config_trial_id(config)
        if error is not None and storage_full(error):
            # The trial did not fail; the storage did. Its record stays unfinished for --resume.
            raise StorageFull(f"{trial_id}: {error}")
        phase = config_phase(config)
        first, _, count = self.phases.get(phase, (time.monotonic(), 0.0, 1))
        self.phases[phase] = (first, time.monotonic(), count)
        record = finalize_record(self.run, trial_id, config, last_result, error)
        note = f"  ({record.get('failure_reason')})" if record["state"] == "failed" else ""
        self.progress.finished(
            trial_id,
            record["state"],
            int(record.get("iterations_done") or 0),
            record.get("val_metric"),
            record.get("wall_seconds"),
            note,
        )
        self._write_tables()

    def failure_text(self, config: dict[str, Any], text: str, wait_s: float = 20.0) -> str:
        """Why a trial failed, in words (``text``: the engine's error): for a lost actor, whether its node died
        (the engine notices a lost node after a few missed heartbeats, so this waits up to ``wait_s``) or only
        its worker process."""
        from mmlo.orchestrator.ray_engine import actor_lost, node_died

        if not actor_lost(text):
            return text
        # Ray follows its verdict with a paragraph of guesses (the OOM killer, `ray stop`, a segfault); the verdict
        # and the exit type are what the record needs.
        text = text.split(" Worker exit detail:", 1)[0].strip()
        record = ledger.read_record(self.run.run_dir, config_trial_id(config)) or {}
        node_id = record.get("node_id")
        if not node_id:
            return text
        where = f"node {record.get('node_hostname')} ({record.get('node_ip')}, id {str(node_id)[:12]})"
        # The cluster this driver started has one node, this machine: it cannot have died under a running driver.
        if self.run.address is not None and node_died(node_id, wait_s):
            return f"{where} died during the trial: {text}"
        return f"the trial's worker process on {where} died: {text}"


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
