"""A synthetic but realistic run directory, written with the orchestrator's own contract (the fixtures of
``conftest.py`` write it once per session).

Three arms x two seeds x four modes of test episodes, validation progress, a six-trial Optuna search with
an early-stopped and a failed trial, and transference rows at two iterations. ``write_synthetic_run`` also
makes a regression (MSE) run, so both metric directions go through the same report.

Everything a real run has comes from the code that writes real runs: the spec is a validated
:class:`~mmlo.orchestrator.spec.Study` dumped as the driver dumps it, trial ids come from the planner
(:mod:`mmlo.orchestrator.plan`), each table has exactly the sink's schema (:mod:`mmlo.orchestrator.sink`)
with every column given a value here (a column the sink adds and this file lacks is an error, not a silent
null), and the ``cfg_`` columns come from real learner and training configurations. Only the numbers are
made up. ``test_synthetic.py`` checks the fixture against the sink and the provenance writer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.orchestrator import sink
from mmlo.orchestrator.plan import TrialSpec, ablation_trials, confirm_trials, search_trial
from mmlo.orchestrator.spec import Study, dump_study

IMAGE_MODES = ("glyphs", "emoji", "icons", "textures")
REGRESSION_MODES = ("sinusoid", "linear")
ARMS = ("ProtoNet", "MMAML (FiLM)", "KML-ProtoNet")
LEARNERS = {"ProtoNet": "protonet", "MMAML (FiLM)": "mmaml", "KML-ProtoNet": "kml"}
SEEDS = (0, 1)
PARAMS = {
    "ProtoNet": (113_088, 0, 0),
    "MMAML (FiLM)": (113_088, 99_232, 30_720),
    "KML-ProtoNet": (113_088, 99_232, 82_531),
}
#: The search: (learner, kml_variant, lr, final state, iterations done, failure reason) per Optuna trial.
SEARCH = (
    ("kml", "residual", 0.003, "completed", 100, None),
    ("mprotonet", None, 0.0005, "stopped_early", 40, None),
    ("kml", "multiplicative", 0.008, "completed", 100, None),
    ("kml", "residual", 0.0002, "failed", 20, "TrainingDiverged: NaN loss at iteration 21"),
    ("mprotonet", None, 0.002, "completed", 100, None),
    ("kml", "multiplicative", 0.001, "stopped_early", 60, None),
)
#: The base arm's own configuration as a point of the search space (search trial 5 samples it).
START_POINT = {"learner": "kml", "kml_variant": "multiplicative", "lr": 0.001}


def synthetic_study(name: str, metric: str, episodes: int, confirm: bool = False) -> Study:
    """The study the synthetic run pretends to be, validated like any study file."""
    regression = metric == "mse"
    spec: dict[str, Any] = {
        "name": name,
        "description": "Synthetic run written by tests/reports/synthetic.py.",
        "benchmark": {
            "name": "regression2" if regression else "offline4",
            "shots": 5 if regression else 1,
            "query": 5 if regression else 15,
        },
        "train": {"meta_batch": 8, "lr": 0.001},
        "budget": {"iterations": 100, "val_interval": 20, "val_episodes": 10, "eval_episodes": episodes},
        "arms": [{"name": arm, "learner": LEARNERS[arm]} for arm in ARMS],
        "seeds": list(SEEDS),
        "eval_seed": 1234,
        "search": {
            "trials": len(SEARCH),
            "base": "KML-ProtoNet",
            "space": {
                "learner": {"type": "categorical", "choices": ["mprotonet", "kml"]},
                "kml_variant": {
                    "type": "categorical",
                    "choices": ["multiplicative", "residual"],
                    "when": {"learner": "kml"},
                },
                "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            },
        },
        "scheduler": {"type": "asha", "grace_period": 2},
        "transference": {"sources_per_mode": 3, "targets_per_mode": 1, "neutral_band": 0.01},
    }
    if confirm:
        spec["confirm"] = {"top_k": 1}
    return Study.model_validate(spec)


def frame(rows: Sequence[dict[str, Any]], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """``rows`` as a table with exactly the sink's ``schema``; a row that lacks one of its columns, or has one
    the sink does not write, is an error: the fixture has drifted from the contract."""
    for row in rows:
        missing, extra = set(schema) - set(row), set(row) - set(schema)
        if missing or extra:
            raise AssertionError(
                f"the synthetic run drifted from orchestrator/sink.py: columns missing {sorted(missing)}, "
                f"not in the sink's schema {sorted(extra)}"
            )
    return pl.DataFrame([{c: row[c] for c in schema} for row in rows], schema=schema, orient="row")


def _ids(name: str, trial: TrialSpec) -> dict[str, Any]:
    return {"study": name, "phase": trial.phase, "trial_id": trial.trial_id, "arm": trial.arm, "seed": trial.seed}


def _trial_row(
    name: str,
    trial: TrialSpec,
    metric: str,
    learner: LearnerConfig,
    lr: float,
    *,
    val_metric: float | None,
    state: str = "completed",
    failure_reason: str | None = None,
    iterations_done: int = 100,
    costs_of: str = "KML-ProtoNet",
) -> dict[str, Any]:
    """One trials.parquet row: every column of ``sink.TRIAL_COLUMNS`` and the trial's real ``cfg_`` columns."""
    backbone, encoder, generator = PARAMS[costs_of]
    position = list(PARAMS).index(costs_of)
    return {
        **_ids(name, trial),
        "state": state,
        "failure_reason": failure_reason,
        "iterations_done": iterations_done,
        "budget_iterations": trial.iterations,
        "wall_seconds": 30.0 + 10 * position if trial.phase == "ablation" else 25.0,
        "seconds_per_iteration": 0.2 + 0.1 * position if trial.phase == "ablation" else 0.25,
        "params_backbone": backbone,
        "params_encoder": encoder,
        "params_generator": generator,
        "params_total": backbone + encoder + generator,
        "metric_name": metric,
        "val_metric": val_metric,
        "peak_memory_mb": 300.0 + generator / 1000,
        "allocator": "system" if metric == "mse" else "jemalloc",
        "node_hostname": "testbox",
        "node_ip": "127.0.0.1",
        "node_id": "f" * 56,
        "device": "cpu",
        "peak_gpu_memory_mb": None,
        "retries": 0,
        "retry_reasons": None,
        **sink.config_columns(learner, TrainConfig(iterations=trial.iterations, meta_batch=8, lr=lr, seed=trial.seed)),
    }


