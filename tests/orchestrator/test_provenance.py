from __future__ import annotations

import re
from pathlib import Path

from mmlo.orchestrator import provenance
from mmlo.orchestrator.spec import parse_study

STUDY = parse_study(
    {
        "name": "p",
        "benchmark": {"name": "regression2"},
        "arms": [{"name": "MAML", "learner": "maml"}],
        "seeds": [3, 4],
        "eval_seed": 99,
    }
)
BENCHMARK = {"name": "regression2", "kind": "regression", "modes": ["sinusoid", "linear"], "fingerprint": "abc"}


def test_git_state_of_the_source_and_outside_git(tmp_path: Path) -> None:
    # mmlo's own checkout has a 40-hex commit and a dirty flag; a folder outside git gives nulls
    state = provenance.git_state()
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"] or "") and isinstance(state["dirty"], bool)
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_sessions_accumulate_across_resumes(tmp_path: Path) -> None:
    # a resumed study keeps its first start time and adds a session; wall seconds add up
    provenance.start_session(tmp_path, STUDY, BENCHMARK, resumed=False, sampler=None, address=None)
    provenance.record_phase(tmp_path, "ablation", 2, "2 CPUs / 1 per trial", trials=2, wall_seconds=5.0)
    first = provenance.finish_session(tmp_path, "interrupted", 10.0)
    assert first["finished"] is None and first["sessions"][0]["phases"]["ablation"]["trials"] == 2
    provenance.start_session(tmp_path, STUDY, BENCHMARK, resumed=True, sampler=None, address=None)
    record = provenance.finish_session(tmp_path, "completed", 2.5)
    assert [s["outcome"] for s in record["sessions"]] == ["interrupted", "completed"]
    assert record["started"] == first["started"] and record["finished"] == record["sessions"][1]["finished"]
    assert record["wall_seconds"] == 12.5
    assert record["seeds"] == {"training": [3, 4], "eval_seed": 99, "search": None}
    assert record["benchmark"]["fingerprint"] == "abc" and record["concurrency"]["ablation"]["trials_at_once"] == 2
    assert record["packages"]["torch"] and record["machine"]["cpus"] >= 1 and record["driver_peak_memory_mb"] > 0
    assert record["trial_allocator"] == "system malloc"  # regression trials keep it; image trials get jemalloc
