"""A synthetic but realistic run directory, written exactly as the Parquet contract says the orchestrator does.

Three arms x two seeds x four modes of test episodes, validation progress, a six-trial Optuna search with
an early-stopped and a failed trial, and transference rows at two iterations. ``write_synthetic_run`` also
makes a regression (MSE) run, so both metric directions go through the same report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

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


def _spec(name: str, metric: str, modes: tuple[str, ...], episodes: int) -> dict[str, Any]:
    regression = metric == "mse"
    return {
        "name": name,
        "description": "Synthetic run written by tests/reports/conftest.py.",
        "benchmark": {
            "name": "regression2" if regression else "offline4",
            "modes": None,
            "ways": 5,
            "shots": 5 if regression else 1,
            "query": 5 if regression else 15,
            "image_size": 32,
        },
        "model": {"channels": [32, 32, 32, 32]},
        "train": {"meta_batch": 8, "lr": 0.001},
        "budget": {"iterations": 100, "val_interval": 20, "val_episodes": 10, "eval_episodes": episodes},
        "arms": [{"name": arm, "learner": LEARNERS[arm]} for arm in ARMS],
        "baseline": None,
        "seeds": list(SEEDS),
        "eval_seed": 1234,
        "search": {
            "trials": 6,
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
        "scheduler": {"type": "asha", "grace_period": 1},
        "transference": {"sources_per_mode": 3, "targets_per_mode": 1, "neutral_band": 0.01},
    }


def _trial_row(name: str, phase: str, trial_id: str, arm: str, seed: int, metric: str, **extra: Any) -> dict[str, Any]:
    backbone, encoder, generator = PARAMS.get(arm, PARAMS[ARMS[-1]])
    row = {
        "study": name,
        "phase": phase,
        "trial_id": trial_id,
        "arm": arm,
        "seed": seed,
        "state": "completed",
        "failure_reason": None,
        "iterations_done": 100,
        "budget_iterations": 100,
        "wall_seconds": 30.0 + 10 * list(PARAMS).index(arm) if arm in PARAMS else 25.0,
        "seconds_per_iteration": 0.2 + 0.1 * list(PARAMS).index(arm) if arm in PARAMS else 0.25,
        "params_backbone": backbone,
        "params_encoder": encoder,
        "params_generator": generator,
        "params_total": backbone + encoder + generator,
        "metric_name": metric,
        "val_metric": None,
        "peak_memory_mb": 300.0 + generator / 1000,
        "cfg_learner": LEARNERS.get(arm, "kml"),
        "cfg_kml_variant": "multiplicative",
        "cfg_lr": 0.001,
        "cfg_channels": "32-32-32-32",
    }
    row.update(extra)
    return row


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

    With ``confirm``, the search's record in provenance (base arm KML-ProtoNet, whose own point is the early-
    stopped search trial 5; one ASHA rung at iteration 40) and a confirm phase: search trial 0 (the best) re-run with both
    seeds, its test episodes ``confirm`` above KML-ProtoNet's.
    """
    rng = np.random.default_rng(7)
    modes = REGRESSION_MODES if metric == "mse" else IMAGE_MODES
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "spec.yaml").write_text(yaml.safe_dump(_spec(name, metric, modes, episodes), sort_keys=False))
    provenance = {
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "packages": {"mmlo": "0.1.0", "torch": "2.13.0", "ray": "2.60.0", "optuna": "5.0.0", "polars": "2.1.0"},
        "benchmark": {"name": "offline4", "modes": list(modes), "fingerprint": "abcdef0123456789"},
        "machine": {"hostname": "testbox", "cpus": 2},
        "seeds": list(SEEDS),
        "started": "2025-01-02T10:00:00+00:00",
        "finished": "2025-01-02T10:07:30+00:00",
        "wall_seconds": 450.0,
        "dashboard_url": None,
    }
    if confirm is not None:
        provenance["seeds"] = {
            "training": list(SEEDS),
            "search": {
                "base_arm": "KML-ProtoNet",
                "start_point": {"learner": "kml", "kml_variant": "multiplicative", "lr": 0.001},
                "cost": None,
                "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2.0, "rung_iterations": [40]},
            },
        }
    (run / "provenance.json").write_text(json.dumps(provenance, indent=2))

    skill = {arm: 0.04 * i for i, arm in enumerate(ARMS)}
    base = (
        {m: 0.45 + 0.08 * i for i, m in enumerate(modes)}
        if metric == "accuracy"
        else {m: 1.5 - 0.4 * i for i, m in enumerate(modes)}
    )
    trials, progress, episode_rows, transfer_rows = [], [], [], []
    for a, arm in enumerate(ARMS):
        for seed in SEEDS:
            trial_id = f"abl_{a}{seed}"
            final = {}
            for it in range(20, 101, 20):
                frac = it / 100
                row = {
                    "study": name,
                    "phase": "ablation",
                    "trial_id": trial_id,
                    "arm": arm,
                    "seed": seed,
                    "iteration": it,
                    "elapsed_s": 0.3 * it,
                    "train_loss": 1.6 - frac + 0.05 * rng.standard_normal(),
                    "lr": 0.001,
                }
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
            trials.append(_trial_row(name, "ablation", trial_id, arm, seed, metric, val_metric=final["val_metric"]))
            confirmed = [("srch_00000", confirm)] if confirm is not None and arm == "KML-ProtoNet" else []
            for m in modes:
                for e in range(episodes):
                    difficulty = 0.1 * np.sin(e)
                    if metric == "accuracy":
                        after = float(np.clip(base[m] + skill[arm] + difficulty + 0.05 * rng.standard_normal(), 0, 1))
                        before = 0.2 + 0.02 * rng.standard_normal() if arm == "MMAML (FiLM)" else None
                    else:
                        after = float(max(base[m] * (1 - skill[arm]) + difficulty + 0.05 * rng.standard_normal(), 0.01))
                        before = after * 3 if arm == "MMAML (FiLM)" else None
                    row = {
                        "study": name,
                        "phase": "ablation",
                        "trial_id": trial_id,
                        "arm": arm,
                        "seed": seed,
                        "split": "test",
                        "mode": m,
                        "episode": e,
                        "episode_seed": 1000 * modes.index(m) + e,
                        "metric": metric,
                        "value_before": before,
                        "value_after": after,
                    }
                    episode_rows.append(row)
                    for source, shift in confirmed:
                        episode_rows.append(
                            {**row, "phase": "confirm", "trial_id": f"confirm-{source}-s{seed}", "arm": source,
                             "value_after": after + shift + 0.01 * rng.standard_normal()}
                        )
            for source, _ in confirmed:
                trials.append(
                    _trial_row(name, "confirm", f"confirm-{source}-s{seed}", source, seed, metric, val_metric=0.8,
                               cfg_learner="kml", cfg_kml_variant="residual", cfg_lr=0.003)
                )
            if transference:
                for it in (50, 100):
                    for sm in modes:
                        for tm in modes:
                            for s in range(3):
                                lr = float(
                                    1.0 + (0.05 if sm != tm else -0.08) - 0.02 * a + 0.04 * rng.standard_normal()
                                )
                                transfer_rows.append(
                                    {
                                        "study": name,
                                        "phase": "ablation",
                                        "trial_id": trial_id,
                                        "arm": arm,
                                        "seed": seed,
                                        "iteration": it,
                                        "source_split": "train",
                                        "target_split": "test",
                                        "source_mode": sm,
                                        "target_mode": tm,
                                        "source_task": 10 * s + modes.index(sm),
                                        "target_task": 500 + modes.index(tm),
                                        "self": False,
                                        "loss_before": 1.0,
                                        "loss_after": lr,
                                        "lr": lr,
                                        "alpha": 0.001,
                                        "neutral_band": 0.01,
                                    }
                                )
                        transfer_rows.append(
                            {
                                "study": name,
                                "phase": "ablation",
                                "trial_id": trial_id,
                                "arm": arm,
                                "seed": seed,
                                "iteration": it,
                                "source_split": "test",
                                "target_split": "test",
                                "source_mode": sm,
                                "target_mode": sm,
                                "source_task": 500 + modes.index(sm),
                                "target_task": 500 + modes.index(sm),
                                "self": True,
                                "loss_before": 1.0,
                                "loss_after": 0.9,
                                "lr": 0.9,
                                "alpha": 0.001,
                                "neutral_band": 0.01,
                            }
                        )
    search = [
        ("kml", "residual", 0.003, "completed", 100, None),
        ("mprotonet", None, 0.0005, "stopped_early", 40, None),
        ("kml", "multiplicative", 0.008, "completed", 100, None),
        ("kml", "residual", 0.0002, "failed", 20, "TrainingDiverged: NaN loss at iteration 21"),
        ("mprotonet", None, 0.002, "completed", 100, None),
        ("kml", "multiplicative", 0.001, "stopped_early", 60, None),
    ]
    for i, (learner, variant, lr, state, done, reason) in enumerate(search):
        trial_id = f"srch_{i:05d}"
        good = (0.1 if learner == "kml" else 0.0) + (0.03 if variant == "residual" else 0.0)
        value = None
        for it in range(20, done + 1, 20):
            v = 0.3 + (0.3 + good) * it / 100
            value = v if metric == "accuracy" else 2.0 - v
            row = {
                "study": name,
                "phase": "search",
                "trial_id": trial_id,
                "arm": f"search {i}",
                "seed": 0,
                "iteration": it,
                "elapsed_s": 0.3 * it,
                "train_loss": 1.0,
                "lr": lr,
                "val_metric": value,
            }
            row.update({f"val_{m}": value for m in modes})
            progress.append(row)
        trials.append(
            _trial_row(
                name,
                "search",
                trial_id,
                f"search {i}",
                0,
                metric,
                state=state,
                failure_reason=reason,
                iterations_done=done,
                val_metric=None if state == "failed" else value,
                cfg_learner=learner,
                cfg_kml_variant=variant or "multiplicative",
                cfg_lr=lr,
            )
        )
    pl.DataFrame(trials).write_parquet(run / "trials.parquet")
    pl.DataFrame(progress).write_parquet(run / "progress.parquet")
    pl.DataFrame(episode_rows, schema_overrides={"value_before": pl.Float64}).write_parquet(run / "episodes.parquet")
    if transfer_rows:
        pl.DataFrame(transfer_rows).write_parquet(run / "transference.parquet")
    return run


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification run directory (accuracy), with search and transference."""
    return write_synthetic_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A regression run directory (MSE, lower is better), without transference."""
    return write_synthetic_run(tmp_path_factory.mktemp("runs"), metric="mse", transference=False, name="regr")


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The generator itself, for tests that need a variant: ``make_run(name=..., metric=..., ...)``."""

    def make(**options: Any) -> Path:
        return write_synthetic_run(tmp_path_factory.mktemp("runs"), **options)

    return make
