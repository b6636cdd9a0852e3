from __future__ import annotations

import json

import pytest
import torch

from mmlo.models.allocator import find_jemalloc
from mmlo.orchestrator.bench import CASES, RandomImages, run_bench, run_case


def test_cases_cover_the_issue_list() -> None:
    # regression2 MAML/MMAML at meta-batch 50, and four image learners at 32 and 84 px at meta-batch 10
    assert {"regression2-maml", "regression2-mmaml"} <= set(CASES)
    for size in (32, 84):
        for name in ("protonet", "mprotonet", "kml-protonet", "mmaml"):
            case = CASES[f"{name}-{size}"]
            assert case.image_size == size and case.meta_batch == 10
    mmaml = CASES["regression2-mmaml"]
    assert mmaml.meta_batch == 50 and mmaml.learner.inner_steps == 5 and not mmaml.learner.first_order


def test_random_images_are_5_way_1_shot_15_query() -> None:
    # shapes, label blocks and per-seed determinism of the dataset-free workload
    bench = RandomImages(32)
    batch = bench.tasks("train", [0, 1], [3, 4])
    assert batch.support_x.shape == (2, 5, 3, 32, 32) and batch.query_x.shape == (2, 75, 3, 32, 32)
    assert batch.support_y[1].tolist() == [0, 1, 2, 3, 4]
    assert batch.query_y[0].tolist() == [c for c in range(5) for _ in range(15)]
    assert torch.equal(bench.tasks("train", [0], [4]).query_x[0], batch.query_x[1])


def test_unknown_case_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # a misspelt case exits with code 2 and lists the valid names
    assert run_bench(["regression2-mamll"], 1, as_json=True) == 2
    assert "regression2-maml" in capsys.readouterr().err


def test_run_case_reports_the_contract_keys() -> None:
    # one timed iteration in-process yields positive wall and CPU times, ratio = loop / vectorised, a peak RSS
    row = run_case("regression2-maml", 1)
    assert row["seconds_per_iteration"] > 0 and row["loop_seconds_per_iteration"] > 0
    assert row["ratio"] == pytest.approx(row["loop_seconds_per_iteration"] / row["seconds_per_iteration"])
    assert row["peak_rss_mb"] > 0 and row["loop_peak_rss_mb"] >= row["peak_rss_mb"]
    assert row["cpu_seconds_per_iteration"] > 0 and row["cpu_ratio"] > 0


@pytest.mark.slow
def test_json_lines_from_a_spawned_case(capsys: pytest.CaptureFixture[str]) -> None:
    # --json prints exactly one parseable line per case, with the keys the lead tracks over time
    assert run_bench(["regression2-maml"], 1, as_json=True) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert {"case", "seconds_per_iteration", "loop_seconds_per_iteration", "ratio", "peak_rss_mb"} <= set(row)
    assert row["allocator"] == "system"  # regression keeps the system malloc, as its study trials do


@pytest.mark.slow
@pytest.mark.skipif(find_jemalloc() is None, reason="jemalloc is not installed: sudo apt-get install libjemalloc2")
def test_image_cases_run_on_jemalloc_unless_told_otherwise(capsys: pytest.CaptureFixture[str]) -> None:
    # the spawned case process reports the allocator it actually has loaded
    assert run_bench(["protonet-32"], 1, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["allocator"] == "jemalloc"
    assert run_bench(["protonet-32"], 1, as_json=True, allocator="system") == 0
    assert json.loads(capsys.readouterr().out)["allocator"] == "system"
    assert run_bench(["protonet-32"], 1, as_json=True, allocator="tcmalloc") == 2
