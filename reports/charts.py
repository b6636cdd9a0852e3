"""The report's charts: a thin altair layer over the frames of ``mmlo.reports.tables``.

Every chart takes a :class:`Style`, so that arms keep one order and one colour across the whole report,
modes are shown by name (the pooled rows as "all modes"), the metric axis says its unit and direction,
and the charts fit a 1200 px wide page. Charts carry their data inline: the frames are small aggregates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import altair as alt
import polars as pl

from mmlo.reports.tables import OVERALL, TRANSFER_CLASSES

#: Arm colours, in arm order (Tableau 10, then Tableau 20's lighter tones for studies with many arms).
ARM_COLOURS = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    "#a0cbe8",
    "#ffbe7d",
    "#8cd17d",
    "#b6992d",
    "#f1ce63",
    "#86bcb6",
    "#d37295",
    "#fabfd2",
    "#d4a6c8",
    "#79706e",
)
STATE_COLOURS = {"completed": "#4e79a7", "stopped_early": "#f28e2b"}
STATE_SHAPES = {"completed": "circle", "stopped_early": "triangle-down"}
TRANSFER_COLOURS = {"positive": "#59a14f", "neutral": "#bab0ac", "negative": "#e15759"}
COMPONENT_COLOURS = {"backbone": "#4e79a7", "encoder": "#a0cbe8", "generator": "#f28e2b"}
#: Plot-area width of a full-width chart: with axis titles and a legend it stays inside a 1200 px page.
FULL_WIDTH = 760


@dataclass(frozen=True)
class Style:
    """What every chart of one report shares: arm order and colours, modes, the metric and its direction."""

    arms: tuple[str, ...]
    modes: tuple[str, ...]
    metric_name: str
    higher_is_better: bool
    #: Accuracy of guessing (1/ways) for classification, drawn as a reference line; None for regression.
    chance: float | None = None

    @property
    def percent(self) -> bool:
        """Accuracy is shown in percent."""
        return self.metric_name == "accuracy"

    @property
    def metric_title(self) -> str:
        if self.percent:
            return "accuracy (%, higher is better)"
        if self.metric_name == "mse":
            return "MSE (lower is better)"
        return self.metric_name

    @property
    def metric_label(self) -> str:
        """The metric's name as written in prose and titles."""
        return "MSE" if self.metric_name == "mse" else self.metric_name

    @property
    def metric_unit(self) -> str:
        """The metric and its unit, for small panels whose caption states the direction."""
        return "accuracy (%)" if self.percent else ("MSE" if self.metric_name == "mse" else self.metric_name)

    @property
    def mode_labels(self) -> list[str]:
        return [*self.modes, "all modes"]

    def mode_label(self, mode: str) -> str:
        return "all modes" if mode == OVERALL else mode

    def scaled(self, frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
        """``frame`` with metric ``columns`` in display units (accuracy in percent)."""
        factor = 100.0 if self.percent else 1.0
        return frame.with_columns([pl.col(c) * factor for c in columns if c in frame.columns])

    def arm_colour(self, legend: bool = True, present: Sequence[str] | None = None) -> alt.Color:
        """Colour by arm on the report-wide scale; the legend lists only the ``present`` arms when given."""
        arms = list(self.arms)
        shown = [a for a in arms if present is None or a in set(present)]
        return alt.Color(
            "arm:N",
            scale=alt.Scale(domain=arms, range=[ARM_COLOURS[i % len(ARM_COLOURS)] for i in range(len(arms))]),
            sort=arms,
            legend=alt.Legend(title="arm", labelLimit=220, values=shown, symbolOpacity=1) if legend else None,
        )


def _finish(chart: alt.TopLevelMixin, title: str) -> alt.TopLevelMixin:
    """Common title and fonts, so charts read the same in the page and as PNG files."""
    return (
        chart.properties(title=alt.TitleParams(title, anchor="start", fontSize=14))
        .configure_axis(labelFontSize=11, titleFontSize=12, labelLimit=200)
        .configure_legend(labelFontSize=11, titleFontSize=12)
        .configure_header(labelFontSize=12, titleFontSize=12)
        .configure_view(stroke="#ddd")
    )


def _with_mode_labels(frame: pl.DataFrame, style: Style, column: str = "mode") -> pl.DataFrame:
    return frame.with_columns(
        mode_label=pl.col(column).replace_strict([*style.modes, OVERALL], style.mode_labels, default=pl.col(column))
    )


def mode_bars(table: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Grouped bars: one group per mode (and all modes), one bar per arm, error bars = 95 % CI over episodes."""
    data = style.scaled(
        _with_mode_labels(table, style).with_columns(
            low=pl.col("mean") - pl.col("ci95").fill_null(0.0), high=pl.col("mean") + pl.col("ci95").fill_null(0.0)
        ),
        ["mean", "low", "high", "ci95"],
    ).select("arm", "mode_label", "mean", "low", "high", "ci95", "n_episodes", "n_seeds")
    x = alt.X("mode_label:N", sort=style.mode_labels, title="mode", axis=alt.Axis(labelAngle=0))
    offset = alt.XOffset("arm:N", sort=list(style.arms))
    tooltip = [
        alt.Tooltip("arm:N"),
        alt.Tooltip("mode_label:N", title="mode"),
        alt.Tooltip("mean:Q", format=".4g"),
        alt.Tooltip("ci95:Q", title="± 95 % CI", format=".3g"),
        alt.Tooltip("n_episodes:Q", title="episodes"),
        alt.Tooltip("n_seeds:Q", title="seeds"),
    ]
    base = alt.Chart(data).encode(x=x, xOffset=offset)
    bars = base.mark_bar().encode(
        y=alt.Y("mean:Q", title=style.metric_title), color=style.arm_colour(), tooltip=tooltip
    )
    errors = base.mark_rule(color="#333", strokeWidth=1.5).encode(y="low:Q", y2="high:Q")
    layers: list[alt.Chart] = [bars, errors]
    if style.chance is not None:
        chance = 100.0 * style.chance if style.percent else style.chance
        layers.append(alt.Chart().mark_rule(strokeDash=[4, 4], color="#666").encode(y=alt.datum(chance)))
    chart = alt.layer(*layers, data=data).properties(width=FULL_WIDTH, height=300)
    return _finish(chart, f"Test {style.metric_label} per mode (error bars: 95 % CI over episodes)")


def adaptation_chart(frame: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Before (hollow) and after (filled) adaptation per arm and mode, joined by a line."""
    data = style.scaled(_with_mode_labels(frame, style), ["mean", "ci95"])
    wide = data.pivot(on="stage", index=["arm", "mode_label"], values="mean")
    colour = style.arm_colour(present=data["arm"].unique().to_list())
    x = alt.X("mode_label:N", sort=style.mode_labels, title="mode", axis=alt.Axis(labelAngle=0))
    offset = alt.XOffset("arm:N", sort=list(style.arms))
    rule = (
        alt.Chart(wide)
        .mark_rule(strokeWidth=2)
        .encode(x=x, xOffset=offset, y=alt.Y("before:Q", title=style.metric_title), y2="after:Q", color=colour)
    )
    stages = ["before", "after"]
    shape = alt.Shape(
        "stage:N", sort=stages, scale=alt.Scale(domain=stages, range=["circle", "triangle-up"]), title="stage"
    )
    tooltip = [
        alt.Tooltip("arm:N"),
        alt.Tooltip("mode_label:N", title="mode"),
        alt.Tooltip("stage:N"),
        alt.Tooltip("mean:Q", format=".4g"),
        alt.Tooltip("ci95:Q", title="± 95 % CI", format=".3g"),
    ]
    points = [
        alt.Chart(data.filter(pl.col("stage") == stage))
        .mark_point(size=80, strokeWidth=2, filled=filled, opacity=1)
        .encode(x=x, xOffset=offset, y="mean:Q", color=colour, shape=shape, tooltip=tooltip)
        for stage, filled in (("before", False), ("after", True))
    ]
    chart = alt.layer(rule, *points).properties(width=FULL_WIDTH, height=260)
    return _finish(chart, f"Test {style.metric_label} before and after adaptation to the support set")


def learning_curves_chart(curves: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Validation metric vs iteration, one panel per mode (and all modes): mean over seeds, band = seed range."""
    data = style.scaled(_with_mode_labels(curves, style, "series"), ["mean", "low", "high"])
    present = data["arm"].unique().to_list()
    iterations = sorted(set(data["iteration"].to_list()))
    # Few validations (short studies): tick exactly at them, never at fractional iterations.
    ticks: dict[str, Any] = {"values": iterations} if len(iterations) <= 10 else {}
    base = alt.Chart().encode(
        x=alt.X("iteration:Q", title="meta-training iteration", axis=alt.Axis(format="d", **ticks))
    )
    band = base.mark_area(opacity=0.18).encode(
        y=alt.Y("low:Q", title=f"validation {style.metric_unit}", scale=alt.Scale(zero=False)),
        y2="high:Q",
        color=style.arm_colour(present=present),
    )
    line = base.mark_line(point=alt.OverlayMarkDef(size=25)).encode(
        y="mean:Q",
        color=style.arm_colour(present=present),
        tooltip=[
            alt.Tooltip("arm:N"),
            alt.Tooltip("mode_label:N", title="mode"),
            alt.Tooltip("iteration:Q"),
            alt.Tooltip("mean:Q", format=".4g"),
            alt.Tooltip("low:Q", title="lowest seed", format=".4g"),
            alt.Tooltip("high:Q", title="highest seed", format=".4g"),
            alt.Tooltip("n_seeds:Q", title="seeds"),
        ],
    )
    panels = len(style.modes) + 1
    columns = 3 if panels > 4 else panels
    chart = (
        alt.layer(band, line, data=data)
        .properties(width=min(240, FULL_WIDTH // columns), height=170)
        .facet(
            facet=alt.Facet("mode_label:N", sort=[style.mode_label(OVERALL), *style.modes], title=None),
            columns=columns,
        )
        .resolve_scale(y="independent")
    )
    return _finish(chart, "Validation learning curves (line: mean over seeds; band: lowest to highest seed)")


def parameters_chart(components: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Stacked horizontal bars: parameters of the backbone, task encoder and modulation generator per arm."""
    chart = (
        alt.Chart(components)
        .mark_bar()
        .encode(
            y=alt.Y("arm:N", sort=list(style.arms), title=None),
            x=alt.X("parameters:Q", title="parameters", axis=alt.Axis(format="~s")),
            color=alt.Color(
                "component:N",
                sort=list(COMPONENT_COLOURS),
                scale=alt.Scale(domain=list(COMPONENT_COLOURS), range=list(COMPONENT_COLOURS.values())),
                title="component",
            ),
            order=alt.Order("component_order:Q"),
            tooltip=[alt.Tooltip("arm:N"), alt.Tooltip("component:N"), alt.Tooltip("parameters:Q", format=",")],
        )
        .transform_calculate(component_order="indexof(['backbone', 'encoder', 'generator'], datum.component)")
        .properties(width=FULL_WIDTH, height=max(60, 24 * len(style.arms)))
    )
    return _finish(chart, "Parameters per arm and component")


def speed_memory_chart(costs: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Two bar panels per arm: seconds per meta-training iteration and peak memory."""
    base = alt.Chart(costs).encode(
        y=alt.Y("arm:N", sort=list(style.arms), title=None), color=style.arm_colour(legend=False)
    )
    speed = base.mark_bar().encode(
        x=alt.X("seconds_per_iteration:Q", title="seconds per iteration (mean over seeds)"),
        tooltip=[alt.Tooltip("arm:N"), alt.Tooltip("seconds_per_iteration:Q", title="s / iteration", format=".3g")],
    )
    memory = base.mark_bar().encode(
        x=alt.X("peak_memory_mb:Q", title="peak memory (MB, largest over seeds)"),
        tooltip=[alt.Tooltip("arm:N"), alt.Tooltip("peak_memory_mb:Q", title="peak MB", format=".4g")],
    )
    height = max(60, 24 * len(style.arms))
    chart = alt.hconcat(
        speed.properties(width=FULL_WIDTH // 2 - 60, height=height),
        memory.properties(width=FULL_WIDTH // 2 - 60, height=height),
    )
    return _finish(chart, "Training cost per arm")


def metric_vs_parameters(costs: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Scatter of the overall test metric against total parameters, error bars = t-interval over seeds."""
    low = pl.col("metric") - pl.col("metric_ci95").fill_null(0.0)
    high = pl.col("metric") + pl.col("metric_ci95").fill_null(0.0)
    if style.percent:
        # An interval over few seeds can reach past 0 or 1; accuracy cannot, so the bars stop there.
        low, high = low.clip(0.0, 1.0), high.clip(0.0, 1.0)
    data = style.scaled(costs.with_columns(low=low, high=high), ["metric", "metric_ci95", "low", "high"]).drop_nulls(
        ["metric", "params_total"]
    )
    totals = [t for t in data["params_total"].to_list() if t]
    log = bool(totals) and max(totals) / max(min(totals), 1) > 10
    x = alt.X(
        "params_total:Q",
        title="parameters (total)" + (", log scale" if log else ""),
        scale=alt.Scale(type="log", padding=40) if log else alt.Scale(zero=False, padding=40),
        axis=alt.Axis(format="~s"),
    )
    base = alt.Chart(data).encode(x=x, color=style.arm_colour())
    points = base.mark_point(size=90, filled=True).encode(
        y=alt.Y("metric:Q", title=f"test {style.metric_title}", scale=alt.Scale(zero=False, padding=20)),
        tooltip=[
            alt.Tooltip("arm:N"),
            alt.Tooltip("params_total:Q", title="parameters", format=","),
            alt.Tooltip("metric:Q", format=".4g"),
            alt.Tooltip("metric_ci95:Q", title="± 95 % CI", format=".3g"),
        ],
    )
    errors = base.mark_rule(strokeWidth=1.5).encode(y="low:Q", y2="high:Q")
    labels = base.mark_text(align="left", dx=8, dy=-6, fontSize=11).encode(y="metric:Q", text="arm:N")
    chart = alt.layer(errors, points, labels).properties(width=FULL_WIDTH, height=280)
    return _finish(chart, f"Test {style.metric_label} (all modes) against model size")


def history_chart(history: pl.DataFrame, style: Style, base_trials: Sequence[str] = ()) -> alt.TopLevelMixin:
    """Optimisation history: each search trial's validation metric, and the best full-budget trial so far;
    ``base_trials`` (the base arm's own configuration) are labelled."""
    data = style.scaled(history.filter(pl.col("state") != "failed"), ["val_metric", "best_so_far"]).with_columns(
        budget=pl.format("{}/{}", pl.col("iterations_done"), pl.col("budget_iterations"))
    )
    states = [s for s in ("completed", "stopped_early") if s in set(data["state"].to_list())]
    points = (
        alt.Chart(data)
        .mark_point(size=70, filled=True)
        .encode(
            x=alt.X(
                "number:Q",
                title="search trial (in start order)",
                axis=alt.Axis(tickMinStep=1, format="d"),
                scale=alt.Scale(padding=16),
            ),
            y=alt.Y("val_metric:Q", title=f"validation {style.metric_title}", scale=alt.Scale(zero=False)),
            color=alt.Color(
                "state:N",
                sort=states,
                scale=alt.Scale(domain=states, range=[STATE_COLOURS[s] for s in states]),
                title="state",
            ),
            shape=alt.Shape(
                "state:N", sort=states, scale=alt.Scale(domain=states, range=[STATE_SHAPES[s] for s in states])
            ),
            tooltip=[
                alt.Tooltip("trial_id:N", title="trial"),
                alt.Tooltip("state:N"),
                alt.Tooltip("val_metric:Q", format=".4g"),
                alt.Tooltip("budget:N", title="iterations / budget"),
            ],
        )
    )
    best = (
        alt.Chart(data)
        .mark_line(interpolate="step-after", color="#333", strokeDash=[5, 3])
        .encode(x="number:Q", y="best_so_far:Q")
    )
    layers = [best, points]
    marked = data.filter(pl.col("trial_id").is_in(list(base_trials)) & pl.col("val_metric").is_not_null())
    if marked.height:
        layers.append(
            alt.Chart(marked.with_columns(label=pl.lit("base arm's configuration")))
            .mark_text(align="left", dx=8, dy=12, fontSize=11, color="#333")
            .encode(x="number:Q", y="val_metric:Q", text="label:N")
        )
    chart = alt.layer(*layers).properties(width=FULL_WIDTH, height=260)
    return _finish(chart, "Optimisation history (dashed: best full-budget trial so far)")


#: A cost-aware search's cost (trials.parquet column) in words, as prose and the report's headings say it.
COST_WORDS = {"seconds_per_iteration": "seconds per iteration", "params_total": "parameters"}
#: How the cost reads on an axis: title and number format.
COST_AXES = {
    "seconds_per_iteration": ("seconds per meta-training iteration (lower is cheaper)", ".3~g"),
    "params_total": ("parameters (total, lower is smaller)", "~s"),
}


def pareto_chart(front: pl.DataFrame, cost: str, style: Style) -> alt.TopLevelMixin:
    """The metric against the cost of every search trial, the Pareto front of the full-budget ones joined."""
    data = style.scaled(front, ["val_metric"]).with_columns(
        kind=pl.when(pl.col("on_front"))
        .then(pl.lit("on the front"))
        .when(pl.col("state") == "completed")
        .then(pl.lit("full budget, dominated"))
        .otherwise(pl.lit("stopped early"))
    )
    kinds = ["on the front", "full budget, dominated", "stopped early"]
    title, number_format = COST_AXES.get(cost, (cost, ".3~g"))
    costs = [c for c in data["cost"].to_list() if c and c > 0]
    log = bool(costs) and max(costs) / min(costs) > 10
    x = alt.X(
        "cost:Q",
        title=title + (", log scale" if log else ""),
        scale=alt.Scale(type="log") if log else alt.Scale(zero=False, padding=30),
        axis=alt.Axis(format=number_format),
    )
    y = alt.Y("val_metric:Q", title=f"validation {style.metric_title}", scale=alt.Scale(zero=False, padding=20))
    points = (
        alt.Chart(data)
        .mark_point(size=80, filled=True)
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "kind:N",
                sort=kinds,
                scale=alt.Scale(domain=kinds, range=["#e15759", "#4e79a7", "#bab0ac"]),
                title=None,
            ),
            shape=alt.Shape(
                "kind:N",
                sort=kinds,
                scale=alt.Scale(domain=kinds, range=["diamond", "circle", "triangle-down"]),
                title=None,
            ),
            tooltip=[
                alt.Tooltip("trial_id:N", title="trial"),
                alt.Tooltip("state:N"),
                alt.Tooltip("cost:Q", title=cost, format=number_format),
                alt.Tooltip("val_metric:Q", format=".4g"),
            ],
        )
    )
    line = (
        alt.Chart(data.filter(pl.col("on_front")))
        # Between two front trials, the best metric that cost buys is the cheaper trial's: a step after it.
        .mark_line(color="#e15759", interpolate="step-after")
        .encode(x=x, y=y, order="cost:Q")
    )
    labels = (
        alt.Chart(data.filter(pl.col("on_front")))
        .mark_text(align="left", dx=8, dy=-8, fontSize=11, color="#333")
        .encode(x=x, y=y, text="trial_id:N")
    )
    chart = alt.layer(line, points, labels).properties(width=FULL_WIDTH, height=280)
    return _finish(chart, f"Pareto front of the search: validation {style.metric_label} against cost")


def importance_chart(importance: pl.DataFrame) -> alt.TopLevelMixin:
    """Horizontal bars: share of the metric's variance each parameter explains alone (epsilon squared)."""
    chart = (
        alt.Chart(importance)
        .mark_bar(color="#4e79a7")
        .encode(
            y=alt.Y("param:N", sort="-x", title=None),
            x=alt.X(
                "importance:Q",
                title="importance (share of variance explained, adjusted)",
                scale=alt.Scale(domain=[0, 1]),
            ),
            tooltip=[
                alt.Tooltip("param:N", title="parameter"),
                alt.Tooltip("importance:Q", format=".3f"),
                alt.Tooltip("n_trials:Q", title="trials"),
                alt.Tooltip("n_groups:Q", title="value groups"),
            ],
        )
        .properties(width=FULL_WIDTH, height=max(40, 26 * importance.height))
    )
    return _finish(chart, "Parameter importance")


def parallel_chart(lines: pl.DataFrame, labels: pl.DataFrame, style: Style, axes: Sequence[str]) -> alt.TopLevelMixin:
    """Parallel coordinates: one line per search trial across the searched parameters and the metric.

    ``axes`` lists the axes left to right; the last one is the metric's, labelled here with its lowest and
    highest value in display units.
    """
    lines = style.scaled(lines, ["val_metric"])
    values = lines["val_metric"].drop_nulls()
    if values.len():
        low, high = cast(float, values.min()), cast(float, values.max())
        ends = pl.DataFrame({"axis": [axes[-1]] * 2, "position": [0.0, 1.0], "label": [f"{low:.4g}", f"{high:.4g}"]})
        labels = pl.concat([labels, ends])
    x = alt.X("axis:N", sort=list(axes), title=None, axis=alt.Axis(labelAngle=0, orient="top", labelFontWeight="bold"))
    y = alt.Y("position:Q", axis=None, scale=alt.Scale(domain=[-0.05, 1.05]))
    scheme = alt.Scale(scheme="viridis", reverse=not style.higher_is_better)
    trial_lines = (
        alt.Chart(lines)
        .mark_line(strokeWidth=2, opacity=0.75, point=alt.OverlayMarkDef(size=30, filled=True))
        .encode(
            x=x,
            y=y,
            detail="number:N",
            color=alt.Color("val_metric:Q", scale=scheme, title=f"validation {style.metric_label}"),
            strokeDash=alt.StrokeDash(
                "state:N",
                sort=["completed", "stopped_early"],
                scale=alt.Scale(domain=["completed", "stopped_early"], range=[[1, 0], [5, 3]]),
                title="state",
            ),
            tooltip=[
                alt.Tooltip("number:Q", title="trial"),
                alt.Tooltip("state:N"),
                alt.Tooltip("val_metric:Q", format=".4g"),
            ],
        )
    )
    rails = alt.Chart(labels).mark_rule(color="#bbb").encode(x=x)
    ticks = (
        alt.Chart(labels)
        .mark_text(align="left", dx=5, dy=-8, fontSize=11, color="#333")
        .encode(x=x, y=y, text="label:N")
    )
    chart = alt.layer(rails, trial_lines, ticks).properties(width=FULL_WIDTH, height=260)
    return _finish(chart, "Parallel coordinates of the search (dashed: stopped early)")


def transference_histogram_chart(hist: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Histogram of the loss ratio LR per arm, with the no-transfer line LR = 1."""
    bars = (
        alt.Chart()
        .mark_bar(binSpacing=0)
        .encode(
            x=alt.X("bin_start:Q", bin="binned", title="loss ratio LR"),
            x2="bin_end:Q",
            y=alt.Y("share:Q", title="share of source-target pairs", axis=alt.Axis(format="%")),
            color=style.arm_colour(legend=False),
            tooltip=[
                alt.Tooltip("arm:N"),
                alt.Tooltip("bin_start:Q", title="LR from", format=".3f"),
                alt.Tooltip("bin_end:Q", title="LR to", format=".3f"),
                alt.Tooltip("count:Q", title="pairs"),
            ],
        )
    )
    one = alt.Chart().mark_rule(color="#333", strokeDash=[4, 3]).encode(x=alt.datum(1.0))
    arms = [a for a in style.arms if a in set(hist["arm"].to_list())]
    columns = min(3, max(1, len(arms)))
    chart = (
        alt.layer(bars, one, data=hist)
        .properties(width=FULL_WIDTH // columns - 40, height=150)
        .facet(facet=alt.Facet("arm:N", sort=arms, title=None), columns=columns)
    )
    return _finish(chart, "Task-level transference: loss ratios at the last measurement (left of 1: positive)")


def transference_shares_chart(shares: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Stacked bars per arm: shares of positive, neutral and negative transfer."""
    long = shares.unpivot(index="arm", on=list(TRANSFER_CLASSES), variable_name="transfer", value_name="share")
    classes = list(TRANSFER_CLASSES)
    base = alt.Chart(long).encode(
        y=alt.Y("arm:N", sort=list(style.arms), title=None),
        x=alt.X("share:Q", stack="normalize", title="share of source-target pairs", axis=alt.Axis(format="%")),
        order=alt.Order("class_order:Q"),
    )
    bars = base.mark_bar().encode(
        color=alt.Color(
            "transfer:N",
            sort=classes,
            scale=alt.Scale(domain=classes, range=list(TRANSFER_COLOURS.values())),
            title="transfer",
        ),
        tooltip=[alt.Tooltip("arm:N"), alt.Tooltip("transfer:N"), alt.Tooltip("share:Q", format=".1%")],
    )
    text = base.mark_text(align="right", dx=-4, color="white", fontWeight="bold").encode(
        text=alt.Text("share:Q", format=".0%"), x=alt.X("share:Q", stack="normalize", bandPosition=1)
    )
    chart = (
        alt.layer(bars, text.transform_filter("datum.share >= 0.06"))
        .transform_calculate(class_order="indexof(['positive', 'neutral', 'negative'], datum.transfer)")
        .properties(width=FULL_WIDTH, height=max(60, 26 * shares.height))
    )
    return _finish(chart, "Shares of positive / neutral / negative transference per arm")


def transference_matrix_chart(matrix: pl.DataFrame, style: Style) -> alt.TopLevelMixin:
    """Heatmaps of mean LR from source mode (rows) to target mode (columns), per arm and iteration."""
    modes = list(style.modes)
    values = [v for v in matrix["mean_lr"].to_list() if v is not None and math.isfinite(v)]
    spread = max([abs(v - 1.0) for v in values] + [0.01])
    colour = alt.Color(
        "mean_lr:Q",
        scale=alt.Scale(scheme="redblue", reverse=True, domain=[1.0 - spread, 1.0 + spread], domainMid=1.0),
        title="mean LR",
    )
    cells = (
        alt.Chart()
        .mark_rect()
        .encode(
            x=alt.X("target_mode:N", sort=modes, title="target mode", axis=alt.Axis(labelAngle=-30)),
            y=alt.Y("source_mode:N", sort=modes, title="source mode"),
            color=colour,
            tooltip=[
                alt.Tooltip("arm:N"),
                alt.Tooltip("iteration:Q"),
                alt.Tooltip("source_mode:N", title="source"),
                alt.Tooltip("target_mode:N", title="target"),
                alt.Tooltip("mean_lr:Q", title="mean LR", format=".4f"),
                alt.Tooltip("n:Q", title="pairs"),
            ],
        )
    )
    text = (
        alt.Chart()
        .mark_text(fontSize=10)
        .encode(
            x=alt.X("target_mode:N", sort=modes),
            y=alt.Y("source_mode:N", sort=modes),
            text=alt.Text("mean_lr:Q", format=".3f"),
        )
    )
    side = max(120, 42 * len(modes))
    arms = [a for a in style.arms if a in set(matrix["arm"].to_list())]
    chart = (
        alt.layer(cells, text, data=matrix)
        .properties(width=side, height=side)
        .facet(
            row=alt.Row(
                "arm:N", sort=arms, title=None, header=alt.Header(labelAngle=0, labelAlign="left", labelLimit=160)
            ),
            column=alt.Column("iteration:O", title="iteration"),
        )
    )
    return _finish(chart, "Mean loss ratio between modes over training (blue: positive transfer, red: negative)")
