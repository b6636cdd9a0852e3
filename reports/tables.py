"""The report's numbers: plain functions from the Parquet tables to small polars frames.

Nothing here draws; ``mmlo.reports.charts`` and ``mmlo.reports.html`` render these frames. Conventions:

* every arm is evaluated on the same seeded test episodes, identified by (mode, episode, episode_seed);
  an episode's value is first averaged over the arm's training seeds, then intervals are taken over
  episodes: mean ± 1.96·s/√n (method.md §6);
* the interval over seeds takes each seed's mean over its episodes: mean ± t_{0.975,k-1}·s/√k;
* ``mode == OVERALL`` rows pool the episodes of every mode (equal shares, so the mean is the mean of the
  mode means);
* accuracy: higher is better; mse: lower is better (``higher_is_better``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, overload

import polars as pl

from mmlo.reports.importance import parameter_importance
from mmlo.reports.stats import Z95, t95
from mmlo.storage.conditions import condition_holds

#: The ``mode`` of the rows that pool every mode.
OVERALL = "all"
EPISODE_KEYS = ("mode", "episode", "episode_seed")
#: The classes of a finite loss ratio LR, in the order the report shows them (method.md §4).
TRANSFER_CLASSES = ("positive", "neutral", "negative")


# The transfer classes are one rule for the report's vectorised shares and for `mmlo transference`'s summary
# (mmlo.models.transference imports it from here, because the report must not load torch). Each threshold
# is written once, in operators that mean the same on a float and on a polars expression, so the scalar and
# the vectorised classifier cannot drift apart.
@overload
def _neutral(lr: float, neutral_band: float) -> bool: ...
@overload
def _neutral(lr: pl.Expr, neutral_band: pl.Expr | float) -> pl.Expr: ...
def _neutral(lr: Any, neutral_band: Any) -> Any:
    # LR = 1 exactly is no change at all, so it is neutral even for a zero band, where |1 - LR| < 0 never holds.
    return (abs(1.0 - lr) < neutral_band) | (lr == 1.0)


@overload
def _positive(lr: float) -> bool: ...
@overload
def _positive(lr: pl.Expr) -> pl.Expr: ...
def _positive(lr: Any) -> Any:
    return lr < 1.0


def transfer_class(lr: float, neutral_band: float) -> str:
    """'neutral' (|1 - LR| < band, or LR = 1 exactly), else 'positive' (LR < 1) or 'negative' (LR > 1).

    A ratio on the band's edge (|1 - LR| = band) is positive or negative; the three classes cover every LR
    but NaN (a target with zero loss), which is 'undefined'.
    """
    if math.isnan(lr):
        return "undefined"
    if _neutral(lr, neutral_band):
        return "neutral"
    return "positive" if _positive(lr) else "negative"


def transfer_class_expr(lr: pl.Expr, neutral_band: pl.Expr | float) -> pl.Expr:
    """:func:`transfer_class` as a String-valued polars expression (name it with ``alias`` or a keyword); a
    NaN or null ratio is 'undefined'."""
    return (
        pl.when(lr.is_null() | lr.is_nan())
        .then(pl.lit("undefined"))
        .when(_neutral(lr, neutral_band))
        .then(pl.lit("neutral"))
        .when(_positive(lr))
        .then(pl.lit("positive"))
        .otherwise(pl.lit("negative"))
    )


def _rank(column: str, order: Sequence[str]) -> pl.Expr:
    """Position of ``column``'s value in ``order`` (unknown values last), for sorting by the study's order."""
    return pl.col(column).replace_strict(
        list(order), list(range(len(order))), default=len(order), return_dtype=pl.Int64
    )


def _sorted(frame: pl.DataFrame, arms: Sequence[str], modes: Sequence[str] | None = None) -> pl.DataFrame:
    keys = [_rank("arm", arms)]
    if modes is not None:
        keys.append(_rank("mode", [*modes, OVERALL]))
    return frame.sort(keys, maintain_order=True)


def _with_overall(frame: pl.DataFrame, keys: Sequence[str], value: str = "value") -> pl.DataFrame:
    """``frame`` grouped by ``keys`` + mode, stacked on the same grouping with every mode pooled."""
    by_mode = frame.group_by([*keys, "mode"]).agg(pl.col(value))
    pooled = frame.group_by(keys).agg(pl.col(value)).with_columns(mode=pl.lit(OVERALL))
    return pl.concat([by_mode, pooled.select(by_mode.columns)])


def _interval(values: pl.Expr, factor: pl.Expr | float) -> pl.Expr:
    return factor * values.list.std(ddof=1) / values.list.len().cast(pl.Float64).sqrt()


def _t_factors(counts: pl.Series) -> dict[int, float | None]:
    return {int(k): t95(int(k)) for k in counts.unique().to_list()}


def episode_values(episodes: pl.DataFrame) -> pl.DataFrame:
    """One row per (arm, mode, episode, episode_seed): value_after averaged over the arm's seeds."""
    return episodes.group_by(["arm", *EPISODE_KEYS]).agg(
        value=pl.col("value_after").cast(pl.Float64).mean(), n_seeds=pl.col("seed").n_unique()
    )