def _provenance(study: Study, run: Path, modes: Sequence[str], metric: str) -> dict[str, Any]:
    """provenance.json as the driver leaves it after one completed session (mmlo.orchestrator.provenance)."""
    assert study.search is not None
    search = {
        "sampler": "TPESampler",
        "seed": study.search.sampler_seed,
        "n_startup_trials": 3,
        "constant_liar": True,
        "training_seed": SEEDS[0],
        "base_arm": "KML-ProtoNet",
        "start_point": START_POINT,
        "start_note": "",
        "cost": None,
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2.0, "rung_iterations": [40]},
    }
    started, finished = "2025-01-02T10:00:00+0000", "2025-01-02T10:07:30+0000"
    phases = {"ablation": {"trials": len(ARMS) * len(SEEDS), "wall_seconds": 300.0},
              "search": {"trials": len(SEARCH), "wall_seconds": 150.0}}
    return {
        "study": study.name,
        "spec_fingerprint": study.fingerprint(),
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "packages": {"mmlo": "0.1.0", "torch": "2.13.0", "ray": "2.60.0", "optuna": "5.0.0", "polars": "2.1.0"},
        "benchmark": {
            "name": study.benchmark.name,
            "kind": "regression" if metric == "mse" else "classification",
            "modes": list(modes),
            "fingerprint": "abcdef0123456789",
        },
        "machine": {"hostname": "testbox", "platform": "Linux", "python": "3.11.7", "cpus": 2, "memory_gb": 8.0,
                    "cuda": False},
        "ray_address": None,
        "storage": str(run),
        "trial_allocator": "system malloc" if metric == "mse" else "jemalloc",
        "seeds": {"training": list(SEEDS), "eval_seed": study.eval_seed, "search": search},
        "started": started,
        "finished": finished,
        "wall_seconds": 450.0,
        "sessions": [{"started": started, "finished": finished, "wall_seconds": 450.0, "resumed": False,
                      "outcome": "completed", "phases": phases}],
        "concurrency": {phase: {"trials_at_once": 2, "why": "2 CPUs / 1 per trial"} for phase in phases},
        "driver_peak_memory_mb": 512.0,
    }


