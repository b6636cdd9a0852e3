from __future__ import annotations

import json

import pytest
import torch

from mmlo.models.allocator import find_jemalloc
from mmlo.models.learners import build_learner
from mmlo.orchestrator.bench import CASES, RandomImages, run_bench, run_case, textbook_maml, textbook_protonet
from mmlo.tasks.base import TaskBatch


def test_cases_cover_the_issue_list() -> None:
    # regression2 MAML/MMAML at meta-batch 50; MAML, MMAML, ProtoNet, KML-ProtoNet at 28 and 84 px at meta-batch
    # 10 on the MMAML-Classification network (stride 2, global average pool, BN without affine, xavier)
    assert {"regression2-maml", "regression2-mmaml"} <= set(CASES)
    for size in (28, 84):
        for name in ("maml", "mmaml", "protonet", "kml-protonet"):
            case = CASES[f"{name}-{size}"]
            assert case.image_size == size and case.meta_batch == 10
            cfg = case.learner
            assert (cfg.channels, cfg.downsample, cfg.pool, cfg.bn_affine, cfg.init) == (
                [32, 64, 128, 256], "stride", "mean", False, "xavier"
            )
    assert CASES["mmaml-84"].learner.resolved_modulation == "film"
    assert CASES["kml-protonet-28"].learner.resolved_modulation == "kml"
    assert CASES["maml-28"].learner.inner_steps == 5 and not CASES["maml-28"].learner.first_order
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


@pytest.mark.parametrize("name", ["maml-28", "mmaml-28", "protonet-28", "kml-protonet-28"])
def test_the_textbook_loop_computes_what_the_learner_computes(name: str) -> None:
    # The baseline is the same maths written per task with plain torch: equal losses, accuracies and meta-gradient
    # (float64, two tasks), so the bench compares speed and nothing else.
    case = CASES[name]
    bench = RandomImages(28)
    batch = bench.tasks("train", [0, 1], [5, 6])
    batch = TaskBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y,
                      batch.mode, batch.seed)
    torch.manual_seed(0)
    learner = build_learner(case.learner, bench).double()
    params = learner.params()
    textbook = textbook_maml if case.learner.base_algorithm == "maml" else textbook_protonet
    ours, theirs = learner.task_outputs(params, batch), textbook(learner, params, batch)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(ours.metric, theirs.metric.double(), atol=1e-6, rtol=0)
    names = list(params)
    for a, b in zip(torch.autograd.grad(ours.loss.sum(), [params[n] for n in names], allow_unused=True),
                    torch.autograd.grad(theirs.loss.sum(), [params[n] for n in names], allow_unused=True),
                    strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_unknown_case_and_bad_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # a misspelt case exits with code 2 and lists the valid names; so do zero threads or rounds
    assert run_bench(["regression2-mamll"], 1, as_json=True) == 2
    assert "regression2-maml" in capsys.readouterr().err
    assert run_bench(["regression2-maml"], 1, as_json=True, threads=[0]) == 2
    assert run_bench(["regression2-maml"], 1, as_json=True, rounds=0) == 2


def test_run_case_reports_the_contract_keys() -> None:
    # timed rounds in-process yield positive wall and CPU times, ratio = loop / vectorised, a peak RSS; regression's
    # baseline is mmlo's own per-task loop
    row = run_case("regression2-maml", 1, rounds=2)
    assert row["seconds_per_iteration"] > 0 and row["loop_seconds_per_iteration"] > 0
    assert row["ratio"] == pytest.approx(row["loop_seconds_per_iteration"] / row["seconds_per_iteration"])
    assert row["baseline"] == "loop" and row["ratio_vs_baseline"] == row["ratio"]
    assert row["peak_rss_mb"] > 0 and row["loop_peak_rss_mb"] >= row["peak_rss_mb"]
    assert row["cpu_seconds_per_iteration"] > 0 and row["cpu_ratio"] > 0
    assert row["threads"] == 1 and row["rounds"] == 2


@pytest.mark.slow
def test_json_lines_from_a_spawned_case(capsys: pytest.CaptureFixture[str]) -> None:
    # --json prints exactly one parseable line per case, with the keys the lead tracks over time
    assert run_bench(["regression2-maml"], 1, as_json=True, threads=[1], rounds=1) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert {"case", "seconds_per_iteration", "loop_seconds_per_iteration", "ratio", "peak_rss_mb"} <= set(row)
    assert {"baseline", "baseline_seconds_per_iteration", "ratio_vs_baseline", "threads"} <= set(row)
    assert row["allocator"] == "system"  # regression keeps the system malloc, as its study trials do


@pytest.mark.slow
@pytest.mark.skipif(find_jemalloc() is None, reason="jemalloc is not installed: sudo apt-get install libjemalloc2")
def test_image_cases_run_on_jemalloc_unless_told_otherwise(capsys: pytest.CaptureFixture[str]) -> None:
    # the spawned case process reports the allocator it actually has loaded
    assert run_bench(["protonet-28"], 1, as_json=True, threads=[1], rounds=1) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["allocator"] == "jemalloc"
    assert row["baseline"] == "textbook" and row["strategy"] == "per-task" and row["ratio_vs_baseline"] > 0
    assert run_bench(["protonet-28"], 1, as_json=True, threads=[1], rounds=1, allocator="system") == 0
    assert json.loads(capsys.readouterr().out)["allocator"] == "system"
    assert run_bench(["protonet-28"], 1, as_json=True, allocator="tcmalloc") == 2