def seed_values(episodes: pl.DataFrame) -> pl.DataFrame:
    """One row per (arm, seed, mode) and per (arm, seed) with mode OVERALL: the mean over that seed's episodes."""
    frame = episodes.select("arm", "seed", "mode", value=pl.col("value_after").cast(pl.Float64))
    stacked = _with_overall(frame, ["arm", "seed"])
    return stacked.with_columns(value=pl.col("value").list.mean())


def ablation_table(
    episodes: pl.DataFrame,
    *,
    arms: Sequence[str],
    modes: Sequence[str],
    baseline: str | None,
    higher_is_better: bool,
    references: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """The ablation table in long form: one row per arm x (mode | OVERALL).

    Columns: arm, mode, n_episodes, n_seeds, mean, ci95 (1.96·s/√n over seed-averaged episodes),
    seed_mean, seed_ci95 (t-interval over the k seed means; null when k < 2), diff and diff_ci95 (the
    paired difference arm - reference over the episodes both share, 1.96·s_d/√n; null for the baseline
    itself), n_paired, reference (the baseline, or the arm ``references`` names for this arm), best (the
    best mean of its mode column: max for accuracy, min for mse).
    """
    per_episode = episode_values(episodes)
    stacked = _with_overall(per_episode, ["arm"])
    by_episode = stacked.select(
        "arm",
        "mode",
        n_episodes=pl.col("value").list.len().cast(pl.Int64),
        mean=pl.col("value").list.mean(),
        ci95=_interval(pl.col("value"), Z95),
    )
    per_seed = seed_values(episodes).group_by(["arm", "mode"]).agg(pl.col("value"))
    t_factors = _t_factors(per_seed["value"].list.len())
    by_seed = per_seed.select(
        "arm",
        "mode",
        n_seeds=pl.col("value").list.len().cast(pl.Int64),
        seed_mean=pl.col("value").list.mean(),
        seed_ci95=_interval(
            pl.col("value"),
            pl.col("value").list.len().replace_strict(t_factors, return_dtype=pl.Float64),
        ),
    )
    table = by_episode.join(by_seed, on=["arm", "mode"], how="left")
    table = table.join(paired_differences(episodes, baseline, references), on=["arm", "mode"], how="left")
    best = pl.col("mean").max() if higher_is_better else pl.col("mean").min()
    table = table.with_columns(best=(pl.col("mean") == best.over("mode")).fill_null(False))
    return _sorted(table, arms, modes)


def paired_differences(
    episodes: pl.DataFrame, baseline: str | None, references: Mapping[str, str] | None = None
) -> pl.DataFrame:
    """Per arm and mode (and OVERALL): mean of arm - reference over shared episodes, with 1.96·s_d/√n.

    The reference is the baseline, except for the arms ``references`` maps to another arm (a confirmed
    search configuration against the arm the search started from). Episodes are matched on (mode, episode,
    episode_seed) after averaging each arm over its seeds, so the difference is paired: the episode-to-
    episode difficulty cancels. The baseline's own rows, and arms whose reference is absent, are null.
    """
    schema = {
        "arm": pl.String,
        "mode": pl.String,
        "n_paired": pl.Int64,
        "diff": pl.Float64,
        "diff_ci95": pl.Float64,
        "reference": pl.String,
    }
    per_episode = episode_values(episodes)
    present = per_episode["arm"].unique(maintain_order=True).to_list()
    paired_with: dict[str, list[str]] = {}
    for arm in present:
        reference = (references or {}).get(arm, baseline)
        if reference is not None and reference != arm and reference in present:
            paired_with.setdefault(reference, []).append(arm)
    frames = []
    for reference, compared in paired_with.items():
        base = per_episode.filter(pl.col("arm") == reference).select(*EPISODE_KEYS, base=pl.col("value"))
        pairs = (
            per_episode.filter(pl.col("arm").is_in(compared))
            .join(base, on=list(EPISODE_KEYS), how="inner")
            .select("arm", "mode", value=pl.col("value") - pl.col("base"))
        )
        frames.append(
            _with_overall(pairs, ["arm"]).select(
                pl.col("arm").cast(pl.String),
                pl.col("mode").cast(pl.String),
                n_paired=pl.col("value").list.len().cast(pl.Int64),
                diff=pl.col("value").list.mean(),
                diff_ci95=_interval(pl.col("value"), Z95),
                reference=pl.lit(reference, pl.String),
            )
        )
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames).cast(schema)  # type: ignore[arg-type]


