"""``mmlo transference``: a checkpoint in Tune's layout is found, rebuilt and measured; rows merge into the
trial's ledger part and ``transference.parquet`` with the contract's columns, without duplicates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch

from mmlo.models.training import fit, load_checkpoint
from mmlo.models.transference import TransferenceSettings, make_transference_hook
from mmlo.orchestrator import ledger, sink
from mmlo.orchestrator.checkpoints import trial_checkpoints
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.plan import ablation_trials
from mmlo.orchestrator.spec import dump_study, parse_study
from mmlo.orchestrator.transference_cmd import measure_checkpoint, merge_rows
from mmlo.storage import RunStore
from mmlo.tasks.registry import get_benchmark

STUDY = {
    "name": "tr",
    "benchmark": {"name": "regression2", "shots": 5, "query": 5},
    "model": {"hidden": [8, 8], "bias_transformation": 3, "inner_steps": 1, "inner_lr": 0.01},
    "train": {"meta_batch": 4, "lr": 0.01},
    "budget": {"iterations": 6, "val_interval": 3, "val_episodes": 2, "eval_episodes": 2},
    "arms": [{"name": "MAML", "learner": "maml"}],
    "seeds": [0],
    "transference": {"sources_per_mode": 2, "targets_per_mode": 1},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[dict[str, object]]]:
    """A run directory as a study leaves it: spec, the trial's record, checkpoints at iterations 3 and 6
    in Tune's storage layout; plus the rows the in-study hook measured at iteration 6."""
    study = parse_study({**STUDY, "output": str(tmp_path_factory.mktemp("runs"))})
    run_dir = Path(study.output) / study.name
    run_dir.mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(dump_study(study), encoding="utf-8")
    spec = ablation_trials(study)[0]
    benchmark = get_benchmark(study.benchmark)
    train_cfg = spec.train_config(study)
    hook = make_transference_hook(benchmark, train_cfg, TransferenceSettings(sources_per_mode=2, targets_per_mode=1))
    fit(
        spec.learner_config(study),
        train_cfg,
        benchmark,
        checkpoint_dir=run_dir / "ray" / "ablation-session" / spec.trial_id,
        hooks=[hook],
    )
    # Tune confirms each persisted checkpoint with a result line naming it (what the run's readers trust).
    trial_dir = run_dir / "ray" / "ablation-session" / spec.trial_id
    lines = [
        {"iteration": load_checkpoint(c, torch.device("cpu"))["iteration"], "checkpoint_dir_name": c.name}
        for c in sorted(trial_dir.glob("checkpoint_*"))
    ]
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    ids = {"study": "tr", "phase": spec.phase, "trial_id": spec.trial_id, "arm": spec.arm, "seed": spec.seed}
    ledger.write_record(run_dir, {**ids, "state": "completed", "spec": spec.to_json()})
    return run_dir, spec.trial_id, hook.rows


def test_checkpoints_are_found_by_iteration(run: tuple[Path, str, list[dict[str, object]]]) -> None:
    # fit checkpoints at every validation (3) and at the end (6); both are found under ray/<exp>/<trial>/.
    run_dir, trial, _ = run
    assert list(trial_checkpoints(RunStore.open(run_dir))[trial]) == [3, 6]


