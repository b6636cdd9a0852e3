"""The report's sections, in the page's order: the ablation table, per-mode results, learning curves, the cost
of each arm, the Optuna search, task-level transference, failures.

Each builder turns the frames of :mod:`mmlo.reports.tables` into a :class:`~mmlo.reports.page.Section`: a
caption that says how to read it, then HTML blocks and charts (:mod:`mmlo.reports.charts`). A section whose
data the study did not record says so in place of its tables; the search and transference sections are left
out when the study has no such phase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import polars as pl

from mmlo.reports import charts, tables
from mmlo.reports.format import MISSING, Numbers, count, duration, escape, html_table, param_value
from mmlo.reports.page import Section
from mmlo.reports.rundir import TABLE_PHASES, RunData
from mmlo.reports.tables import OVERALL


def build_sections(run: RunData) -> list[Section]:
    """All sections of the report, in the page's order (the header is not a section)."""
    bench = run.spec.get("benchmark") or {}
    ways = bench.get("ways")
    style = charts.Style(
        arms=run.arms,
        modes=run.modes,
        metric_name=run.metric_name,
        higher_is_better=run.higher_is_better,
        chance=1.0 / ways if run.metric_name == "accuracy" and ways else None,
    )
    sections, table = _ablation_sections(run, style)
    sections.append(_curves_section(run, style))
    sections.append(_cost_section(run, style, table))
    sections += [s for s in (_search_section(run, style, table), _transference_section(run, style)) if s is not None]
    sections.append(_failures_section(run))
    return sections


def _subsection(title: str, caption: str) -> str:
    """A heading inside a section and its caption (``caption`` is HTML)."""
    return f'<h3>{escape(title)}</h3><p class="caption">{caption}</p>'


def _missing(run: RunData, why: str) -> str:
    """The note shown in place of an ablation section without data: a search-only study, or ``why``."""
    ran = run.trials["phase"].is_in(TABLE_PHASES).any()
    text = why if ran else "This study ran no ablation arms (a search only), so there is nothing to show here."
    return f'<p class="note">{escape(text)}</p>'