def adaptation_table(episodes: pl.DataFrame, *, arms: Sequence[str], modes: Sequence[str]) -> pl.DataFrame:
    """Before vs after adaptation, for the arms that record a pre-adaptation value (MAML family).

    Long form: arm, mode (and OVERALL), stage ('before' | 'after'), mean, ci95 over seed-averaged episodes,
    n_episodes. Empty when no arm has ``value_before``.
    """
    with_before = episodes.filter(pl.col("value_before").is_not_null())
    frames = []
    for stage, column in (("before", "value_before"), ("after", "value_after")):
        per_episode = with_before.group_by(["arm", *EPISODE_KEYS]).agg(value=pl.col(column).cast(pl.Float64).mean())
        frames.append(
            _with_overall(per_episode, ["arm"]).select(
                "arm",
                "mode",
                stage=pl.lit(stage),
                mean=pl.col("value").list.mean(),
                ci95=_interval(pl.col("value"), Z95),
                n_episodes=pl.col("value").list.len().cast(pl.Int64),
            )
        )
    return _sorted(pl.concat(frames), arms, modes)


def learning_curves(progress: pl.DataFrame, *, arms: Sequence[str], modes: Sequence[str]) -> pl.DataFrame:
    """Validation metric vs iteration per arm: mean over seeds and the band [min, max] over seeds.

    One row per arm x series x iteration, where series is OVERALL (``val_metric``) or a mode
    (``val_<mode>``); columns mean, low, high, n_seeds. A trial reported twice at one iteration (resumed)
    counts once, with its last report.
    """
    columns = {OVERALL: "val_metric", **{m: f"val_{m}" for m in modes if f"val_{m}" in progress.columns}}
    latest = progress.unique(subset=["trial_id", "iteration"], keep="last", maintain_order=True)
    long = pl.concat(
        [
            latest.select("arm", "seed", "iteration", series=pl.lit(series), value=pl.col(col).cast(pl.Float64))
            for series, col in columns.items()
        ]
    ).drop_nulls("value")
    curves = long.group_by(["arm", "series", "iteration"]).agg(
        mean=pl.col("value").mean(),
        low=pl.col("value").min(),
        high=pl.col("value").max(),
        n_seeds=pl.col("seed").n_unique().cast(pl.Int64),
    )
    return curves.sort([_rank("arm", arms), _rank("series", [OVERALL, *modes]), "iteration"])


def arm_costs(trials: pl.DataFrame, table: pl.DataFrame | None, *, arms: Sequence[str]) -> pl.DataFrame:
    """The cost of each arm next to its overall result.

    Over the arm's trials that did not fail: parameter counts (identical across seeds; the first is kept),
    mean seconds per iteration and wall seconds, the largest peak memory; plus the OVERALL seed_mean and
    seed_ci95 (ci95 over episodes when there is one seed) from the ablation ``table`` (null without one).
    """
    ok = trials.filter(pl.col("state") != "failed")
    costs = ok.group_by("arm").agg(
        n_trials=pl.len().cast(pl.Int64),
        params_backbone=pl.col("params_backbone").drop_nulls().first(),
        params_encoder=pl.col("params_encoder").drop_nulls().first(),
        params_generator=pl.col("params_generator").drop_nulls().first(),
        params_total=pl.col("params_total").drop_nulls().first(),
        seconds_per_iteration=pl.col("seconds_per_iteration").mean(),
        wall_seconds=pl.col("wall_seconds").mean(),
        peak_memory_mb=pl.col("peak_memory_mb").max(),
    )
    if table is None:
        return _sorted(costs.with_columns(metric=pl.lit(None, pl.Float64), metric_ci95=pl.lit(None, pl.Float64)), arms)
    overall = table.filter(pl.col("mode") == OVERALL).select(
        "arm", metric=pl.col("seed_mean"), metric_ci95=pl.coalesce("seed_ci95", "ci95")
    )
    return _sorted(costs.join(overall, on="arm", how="left"), arms)


def parameter_components(costs: pl.DataFrame, *, arms: Sequence[str]) -> pl.DataFrame:
    """Parameter counts per arm and component (backbone, encoder, generator), long form for stacked bars."""
    long = costs.unpivot(
        index="arm",
        on=["params_backbone", "params_encoder", "params_generator"],
        variable_name="component",
        value_name="parameters",
    ).with_columns(pl.col("component").str.strip_prefix("params_"), pl.col("parameters").fill_null(0))
    return long.sort([_rank("arm", arms), _rank("component", ["backbone", "encoder", "generator"])])


def search_trials(trials: pl.DataFrame) -> pl.DataFrame:
    """The search phase's trials in start order (trial ids are numbered by Tune), with ``number`` 0..n-1."""
    rows = trials.filter(pl.col("phase") == "search").sort("trial_id")
    return rows.with_row_index("number").with_columns(pl.col("number").cast(pl.Int64))


def optimisation_history(trials: pl.DataFrame, *, higher_is_better: bool) -> pl.DataFrame:
    """Each search trial's final validation metric in start order, with the best so far.

    ``best_so_far`` ranks only trials that ran their full budget (state completed): an early-stopped
    trial's metric is that of a shorter training and is never ranked against them.
    """
    rows = search_trials(trials).select(
        "number", "trial_id", "state", "val_metric", "iterations_done", "budget_iterations"
    )
    best: float | None = None
    running = []
    for state, value in zip(rows["state"].to_list(), rows["val_metric"].to_list(), strict=True):
        if state == "completed" and value is not None and math.isfinite(value):
            better = best is None or (value > best if higher_is_better else value < best)
            best = value if better else best
        running.append(best)
    return rows.with_columns(best_so_far=pl.Series(running, dtype=pl.Float64))