def test_measures_the_newest_checkpoint_like_the_study_hook(
    run: tuple[Path, str, list[dict[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    # The restored checkpoint gives the in-study hook's loss ratios; the table has exactly the contract's
    # columns, the trial's ids, (2 x 2 sources + 2 self) x 2 targets rows, and the ledger part matches it.
    run_dir, trial, in_study = run
    table = measure_checkpoint(run_dir, trial=trial)
    frame = pl.read_parquet(table)
    assert dict(frame.schema) == sink.TRANSFERENCE_COLUMNS
    assert frame.height == 12
    assert set(frame["iteration"]) == {6} and set(frame["trial_id"]) == {trial}
    assert set(frame["arm"]) == {"MAML"} and frame["self"].sum() == 2
    by_pair = {(r["source_task"], r["target_task"]): r["lr"] for r in in_study}
    for row in frame.iter_rows(named=True):
        assert row["lr"] == pytest.approx(by_pair[(row["source_task"], row["target_task"])], rel=1e-6)
    part = run_dir / ledger.trial_dir(run_dir, trial) / "transference-00000006.parquet"
    assert pl.read_parquet(part).height == 12
    assert "at iteration 6" in capsys.readouterr().out


def test_remeasuring_merges_without_duplicates(run: tuple[Path, str, list[dict[str, object]]]) -> None:
    # More sources per mode re-measure the first ones (the same fixed tasks) and add new pairs; an earlier
    # checkpoint adds rows at its own iteration; a rebuild of the tables from the ledger keeps them all.
    run_dir, trial, _ = run
    measure_checkpoint(run_dir, trial=trial, sources=3)
    measure_checkpoint(run_dir, trial=trial, checkpoint=3, sources=1, targets=1)
    frame = pl.read_parquet(run_dir / sink.TRANSFERENCE_FILE)
    assert frame.filter(pl.col("iteration") == 6).height == (6 + 2) * 2
    assert frame.filter(pl.col("iteration") == 3).height == (2 + 2) * 2
    assert frame.select(list(sink.TRANSFERENCE_COLUMNS)).unique().height == frame.height
    tables = sink.build_tables(run_dir, "tr", ("sinusoid", "linear"), transference=True)
    rebuilt = tables[sink.TRANSFERENCE_FILE]
    assert rebuilt.height == frame.height


def test_merge_replaces_rows_of_the_same_pair() -> None:
    # A row keyed like an existing one replaces it; other rows stay.
    base = {
        "study": "s", "phase": "ablation", "trial_id": "t", "arm": "a", "seed": 0, "iteration": 5,
        "source_split": "train", "target_split": "test", "source_mode": "m", "target_mode": "m",
        "source_task": 1, "target_task": 2, "self": False, "loss_before": 1.0, "loss_after": 0.5, "lr": 0.5,
        "alpha": 0.1, "neutral_band": 0.01,
    }
    old = sink.transference_frame([base, {**base, "source_task": 9}], {})
    new = sink.transference_frame([{**base, "lr": 0.7}], {})
    merged = merge_rows(old, new)
    assert sorted(merged["lr"].to_list()) == [0.5, 0.7]
    assert merged.filter(pl.col("source_task") == 1)["lr"].item() == 0.7


def test_user_errors_name_what_exists(run: tuple[Path, str, list[dict[str, object]]], tmp_path: Path) -> None:
    # An unknown trial lists the trials, a missing iteration lists the checkpoints, a folder without a
    # spec says it is not a run directory.
    run_dir, trial, _ = run
    with pytest.raises(UserError, match=trial):
        measure_checkpoint(run_dir, trial="nope")
    with pytest.raises(UserError, match="it has: 3, 6"):
        measure_checkpoint(run_dir, trial=trial, checkpoint=4)
    with pytest.raises(UserError, match="not a run directory"):
        measure_checkpoint(tmp_path, trial=trial)


@pytest.mark.slow
def test_cli_on_a_smoke_run(smoke_run: Any, tmp_path: Path) -> None:
    # `mmlo transference RUN --trial ID --sources 3` on a copy of the session's smoke run: exit 0, and the
    # trial's rows at each measured iteration grow from 2 to 3 sources per mode.
    run_dir = tmp_path / "smoke"
    shutil.copytree(smoke_run.run_dir, run_dir, symlinks=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    mmlo = [sys.executable, "-m", "mmlo.orchestrator"]
    trial = json.loads(next((run_dir / "parts").glob("ablation-*/trial.json")).read_text())["trial_id"]
    before = pl.read_parquet(run_dir / sink.TRANSFERENCE_FILE)
    assert before.filter(pl.col("trial_id") == trial).height == (4 * 2 + 4) * 4
    result = subprocess.run(
        [*mmlo, "transference", str(run_dir), "--trial", trial, "--sources", "3"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = pl.read_parquet(run_dir / sink.TRANSFERENCE_FILE)
    assert dict(after.schema) == sink.TRANSFERENCE_COLUMNS
    assert after.filter(pl.col("trial_id") == trial).height == (4 * 3 + 4) * 4
    others = [frame.filter(pl.col("trial_id") != trial).sort(frame.columns) for frame in (before, after)]
    assert others[1].equals(others[0])  # the other trials' rows are left as they were
    missing = subprocess.run(
        [*mmlo, "transference", str(run_dir), "--trial", "nope"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and trial in missing.stderr + missing.stdout


def test_the_spec_block_is_the_measurements_settings() -> None:
    # the spec's transference block and the measurement agree on every default, and a block's values travel whole
    from mmlo.orchestrator.spec import Transference

    assert Transference().settings() == TransferenceSettings()
    block = Transference(sources_per_mode=3, targets_per_mode=4, source_split="val", target_split="train",
                         alpha=0.5, neutral_band=0.1, at=[5, 10], arms=["MAML"])
    assert block.settings() == TransferenceSettings(3, 4, "val", "train", 0.5, 0.1, (5, 10))
