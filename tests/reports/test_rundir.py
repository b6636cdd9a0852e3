from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from mmlo.reports.errors import ReportError
from mmlo.reports.rundir import load_run


# A missing folder, a folder without spec.yaml, or a run with no trials is a ReportError naming the fix.
def test_unusable_run_directories(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no such run directory"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(ReportError, match="no spec.yaml"):
        load_run(tmp_path)
    (tmp_path / "spec.yaml").write_text("name: empty\n")
    with pytest.raises(ReportError, match="no finished trials yet"):
        load_run(tmp_path)
    pl.DataFrame({"phase": [], "arm": []}, schema={"phase": pl.String, "arm": pl.String}).write_parquet(
        tmp_path / "trials.parquet"
    )
    with pytest.raises(ReportError, match="mmlo status"):
        load_run(tmp_path)


# A corrupt Parquet table or provenance file is a ReportError, not a traceback.
def test_corrupt_files(make_run) -> None:
    run = make_run(name="corrupt")
    (run / "progress.parquet").write_bytes(b"not parquet")
    with pytest.raises(ReportError, match="progress.parquet"):
        load_run(run)
    (run / "progress.parquet").unlink()
    (run / "provenance.json").write_text("{")
    with pytest.raises(ReportError, match="provenance"):
        load_run(run)


# Arms follow the YAML order, modes the benchmark's order, the baseline defaults to the first arm,
# and the metric and its direction come from the trials table.
def test_orderings(synthetic_run: Path, regression_run: Path) -> None:
    run = load_run(synthetic_run)
    assert run.arms == ("ProtoNet", "MMAML (FiLM)", "KML-ProtoNet")
    assert run.modes == ("glyphs", "emoji", "icons", "textures")
    assert run.baseline == "ProtoNet"
    assert run.metric_name == "accuracy" and run.higher_is_better
    assert run.search_params() == ["learner", "kml_variant", "lr"]
    regression = load_run(regression_run)
    assert regression.metric_name == "mse" and not regression.higher_is_better
    assert regression.transference is None


# The YAML's baseline wins; a baseline that is not an arm of the results falls back to the first arm.
def test_baseline_from_spec(make_run) -> None:
    run_dir = make_run(name="baseline")
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
    spec["baseline"] = "KML-ProtoNet"
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert load_run(run_dir).baseline == "KML-ProtoNet"
    spec["baseline"] = "gone"
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert load_run(run_dir).baseline == "ProtoNet"


# Without a provenance file the modes come from the data, in the order they appear.
def test_modes_without_provenance(make_run) -> None:
    run_dir = make_run(name="no-provenance")
    (run_dir / "provenance.json").unlink()
    assert load_run(run_dir).modes == ("glyphs", "emoji", "icons", "textures")
    assert json.loads("{}") == load_run(run_dir).provenance
