"""What the driver expects of a session before it starts: each trial's seconds, the study's duration, and
the status line's plan (:class:`~mmlo.orchestrator.progress.StudyProgress`, whose ETA then learns the rate).

Search and confirm trials have no id before Optuna and the ranking choose them: the plan holds placeholders
(:data:`SEARCH_PENDING`, :data:`CONFIRM_PENDING`) that a trial claims when it starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmlo.orchestrator import ledger
from mmlo.orchestrator.estimate import PHASE_START_S, SESSION_OVERHEAD_S, makespan
from mmlo.orchestrator.plan import TrialSpec, confirm_trials, search_iterations, search_trial
from mmlo.orchestrator.progress import StudyProgress, duration

if TYPE_CHECKING:
    from mmlo.orchestrator.session import Run

#: Status-line entries that stand for trials not created yet (search trials get their id from Optuna).
SEARCH_PENDING, CONFIRM_PENDING = "search pending ", "confirm pending "


def label(spec: TrialSpec) -> str:
    """How the status line names a trial: its arm, and its seed outside the search."""
    return f"{spec.arm} s{spec.seed}" if spec.phase != "search" else spec.arm


def expected_seconds(run: Run, spec: TrialSpec) -> float:
    """Expected seconds of a trial (its iterations when nothing was timed: the ETA then learns the rate)."""
    seconds = run.expected.get(spec.trial_id)
    if seconds is None and spec.phase == "search":
        seconds = run.expected.get("search-000")
    if seconds is None and spec.phase == "confirm":
        seconds = run.expected.get("search-000")
        if seconds is not None:
            seconds *= spec.iterations / max(1, search_iterations(run.study))
    return seconds if seconds is not None else float(spec.iterations)


def expected_line(run: Run, ablation: Sequence[TrialSpec], n_search: int, fits: int) -> str:
    """The expected duration: every trial left dealt longest-first onto the slots, plus starting Ray and the
    actors and writing the report (an upper bound when ASHA may stop search trials early)."""
    if not run.expected or any(run.expected.get(t.trial_id) is None for t in ablation):
        return "expected duration: shown live (ETA) once the first trials report"
    study = run.study
    seconds = [expected_seconds(run, t) for t in ablation]
    if n_search:
        seconds += [expected_seconds(run, search_trial(study, 0, {}))] * n_search
    if study.confirm is not None and "confirm" in study.resolved_phases and study.search is not None:
        probe = confirm_trials(study, [search_trial(study, 0, {})])[0]
        done = sum(1 for r in ledger.finished(run.run_dir).values() if r["phase"] == "confirm")
        seconds += [expected_seconds(run, probe)] * max(0, study.confirm.top_k * len(study.seeds) - done)
    total = makespan(seconds, fits) + PHASE_START_S + SESSION_OVERHEAD_S
    ceiling = " at most" if n_search and study.scheduler.type == "asha" else ""
    return f"expected duration{ceiling} ~{duration(total)} (timed one step of each arm on this machine)"


def plan_display(
    run: Run, progress: StudyProgress, done: dict[str, dict[str, Any]], ablation: Sequence[TrialSpec], n_search: int
) -> None:
    """Put every trial of the session on the status line: finished ones, the ablation left, placeholders."""
    study = run.study
    for record in done.values():
        spec = TrialSpec.from_json(record["spec"]) if record.get("spec") else None
        if spec is not None:
            progress.plan(spec.trial_id, label(spec), expected_seconds(run, spec), spec.iterations, record["state"])
    for spec in ablation:
        progress.plan(spec.trial_id, label(spec), expected_seconds(run, spec), spec.iterations)
    placeholder = search_trial(study, 0, {}) if study.search is not None else None
    if placeholder is not None:
        for i in range(n_search):
            progress.plan(f"{SEARCH_PENDING}{i}", "search", expected_seconds(run, placeholder), placeholder.iterations)
    if study.confirm is not None and "confirm" in study.resolved_phases and placeholder is not None:
        probe = confirm_trials(study, [placeholder])[0]
        confirmed = sum(1 for r in done.values() if r["phase"] == "confirm")
        for i in range(max(0, study.confirm.top_k * len(study.seeds) - confirmed)):
            progress.plan(f"{CONFIRM_PENDING}{i}", "confirm", expected_seconds(run, probe), probe.iterations)