def best_configurations(
    trials: pl.DataFrame, params: Sequence[str], *, higher_is_better: bool, top: int = 5
) -> pl.DataFrame:
    """The best search trials with their parameters, budget and state.

    Full-budget trials come first, ranked by metric (``rank`` 1, 2, ...); then up to ``top`` early-stopped
    trials, unranked (``rank`` null), longest-trained first. Failed trials are in ``failed_trials``.
    """
    rows = search_trials(trials)
    cols = ["trial_id", "state", "val_metric", "iterations_done", "budget_iterations", *[f"cfg_{p}" for p in params]]
    completed = (
        rows.filter(pl.col("state") == "completed")
        .sort("val_metric", descending=higher_is_better, nulls_last=True)
        .head(top)
        .select(cols)
        .with_row_index("rank", offset=1)
        .with_columns(pl.col("rank").cast(pl.Int64))
    )
    stopped = (
        rows.filter(pl.col("state") == "stopped_early")
        .sort(["iterations_done", "val_metric"], descending=[True, higher_is_better], nulls_last=True)
        .head(top)
        .select(cols)
        .with_columns(rank=pl.lit(None, dtype=pl.Int64))
        .select(completed.columns)
    )
    return pl.concat([completed, stopped]).rename({f"cfg_{p}": p for p in params})


def _same_value(value: Any, expected: Any) -> bool:
    if isinstance(value, float) and isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return math.isclose(value, float(expected), rel_tol=1e-9, abs_tol=1e-12)
    return value == expected or (value is not None and expected is not None and str(value) == str(expected))


def base_trials(trials: pl.DataFrame, space: Mapping[str, Mapping[str, Any]], point: Mapping[str, Any]) -> list[str]:
    """Ids of the search trials that ran ``point`` (the base arm's own configuration, enqueued first)."""
    if not point:
        return []
    out = []
    for row in sampled_parameters(trials, space).to_dicts():
        if all(_same_value(row.get(name), point.get(name)) for name in space if name in row):
            out.append(str(row["trial_id"]))
    return out


def rung_counts(trials: pl.DataFrame, rung_iterations: Sequence[int]) -> pl.DataFrame:
    """What each ASHA rung did to the search trials: rung (1, 2, ...), iteration, reached (trials that
    validated there), kept (trained on past it), stopped (stopped there). A trial that failed right at a rung
    counts as reached, neither kept nor stopped."""
    rows = search_trials(trials)
    done, state = pl.col("iterations_done"), pl.col("state")
    out = [
        rows.select(
            rung=pl.lit(i, pl.Int64),
            iteration=pl.lit(iteration, pl.Int64),
            reached=(done >= iteration).sum().cast(pl.Int64),
            kept=(done > iteration).sum().cast(pl.Int64),
            stopped=((state == "stopped_early") & (done == iteration)).sum().cast(pl.Int64),
        )
        for i, iteration in enumerate(sorted(rung_iterations), start=1)
    ]
    schema = {"rung": pl.Int64, "iteration": pl.Int64, "reached": pl.Int64, "kept": pl.Int64, "stopped": pl.Int64}
    return pl.concat(out).cast(schema) if out else pl.DataFrame(schema=schema)  # type: ignore[arg-type]


class SearchOutcome(NamedTuple):
    """What the search found, in numbers the report puts into words.

    ``base_*``: the search trial that ran the base arm's own configuration, at the search budget (validation
    metric, state). ``best_*``: the best full-budget search trial. ``confirmed``: one row per confirmed
    configuration (arm = its report name, trial_id = the search trial it re-ran): test ``mean`` and the
    base arm's ``reference_mean`` over all modes, the paired ``diff`` and ``diff_ci95``, ``n_paired``
    episodes and ``n_seeds``; ``verdict`` is better | worse (beyond the interval) | tie.
    """

    base_arm: str | None
    base_trial: str | None
    base_state: str | None
    base_value: float | None
    best_trial: str | None
    best_value: float | None
    n_trials: int
    n_full: int
    confirmed: pl.DataFrame