def write_synthetic_run(
    root: Path,
    *,
    metric: str = "accuracy",
    episodes: int = 20,
    transference: bool = True,
    name: str = "synthetic",
    confirm: float | None = None,
) -> Path:
    """Write ``root/name`` with spec.yaml, provenance.json and the four Parquet tables; return the run dir.

    The search's record in provenance names KML-ProtoNet as its base arm, whose own point is the early-
    stopped search trial 5, and one ASHA rung at iteration 40. With ``confirm``, a confirm phase: search
    trial 0 (the best) re-run with both seeds, its test episodes ``confirm`` above KML-ProtoNet's.
    """
    rng = np.random.default_rng(7)
    modes = REGRESSION_MODES if metric == "mse" else IMAGE_MODES
    study = synthetic_study(name, metric, episodes, confirm=confirm is not None)
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "spec.yaml").write_text(dump_study(study), encoding="utf-8")
    (run / "provenance.json").write_text(json.dumps(_provenance(study, run, modes, metric), indent=2))

    searched = [
        search_trial(study, i, {"learner": learner, "kml_variant": variant, "lr": lr})
        for i, (learner, variant, lr, *_) in enumerate(SEARCH)
    ]
    confirmed = confirm_trials(study, searched[:1]) if confirm is not None else []
    shift = confirm or 0.0
    skill = {arm: 0.04 * i for i, arm in enumerate(ARMS)}
    base = (
        {m: 0.45 + 0.08 * i for i, m in enumerate(modes)}
        if metric == "accuracy"
        else {m: 1.5 - 0.4 * i for i, m in enumerate(modes)}
    )
    trials, progress, episode_rows, transfer_rows = [], [], [], []
    for trial in ablation_trials(study):
        arm, seed, a = trial.arm, trial.seed, ARMS.index(trial.arm)
        ids = _ids(name, trial)
        final = {}
        for it in range(20, 101, 20):
            frac = it / 100
            loss = 1.6 - frac + 0.05 * rng.standard_normal()
            row = {**ids, "iteration": it, "elapsed_s": 0.3 * it, "train_loss": loss, "lr": 0.001}
            for m in modes:
                value = (
                    0.2 + (base[m] + skill[arm] - 0.2) * frac
                    if metric == "accuracy"
                    else base[m] * (2 - frac) * (1 - skill[arm])
                )
                row[f"val_{m}"] = float(value + 0.01 * rng.standard_normal())
            row["val_metric"] = float(np.mean([row[f"val_{m}"] for m in modes]))
            final = row
            progress.append(row)
        trials.append(
            _trial_row(name, trial, metric, LearnerConfig(learner=LEARNERS[arm]), 0.001, val_metric=final["val_metric"],
                       costs_of=arm)
        )
        reruns = [c for c in confirmed if c.seed == seed] if arm == "KML-ProtoNet" else []
        for m in modes:
            for e in range(episodes):
                difficulty = 0.1 * np.sin(e)
                if metric == "accuracy":
                    after = float(np.clip(base[m] + skill[arm] + difficulty + 0.05 * rng.standard_normal(), 0, 1))
                    before = 0.2 + 0.02 * rng.standard_normal() if arm == "MMAML (FiLM)" else None
                else:
                    after = float(max(base[m] * (1 - skill[arm]) + difficulty + 0.05 * rng.standard_normal(), 0.01))
                    before = after * 3 if arm == "MMAML (FiLM)" else None
                row = {**ids, "split": "test", "mode": m, "episode": e, "episode_seed": 1000 * modes.index(m) + e,
                       "metric": metric, "value_before": before, "value_after": after}
                episode_rows.append(row)
                for rerun in reruns:
                    episode_rows.append(
                        {**row, **_ids(name, rerun), "value_after": after + shift + 0.01 * rng.standard_normal()}
                    )
        for rerun in reruns:
            trials.append(
                _trial_row(name, rerun, metric, LearnerConfig(learner="kml", kml_variant="residual"), 0.003,
                           val_metric=0.8)
            )
        if transference:
            for it in (50, 100):
                for sm in modes:
                    for tm in modes:
                        for s in range(3):
                            lr = float(1.0 + (0.05 if sm != tm else -0.08) - 0.02 * a + 0.04 * rng.standard_normal())
                            transfer_rows.append(
                                {**ids, "iteration": it, "source_split": "train", "target_split": "test",
                                 "source_mode": sm, "target_mode": tm, "source_task": 10 * s + modes.index(sm),
                                 "target_task": 500 + modes.index(tm), "self": False, "loss_before": 1.0,
                                 "loss_after": lr, "lr": lr, "alpha": 0.001, "neutral_band": 0.01}
                            )
                    task = 500 + modes.index(sm)
                    transfer_rows.append(
                        {**ids, "iteration": it, "source_split": "test", "target_split": "test", "source_mode": sm,
                         "target_mode": sm, "source_task": task, "target_task": task, "self": True,
                         "loss_before": 1.0, "loss_after": 0.9, "lr": 0.9, "alpha": 0.001, "neutral_band": 0.01}
                    )
    for trial, (learner, variant, lr, state, done, reason) in zip(searched, SEARCH, strict=True):
        good = (0.1 if learner == "kml" else 0.0) + (0.03 if variant == "residual" else 0.0)
        last: float | None = None
        for it in range(20, done + 1, 20):
            v = 0.3 + (0.3 + good) * it / 100
            last = v if metric == "accuracy" else 2.0 - v
            progress.append(
                {**_ids(name, trial), "iteration": it, "elapsed_s": 0.3 * it, "train_loss": 1.0, "lr": lr,
                 "val_metric": last, **{f"val_{m}": last for m in modes}}
            )
        config = LearnerConfig(learner=learner, **({"kml_variant": variant} if variant else {}))
        trials.append(
            _trial_row(name, trial, metric, config, lr, val_metric=None if state == "failed" else last, state=state,
                       failure_reason=reason, iterations_done=done)
        )
    tables = {
        # in the sink's order: by phase, then trial id
        sink.TRIALS_FILE: frame(sorted(trials, key=lambda r: (sink.PHASE_ORDER[r["phase"]], r["trial_id"])),
                                sink.trials_schema()),
        sink.PROGRESS_FILE: frame(progress, sink.progress_schema(modes)),
        sink.EPISODES_FILE: frame(episode_rows, sink.EPISODE_COLUMNS),
    }
    if transfer_rows:
        tables[sink.TRANSFERENCE_FILE] = frame(transfer_rows, sink.TRANSFERENCE_COLUMNS)
    for file, table in tables.items():
        table.write_parquet(run / file)
    return run
