"""A cost-aware search end to end: ``search.cost`` through the real CLI, Ray Tune's OptunaSearch and the report.

A micro search-only study on regression2 whose space changes the parameter count (hidden width), searched
for MSE and parameters at once with Optuna's multi-objective TPE.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import polars as pl
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend

pytestmark = pytest.mark.slow

MMLO = str(Path(sys.executable).with_name("mmlo"))
STUDY: dict[str, Any] = {
    "name": "cost",
    "benchmark": {"name": "regression2"},
    "model": {"learner": "maml", "inner_steps": 1, "hidden": [16, 16]},
    "train": {"meta_batch": 4},
    "budget": {"iterations": 6, "val_interval": 3, "val_episodes": 2, "eval_episodes": 4},
    "search": {
        "trials": 4,
        "cost": "params_total",
        "space": {
            "inner_lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "bias_transformation": {"type": "categorical", "choices": [0, 20]},
        },
    },
    "scheduler": {"type": "none"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("cost")
    file = out / "cost.yaml"
    file.write_text(yaml.safe_dump(STUDY))
    result = subprocess.run(
        [MMLO, "study", str(file), "--out", str(out), "--no-dashboard"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    return result, out / "cost"


def test_optuna_is_told_the_metric_and_the_cost_of_each_trial(run: Any) -> None:
    # the journal's study has two directions; each completed trial's values are its (val_metric, params_total)
    result, run_dir = run
    assert result.returncode == 0, result.stdout + result.stderr
    backend = JournalFileBackend(str(run_dir / "optuna.journal"))
    storage = optuna.storages.JournalStorage(backend)
    ot_study = optuna.load_study(study_name="cost", storage=storage)
    assert ot_study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    trials = pl.read_parquet(run_dir / "trials.parquet").filter(pl.col("phase") == "search")
    recorded = {
        int(t.removeprefix("search-")): (v, p)
        for t, v, p in trials.select("trial_id", "val_metric", "params_total").iter_rows()
    }
    told = {t.number: tuple(t.values) for t in ot_study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(told) == STUDY["search"]["trials"]
    for number, (value, params) in told.items():
        assert value == pytest.approx(recorded[number][0]) and params == recorded[number][1]


def test_the_report_draws_the_pareto_front(run: Any) -> None:
    # the search section has the Pareto chart and names the trials on the front
    _, run_dir = run
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "search-pareto" in html and "Pareto front: validation MSE against parameters" in html
