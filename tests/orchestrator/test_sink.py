from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.orchestrator import ledger, sink
from mmlo.storage import storage_full

MODES = ("sinusoid", "linear")


def ids(trial_id: str, phase: str = "ablation", arm: str = "A", seed: int = 0) -> dict[str, Any]:
    return {"study": "s", "phase": phase, "trial_id": trial_id, "arm": arm, "seed": seed}


def record(trial_id: str, state: str, **extra: Any) -> dict[str, Any]:
    cfg = sink.config_columns(LearnerConfig(learner="kml", channels=[8, 16]), TrainConfig(iterations=4, seed=0))
    return {
        **ids(trial_id, extra.pop("phase", "ablation")),
        "state": state,
        "failure_reason": None,
        "iterations_done": 4,
        "budget_iterations": 4,
        "wall_seconds": 1.5,
        "seconds_per_iteration": 0.1,
        "params_backbone": 10,
        "params_encoder": 5,
        "params_generator": 3,
        "params_total": 18,
        "metric_name": "mse",
        "val_metric": 0.5,
        "peak_memory_mb": 100.0,
        **cfg,
        "spec": {"not": "a column"},
        **extra,
    }


def episode_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "split": "test",
            "mode": MODES[i % 2],
            "episode": i // 2,
            "episode_seed": 2**61 + i,
            "metric": "mse",
            "value_before": None,
            "value_after": 0.25 * i,
        }
        for i in range(n)
    ]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "s"
    ledger.write_record(run, record("ablation-00-s0", "completed"))
    ledger.write_record(
        run, record("ablation-01-s0", "failed", failure_reason="TrainingDiverged: nan", val_metric=None)
    )
    ledger.write_record(run, record("search-000", "stopped_early", phase="search", iterations_done=2))
    ledger.write_record(run, record("ablation-02-s0", "running"))
    for trial_id in ("ablation-00-s0", "ablation-02-s0"):
        ledger.write_episodes(run, trial_id, sink.episodes_frame(episode_rows(6), ids(trial_id)))
        for it in (2, 4):
            ledger.append_progress(
                run, trial_id, {**ids(trial_id), "iteration": it, "elapsed_s": it, "train_loss": 1.0, "lr": 1e-3,
                                "val_metric": 0.5, "val_sinusoid": 0.4, "val_linear": 0.6}
            )
    # a resumed trial re-reports iteration 4: the later row wins
    ledger.append_progress(
        run, "ablation-00-s0", {**ids("ablation-00-s0"), "iteration": 4, "elapsed_s": 9.0, "train_loss": 0.5,
                                "lr": 1e-3, "val_metric": 0.25, "val_sinusoid": 0.2, "val_linear": 0.3}
    )
    # a kill -9 mid-write tears the last line; it is ignored
    with (run / ledger.trial_dir(run, "ablation-02-s0") / ledger.PROGRESS_FILE).open("a") as handle:
        handle.write('{"iteration": 6, "elap')
    ledger.write_transference(
        run, "ablation-00-s0", 4,
        sink.transference_frame(
            [{"iteration": 4, "source_split": "train", "target_split": "test", "source_mode": "linear",
              "target_mode": "sinusoid", "source_task": 1, "target_task": 2, "self": False, "loss_before": 2.0,
              "loss_after": 1.0, "lr": 0.5, "alpha": 1e-3, "neutral_band": 0.01}],
            ids("ablation-00-s0"),
        ),
    )
    return run


def test_tables_have_exactly_the_contract_columns(run_dir: Path) -> None:
    # column names, order and types are the documented schema (cfg_<field> for every config field)
    paths = sink.write_tables(run_dir, "s", MODES, transference=True)
    assert sorted(Path(p).name for p in paths.values()) == sorted(
        ["trials.parquet", "progress.parquet", "episodes.parquet", "transference.parquet"]
    )
    trials = pl.read_parquet(run_dir / "trials.parquet")
    assert dict(trials.schema) == sink.trials_schema()
    assert {f"cfg_{f}" for f in (*LearnerConfig.model_fields, *TrainConfig.model_fields)} <= set(trials.columns)
    progress = pl.read_parquet(run_dir / "progress.parquet")
    assert progress.columns == [
        "study", "phase", "trial_id", "arm", "seed", "iteration", "elapsed_s", "train_loss", "lr", "val_metric",
        "val_sinusoid", "val_linear",
    ]
    assert dict(pl.read_parquet(run_dir / "episodes.parquet").schema) == sink.EPISODE_COLUMNS
    assert dict(pl.read_parquet(run_dir / "transference.parquet").schema) == sink.TRANSFERENCE_COLUMNS