def _ablation_html(table: pl.DataFrame, run: RunData, numbers: Numbers) -> str:
    columns = [*run.modes, OVERALL]
    labels = ["all modes" if m == OVERALL else m for m in columns]
    head = '<th class="name">arm</th>' + "".join(f"<th>{escape(label)}</th>" for label in labels)
    cells = {(r["arm"], r["mode"]): r for r in table.iter_rows(named=True)}
    budgets = tables.arm_budgets(run.trials, arms=run.arms)
    body = []
    for arm in [a for a in run.arms if any((a, m) in cells for m in columns)]:
        label = escape(arm) + (' <span class="tag">baseline</span>' if arm == run.baseline else "")
        if arm in run.tuned:
            values = _tuned_values(run, arm)
            label = (
                f'{escape(arm)}<span class="sub wrap"><span class="tag tuned">search, confirmed</span> '
                f"{escape(values)}</span>"
            )
        if arm in budgets:
            label += f'<span class="sub">{escape(budgets[arm])}</span>'
        row = [f'<td class="name">{label}</td>']
        for mode in columns:
            r = cells.get((arm, mode))
            if r is None:
                row.append(f"<td>{MISSING}</td>")
                continue
            lines = [f'<span class="main">{numbers.interval(r["mean"], r["ci95"])}</span>']
            seeds = numbers.interval(r["seed_mean"], r["seed_ci95"])
            lines.append(f'<span class="sub">seeds (k={r["n_seeds"]}): {seeds}</span>')
            if r["diff"] is not None:
                lines.append(_diff_html(r, run.higher_is_better, numbers, run.baseline))
            css = "best" if r["best"] else ""
            row.append(f'<td class="{css}">{"".join(lines)}</td>')
        body.append("<tr>" + "".join(row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _diff_html(row: Mapping[str, Any], higher_is_better: bool, numbers: Numbers, baseline: str | None) -> str:
    diff, half = row["diff"], row["diff_ci95"]
    # Only a confirmed search configuration has another reference: the arm right above it, which it is tuned from.
    against = "" if row.get("reference") in (None, baseline) else " vs base"
    text = f"Δ{against} {numbers.interval(diff, half, signed=True)}"
    css = ""
    if half is not None and math.isfinite(half) and abs(diff) > half:
        css = "better" if (diff > 0) == higher_is_better else "worse"
    title = f"{row.get('reference') or 'the baseline'}, paired over {row['n_paired']} shared episodes"
    return f'<span class="sub {css}" title="{escape(title)}">{escape(text)}</span>'


def _tuned_values(run: RunData, arm: str) -> str:
    """The searched values a confirmed configuration trains with, e.g. 'inner_lr 0.213 · modulation sigmoid'."""
    space = (run.spec.get("search") or {}).get("space") or {}
    rows = tables.sampled_parameters(run.trials, space).filter(pl.col("trial_id") == run.tuned[arm])
    if rows.height == 0:
        return ""
    sampled = rows.row(0, named=True)
    return " · ".join(f"{p} {param_value(sampled[p])}" for p in run.search_params() if sampled.get(p) is not None)


def _ablation_sections(run: RunData, style: charts.Style) -> tuple[list[Section], pl.DataFrame | None]:
    episodes = run.table_episodes()
    unit = "accuracy in %" if run.metric_name == "accuracy" else "MSE"
    direction = "higher is better" if run.higher_is_better else "lower is better"
    table_section = Section(
        "ablation",
        "Ablation table",
        f"Each cell: test {unit} ({direction}), mean ± 95 % CI over the shared test episodes (seed-averaged); "
        f"below it mean ± t-interval over the training seeds, and Δ, the paired difference to the baseline "
        f"arm with its 95 % CI (green: better beyond the CI, red: worse). Shaded: best in its column. "
        f"A search configuration confirmed with every seed at the full budget sits right below the arm the "
        f"search started from, and its Δ is paired against that arm. Under each arm's name: its training budget. "
        f"Above the table, in words: each modulated arm against the unmodulated arm of the same base learner "
        f"that shares most of its settings, all modes pooled, and whether that paired interval excludes zero.",
    )
    bars_section = Section(
        "modes",
        "Per-mode results",
        "Bars: mean test metric per mode, one colour per arm; black lines: 95 % CI over episodes; "
        + ("dashed line: chance (1/ways)." if style.chance is not None else "compare bar heights within a mode."),
    )
    if episodes is None:
        table_section.blocks.append(
            _missing(run, "No test episodes were recorded for the ablation arms (every trial failed).")
        )
        return [table_section], None
    table = tables.ablation_table(
        episodes,
        arms=run.arms,
        modes=run.modes,
        baseline=run.baseline,
        higher_is_better=run.higher_is_better,
        references=run.references,
    )
    numbers = Numbers(run.metric_name, table["mean"].to_list())
    effects = tables.modulation_effects(episodes, run.trials, arms=run.arms, higher_is_better=run.higher_is_better)
    if effects:
        items = "".join(f"<li>{escape(tables.effect_sentence(e, run.metric_name))}</li>" for e in effects)
        table_section.blocks.append(
            f'<h3>Each modulation against its unmodulated base</h3><ul class="effects">{items}</ul>'
        )
    table_section.blocks.append(_ablation_html(table, run, numbers))
    bars_section.blocks.append(("mode-bars", charts.mode_bars(table, style)))
    adaptation = tables.adaptation_table(episodes, arms=run.arms, modes=run.modes)
    if adaptation.height:
        caption = (
            "Hollow circle: the metric of the meta-learned initialisation on the query set before any inner-loop "
            "step; triangle: after adaptation on the support set. Arms without a pre-adaptation value (ProtoNet "
            "family) are not shown."
        )
        bars_section.blocks += [
            _subsection("Before vs after adaptation", caption),
            ("adaptation", charts.adaptation_chart(adaptation, style)),
        ]
    return [table_section, bars_section], table


def _curves_section(run: RunData, style: charts.Style) -> Section:
    section = Section(
        "curves",
        "Learning curves",
        "Validation metric on fixed validation episodes during meta-training; line: mean over seeds, shaded "
        "band: lowest to highest seed; one panel per mode, first all modes together (y axes differ per panel).",
    )
    progress = run.progress.filter(pl.col("phase").is_in(TABLE_PHASES)) if run.progress is not None else None
    if progress is None or progress.height == 0:
        section.blocks.append(_missing(run, "No validation reports were recorded for the ablation arms."))
        return section
    curves = tables.learning_curves(progress, arms=run.arms, modes=run.modes)
    section.blocks.append(("learning-curves", charts.learning_curves_chart(curves, style)))
    return section


def _cost_section(run: RunData, style: charts.Style, table: pl.DataFrame | None) -> Section:
    section = Section(
        "cost",
        "Cost of each arm",
        "Parameters of the backbone, task encoder and modulation generator; mean seconds per meta-training "
        "iteration; largest peak memory over seeds; and the overall test metric against total parameters "
        "(error bars: t-interval over seeds).",
    )
    trials = run.trials.filter(pl.col("phase").is_in(TABLE_PHASES))
    costs = tables.arm_costs(trials, table, arms=run.arms)
    if costs.height == 0:
        section.blocks.append(_missing(run, "No ablation trial finished, so there are no costs to show."))
        return section
    numbers = Numbers(run.metric_name, costs["metric"].to_list())
    shown = costs.with_columns(
        metric_text=pl.Series(
            [numbers.interval(m, h) for m, h in zip(costs["metric"], costs["metric_ci95"], strict=True)]
        )
    )
    section.blocks.append(
        html_table(
            shown,
            {
                "arm": "arm",
                "params_backbone": "backbone",
                "params_encoder": "encoder",
                "params_generator": "generator",
                "params_total": "total parameters",
                "seconds_per_iteration": "s / iteration",
                "peak_memory_mb": "peak memory (MB)",
                "wall_seconds": "wall time per trial",
                "metric_text": f"test {numbers.unit} (all modes, over seeds)",
            },
            {
                "params_backbone": count,
                "params_encoder": count,
                "params_generator": count,
                "params_total": count,
                "seconds_per_iteration": lambda v: MISSING if v is None else f"{v:.3g}",
                "peak_memory_mb": lambda v: MISSING if v is None else f"{v:,.0f}",
                "wall_seconds": lambda v: MISSING if v is None else duration(v),
            },
        )
    )
    section.blocks.append(
        ("parameters", charts.parameters_chart(tables.parameter_components(costs, arms=run.arms), style))
    )
    section.blocks.append(("speed-memory", charts.speed_memory_chart(costs, style)))
    if costs["metric"].drop_nulls().len():
        section.blocks.append(("metric-vs-parameters", charts.metric_vs_parameters(costs, style)))
    return section


def _search_section(run: RunData, style: charts.Style, table: pl.DataFrame | None) -> Section | None:
    search = tables.search_trials(run.trials)
    if search.height == 0:
        return None
    space = (run.spec.get("search") or {}).get("space") or {}
    params = run.search_params()
    section = Section(
        "search",
        "Optuna search",
        "What the search found, then each search trial's final validation metric: only trials that ran their "
        "full budget compete for the best (trials stopped early by ASHA are shown but never ranked against "
        "them; failed trials are listed under Failures); below: which parameters mattered, every trial's "
        "path through the space, and the best configurations.",
    )
    record = run.search_record
    outcome = tables.search_outcome(
        run.trials,
        table,
        space=space,
        base_arm=run.search_base,
        start_point=record.get("start_point"),
        tuned=run.tuned,
        higher_is_better=run.higher_is_better,
    )
    section.blocks.append(_outcome_html(run, outcome, record))
    rungs = tables.rung_counts(run.trials, (record.get("scheduler") or {}).get("rung_iterations") or [])
    if rungs.height:
        section.blocks.append(_rungs_html(run, rungs, record))
    history = tables.optimisation_history(run.trials, higher_is_better=run.higher_is_better)
    base_ids = tables.base_trials(run.trials, space, record.get("start_point") or {})
    section.blocks.append(("search-history", charts.history_chart(history, style, base_ids)))
    cost = record.get("cost")
    if cost and cost in run.trials.columns:
        front = tables.pareto_front(run.trials, cost, higher_is_better=run.higher_is_better)
        on_front = front.filter(pl.col("on_front"))["trial_id"].to_list()
        words = charts.COST_WORDS.get(cost, cost)
        section.blocks.append(
            _subsection(
                f"Pareto front: validation {style.metric_label} against {words}",
                f"The search optimised two objectives (validation {escape(style.metric_label)} and "
                f"<code>{escape(cost)}</code>) with Optuna's multi-objective TPE. Red diamonds: full-budget trials "
                "no other full-budget trial beats on both (the front, joined by the staircase of what each cost "
                "buys); blue: dominated; grey: stopped early, from a shorter budget, never on the front. "
                f"On the front: {escape(', '.join(on_front) or 'no trial')}.",
            )
        )
        if front.height:
            section.blocks.append(("search-pareto", charts.pareto_chart(front, cost, style)))
    importance, iteration = tables.search_importance(run.trials, run.progress, space)
    usable = importance.filter(pl.col("n_trials") >= 3)
    when = (
        f"measured at iteration {iteration}, the last validation every trial reached"
        if iteration is not None
        else "final values of the full-budget trials"
    )
    section.blocks.append(
        _subsection(
            "Parameter importance",
            f"Share of the variance of the validation {escape(run.metric_name)} ({escape(when)}) that each "
            "parameter explains on its own (adjusted correlation ratio ε²: 0 = no detectable effect, 1 = explains "
            "everything; a conditional parameter counts only the trials that sampled it). With few trials these "
            "are rough.",
        )
    )
    if usable.height:
        section.blocks.append(("search-importance", charts.importance_chart(usable)))
    else:
        section.blocks.append(
            '<p class="note">Too few trials (fewer than 3 per parameter) to estimate importances.</p>'
        )
    lines, labels = tables.parallel_coordinates(run.trials, space, metric_label=run.metric_name)
    if lines.height:
        caption = (
            "One line per trial through its parameter values (numeric axes span the search range, log-scaled "
            "where searched so), ending at its validation metric; colour: validation metric (yellow is best); "
            "dashed: stopped early."
        )
        axes = [p for p in params if p in set(lines["axis"].to_list())] + [run.metric_name]
        section.blocks += [
            _subsection("Parallel coordinates", caption),
            ("search-parallel", charts.parallel_chart(lines, labels, style, axes)),
        ]
    best = tables.best_configurations(run.trials, params, higher_is_better=run.higher_is_better)
    section.blocks.append(
        _subsection(
            "Best configurations",
            "Full-budget trials ranked by validation metric; early-stopped trials follow unranked, marked with "
            "the iterations they ran.",
        )
    )
    numbers = Numbers(run.metric_name, best["val_metric"].to_list())
    headers = {
        "rank": "rank",
        "trial_id": "trial",
        **{p: p for p in params},
        "val_metric": f"validation {numbers.unit}",
        "state": "state",
    }
    formats: dict[str, Any] = {
        "rank": lambda v: MISSING if v is None else str(v),
        "trial_id": lambda v: escape(v)
        + (' <span class="tag">base arm\'s configuration</span>' if v in base_ids else ""),
        "val_metric": numbers,
        **{p: param_value for p in params},
    }
    shown = best.with_columns(
        state=pl.when(pl.col("state") == "stopped_early")
        .then(pl.format("stopped early ({}/{} iterations)", "iterations_done", "budget_iterations"))
        .otherwise(pl.format("{} ({}/{} iterations)", "state", "iterations_done", "budget_iterations"))
    )
    formats["state"] = lambda v: f'<span class="tag">{escape(v)}</span>' if str(v).startswith("stopped") else escape(v)
    section.blocks.append(html_table(shown, headers, formats))
    return section


def _outcome_html(run: RunData, outcome: tables.SearchOutcome, record: Mapping[str, Any]) -> str:
    """What the search found, in words: the verdict, the confirmed configurations against the base arm on the
    test episodes (the evidence), then the search itself against the base arm's own configuration."""
    numbers = Numbers(run.metric_name, [outcome.base_value, outcome.best_value, *outcome.confirmed["mean"]])
    percent = run.metric_name == "accuracy"

    def score(value: float | None) -> str:
        return f"{numbers(value)} %" if percent else numbers(value)

    budget = (run.spec.get("budget") or {}).get("iterations")
    search_budget = (run.spec.get("search") or {}).get("iterations") or budget
    base = outcome.base_arm or "the study's defaults"
    own = "the base arm's own configuration" if outcome.base_arm else "the study's default configuration"
    base_won = outcome.base_trial is not None and outcome.base_trial == outcome.best_trial
    parts: list[str] = []
    confirmed = outcome.confirmed.to_dicts()
    for i, row in enumerate(confirmed):
        if i == 0:
            lead = {
                "better": f"The search beat its base arm, {base}.",
                "tie": f"The search did not beat its base arm, {base}, detectably.",
                "worse": f"The search did not beat its base arm, {base}.",
            }.get(row["verdict"] or "", "The search's best configuration was re-run.")
            parts.append(f"<strong>{escape(lead)}</strong>")
        which = "Its best configuration" if i == 0 else "Its next configuration"
        if i == 0 and base_won:
            which = f"Its best configuration other than {own}"
        values = _tuned_values(run, row["arm"])
        seeds = f"{row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''}"
        delta = numbers.interval(row["diff"], row["diff_ci95"], signed=True) + (" points" if percent else "")
        includes_zero = ", an interval that includes 0" if row["verdict"] == "tie" else ""
        parts.append(
            escape(
                f"{which}, {row['trial_id']}{f' ({values})' if values else ''}, re-run with {seeds} at the full "
                f"{budget} iterations, scores {score(row['mean'])} test {run.metric_name} against "
                f"{score(row['reference_mean'])} for {base}: Δ {delta}{includes_zero}, paired over "
                f"{row['n_paired']} test episodes."
            )
        )
    head = (
        f"At the search budget ({search_budget} iterations, one seed, scored on the validation episodes), "
        f"{outcome.n_full} of the {outcome.n_trials} search trials ran in full"
    )
    if outcome.best_trial is None:
        context = head + "; none can be ranked."
    elif base_won:
        context = f"{head}; the best of them was {own} ({outcome.base_trial}, {score(outcome.base_value)})."
    elif outcome.base_trial is not None and outcome.base_state == "completed":
        context = (
            f"{head}; the best, {outcome.best_trial}, scored {score(outcome.best_value)} against "
            f"{score(outcome.base_value)} for {own} ({outcome.base_trial})."
        )
    elif outcome.base_trial is not None:
        state = str(outcome.base_state).replace("_", " ")
        context = (
            f"{head}; the best, {outcome.best_trial}, scored {score(outcome.best_value)}; {own} "
            f"({outcome.base_trial}) was {state}."
        )
    else:
        why = record.get("start_note") or "this run did not record it"
        context = (
            f"{head}; the best, {outcome.best_trial}, scored {score(outcome.best_value)}. "
            f"{own[0].upper() + own[1:]} was not among the trials ({why})."
        )
    parts.append(escape(context))
    if not confirmed and ("confirm" in (run.spec.get("phases") or []) or run.spec.get("confirm")):
        parts.append(
            escape(
                "No configuration was confirmed: no search trial other than the base arm's own configuration "
                "completed its budget."
            )
        )
    elif not confirmed:
        parts.append(
            "No confirm phase ran, so these are validation scores of one seed at the search budget: add a "
            "<code>confirm</code> block to re-run the best configuration with every seed at the full budget "
            "and compare it with the base arm on the test episodes."
        )
    return '<p class="finding">' + " ".join(parts) + "</p>"


def _rungs_html(run: RunData, rungs: pl.DataFrame, record: Mapping[str, Any]) -> str:
    """How many trials each ASHA rung judged and kept, in one sentence."""
    scheduler = record.get("scheduler") or {}
    budget = (run.spec.get("search") or {}).get("iterations") or (run.spec.get("budget") or {}).get("iterations")
    factor = scheduler.get("reduction_factor")
    parts = []
    for r in rungs.iter_rows(named=True):
        failed = r["reached"] - r["kept"] - r["stopped"]
        parts.append(
            f"at iteration {r['iteration']} it kept {r['kept']} of the {r['reached']} trials that reached it"
            + (f" ({failed} failed there)" if failed else "")
        )
    share = "better half" if factor == 2 else f"best 1/{factor:g}"
    rule = (
        f"a trial goes on only when it is in the {share} of the trials judged at that rung before it"
        if factor
        else "a trial goes on only when it is among the best judged there"
    )
    text = f"Early stopping (ASHA, search budget {budget} iterations; {rule}): " + "; ".join(parts) + "."
    return f'<p class="caption">{escape(text)}</p>'


def _transference_section(run: RunData, style: charts.Style) -> Section | None:
    if run.transference is None:
        return None
    section = Section(
        "transference",
        "Task-level transference",
        "LR = target query loss after one look-ahead SGD step on a source task's meta-loss, divided by the "
        "loss before it (KML §4): LR < 1 means the source task helps the target (positive), > 1 hurts "
        "(negative), within the recorded neutral band of 1 it is neutral.",
    )
    tr = run.transference
    shares = tables.transference_shares(tr, arms=run.arms)
    transfer_arms = [a for a in run.arms if a in set(tr["arm"].to_list())] + [
        a for a in tr["arm"].unique(maintain_order=True).to_list() if a not in run.arms
    ]
    tstyle = charts.Style(
        arms=tuple(transfer_arms),
        modes=run.modes,
        metric_name=run.metric_name,
        higher_is_better=run.higher_is_better,
        chance=style.chance,
    )
    if shares.height:
        band = cast(float, shares["neutral_band"].max())
        alpha = tr["alpha"].drop_nulls().unique().to_list()
        alpha_text = ", ".join(f"{a:g}" for a in alpha) or MISSING
        section.blocks.append(
            f'<p class="caption">Look-ahead step α = {escape(alpha_text)}; '
            f'neutral band |1 − LR| &lt; {escape(f"{band:g}")}; '
            "cross-task pairs (source ≠ target task) at each trial's last measurement, pooled over seeds.</p>"
        )
        section.blocks.append(("transference-shares", charts.transference_shares_chart(shares, tstyle)))
        section.blocks.append(
            html_table(
                shares,
                {
                    "arm": "arm",
                    "iteration": "iteration",
                    "n_pairs": "pairs",
                    "positive": "positive",
                    "neutral": "neutral",
                    "negative": "negative",
                    "self_lr": "mean self-transference LR",
                },
                {
                    "positive": lambda v: f"{100 * v:.1f} %",
                    "neutral": lambda v: f"{100 * v:.1f} %",
                    "negative": lambda v: f"{100 * v:.1f} %",
                    "self_lr": lambda v: MISSING if v is None else f"{v:.3f}",
                },
            )
        )
        hist = tables.transference_histogram(tr, arms=transfer_arms)
        section.blocks.append(
            '<p class="caption">Histograms: share of an arm\'s source-target pairs per LR bin (bins shared by '
            "all arms; ratios beyond the 1st and 99th percentile are gathered in the end bins); dashed line: "
            "LR = 1, no transfer.</p>"
        )
        section.blocks.append(("transference-histograms", charts.transference_histogram_chart(hist, tstyle)))
    matrix = tables.transference_matrix(tr, arms=transfer_arms, modes=run.modes)
    if matrix.height:
        caption = (
            "Mean LR of source tasks of one mode (rows) on target tasks of another (columns), per arm (rows of "
            "panels) and measurement iteration (columns of panels); blue cells help, red cells hurt."
        )
        section.blocks += [
            _subsection("Mode × mode transference over training", caption),
            ("transference-matrix", charts.transference_matrix_chart(matrix, tstyle)),
        ]
    return section


def _failures_section(run: RunData) -> Section:
    failed = tables.failed_trials(run.trials)
    section = Section(
        "failures", "Failures", "Every failed trial with the reason it recorded; the study went on without it."
    )
    if failed.height == 0:
        section.blocks.append('<p class="note">No trial failed.</p>')
        return section
    section.blocks.append(
        html_table(
            failed,
            {
                "phase": "phase",
                "arm": "arm",
                "seed": "seed",
                "trial_id": "trial",
                "iterations_done": "iterations done",
                "failure_reason": "reason",
            },
            {
                "failure_reason": lambda v: (
                    f'<span style="text-align:left;display:block">{escape(v or "no reason recorded")}</span>'
                )
            },
        )
    )
    return section
