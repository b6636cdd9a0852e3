"""The synthetic run of ``synthetic.py`` is what the orchestrator writes: the sink's tables column for column,
and the provenance record key for key. When the orchestrator's contract grows, these fail and say what to add."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from synthetic import IMAGE_MODES, frame, synthetic_study

from mmlo.orchestrator import provenance, sink
from mmlo.orchestrator.spec import Study


# Every table has exactly the columns and types of orchestrator/sink.py, in its order.
def test_tables_have_the_sinks_schema(synthetic_run: Path) -> None:
    expected = {
        sink.TRIALS_FILE: sink.trials_schema(),
        sink.PROGRESS_FILE: sink.progress_schema(IMAGE_MODES),
        sink.EPISODES_FILE: sink.EPISODE_COLUMNS,
        sink.TRANSFERENCE_FILE: sink.TRANSFERENCE_COLUMNS,
    }
    for file, schema in expected.items():
        assert list(pl.read_parquet(synthetic_run / file).schema.items()) == list(schema.items()), file


# A column the sink writes and the fixture's rows lack stops the fixture with the column's name (no silent nulls).
def test_a_column_the_fixture_lacks_is_an_error() -> None:
    schema = {"study": pl.String(), "allocator": pl.String()}
    with pytest.raises(AssertionError, match=r"missing \['allocator'\]"):
        frame([{"study": "s"}], schema)
    with pytest.raises(AssertionError, match=r"not in the sink's schema \['seeds'\]"):
        frame([{"study": "s", "allocator": "system", "seeds": [0, 1]}], schema)


# spec.yaml is a study the driver would accept; trial ids are the planner's.
def test_spec_and_trial_ids_are_the_drivers(synthetic_run: Path) -> None:
    Study.model_validate(yaml.safe_load((synthetic_run / "spec.yaml").read_text(encoding="utf-8")))
    ids = pl.read_parquet(synthetic_run / sink.TRIALS_FILE)["trial_id"].to_list()
    assert ids[:2] == ["ablation-00-s0", "ablation-00-s1"] and ids[-1] == "search-005"


# provenance.json has the keys the driver's provenance writer leaves after a finished session.
def test_provenance_has_the_drivers_keys(synthetic_run: Path, tmp_path: Path) -> None:
    study = synthetic_study("synthetic", "accuracy", episodes=20)
    benchmark = {"name": "offline4", "kind": "classification", "modes": list(IMAGE_MODES), "fingerprint": "x"}
    provenance.start_session(tmp_path, study, benchmark, resumed=False, sampler={}, address=None)
    provenance.record_phase(tmp_path, "ablation", 2, "2 CPUs / 1 per trial", trials=6, wall_seconds=1.0)
    written = provenance.finish_session(tmp_path, "completed", 1.0)
    fixture = json.loads((synthetic_run / "provenance.json").read_text(encoding="utf-8"))
    assert set(fixture) == set(written)
    assert set(fixture["seeds"]) == set(written["seeds"])
    assert set(fixture["sessions"][0]) == set(written["sessions"][0])
    assert set(fixture["benchmark"]) == set(benchmark)
