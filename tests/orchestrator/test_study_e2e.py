"""``mmlo study studies/smoke.yaml`` end to end: real CLI, real Ray, real Optuna, real Parquet.

Three studies run in all (each a subprocess, module-scoped): the smoke study straight through; the smoke
study killed with SIGKILL once its first trial has finished, then resumed; and a study whose arms fail on
purpose. The determinism check compares the first two runs' ablation phases. A copy of the first run, with
two trial records cut short, is resumed once more (one session, no new study).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from mmlo.models.allocator import find_jemalloc
from mmlo.orchestrator import ledger, sink
from mmlo.orchestrator.spec import load_study

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "studies" / "smoke.yaml"
MMLO = [str(Path(sys.executable).with_name("mmlo"))]
TIMEOUT_S = 600
#: The trial records the damaged-ledger test cuts short: an ablation trial and a search trial.
DAMAGED = ("ablation-00-s0", "search-001")
#: The trial whose episodes.parquet that test cuts short.
DAMAGED_EPISODES = "ablation-01-s0"


def mmlo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MMLO, *args], capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, **(env or {})}
    )


def table(run_dir: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(run_dir / name)


@pytest.fixture(scope="module")
def smoke() -> Any:
    return load_study(SMOKE)


@pytest.fixture(scope="module")
def straight(smoke_run: Any) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The session's shared smoke run (tests/conftest.py): read only; the damaged-ledger test copies it."""
    return smoke_run.result, smoke_run.run_dir


