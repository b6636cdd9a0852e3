"""The search finds a known answer: ``mmlo study studies/known_answer.yaml`` through the real CLI.

On regression2 a grid over MAML's inner step size (the study's arms) finds the best value by test MSE; a
12-trial TPE search over the same range must pick, by its own validation metric, a step size within a
factor of 2 of the grid's and a test MSE within the grid best's 95 % interval over the shared test episodes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mmlo.orchestrator.spec import load_study

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "studies" / "known_answer.yaml"
MMLO = str(Path(sys.executable).with_name("mmlo"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("known-answer")
    result = subprocess.run(
        [MMLO, "study", str(STUDY), "--out", str(out), "--no-dashboard"],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    return result, out / load_study(STUDY).name


def test_tpe_lands_where_the_grid_says_the_answer_is(run: Any) -> None:
    # TPE's pick (best validation MSE) is within 2x of the grid's best step size and within its test interval
    result, run_dir = run
    assert result.returncode == 0, result.stdout + result.stderr
    trials = pl.read_parquet(run_dir / "trials.parquet")
    episodes = pl.read_parquet(run_dir / "episodes.parquet").filter(pl.col("split") == "test")
    test = episodes.group_by("trial_id").agg(
        mse=pl.col("value_after").mean(),
        ci95=1.96 * pl.col("value_after").std() / pl.col("value_after").len().sqrt(),
        n=pl.len(),
    )
    scored = trials.filter(pl.col("state") == "completed").join(test, on="trial_id")
    grid = scored.filter(pl.col("phase") == "ablation").sort("mse")
    search = scored.filter(pl.col("phase") == "search").sort("val_metric")
    study = load_study(STUDY)
    assert study.search is not None
    assert grid.height == len(study.arms) and search.height == study.search.trials
    assert set(episodes["episode_seed"].unique()) == set(
        episodes.filter(pl.col("trial_id") == grid["trial_id"][0])["episode_seed"]
    ), "every trial is tested on the same episodes"
    best, pick = grid.row(0, named=True), search.row(0, named=True)
    summary = (
        f"grid best inner_lr {best['cfg_inner_lr']:.4g}: test MSE {best['mse']:.3f} ± {best['ci95']:.3f}; "
        f"TPE pick {pick['trial_id']} inner_lr {pick['cfg_inner_lr']:.4g}: test MSE {pick['mse']:.3f} "
        f"(validation {pick['val_metric']:.3f})"
    )
    print(summary)
    assert abs(math.log(pick["cfg_inner_lr"] / best["cfg_inner_lr"])) <= math.log(2), summary
    assert pick["mse"] <= best["mse"] + best["ci95"], summary