def test_row_counts_and_states(run_dir: Path) -> None:
    # trials: finished ones only; episodes: completed trials only; progress: every trial, one row per iteration
    tables = sink.build_tables(run_dir, "s", MODES, transference=True)
    trials = tables["trials.parquet"]
    assert trials["trial_id"].to_list() == ["ablation-00-s0", "ablation-01-s0", "search-000"]
    assert trials["state"].to_list() == ["completed", "failed", "stopped_early"]
    assert trials.filter(pl.col("state") == "failed")["failure_reason"].to_list() == ["TrainingDiverged: nan"]
    assert trials["cfg_channels"].to_list() == ["8-16"] * 3 and trials["cfg_modulation"].to_list() == ["kml"] * 3
    assert tables["episodes.parquet"]["trial_id"].unique().to_list() == ["ablation-00-s0"]
    assert tables["episodes.parquet"].height == 6
    assert tables["episodes.parquet"]["episode_seed"].max() == 2**61 + 5
    progress = tables["progress.parquet"]
    assert progress.height == 4
    rerun = progress.filter((pl.col("trial_id") == "ablation-00-s0") & (pl.col("iteration") == 4))
    assert rerun["val_metric"].to_list() == [0.25] and rerun["elapsed_s"].to_list() == [9.0]
    assert tables["transference.parquet"].height == 1


def test_no_transference_table_without_the_block(run_dir: Path) -> None:
    # transference.parquet exists only for studies that measure transference
    assert "transference.parquet" not in sink.write_tables(run_dir, "s", MODES, transference=False)
    assert not (run_dir / "transference.parquet").exists()


def test_writes_are_atomic_and_idempotent(run_dir: Path) -> None:
    # rewriting replaces each table whole and leaves no temporary files behind
    sink.write_tables(run_dir, "s", MODES, transference=True)
    first = pl.read_parquet(run_dir / "trials.parquet")
    sink.write_tables(run_dir, "s", MODES, transference=True)
    assert pl.read_parquet(run_dir / "trials.parquet").equals(first)
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]


def test_empty_run_gives_empty_tables_with_columns(tmp_path: Path) -> None:
    # before any trial finishes, the tables exist with their columns and no rows
    tables = sink.build_tables(tmp_path, "s", MODES, transference=False)
    assert tables["trials.parquet"].height == 0 and dict(tables["trials.parquet"].schema) == sink.trials_schema()
    assert tables["episodes.parquet"].height == 0 and tables["progress.parquet"].columns[-1] == "val_linear"


def test_rewind_forgets_rows_after_the_checkpoint(run_dir: Path) -> None:
    # a trial resuming from iteration 2 drops later progress rows and its unfinished test episodes
    ledger.rewind(run_dir, "ablation-02-s0", 2)
    assert [r["iteration"] for r in ledger.read_progress(run_dir, "ablation-02-s0")] == [2]
    assert not (run_dir / ledger.trial_dir(run_dir, "ablation-02-s0") / ledger.EPISODES_FILE).exists()
    ledger.rewind(run_dir, "ablation-00-s0", 2)
    assert not list((run_dir / ledger.trial_dir(run_dir, "ablation-00-s0")).glob("transference-*"))


def test_json_records_have_no_nan(tmp_path: Path) -> None:
    # NaN is not JSON: a diverged trial's NaN metric is stored as null
    ledger.write_record(tmp_path, {"trial_id": "t", "val_metric": float("nan"), "state": "failed"})
    record = ledger.read_record(tmp_path, "t")
    assert record is not None and record["val_metric"] is None



def fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its file system is full."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        with pytest.raises(OSError) as full:
            while True:
                filler.write(b"\0" * 65536)
    assert storage_full(full.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_full_disk_leaves_the_last_complete_table(run_dir: Path, tmp_path: Path) -> None:
    # a trial finishes, the disk (a 1 MiB tmpfs) fills, the tables are rewritten: the write fails with ENOSPC,
    # every table still reads back as its previous version, and no temporary file is left behind
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True, text=True, check=False
    )
    if mount.returncode:  # root, but no CAP_SYS_ADMIN (an unprivileged container)
        pytest.skip(f"needs a small tmpfs; mount refused it: {mount.stderr.strip()} (run as root with CAP_SYS_ADMIN)")
    try:
        copy = small / "run"
        shutil.copytree(run_dir, copy)
        written = sink.write_tables(copy, "s", MODES, transference=True)
        before = {name: pl.read_parquet(copy / name) for name in written}
        ledger.write_record(copy, record("ablation-02-s0", "completed"))
        fill(small)
        with pytest.raises(OSError) as failed:
            sink.write_tables(copy, "s", MODES, transference=True)
        assert storage_full(failed.value)
        for name, frame in before.items():
            assert pl.read_parquet(copy / name).equals(frame), name
        assert not [p for p in copy.rglob("*") if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_readme_lists_every_configuration_column() -> None:
    """The README's table contract names each cfg_ column a trial records (LearnerConfig then TrainConfig)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `cfg_<field>`"))
    listed = row[row.index("The columns: ") :].split("`")[1::2]
    assert listed == [f"cfg_{f}" for f in [*LearnerConfig.model_fields, *TrainConfig.model_fields]]