@pytest.fixture(scope="module")
def killed_and_resumed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, dict[str, Any]], dict[str, bytes], subprocess.CompletedProcess[str], Path]:
    """SIGKILL the driver as soon as one trial has finished; return what was final then, and the resume."""
    out = tmp_path_factory.mktemp("killed")
    run_dir = out / "smoke"
    driver = subprocess.Popen(
        [*MMLO, "study", str(SMOKE), "--out", str(out), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and driver.poll() is None and not ledger.finished(run_dir):
        time.sleep(0.1)
    assert driver.poll() is None, "the study ended before a trial finished: nothing to interrupt"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = ledger.finished(run_dir)
    episodes = {
        t: (run_dir / ledger.trial_dir(run_dir, t) / ledger.EPISODES_FILE).read_bytes()
        for t, r in before.items()
        if r["state"] == "completed"
    }
    resumed = mmlo("study", str(SMOKE), "--out", str(out), "--resume", "--no-dashboard")
    return before, episodes, resumed, run_dir


@pytest.fixture(scope="module")
def damaged_and_resumed(
    straight: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """A copy of the finished smoke run with two trial records (one ablation, one search) and one trial's test
    episodes cut short, resumed."""
    _, finished = straight
    out = tmp_path_factory.mktemp("damaged")
    run_dir = out / "smoke"
    shutil.copytree(finished, run_dir, symlinks=True)
    for trial_id in DAMAGED:
        record = run_dir / ledger.trial_dir(run_dir, trial_id) / ledger.RECORD_FILE
        record.write_bytes(record.read_bytes()[:100])
    episodes = run_dir / ledger.trial_dir(run_dir, DAMAGED_EPISODES) / ledger.EPISODES_FILE
    episodes.write_bytes(episodes.read_bytes()[:100])
    return mmlo("study", str(SMOKE), "--out", str(out), "--resume", "--no-dashboard"), finished, run_dir


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One healthy arm, one whose loss diverges (outer lr 1e30), one that raises (MMLO_FAIL_ARM)."""
    out = tmp_path_factory.mktemp("failing")
    spec = yaml.safe_load(SMOKE.read_text())
    spec.update(
        name="failing",
        seeds=[0],
        phases=["ablation"],
        arms=[
            {"name": "ProtoNet", "learner": "protonet"},
            {"name": "Diverges", "learner": "protonet", "train": {"lr": 1.0e30}},
            {"name": "Raises", "learner": "protonet"},
        ],
    )
    for key in ("search", "scheduler", "transference"):
        spec.pop(key, None)
    file = out / "failing.yaml"
    file.write_text(yaml.safe_dump(spec))
    result = mmlo("study", str(file), "--out", str(out), "--no-dashboard", env={"MMLO_FAIL_ARM": "Raises"})
    return result, out / "failing"


def test_smoke_study_exits_0_with_the_documented_tables(straight: Any, smoke: Any) -> None:
    # exit 0; every contract table exists with exactly its documented columns
    result, run_dir = straight
    assert result.returncode == 0, result.stdout + result.stderr
    modes = ("glyphs", "emoji", "icons", "textures")
    assert dict(table(run_dir, "trials.parquet").schema) == sink.trials_schema()
    assert dict(table(run_dir, "progress.parquet").schema) == sink.progress_schema(modes)
    assert dict(table(run_dir, "episodes.parquet").schema) == sink.EPISODE_COLUMNS
    assert dict(table(run_dir, "transference.parquet").schema) == sink.TRANSFERENCE_COLUMNS
    for name in ("spec.yaml", "provenance.json", "optuna.journal", "logs/driver.log"):
        assert (run_dir / name).exists(), name
    assert "resume with" not in result.stdout and "trial(s) at once" in result.stdout
    # image trials run on jemalloc where it is installed, as each worker process itself reports
    assert set(table(run_dir, "trials.parquet")["allocator"]) == {"jemalloc" if find_jemalloc() else "system"}


def test_smoke_row_counts_match_the_spec(straight: Any, smoke: Any) -> None:
    # arms x seeds ablation trials, search.trials search trials, eval_episodes per mode per completed trial
    _, run_dir = straight
    trials = table(run_dir, "trials.parquet")
    ablation = trials.filter(pl.col("phase") == "ablation")
    assert ablation.height == len(smoke.arms) * len(smoke.seeds)
    assert set(ablation["state"]) == {"completed"}
    search = trials.filter(pl.col("phase") == "search")
    assert search.height == smoke.search.trials
    assert set(search["state"]) <= {"completed", "stopped_early"}
    stopped = search.filter(pl.col("state") == "stopped_early")
    assert (stopped["iterations_done"] < stopped["budget_iterations"]).all()
    episodes = table(run_dir, "episodes.parquet")
    per = episodes.filter(pl.col("phase") == "ablation").group_by("trial_id", "mode").len()
    assert per.height == ablation.height * 4 and set(per["len"]) == {smoke.budget.eval_episodes}
    progress = table(run_dir, "progress.parquet").filter(pl.col("phase") == "ablation")
    reports = smoke.budget.iterations // smoke.budget.val_interval
    assert progress.height == ablation.height * reports
    transference = table(run_dir, "transference.parquet")
    assert set(transference["trial_id"]) == set(ablation["trial_id"])


def test_results_json_after_the_study(straight: Any, smoke: Any) -> None:
    # `mmlo results --format json`: one object per (arm, mode), modes plus 'all'
    _, run_dir = straight
    result = mmlo("results", str(run_dir), "--format", "json")
    assert result.returncode == 0, result.stderr
    import json

    records = json.loads(result.stdout)
    assert {(r["arm"], r["mode"]) for r in records} == {
        (arm.name, mode) for arm in smoke.arms for mode in ("glyphs", "emoji", "icons", "textures", "all")
    }
    assert all(r["n_seeds"] == len(smoke.seeds) for r in records)


def test_kill_9_then_resume_keeps_finished_trials_and_completes(killed_and_resumed: Any, smoke: Any) -> None:
    # trials final before the kill keep their records and episode files byte for byte; no duplicates
    before, episodes, resumed, run_dir = killed_and_resumed
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = ledger.finished(run_dir)
    for trial_id, record in before.items():
        assert after[trial_id] == record
    for trial_id, data in episodes.items():
        assert (run_dir / ledger.trial_dir(run_dir, trial_id) / ledger.EPISODES_FILE).read_bytes() == data
    trials = table(run_dir, "trials.parquet")
    assert trials["trial_id"].is_unique().all()
    assert trials.filter(pl.col("phase") == "ablation").height == len(smoke.arms) * len(smoke.seeds)
    assert trials.filter(pl.col("phase") == "search").height == smoke.search.trials
    episodes_table = table(run_dir, "episodes.parquet")
    assert not episodes_table.select("trial_id", "mode", "episode").is_duplicated().any()
    # workers can still finish a trial in the moment between the driver's death and theirs
    kept = re.search(r"(\d+) already finished", resumed.stdout)
    assert kept is not None and int(kept.group(1)) >= len(before)


def test_ablation_phase_is_deterministic(straight: Any, killed_and_resumed: Any) -> None:
    # the same seeds give identical test metrics, even for trials interrupted and resumed from checkpoints
    _, first = straight
    *_, second = killed_and_resumed
    columns = ["trial_id", "mode", "episode", "episode_seed", "value_after"]

    def ablation(run_dir: Path) -> pl.DataFrame:
        episodes = table(run_dir, "episodes.parquet")
        return episodes.filter(pl.col("phase") == "ablation").select(columns).sort(columns[:3])

    assert ablation(first).equals(ablation(second))
    val = ["trial_id", "val_metric"]
    assert (
        table(first, "trials.parquet").filter(pl.col("phase") == "ablation").select(val).sort("trial_id")
        .equals(table(second, "trials.parquet").filter(pl.col("phase") == "ablation").select(val).sort("trial_id"))
    )


def test_failing_arms_are_recorded_and_the_study_completes(failing: Any, straight: Any) -> None:
    # an exception and a NaN loss become `failed` trials with reasons; the healthy arm still completes
    result, run_dir = failing
    assert result.returncode == 0, result.stdout + result.stderr
    trials = table(run_dir, "trials.parquet").sort("trial_id")
    states = dict(zip(trials["arm"], trials["state"], strict=True))
    assert states == {"ProtoNet": "completed", "Diverges": "failed", "Raises": "failed"}
    reasons = dict(zip(trials["arm"], trials["failure_reason"], strict=True))
    assert reasons["ProtoNet"] is None
    assert reasons["Diverges"].startswith("TrainingDiverged: meta-loss is nan")
    assert reasons["Raises"].startswith("DeliberateFailure: MMLO_FAIL_ARM=Raises")
    assert "2 trial(s) failed" in result.stdout
    # the healthy arm is the smoke study's first arm with seed 0: the same numbers
    healthy = table(run_dir, "episodes.parquet").select("mode", "episode", "value_after").sort("mode", "episode")
    reference = (
        table(straight[1], "episodes.parquet")
        .filter(pl.col("trial_id") == "ablation-00-s0")
        .select("mode", "episode", "value_after")
        .sort("mode", "episode")
    )
    assert healthy.equals(reference)


def test_damaged_records_are_named_and_their_trials_run_again(damaged_and_resumed: Any, smoke: Any) -> None:
    # resume over truncated part files: exit 0, each named by path; the ablation trials re-run from their final
    # checkpoints with the same test episodes; the search trial's point runs again as a new search trial
    resumed, finished, run_dir = damaged_and_resumed
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stdout + resumed.stderr
    for trial_id in DAMAGED:
        assert f"damaged trial record {run_dir / 'parts' / trial_id / 'trial.json'} (unreadable)" in resumed.stdout
    damaged = run_dir / "parts" / DAMAGED_EPISODES / "episodes.parquet"
    assert f"damaged part file {damaged} (unreadable)" in resumed.stdout
    assert ledger.damaged(run_dir) == []
    trials = table(run_dir, "trials.parquet")
    assert trials["trial_id"].is_unique().all() and "search-001" not in trials["trial_id"].to_list()
    assert trials.filter(pl.col("phase") == "search").height == smoke.search.trials
    assert trials.filter(pl.col("trial_id") == "ablation-00-s0")["state"].to_list() == ["completed"]
    columns = ["trial_id", "mode", "episode", "value_after"]

    def episodes(run: Path) -> pl.DataFrame:
        rerun = pl.col("trial_id").is_in(["ablation-00-s0", DAMAGED_EPISODES])
        return table(run, "episodes.parquet").filter(rerun).select(columns).sort(columns)

    assert episodes(run_dir).equals(episodes(finished))
    point = [c for c in trials.columns if c.startswith("cfg_") and c != "cfg_iterations"]
    before = table(finished, "trials.parquet").filter(pl.col("trial_id") == "search-001").select(point)
    assert trials.filter(pl.col("trial_id") == "search-003").select(point).equals(before)
