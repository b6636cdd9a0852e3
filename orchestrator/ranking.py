"""Which search trials the confirm phase re-runs: the best that used their full budget, ranked once."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mmlo.orchestrator import ledger
from mmlo.orchestrator.plan import TrialSpec, confirm_trials, search_base
from mmlo.orchestrator.search import is_base_configuration
from mmlo.orchestrator.spec import Study
from mmlo.storage import RunStore

if TYPE_CHECKING:
    from mmlo.orchestrator.session import Run


def best_search_trials(run_dir: RunStore, study: Study, higher_is_better: bool) -> list[TrialSpec]:
    """The ``confirm.top_k`` best search trials that completed their full budget, best first.

    Trials that stopped early are never ranked: their scores come from a shorter budget. A trial of the base
    arm's own configuration is passed over when the ablation phase trains that arm: re-running it with the
    same seeds and budget would repeat those trials exactly, so the next best configuration is confirmed.
    """
    assert study.confirm is not None
    full = [
        r
        for r in ledger.finished(run_dir).values()
        if r["phase"] == "search"
        and r["state"] == "completed"
        and r.get("val_metric") is not None
        and math.isfinite(r["val_metric"])
        and int(r["iterations_done"]) >= int(r["budget_iterations"])
    ]
    full.sort(key=lambda r: (-r["val_metric"] if higher_is_better else r["val_metric"], r["trial_id"]))
    specs = [TrialSpec.from_json(r["spec"]) for r in full]
    in_ablation = "ablation" in study.resolved_phases and any(a.name == search_base(study) for a in study.arms)
    if in_ablation:
        specs = [spec for spec in specs if not is_base_configuration(study, spec)]
    return specs[: study.confirm.top_k]


def confirm_plan(run: Run) -> list[TrialSpec]:
    """The confirm trials of the best search trials (with a note when there is none to confirm)."""
    best = best_search_trials(run.run_dir, run.study, run.higher_is_better)
    if not best:
        print(
            "confirm: no search trial other than the base arm's own configuration completed its full budget; "
            "nothing to confirm",
            flush=True,
        )
    return confirm_trials(run.study, best)
