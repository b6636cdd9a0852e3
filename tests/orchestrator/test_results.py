from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from mmlo.orchestrator import ledger, sink
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.results import ablation_table, format_table, show_results, show_status


def episodes(rows: list[tuple[str, str, str, int, float]]) -> pl.DataFrame:
    """(phase, arm, mode, seed, value) tuples -> an episodes table."""
    return pl.DataFrame(
        [
            {"study": "s", "phase": phase, "trial_id": f"{arm}-{seed}", "arm": arm, "seed": seed, "split": "test",
             "mode": mode, "episode": i, "episode_seed": i, "metric": "accuracy", "value_before": None,
             "value_after": value}
            for i, (phase, arm, mode, seed, value) in enumerate(rows)
        ],
        schema=sink.EPISODE_COLUMNS,
    )


TABLE = episodes(
    [
        ("ablation", "B", "glyphs", 0, 0.5),
        ("ablation", "B", "glyphs", 1, 0.7),
        ("ablation", "B", "emoji", 0, 0.2),
        ("ablation", "B", "emoji", 1, 0.4),
        ("ablation", "A", "glyphs", 0, 0.9),
        ("search", "search-000", "glyphs", 0, 1.0),
    ]
)


def test_mean_and_ci_by_hand() -> None:
    # glyphs of B: mean 0.6, s = 0.1414, ci = 1.96 * 0.1414 / sqrt(2) = 0.196; 'all' pools both modes
    table = ablation_table(TABLE, ["A", "B"], ["glyphs", "emoji"])
    rows = {(r["arm"], r["mode"]): r for r in table.to_dicts()}
    b = rows[("B", "glyphs")]
    assert b["mean"] == pytest.approx(0.6) and b["ci95"] == pytest.approx(0.196, abs=1e-4)
    assert (b["n_episodes"], b["n_seeds"], b["metric"]) == (2, 2, "accuracy")
    overall = rows[("B", "all")]
    # values 0.5, 0.7, 0.2, 0.4: mean 0.45, s = 0.2082, ci = 1.96 * 0.2082 / 2 = 0.2040
    assert overall["mean"] == pytest.approx(0.45) and overall["ci95"] == pytest.approx(0.2040, abs=1e-4)
    assert overall["n_episodes"] == 4


def test_order_phases_and_single_episode() -> None:
    # arms in spec order, modes in benchmark order then 'all'; search trials are not table rows; n=1 has no CI
    table = ablation_table(TABLE, ["A", "B"], ["glyphs", "emoji"])
    assert table.select("arm", "mode").rows() == [
        ("A", "glyphs"), ("A", "all"), ("B", "glyphs"), ("B", "emoji"), ("B", "all"),
    ]
    assert table.row(0, named=True)["ci95"] is None
    assert "search-000" not in table["arm"].to_list()


def test_text_table_in_percent() -> None:
    # accuracy is shown in percent with its 95 % half-width
    text = format_table(ablation_table(TABLE, ["A", "B"], ["glyphs", "emoji"]))
    assert "60.0 ± 19.6" in text and "45.0 ± 20.4" in text and "(%)" in text


def write_run(tmp_path: Path) -> Path:
    run = tmp_path / "s"
    run.mkdir()
    (run / "spec.yaml").write_text(yaml.safe_dump({"name": "s", "arms": [{"name": "A"}, {"name": "B"}]}))
    TABLE.write_parquet(run / "episodes.parquet")
    return run


def test_results_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --format json: one object per (arm, mode) with the documented keys; NaN becomes null
    show_results(write_run(tmp_path), "json")
    records: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert {tuple(sorted(r)) for r in records} == {("arm", "ci95", "mean", "metric", "mode", "n_episodes", "n_seeds")}
    assert records[0] == {"arm": "A", "mode": "glyphs", "metric": "accuracy", "mean": 0.9, "ci95": None,
                          "n_episodes": 1, "n_seeds": 1}


def test_results_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --format csv: a header and one line per (arm, mode)
    show_results(write_run(tmp_path), "csv")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "arm,mode,metric,mean,ci95,n_episodes,n_seeds" and len(lines) == 6


def test_not_a_run_directory(tmp_path: Path) -> None:
    # a folder without spec.yaml is a user error (exit 2)
    with pytest.raises(UserError, match="not a run directory"):
        show_results(tmp_path, "table")


def test_status_while_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # status reads the ledger: running trials with their last iteration, failures with their reason
    run = write_run(tmp_path)
    base = {"study": "s", "arm": "A", "seed": 0, "budget_iterations": 10}
    ledger.write_record(run, {**base, "trial_id": "ablation-00-s0", "phase": "ablation", "state": "running"})
    ledger.append_progress(run, "ablation-00-s0", {"iteration": 4, "val_metric": 0.55})
    ledger.write_record(
        run, {**base, "trial_id": "ablation-01-s0", "phase": "ablation", "state": "failed",
              "failure_reason": "out of memory: CUDA"}
    )
    show_status(run)
    out = capsys.readouterr().out
    assert "1 failed, 1 running" in out
    assert "4/10" in out and "val 0.5500" in out and "out of memory: CUDA" in out


def test_status_after_an_interrupted_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # once the last session ended without finishing, a record left 'running' is shown as interrupted
    run = write_run(tmp_path)
    (run / "provenance.json").write_text(json.dumps({"sessions": [{"outcome": "interrupted"}], "finished": None}))
    ledger.write_record(
        run, {"study": "s", "arm": "A", "seed": 0, "budget_iterations": 10, "trial_id": "ablation-00-s0",
              "phase": "ablation", "state": "running"}
    )
    show_status(run)
    out = capsys.readouterr().out
    assert "state      interrupted" in out and "1 interrupted" in out and " running" not in out