def search_outcome(
    trials: pl.DataFrame,
    table: pl.DataFrame | None,
    *,
    space: Mapping[str, Mapping[str, Any]],
    base_arm: str | None,
    start_point: Mapping[str, Any] | None,
    tuned: Mapping[str, str],
    higher_is_better: bool,
) -> SearchOutcome:
    """The search's result against the arm it started from: at the search budget (the base configuration's
    own search trial against the best one) and, for confirmed configurations, at the full budget on test
    episodes paired with the base arm (``table`` from :func:`ablation_table` with its references)."""
    rows = search_trials(trials)
    history = optimisation_history(trials, higher_is_better=higher_is_better)
    full = history.filter(pl.col("state") == "completed")
    best = full.sort("val_metric", descending=higher_is_better, nulls_last=True).head(1)
    base_ids = base_trials(trials, space, start_point or {})
    base = rows.filter(pl.col("trial_id").is_in(base_ids)).head(1)
    confirmed_schema = {
        "arm": pl.String,
        "trial_id": pl.String,
        "mean": pl.Float64,
        "reference_mean": pl.Float64,
        "diff": pl.Float64,
        "diff_ci95": pl.Float64,
        "n_paired": pl.Int64,
        "n_seeds": pl.Int64,
        "verdict": pl.String,
    }
    confirmed = pl.DataFrame(schema=confirmed_schema)
    if table is not None and tuned:
        overall = table.filter(pl.col("mode") == OVERALL)
        reference = overall.filter(pl.col("arm") == base_arm).select(reference_mean=pl.col("mean"))
        picked = overall.filter(pl.col("arm").is_in(list(tuned))).with_columns(
            trial_id=pl.col("arm").replace_strict(dict(tuned), return_dtype=pl.String)
        )
        if reference.height:
            picked = picked.join(reference, how="cross")
        else:
            picked = picked.with_columns(reference_mean=pl.lit(None, pl.Float64))
        beyond = pl.col("diff").abs() > pl.col("diff_ci95")
        better = (pl.col("diff") > 0) if higher_is_better else (pl.col("diff") < 0)
        verdict = (
            pl.when(pl.col("diff").is_null())
            .then(None)
            .when(beyond & better)
            .then(pl.lit("better"))
            .when(beyond)
            .then(pl.lit("worse"))
            .otherwise(pl.lit("tie"))
        )
        confirmed = picked.with_columns(verdict=verdict).select(list(confirmed_schema))
        confirmed = confirmed.cast(confirmed_schema)  # type: ignore[arg-type]
    return SearchOutcome(
        base_arm=base_arm,
        base_trial=base["trial_id"][0] if base.height else None,
        base_state=base["state"][0] if base.height else None,
        base_value=base["val_metric"][0] if base.height else None,
        best_trial=best["trial_id"][0] if best.height else None,
        best_value=best["val_metric"][0] if best.height else None,
        n_trials=rows.height,
        n_full=full.height,
        confirmed=confirmed,
    )


def pareto_front(trials: pl.DataFrame, cost: str, *, higher_is_better: bool) -> pl.DataFrame:
    """The search trials on the metric-cost plane, for a cost-aware search (``search.cost``).

    Columns: number, trial_id, state, cost (the trials.parquet column ``cost``), val_metric, on_front.
    A full-budget trial is on the Pareto front when no other full-budget trial is at least as good on both
    the metric and the cost (lower) and strictly better on one. Early-stopped trials are listed (their
    metric is from a shorter budget) but never on the front; trials without both values are left out.
    """
    rows = search_trials(trials).filter(pl.col("state") != "failed")
    frame = rows.select(
        "number", "trial_id", "state", cost=pl.col(cost).cast(pl.Float64), val_metric=pl.col("val_metric")
    ).drop_nulls(["cost", "val_metric"])
    sign = 1.0 if higher_is_better else -1.0
    full = [(r["cost"], sign * r["val_metric"]) for r in frame.to_dicts() if r["state"] == "completed"]

    def dominated(cost_value: float, metric: float) -> bool:
        return any(c <= cost_value and m >= metric and (c < cost_value or m > metric) for c, m in full)

    on_front = [
        r["state"] == "completed" and not dominated(r["cost"], sign * r["val_metric"]) for r in frame.to_dicts()
    ]
    return frame.with_columns(on_front=pl.Series(on_front, dtype=pl.Boolean)).sort("cost")


def sampled_parameters(trials: pl.DataFrame, space: Mapping[str, Mapping[str, Any]]) -> pl.DataFrame:
    """Search trials with one column per searched parameter, null where its ``when`` condition failed."""
    rows = search_trials(trials)
    params = [p for p in space if f"cfg_{p}" in rows.columns]
    records = rows.to_dicts()
    columns: dict[str, pl.Series] = {}
    configs = [{name: r.get(f"cfg_{name}") for name in space} for r in records]
    for param in params:
        holds = [condition_holds(space[param].get("when"), config) for config in configs]
        values = [r[f"cfg_{param}"] if ok else None for r, ok in zip(records, holds, strict=True)]
        columns[param] = pl.Series(param, values, dtype=rows.schema[f"cfg_{param}"])
    return rows.select("number", "trial_id", "state", "val_metric").with_columns(**columns)


def common_iteration(progress: pl.DataFrame | None, trial_ids: Sequence[str]) -> int | None:
    """The last validation iteration that every one of ``trial_ids`` reached (None without progress rows)."""
    if progress is None or not trial_ids:
        return None
    reached = (
        progress.filter(pl.col("trial_id").is_in(list(trial_ids))).group_by("trial_id").agg(pl.col("iteration").max())
    )
    if reached.height < len(set(trial_ids)):
        return None
    return int(reached["iteration"].min())  # type: ignore[arg-type]


