from __future__ import annotations

import io

import pytest

from mmlo.orchestrator.progress import StudyProgress, duration


def progress(concurrency: int = 1) -> tuple[StudyProgress, io.StringIO]:
    stream = io.StringIO()
    return StudyProgress(higher_is_better=True, metric="accuracy", concurrency=concurrency, stream=stream), stream


def test_duration_format() -> None:
    # seconds, minutes with zero-padded seconds, hours with minutes; unknown is '?'
    assert [duration(s) for s in (4.4, 187, 3720)] == ["4s", "3m07s", "1h02m"]
    assert duration(None) == "?" and duration(float("nan")) == "?"


def test_eta_scales_expected_work_by_the_observed_rate() -> None:
    # expected 10 + 10 + 20 units; the first took 20 s (2 s/unit); 30 units left on 2 slots -> 30 s
    p, _ = progress(concurrency=2)
    for trial_id, expected in (("a", 10.0), ("b", 10.0), ("c", 20.0)):
        p.plan(trial_id, trial_id, expected, budget=100)
    assert p.eta() is None
    p.finished("a", "completed", 100, 0.5, wall=20.0)
    assert p.eta() == pytest.approx(30.0)
    # c is halfway after 20 s (2 s/unit again): 10 + 10 units left -> 10 s on 2 slots
    p.result("c", 50, 20.0, 0.4)
    assert p.eta() == pytest.approx((10 + 10) * (40 / 20) / 2)


def test_counts_best_and_line() -> None:
    # the status line counts trials per state and names the best validation score so far
    p, stream = progress()
    for trial_id in ("a", "b", "c", "d"):
        p.plan(trial_id, f"arm {trial_id}", 1.0, budget=10)
    p.started("a")
    p.finished("b", "completed", 10, 0.61, wall=3.0)
    p.finished("c", "failed", 2, None, wall=1.0, note="  (TrainingDiverged: nan)")
    p.finished("d", "stopped_early", 4, 0.9, wall=1.0)
    line = p.line()
    assert "3/4 trials done" in line and "1 running" in line and "1 failed" in line and "1 stopped early" in line
    assert "best val accuracy 0.6100 (arm b)" in line
    printed = stream.getvalue()
    assert "FAILED" in printed and "TrainingDiverged: nan" in printed and "stopped early at 4/10" in printed


def test_lower_is_better_for_mse() -> None:
    # with MSE the best score is the smallest
    stream = io.StringIO()
    p = StudyProgress(higher_is_better=False, metric="mse", stream=stream)
    p.plan("a", "a", 1.0, 10)
    p.plan("b", "b", 1.0, 10)
    p.finished("a", "completed", 10, 0.3, 1.0)
    p.finished("b", "completed", 10, 0.7, 1.0)
    assert "best val mse 0.3000 (a)" in p.line()


def test_placeholders_are_claimed_by_real_trials() -> None:
    # a search trial takes the place of a placeholder; unclaimed placeholders can be dropped
    p, _ = progress()
    p.plan("search pending 0", "search", 1.0, 10)
    p.plan("confirm pending 0", "confirm", 1.0, 10)
    p.claim("search pending ", "search-007", "search-007", 1.0, 10)
    assert p.knows("search-007") and not p.knows("search pending 0")
    p.drop("confirm pending ")
    assert sum(p.counts().values()) == 1
