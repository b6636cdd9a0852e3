"""The report's numbers against hand-made tables whose answers are derived by hand in the comments."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mmlo.reports import tables
from mmlo.reports.rundir import load_run
from mmlo.reports.tables import OVERALL

T975_DF1 = 12.706204736174707  # t_{0.975, 1}: two seeds
T975_DF2 = 4.302652729749464  # t_{0.975, 2}: three seeds


def _episodes(values: dict[tuple[str, int, str], list[float]], before: bool = False) -> pl.DataFrame:
    """Episode rows from {(arm, seed, mode): [value per episode]}; episode_seed = 100 * mode index + episode."""
    modes = sorted({m for _, _, m in values})
    rows = []
    for (arm, seed, mode), vals in values.items():
        for e, v in enumerate(vals):
            rows.append(
                {
                    "study": "s",
                    "phase": "ablation",
                    "trial_id": f"{arm}-{seed}",
                    "arm": arm,
                    "seed": seed,
                    "split": "test",
                    "mode": mode,
                    "episode": e,
                    "episode_seed": 100 * modes.index(mode) + e,
                    "metric": "accuracy",
                    "value_before": 0.2 if before and arm == "B" else None,
                    "value_after": v,
                }
            )
    return pl.DataFrame(rows, schema_overrides={"value_before": pl.Float64})


# Arm A is the baseline; B beats it by 0.1, 0.2, 0.1 on m1's three episodes; m2 is constant.
HAND = {
    ("A", 0, "m1"): [0.4, 0.6, 0.8],
    ("A", 1, "m1"): [0.6, 0.8, 1.0],  # seed-averaged episodes 0.5, 0.7, 0.9
    ("B", 0, "m1"): [0.5, 0.8, 0.9],
    ("B", 1, "m1"): [0.7, 1.0, 1.1],  # seed-averaged episodes 0.6, 0.9, 1.0
    ("A", 0, "m2"): [0.2, 0.2, 0.2],
    ("A", 1, "m2"): [0.2, 0.2, 0.2],
    ("B", 0, "m2"): [0.3, 0.3, 0.3],
    ("B", 1, "m2"): [0.3, 0.3, 0.3],
}


def _cell(table: pl.DataFrame, arm: str, mode: str) -> dict:
    return table.filter((pl.col("arm") == arm) & (pl.col("mode") == mode)).row(0, named=True)


@pytest.fixture()
def hand_table() -> pl.DataFrame:
    return tables.ablation_table(
        _episodes(HAND), arms=["A", "B"], modes=["m1", "m2"], baseline="A", higher_is_better=True
    )


# Over episodes: A on m1 has seed-averaged values 0.5, 0.7, 0.9: mean 0.7, s = 0.2, CI = 1.96 * 0.2 / sqrt(3).
def test_episode_interval(hand_table: pl.DataFrame) -> None:
    a = _cell(hand_table, "A", "m1")
    assert a["n_episodes"] == 3
    assert a["mean"] == pytest.approx(0.7)
    assert a["ci95"] == pytest.approx(1.96 * 0.2 / math.sqrt(3))


# Over seeds: A's seed means on m1 are 0.6 and 0.8: s = sqrt(0.02), CI = t_{0.975,1} * s / sqrt(2) = 12.706 * 0.1.
def test_seed_t_interval(hand_table: pl.DataFrame) -> None:
    a = _cell(hand_table, "A", "m1")
    assert a["n_seeds"] == 2
    assert a["seed_mean"] == pytest.approx(0.7)
    assert a["seed_ci95"] == pytest.approx(T975_DF1 * 0.1)


# Three seeds with means 0.5, 0.6, 0.7 (s = 0.1): CI = t_{0.975,2} * 0.1 / sqrt(3); one seed: no interval.
def test_seed_t_interval_three_seeds_and_one() -> None:
    values = {("C", s, "m1"): [v] for s, v in enumerate([0.5, 0.6, 0.7])} | {("D", 0, "m1"): [0.4, 0.5]}
    table = tables.ablation_table(_episodes(values), arms=["C", "D"], modes=["m1"], baseline="C", higher_is_better=True)
    c = _cell(table, "C", "m1")
    assert c["seed_ci95"] == pytest.approx(T975_DF2 * 0.1 / math.sqrt(3))
    assert _cell(table, "D", "m1")["seed_ci95"] is None


# Paired: B - A on m1 is 0.1, 0.2, 0.1: mean 0.1333, s = 0.057735, CI = 1.96 * s / sqrt(3) = 0.065333.
def test_paired_difference(hand_table: pl.DataFrame) -> None:
    b = _cell(hand_table, "B", "m1")
    assert b["n_paired"] == 3
    assert b["diff"] == pytest.approx(0.4 / 3)
    assert b["diff_ci95"] == pytest.approx(1.96 * 0.0577350269 / math.sqrt(3))
    assert _cell(hand_table, "A", "m1")["diff"] is None


# All modes pooled: A's six episodes average 2.7 / 6 = 0.45, B's 3.4 / 6; the paired differences
# 0.1, 0.2, 0.1, 0.1, 0.1, 0.1 have mean 0.7 / 6 and s = sqrt(0.0083333 / 5), so CI = 1.96 * s / sqrt(6).
def test_overall_rows(hand_table: pl.DataFrame) -> None:
    a, b = _cell(hand_table, "A", OVERALL), _cell(hand_table, "B", OVERALL)
    assert a["n_episodes"] == 6
    assert a["mean"] == pytest.approx(0.45)
    assert b["mean"] == pytest.approx(3.4 / 6)
    assert b["diff"] == pytest.approx(0.7 / 6)
    assert b["diff_ci95"] == pytest.approx(1.96 * math.sqrt(0.05 / 6 / 5) / math.sqrt(6))
    assert hand_table["arm"].to_list() == ["A"] * 3 + ["B"] * 3
    assert hand_table["mode"].to_list() == ["m1", "m2", OVERALL] * 2


# Episodes are paired on (mode, episode, episode_seed): an episode only one arm has, or one whose seed
# differs, is left out of the difference (but still counts in the arm's own mean).
def test_pairing_uses_shared_episodes_only() -> None:
    values = {("A", 0, "m1"): [0.5, 0.5], ("B", 0, "m1"): [0.7, 0.9, 0.1]}
    episodes = _episodes(values).with_columns(
        episode_seed=pl.when((pl.col("arm") == "B") & (pl.col("episode") == 1))
        .then(999)
        .otherwise(pl.col("episode_seed"))
    )
    diff = tables.paired_differences(episodes, "A").filter(pl.col("mode") == "m1").row(0, named=True)
    assert diff["n_paired"] == 1
    assert diff["diff"] == pytest.approx(0.2)


# Best per column: the highest mean for accuracy, the lowest for mse; B wins m1 and m2 for accuracy, A for mse.
def test_best_per_column_follows_metric_direction(hand_table: pl.DataFrame) -> None:
    assert hand_table.filter("best")["arm"].to_list() == ["B", "B", "B"]
    low = tables.ablation_table(
        _episodes(HAND), arms=["A", "B"], modes=["m1", "m2"], baseline="A", higher_is_better=False
    )
    assert low.filter("best")["arm"].to_list() == ["A", "A", "A"]


# Rows follow the study's arm order, not alphabetical order.
def test_arm_order_is_the_studys() -> None:
    table = tables.ablation_table(
        _episodes(HAND), arms=["B", "A"], modes=["m2", "m1"], baseline="B", higher_is_better=True
    )
    assert table["arm"].to_list()[:3] == ["B", "B", "B"]
    assert table["mode"].to_list()[:3] == ["m2", "m1", OVERALL]


# Before/after: only arms with value_before appear; B before = 0.2 everywhere, after = its means.
def test_adaptation_table() -> None:
    table = tables.adaptation_table(_episodes(HAND, before=True), arms=["A", "B"], modes=["m1", "m2"])
    assert set(table["arm"]) == {"B"}
    before = table.filter((pl.col("stage") == "before") & (pl.col("mode") == "m1")).row(0, named=True)
    after = table.filter((pl.col("stage") == "after") & (pl.col("mode") == "m1")).row(0, named=True)
    assert before["mean"] == pytest.approx(0.2)
    assert after["mean"] == pytest.approx(2.5 / 3)


def _progress() -> pl.DataFrame:
    rows = []
    for seed, values in ((0, [0.2, 0.5]), (1, [0.4, 0.7])):
        for it, v in zip((10, 20), values, strict=True):
            rows.append(
                {
                    "phase": "ablation",
                    "trial_id": f"A-{seed}",
                    "arm": "A",
                    "seed": seed,
                    "iteration": it,
                    "val_metric": v,
                    "val_m1": v + 0.1,
                    "val_m2": v - 0.1,
                }
            )
    # A resumed trial reported iteration 20 twice: the last report counts.
    rows.append({**rows[1], "val_metric": 0.6, "val_m1": 0.7, "val_m2": 0.5})
    return pl.DataFrame(rows)


# Curves: mean over seeds with the [min, max] band; a duplicated report counts once (its last value).
def test_learning_curves() -> None:
    curves = tables.learning_curves(_progress(), arms=["A"], modes=["m1", "m2"])
    at10 = curves.filter((pl.col("series") == OVERALL) & (pl.col("iteration") == 10)).row(0, named=True)
    assert (at10["mean"], at10["low"], at10["high"], at10["n_seeds"]) == pytest.approx((0.3, 0.2, 0.4, 2))
    at20 = curves.filter((pl.col("series") == OVERALL) & (pl.col("iteration") == 20)).row(0, named=True)
    assert at20["mean"] == pytest.approx(0.65)
    assert curves["series"].unique(maintain_order=True).to_list() == [OVERALL, "m1", "m2"]


def _search_trials() -> pl.DataFrame:
    rows = [
        ("t00", "completed", 0.50, 100, "kml", "residual", 0.001),
        ("t01", "stopped_early", 0.90, 40, "mprotonet", "multiplicative", 0.01),
        ("t02", "completed", 0.70, 100, "kml", "multiplicative", 0.003),
        ("t03", "failed", None, 10, "kml", "residual", 0.1),
        ("t04", "completed", 0.60, 100, "mprotonet", "multiplicative", 0.0003),
    ]
    return pl.DataFrame(
        [
            {
                "phase": "search",
                "trial_id": t,
                "arm": f"search {t}",
                "seed": 0,
                "state": s,
                "val_metric": v,
                "iterations_done": i,
                "budget_iterations": 100,
                "cfg_learner": lr_,
                "cfg_kml_variant": kv,
                "cfg_lr": lr,
                "failure_reason": "NaN loss" if s == "failed" else None,
            }
            for t, s, v, i, lr_, kv, lr in rows
        ],
        schema_overrides={"val_metric": pl.Float64},
    )


SPACE: dict[str, dict[str, Any]] = {
    "learner": {"type": "categorical", "choices": ["mprotonet", "kml"]},
    "kml_variant": {"type": "categorical", "choices": ["multiplicative", "residual"], "when": {"learner": "kml"}},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}


# Best so far ranks full-budget trials only: the early-stopped 0.90 never becomes the best.
def test_optimisation_history_ignores_stopped_early() -> None:
    history = tables.optimisation_history(_search_trials(), higher_is_better=True)
    assert history["best_so_far"].to_list() == [0.5, 0.5, 0.7, 0.7, 0.7]
    low = tables.optimisation_history(_search_trials(), higher_is_better=False)
    assert low["best_so_far"].to_list() == [0.5, 0.5, 0.5, 0.5, 0.5]


# Best configurations: completed trials ranked 1..n by metric, then stopped-early ones unranked; no failed.
def test_best_configurations() -> None:
    best = tables.best_configurations(_search_trials(), ["learner", "lr"], higher_is_better=True)
    assert best["trial_id"].to_list() == ["t02", "t04", "t00", "t01"]
    assert best["rank"].to_list() == [1, 2, 3, None]
    assert best.columns[-2:] == ["learner", "lr"]


# A conditional parameter is null in trials where its `when` condition failed.
def test_sampled_parameters_respect_conditions() -> None:
    sampled = tables.sampled_parameters(_search_trials(), SPACE)
    assert sampled["kml_variant"].to_list() == ["residual", None, "multiplicative", "residual", None]


# Importance compares every live trial at the last iteration all of them reached (here 40, the stopped trial's end).
def test_search_importance_uses_common_iteration() -> None:
    trials = _search_trials()
    rows = []
    for t, done in zip(trials["trial_id"], trials["iterations_done"], strict=True):
        for it in range(20, done + 1, 20):
            rows.append({"trial_id": t, "iteration": it, "val_metric": 0.9 if t in ("t00", "t02") else 0.3})
    importance, iteration = tables.search_importance(trials, pl.DataFrame(rows), SPACE)
    assert iteration == 40
    scores = dict(zip(importance["param"], importance["n_trials"], strict=True))
    assert scores == {"learner": 4, "kml_variant": 2, "lr": 4}
    assert importance["param"][0] == "learner"


# Parallel coordinates: log-scale axes put 1e-3 at 1/3 of [1e-4, 1e-1]; categoricals at their choice index.
def test_parallel_positions() -> None:
    lines, labels = tables.parallel_coordinates(_search_trials(), SPACE, metric_label="accuracy")
    t00 = {r["axis"]: r["position"] for r in lines.filter(pl.col("number") == 0).iter_rows(named=True)}
    assert t00["lr"] == pytest.approx(1 / 3)
    assert t00["learner"] == 1.0
    assert t00["kml_variant"] == 1.0
    assert t00["accuracy"] == pytest.approx((0.5 - 0.5) / (0.9 - 0.5))
    assert "t03" not in lines["number"].to_list()
    assert labels.filter(pl.col("axis") == "lr")["label"].to_list() == ["0.0001", "0.1"]


# Failures and states: each failed trial with its reason; counts per phase and state.
def test_failures_and_states() -> None:
    failed = tables.failed_trials(_search_trials())
    assert failed["trial_id"].to_list() == ["t03"]
    assert failed["failure_reason"].to_list() == ["NaN loss"]
    counts = tables.state_counts(_search_trials())
    assert counts["state"].to_list() == ["completed", "stopped_early", "failed"]
    assert counts["n"].to_list() == [3, 1, 1]


# Costs: parameter counts, mean s/iteration over seeds, the largest peak memory; failed trials ignored.
def test_arm_costs() -> None:
    trials = pl.DataFrame(
        [
            {
                "arm": "A",
                "state": "completed",
                "params_backbone": 10,
                "params_encoder": 5,
                "params_generator": 2,
                "params_total": 17,
                "seconds_per_iteration": 0.2,
                "wall_seconds": 20.0,
                "peak_memory_mb": 100.0,
            },
            {
                "arm": "A",
                "state": "completed",
                "params_backbone": 10,
                "params_encoder": 5,
                "params_generator": 2,
                "params_total": 17,
                "seconds_per_iteration": 0.4,
                "wall_seconds": 40.0,
                "peak_memory_mb": 300.0,
            },
            {
                "arm": "A",
                "state": "failed",
                "params_backbone": None,
                "params_encoder": None,
                "params_generator": None,
                "params_total": None,
                "seconds_per_iteration": 9.0,
                "wall_seconds": 1.0,
                "peak_memory_mb": 9000.0,
            },
        ]
    )
    table = tables.ablation_table(
        _episodes(HAND), arms=["A", "B"], modes=["m1", "m2"], baseline="A", higher_is_better=True
    )
    costs = tables.arm_costs(trials, table, arms=["A"]).row(0, named=True)
    assert costs["params_total"] == 17
    assert costs["seconds_per_iteration"] == pytest.approx(0.3)
    assert costs["peak_memory_mb"] == 300.0
    assert costs["metric"] == pytest.approx(0.45)
    components = tables.parameter_components(tables.arm_costs(trials, table, arms=["A"]), arms=["A"])
    assert components["parameters"].to_list() == [10, 5, 2]


def _transfer_rows() -> pl.DataFrame:
    rows = []
    for it, ratios in ((10, [3.0, 3.0, 3.0, 3.0]), (20, [0.5, 0.995, 1.5, 1.2])):
        for i, lr in enumerate(ratios):
            rows.append(
                {
                    "arm": "A",
                    "trial_id": "A-0",
                    "seed": 0,
                    "iteration": it,
                    "source_mode": "m1",
                    "target_mode": "m2" if i % 2 else "m1",
                    "self": False,
                    "lr": lr,
                    "neutral_band": 0.01,
                }
            )
        rows.append(
            {
                "arm": "A",
                "trial_id": "A-0",
                "seed": 0,
                "iteration": it,
                "source_mode": "m1",
                "target_mode": "m1",
                "self": True,
                "lr": 0.8,
                "neutral_band": 0.01,
            }
        )
    return pl.DataFrame(rows)


# Shares at the last measurement (iteration 20): 0.5 positive, 0.995 neutral (|1 - LR| < 0.01), 1.5 and 1.2
# negative; the self-transference row is reported on its own; iteration 10 is not counted.
def test_transference_shares() -> None:
    shares = tables.transference_shares(_transfer_rows(), arms=["A"]).row(0, named=True)
    assert (shares["positive"], shares["neutral"], shares["negative"]) == pytest.approx((0.25, 0.25, 0.5))
    assert shares["n_pairs"] == 4
    assert shares["iteration"] == 20
    assert shares["self_lr"] == pytest.approx(0.8)


#: (LR, neutral band, class), derived by hand from method.md §4: positive LR < 1, negative LR > 1, neutral
#: |1 - LR| < band, and LR = 1 exactly (no change at all) neutral even for a zero band. The band's edges use
#: dyadic numbers, exact in binary: with band 0.25, |1 - 0.75| = |1 - 1.25| = 0.25 is not < 0.25.
TRANSFER_CASES = [
    (1.0, 0.0, "neutral"),
    (1.0, 0.25, "neutral"),
    (0.75, 0.25, "positive"),
    (1.25, 0.25, "negative"),
    (0.875, 0.25, "neutral"),
    (1.125, 0.25, "neutral"),
    (0.5, 0.0, "positive"),
    (1.0 - 2.0**-53, 0.0, "positive"),
    (1.0 + 2.0**-52, 0.0, "negative"),
    (3.0, 0.01, "negative"),
]


def _one_pair(lr: float, band: float) -> pl.DataFrame:
    return pl.DataFrame(
        [{"arm": "A", "trial_id": "A-0", "seed": 0, "iteration": 1, "source_mode": "m1", "target_mode": "m2",
          "self": False, "lr": lr, "neutral_band": band}]
    )


# A single pair's class gets the whole share, by the hand-derived rule, LR = 1 with band 0 and the band's
# edges included.
@pytest.mark.parametrize(("lr", "band", "expected"), TRANSFER_CASES)
def test_transference_shares_classify_by_hand(lr: float, band: float, expected: str) -> None:
    shares = tables.transference_shares(_one_pair(lr, band), arms=["A"]).row(0, named=True)
    assert {c: shares[c] for c in tables.TRANSFER_CLASSES} == {c: float(c == expected) for c in tables.TRANSFER_CLASSES}


# The vectorised class (a polars expression over lr and the recorded band) equals the per-pair class on every
# hand-derived case, and a NaN or missing ratio is undefined in both.
def test_transfer_class_expression_equals_the_scalar_rule() -> None:
    cases = [*TRANSFER_CASES, (math.nan, 0.01, "undefined")]
    frame = pl.DataFrame({"lr": [c[0] for c in cases] + [None], "band": [c[1] for c in cases] + [0.01]})
    classes = frame.select(transfer=tables.transfer_class_expr(pl.col("lr"), pl.col("band")))["transfer"].to_list()
    assert classes == [c[2] for c in cases] + ["undefined"]
    assert [tables.transfer_class(lr, band) for lr, band, _ in cases] == [c[2] for c in cases]


# The report's shares and the models' per-mode summary (mmlo transference) classify the same rows alike.
def test_report_shares_equal_the_models_summary() -> None:
    from mmlo.models.transference import summarise

    frame = pl.concat([_one_pair(lr, band) for lr, band, _ in TRANSFER_CASES])
    frame = frame.with_columns(neutral_band=pl.lit(0.0))
    report = tables.transference_shares(frame, arms=["A"]).row(0, named=True)
    summary = summarise(frame.to_dicts())[0]
    classes = tables.TRANSFER_CLASSES
    assert {c: report[c] for c in classes} == pytest.approx({c: summary[c] for c in classes})
    # Band 0 for all ten: the two LR = 1 neutral, 0.75, 0.875, 0.5 and 1 - 2^-53 positive, 1.25, 1.125,
    # 1 + 2^-52 and 3 negative.
    assert (summary["positive"], summary["neutral"], summary["negative"]) == pytest.approx((0.4, 0.2, 0.4))


# Histogram shares sum to one per arm, and every pair lands in a bin.
def test_transference_histogram() -> None:
    hist = tables.transference_histogram(_transfer_rows(), arms=["A"], bins=10)
    assert hist["count"].sum() == 4
    assert hist["share"].sum() == pytest.approx(1.0)
    assert hist.height == 10


# Mode x mode matrix: mean cross-task LR per (iteration, source mode, target mode).
def test_transference_matrix() -> None:
    matrix = tables.transference_matrix(_transfer_rows(), arms=["A"], modes=["m1", "m2"])
    cell = matrix.filter((pl.col("iteration") == 20) & (pl.col("target_mode") == "m2")).row(0, named=True)
    assert cell["mean_lr"] == pytest.approx((0.995 + 1.2) / 2)
    assert cell["n"] == 2


# Read back from Parquet files, the same hand-made episodes give the same table (the loader keeps values).
def test_tables_from_parquet(tmp_path: Path, make_run) -> None:
    run = load_run(make_run(name="parquet-check"))
    _episodes(HAND).write_parquet(Path(run.run_dir) / "episodes.parquet")
    episodes = load_run(run.run_dir).table_episodes()
    assert episodes is not None
    table = tables.ablation_table(
        episodes, arms=["A", "B"], modes=["m1", "m2"], baseline="A", higher_is_better=True
    )
    assert _cell(table, "B", "m1")["diff"] == pytest.approx(0.4 / 3)


# A confirmed configuration C is paired with its own reference B, not with the baseline A: on m1 the
# seed-averaged C episodes 0.7, 1.0, 1.0 minus B's 0.6, 0.9, 1.0 give 0.1, 0.1, 0.0 (mean 0.2 / 3).
def test_paired_difference_against_each_arms_reference() -> None:
    values = HAND | {("C", 0, "m1"): [0.6, 0.9, 1.0], ("C", 1, "m1"): [0.8, 1.1, 1.0]}
    table = tables.ablation_table(
        _episodes(values), arms=["A", "B", "C"], modes=["m1"], baseline="A", higher_is_better=True,
        references={"C": "B"},
    )
    c, b = _cell(table, "C", "m1"), _cell(table, "B", "m1")
    assert c["reference"] == "B" and c["diff"] == pytest.approx(0.2 / 3) and c["n_paired"] == 3
    assert b["reference"] == "A" and b["diff"] == pytest.approx(0.4 / 3)
    assert _cell(table, "A", "m1")["diff"] is None


# Rung at 40 of 100: t00, t01, t02, t04 reached it (t03 failed at 10), t01 stopped there, three went on.
def test_rung_counts() -> None:
    rungs = tables.rung_counts(_search_trials(), [40, 80])
    assert rungs.rows() == [(1, 40, 4, 3, 1), (2, 80, 3, 3, 0)]
    assert tables.rung_counts(_search_trials(), []).height == 0


# Trials whose sampled values are the base point (a conditional parameter that was not sampled is absent).
def test_base_trials_match_the_start_point() -> None:
    assert tables.base_trials(_search_trials(), SPACE, {"learner": "mprotonet", "lr": 0.0003}) == ["t04"]
    assert tables.base_trials(_search_trials(), SPACE, {"learner": "mprotonet", "lr": 0.0003000000001}) == ["t04"]
    assert tables.base_trials(_search_trials(), SPACE, {"learner": "kml", "lr": 0.0003}) == []
    assert tables.base_trials(_search_trials(), SPACE, {}) == []


# Accuracy against parameters: t00 (0.5, 100) and t02 (0.7, 300) are on the front; t04 (0.6, 400) is beaten by
# t02 on both; the stopped t01 never is, however good. For MSE (lower is better) t00 beats both on both.
def test_pareto_front() -> None:
    trials = _search_trials().with_columns(params_total=pl.Series([100, 50, 300, 200, 400]))
    front = tables.pareto_front(trials, "params_total", higher_is_better=True)
    assert front["trial_id"].to_list() == ["t01", "t00", "t02", "t04"]
    assert dict(zip(front["trial_id"], front["on_front"], strict=True)) == {
        "t01": False, "t00": True, "t02": True, "t04": False,
    }
    low = tables.pareto_front(trials, "params_total", higher_is_better=False)
    assert low.filter("on_front")["trial_id"].to_list() == ["t00"]


def _outcome(diffs: list[float], base_point: dict | None) -> tables.SearchOutcome:
    """B is the base arm, 'B, tuned (t02)' its confirmed configuration, ahead of B by ``diffs`` on m1."""
    b = [0.5, 0.6, 0.7]
    tuned = [x + d for x, d in zip(b, diffs, strict=True)]
    values = {("B", s, "m1"): b for s in (0, 1)} | {("T", s, "m1"): tuned for s in (0, 1)}
    episodes = _episodes(values).with_columns(arm=pl.col("arm").replace({"T": "B, tuned (t02)"}))
    table = tables.ablation_table(
        episodes, arms=["B", "B, tuned (t02)"], modes=["m1"], baseline="B", higher_is_better=True
    )
    return tables.search_outcome(
        _search_trials(), table, space=SPACE, base_arm="B", start_point=base_point,
        tuned={"B, tuned (t02)": "t02"}, higher_is_better=True,
    )


# The outcome: the best full-budget search trial (t02), the base's own trial (t04), and the confirmed verdict:
# better when the paired interval lies above 0, tie when it holds 0, worse when it lies below.
def test_search_outcome() -> None:
    outcome = _outcome([0.1, 0.1, 0.1], {"learner": "mprotonet", "lr": 0.0003})
    assert (outcome.best_trial, outcome.best_value, outcome.base_trial, outcome.base_value) == ("t02", 0.7, "t04", 0.6)
    assert (outcome.n_trials, outcome.n_full) == (5, 3)
    row = outcome.confirmed.row(0, named=True)
    assert row["trial_id"] == "t02" and row["verdict"] == "better"
    assert row["diff"] == pytest.approx(0.1) and row["reference_mean"] == pytest.approx(0.6)
    assert _outcome([0.1, -0.1, 0.05], None).confirmed["verdict"].to_list() == ["tie"]
    assert _outcome([-0.1, -0.12, -0.1], None).confirmed["verdict"].to_list() == ["worse"]
    assert _outcome([0.1, 0.1, 0.1], None).base_trial is None