def search_importance(
    trials: pl.DataFrame, progress: pl.DataFrame | None, space: Mapping[str, Mapping[str, Any]]
) -> tuple[pl.DataFrame, int | None]:
    """Parameter importances of the search (``mmlo.reports.importance``), and the iteration they refer to.

    Early stopping cuts trials at different budgets, so every trial that did not fail is compared at the
    last validation all of them reached (from progress.parquet): same budget, no truncated scores mixed
    with full ones. Without progress rows, only full-budget trials' final metrics are used (iteration None).
    """
    sampled = sampled_parameters(trials, space)
    params = [c for c in sampled.columns if c not in ("number", "trial_id", "state", "val_metric")]
    alive = sampled.filter(pl.col("state") != "failed")
    iteration = common_iteration(progress, alive["trial_id"].to_list())
    if iteration is None or progress is None:
        frame = alive.filter(pl.col("state") == "completed").rename({"val_metric": "value"})
    else:
        at = (
            progress.filter(pl.col("iteration") == iteration)
            .unique(subset=["trial_id"], keep="last")
            .select("trial_id", value=pl.col("val_metric").cast(pl.Float64))
        )
        frame = alive.join(at, on="trial_id", how="inner")
    return parameter_importance(frame, params), iteration


def _category_position(v: Any, choices: list[str], span: int) -> float | None:
    """Where a categorical value sits on its axis (0 to 1), or None for a value outside the choices."""
    return choices.index(str(v)) / span if str(v) in choices else None


def _range_position(v: Any, to_axis: Callable[[float], float], low: float, width: float) -> float | None:
    """Where a numeric value sits on its (possibly log-scaled) axis, 0 at ``low``."""
    return (to_axis(float(v)) - to_axis(low)) / width


def parallel_coordinates(
    trials: pl.DataFrame, space: Mapping[str, Mapping[str, Any]], *, metric_label: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parallel-coordinates data: (lines, axis labels).

    lines: one row per non-failed search trial x axis (each searched parameter, then the metric): number,
    state, val_metric, axis, position in [0, 1] (numeric parameters by their search range, on a log scale
    when searched on one; categorical ones by their position in ``choices``; the metric from its lowest to
    its highest value). A parameter that was not sampled in a trial has no point. labels: axis, position,
    label of the parameter axes' ticks (the metric axis is labelled by the renderer, in display units).
    """
    sampled = sampled_parameters(trials, space).filter(pl.col("state") != "failed")
    params = [c for c in sampled.columns if c not in ("number", "trial_id", "state", "val_metric")]
    lines: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    records = sampled.to_dicts()
    for param in params:
        spec = space[param]
        if spec.get("type") == "categorical":
            choices = [str(c) for c in spec.get("choices") or []]
            span = max(len(choices) - 1, 1)
            labels += [{"axis": param, "position": i / span, "label": c} for i, c in enumerate(choices)]
            position: Callable[[Any], float | None] = functools.partial(
                _category_position, choices=choices, span=span
            )
        else:
            log = bool(spec.get("log"))
            low, high = float(spec["low"]), float(spec["high"])
            to_axis = math.log if log else float
            width = (to_axis(high) - to_axis(low)) or 1.0
            labels += [{"axis": param, "position": p, "label": f"{v:g}"} for p, v in ((0.0, low), (1.0, high))]
            position = functools.partial(_range_position, to_axis=to_axis, low=low, width=width)

        for r in records:
            if r[param] is not None:
                lines.append({**_line_keys(r), "axis": param, "position": position(r[param])})
    values = [r["val_metric"] for r in records if r["val_metric"] is not None]
    if values:
        low, high = min(values), max(values)
        width = (high - low) or 1.0
        lines += [
            {**_line_keys(r), "axis": metric_label, "position": (r["val_metric"] - low) / width}
            for r in records
            if r["val_metric"] is not None
        ]
    line_schema = {
        "number": pl.Int64,
        "state": pl.String,
        "val_metric": pl.Float64,
        "axis": pl.String,
        "position": pl.Float64,
    }
    label_schema = {"axis": pl.String, "position": pl.Float64, "label": pl.String}
    return pl.DataFrame(lines, schema=line_schema), pl.DataFrame(labels, schema=label_schema)


def _line_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"number": row["number"], "state": row["state"], "val_metric": row["val_metric"]}


def state_counts(trials: pl.DataFrame) -> pl.DataFrame:
    """Trials per phase and state (completed | stopped_early | failed)."""
    return (
        trials.group_by(["phase", "state"])
        .agg(n=pl.len().cast(pl.Int64))
        .sort(
            [
                _rank("phase", ["ablation", "search", "confirm"]),
                _rank("state", ["completed", "stopped_early", "failed"]),
            ]
        )
    )


def failed_trials(trials: pl.DataFrame) -> pl.DataFrame:
    """Each failed trial with its reason, in phase and arm order."""
    return (
        trials.filter(pl.col("state") == "failed")
        .select("phase", "arm", "seed", "trial_id", "iterations_done", "budget_iterations", "failure_reason")
        .sort([_rank("phase", ["ablation", "search", "confirm"]), "arm", "seed"])
    )


def _final_transference(transference: pl.DataFrame) -> pl.DataFrame:
    """Each trial's last measurement, finite ratios only, with its class under the recorded neutral band."""
    last = pl.col("iteration") == pl.col("iteration").max().over("trial_id")
    rows = transference.filter(last & pl.col("lr").is_finite())
    return rows.with_columns(transfer=transfer_class_expr(pl.col("lr"), pl.col("neutral_band")))


def transference_shares(transference: pl.DataFrame, *, arms: Sequence[str]) -> pl.DataFrame:
    """Shares of positive / neutral / negative transfer per arm, at each trial's last measurement.

    Cross-task pairs only (source != target task), classed by :func:`transfer_class` under the neutral band
    recorded with each row. Columns: arm, iteration (the latest), n_pairs,
    positive, neutral, negative (fractions), neutral_band, self_lr (mean self-transference), n_self.
    """
    rows = _final_transference(transference)
    cross = (
        rows.filter(~pl.col("self"))
        .group_by("arm")
        .agg(
            iteration=pl.col("iteration").max().cast(pl.Int64),
            n_pairs=pl.len().cast(pl.Int64),
            neutral_band=pl.col("neutral_band").max(),
            **{c: (pl.col("transfer") == c).mean() for c in TRANSFER_CLASSES},
        )
    )
    own = rows.filter(pl.col("self")).group_by("arm").agg(self_lr=pl.col("lr").mean(), n_self=pl.len().cast(pl.Int64))
    return _sorted(cross.join(own, on="arm", how="left"), arms)


def transference_histogram(transference: pl.DataFrame, *, arms: Sequence[str], bins: int = 30) -> pl.DataFrame:
    """Histogram of cross-task LR per arm at the last measurement, on bins shared by every arm.

    The range spans the 1st to 99th percentile of all ratios (and always includes 1 ± 2 neutral bands);
    ratios outside it are counted in the first or last bin. Columns: arm, bin_start, bin_end, count,
    share (of the arm's pairs, so arms with different pair counts compare).
    """
    rows = _final_transference(transference).filter(~pl.col("self"))
    schema = {"arm": pl.String, "bin_start": pl.Float64, "bin_end": pl.Float64, "count": pl.Int64, "share": pl.Float64}
    if rows.height == 0:
        return pl.DataFrame(schema=schema)
    band = float(rows["neutral_band"].max() or 0.0)  # type: ignore[arg-type]
    low = min(float(rows["lr"].quantile(0.01) or 1.0), 1.0 - 2 * band)
    high = max(float(rows["lr"].quantile(0.99) or 1.0), 1.0 + 2 * band)
    width = (high - low) / bins or 1.0
    index = ((pl.col("lr") - low) / width).floor().clip(0, bins - 1).cast(pl.Int64)
    counts = rows.group_by("arm", index.alias("bin")).agg(count=pl.len().cast(pl.Int64))
    grid = pl.DataFrame({"arm": sorted(set(rows["arm"].to_list()))}).join(
        pl.DataFrame({"bin": list(range(bins))}, schema={"bin": pl.Int64}), how="cross"
    )
    hist = grid.join(counts, on=["arm", "bin"], how="left").with_columns(pl.col("count").fill_null(0))
    hist = hist.with_columns(
        bin_start=low + pl.col("bin") * width,
        bin_end=low + (pl.col("bin") + 1) * width,
        share=pl.col("count") / pl.col("count").sum().over("arm"),
    )
    return _sorted(hist.select(list(schema)), arms).sort([_rank("arm", arms), "bin_start"]).cast(schema)  # type: ignore[arg-type]


def transference_matrix(transference: pl.DataFrame, *, arms: Sequence[str], modes: Sequence[str]) -> pl.DataFrame:
    """Mean LR per arm, iteration and (source mode, target mode), cross-task pairs, over every measurement.

    Columns: arm, iteration, source_mode, target_mode, mean_lr, n (pairs averaged).
    """
    rows = transference.filter(~pl.col("self") & pl.col("lr").is_finite())
    matrix = rows.group_by(["arm", "iteration", "source_mode", "target_mode"]).agg(
        mean_lr=pl.col("lr").mean(), n=pl.len().cast(pl.Int64)
    )
    return matrix.sort([_rank("arm", arms), "iteration", _rank("source_mode", modes), _rank("target_mode", modes)])


#: Settings that make a learner modulated, or that only a modulated learner reads: left out when looking for
#: the unmodulated arm that is "the same learner without the modulation".
_MODULATION_SETTINGS = frozenset(
    {"learner", "modulation", "base", "kml_variant", "kml_rank", "kml_init", "modulated_layers", "embedding_dim",
     "encoder", "query_embedding", "seed", "eval_seed"}
)


def _arm_settings(trials: pl.DataFrame, arms: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each ablation arm's recorded ``cfg_*`` settings (its first trial's; seeds do not change them)."""
    if "phase" not in trials.columns:
        return {}
    rows = trials.filter(pl.col("phase") == "ablation").unique(subset=["arm"], keep="first", maintain_order=True)
    columns = [c for c in rows.columns if c.startswith("cfg_")]
    settings = {r["arm"]: {c.removeprefix("cfg_"): r[c] for c in columns} for r in rows.iter_rows(named=True)}
    return {arm: settings[arm] for arm in arms if arm in settings}


def unmodulated_bases(trials: pl.DataFrame, *, arms: Sequence[str]) -> dict[str, str]:
    """For each modulated ablation arm, the unmodulated arm it is measured against.

    A modulated arm (recorded ``cfg_modulation`` other than none) is paired with an arm of the same base
    algorithm (``cfg_base``: maml | protonet) without modulation and not an oracle (``multi_*``): of those,
    the one that shares most of its other settings (so KML with transductive prototypes is measured against
    ProtoNet with them, when the study has that arm), the first in the study's order on a tie. Arms whose
    trials did not record these settings, or without such a base in the study, get none.
    """
    settings = _arm_settings(trials, arms)
    bases: dict[str, str] = {}
    for arm, own in settings.items():
        if own.get("modulation") in (None, "none") or own.get("base") is None:
            continue
        candidates = [
            other
            for other, theirs in settings.items()
            if theirs.get("modulation") == "none"
            and theirs.get("base") == own["base"]
            and not str(theirs.get("learner", "")).startswith("multi_")
        ]
        if not candidates:
            continue
        bases[arm] = max(
            candidates, key=lambda other: (_shared_settings(own, settings[other]), -candidates.index(other))
        )
    return bases


def _shared_settings(own: dict[str, Any], theirs: dict[str, Any]) -> int:
    """How many of an arm's settings another arm shares, the modulation's own settings aside."""
    return sum(1 for k, v in own.items() if k not in _MODULATION_SETTINGS and theirs.get(k) == v)


class ModulationEffect(NamedTuple):
    """A modulated arm against its unmodulated base, over every mode's shared test episodes."""

    arm: str
    base: str
    diff: float
    half: float | None
    n_paired: int
    #: 'better' or 'worse' when the paired 95 % interval excludes zero, else 'no difference shown'.
    verdict: str


def modulation_effects(
    episodes: pl.DataFrame, trials: pl.DataFrame, *, arms: Sequence[str], higher_is_better: bool
) -> list[ModulationEffect]:
    """Each modulated arm minus its unmodulated base (:func:`unmodulated_bases`), paired over shared test
    episodes (all modes pooled), with its 95 % interval and whether that interval excludes zero."""
    bases = unmodulated_bases(trials, arms=arms)
    if not bases:
        return []
    pairs = paired_differences(episodes, None, bases).filter(pl.col("mode") == OVERALL)
    found = {r["arm"]: r for r in pairs.iter_rows(named=True)}
    effects = []
    for arm in arms:
        row = found.get(arm)
        if row is None or row["diff"] is None:
            continue
        diff, half = float(row["diff"]), row["diff_ci95"]
        verdict = "no difference shown"
        if half is not None and math.isfinite(half) and abs(diff) > half:
            verdict = "better" if (diff > 0) == higher_is_better else "worse"
        effects.append(ModulationEffect(arm, bases[arm], diff, half, int(row["n_paired"]), verdict))
    return effects


def effect_sentence(effect: ModulationEffect, metric_name: str) -> str:
    """One modulation's result in words, e.g. 'KML vs ProtoNet: +3.10 ± 1.20 accuracy points (paired 95 % CI
    over 600 shared test episodes); the interval excludes zero: KML is better.'"""
    percent = metric_name == "accuracy"
    if percent:
        scale, unit = 100.0, "accuracy points"
    else:
        scale, unit = 1.0, metric_name.upper() if metric_name == "mse" else metric_name
    digits = 2 if percent else 4
    interval = f"{effect.diff * scale:+.{digits}f}"
    if effect.half is not None and math.isfinite(effect.half):
        interval += f" ± {effect.half * scale:.{digits}f}"
    head = (
        f"{effect.arm} vs {effect.base}: {interval} {unit} (paired 95 % CI over {effect.n_paired} shared test "
        "episodes); "
    )
    if effect.verdict == "no difference shown":
        return head + f"the interval includes zero: no difference from {effect.base} is shown."
    return head + f"the interval excludes zero: {effect.arm} is {effect.verdict} than {effect.base}."


def _count_text(n: int) -> str:
    return f"{n:,}"


def arm_budgets(trials: pl.DataFrame, *, arms: Sequence[str]) -> dict[str, str]:
    """Each ablation arm's training budget in words: iterations, outer learning rate and its step decay,
    e.g. '30,000 iterations · lr 0.001, halved every 10,000' (from the trials' recorded settings)."""
    settings = _arm_settings(trials, arms)
    out: dict[str, str] = {}
    for arm, cfg in settings.items():
        iterations = cfg.get("iterations")
        if iterations is None:
            continue
        text = f"{_count_text(int(iterations))} iterations"
        if cfg.get("lr") is not None:
            text += f" · lr {float(cfg['lr']):g}"
            every, factor = cfg.get("lr_decay_every"), cfg.get("lr_decay_factor")
            if every is not None:
                factor_text = "halved" if factor == 0.5 else f"× {float(factor or 1):g}"
                text += f", {factor_text} every {_count_text(int(every))}"
        out[arm] = text
    return out
