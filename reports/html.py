"""The offline HTML ablation report of a run directory (``mmlo report RUN_DIR``).

One self-contained file: the Vega, Vega-Lite and vega-embed JavaScript comes from vl-convert and is inlined
once for the whole page, chart specs travel as one JSON block, styles are inline; nothing is fetched, so
the file opens offline, in e-mail, or years later. Sections follow issue 6's order, each opening with a
one-line caption that says how to read it. ``png_dir`` also writes every chart as a PNG (vl-convert).
"""

from __future__ import annotations

import functools
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
from mmlo.storage import REPORT_FILE, RunStore
from mmlo.reports import charts, tables
from mmlo.reports.errors import ReportError
from mmlo.reports.rundir import TABLE_PHASES, RunData, load_run
from mmlo.reports.tables import OVERALL

#: Vega-Lite version of the specs altair writes, e.g. "6.4"; vl-convert bundles the matching library.
VEGALITE_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])

_EMBED_SCRIPT = """
(function () {
  var specs = JSON.parse(document.getElementById("mmlo-specs").textContent);
  var ids = Object.keys(specs);
  var options = {renderer: "svg", actions: {export: true, source: false, compiled: false, editor: false}};
  Promise.all(ids.map(function (id) {
    return vegaEmbed("#" + id, specs[id], options).catch(function (err) {
      var el = document.getElementById(id);
      el.className += " chart-error";
      el.textContent = "This chart could not be drawn: " + err;
      window.mmloError("chart " + id + ": " + err);
    });
  })).then(function () { document.documentElement.setAttribute("data-charts-done", String(ids.length)); });
})();
"""

_ERROR_SCRIPT = """
window.mmloErrors = [];
window.mmloError = function (message) {
  window.mmloErrors.push(String(message));
  document.documentElement.setAttribute("data-js-errors", String(window.mmloErrors.length));
  var box = document.getElementById("mmlo-js-errors");
  if (box) { box.hidden = false; box.textContent = window.mmloErrors.join("\\n"); }
};
window.addEventListener("error", function (e) { window.mmloError(e.message || e); });
window.addEventListener("unhandledrejection", function (e) { window.mmloError(e.reason || e); });
"""

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
       color: #222; background: #fff; margin: 0; }
main { max-width: 1160px; margin: 0 auto; padding: 20px 20px 60px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 4px; padding-top: 10px; border-top: 1px solid #e3e3e3; }
h3 { font-size: 16px; margin: 22px 0 4px; }
p.caption { color: #555; margin: 2px 0 12px; }
p.note { color: #666; font-style: italic; }
nav { margin: 10px 0 0; font-size: 14px; }
nav a { margin-right: 12px; color: #2a5d9f; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 5px 9px; vertical-align: top; text-align: right; }
th { background: #f4f5f7; font-weight: 600; text-align: center; }
td.name, th.name { text-align: left; }
td.best { background: #e3f1e0; }
td.best .main { font-weight: 700; }
.sub { display: block; font-size: 12px; color: #666; white-space: nowrap; }
.better { color: #1d7a35; font-weight: 600; }
.worse { color: #b3261e; font-weight: 600; }
.main { white-space: nowrap; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 12px 0; }
dl.facts dt { color: #555; }
dl.facts dd { margin: 0; }
code { background: #f4f5f7; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
.chart { margin: 6px 0 18px; min-height: 40px; max-width: 100%; overflow-x: auto; }
.chart-error, #mmlo-js-errors { color: #b3261e; background: #fdeceb; padding: 8px; white-space: pre-wrap; }
.tag { display: inline-block; font-size: 12px; padding: 0 6px; border-radius: 8px; background: #fde7cf; }
.tag.failed { background: #fdeceb; }
.tag.tuned { background: #dbe8f6; }
.sub.wrap { white-space: normal; max-width: 240px; }
p.finding { background: #f4f7fb; border-left: 4px solid #2a5d9f; padding: 8px 12px; margin: 8px 0 14px; }
"""


@dataclass
class Section:
    """One ``<section>``: a heading, a one-line caption, then blocks (HTML strings or charts) in order."""

    anchor: str
    title: str
    caption: str
    blocks: list[str | tuple[str, alt.TopLevelMixin]] = field(default_factory=list)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    """The non-empty value at dotted ``path`` of the provenance record (it nests some facts), else None."""
    node: Any = data
    for key in path.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return None if node in (None, "", {}, []) else node


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


class _Numbers:
    """Formats metric values with one precision per report: accuracy in percent with 2 decimals, MSE with
    four significant digits of the largest value, so a column of numbers lines up."""

    def __init__(self, metric_name: str, values: Iterable[float | None]):
        self.percent = metric_name == "accuracy"
        finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
        largest = max(finite, default=1.0) or 1.0
        self.decimals = 2 if self.percent else min(max(3 - math.floor(math.log10(largest)), 1), 6)
        self.unit = "accuracy (%)" if self.percent else ("MSE" if metric_name == "mse" else metric_name)

    def __call__(self, value: float | None, signed: bool = False) -> str:
        if value is None or not math.isfinite(value):
            return "–"
        scaled = value * 100 if self.percent else value
        return f"{scaled:+.{self.decimals}f}" if signed else f"{scaled:.{self.decimals}f}"

    def interval(self, mean: float | None, half: float | None, signed: bool = False) -> str:
        text = self(mean, signed)
        return text if half is None or not math.isfinite(half) else f"{text} ± {self(half)}"


def _html_table(frame: pl.DataFrame, headers: Mapping[str, str], formats: Mapping[str, Any] | None = None) -> str:
    """A plain table: ``headers`` maps column -> header text; ``formats`` column -> value formatter."""
    formats = formats or {}
    head = "".join(f'<th class="{"name" if i == 0 else ""}">{_e(h)}</th>' for i, h in enumerate(headers.values()))
    rows = []
    for record in frame.iter_rows(named=True):
        cells = []
        for i, column in enumerate(headers):
            value = record.get(column)
            text = formats[column](value) if column in formats else ("–" if value is None else _e(value))
            cells.append(f'<td class="{"name" if i == 0 else ""}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _param_value(value: Any) -> str:
    """A searched value as a reader wants it: floats to 4 significant digits, everything else as is."""
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else _e(value)


def _when(stamp: Any) -> str:
    """An ISO 8601 time stamp as 'YYYY-MM-DD HH:MM:SS +zone' (other text unchanged)."""
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S %z").strip()


def _count(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _header(run: RunData) -> str:
    spec, prov = run.spec, run.provenance
    bench = spec.get("benchmark") or {}
    budget = spec.get("budget") or {}
    facts: list[tuple[str, str]] = []
    if spec.get("description"):
        facts.append(("description", _e(spec["description"])))
    facts.append(("benchmark", f"{_e(bench.get('name', '?'))}: {_e(', '.join(run.modes))} ({len(run.modes)} modes)"))
    if run.metric_name == "accuracy":
        task = f"{bench.get('ways', '?')}-way {bench.get('shots', '?')}-shot, {bench.get('query', '?')} query per class"
        if bench.get("image_size"):
            task += f", {bench['image_size']}×{bench['image_size']} px"
    else:
        task = f"{bench.get('shots', '?')} support and {bench.get('query', '?')} query points per task"
    facts.append(("tasks", _e(task)))
    if budget:
        facts.append(
            (
                "budget",
                _e(
                    f"{budget.get('iterations', '?')} meta-training iterations; validation every "
                    f"{budget.get('val_interval', '?')} on {budget.get('val_episodes', '?')} episodes per mode; "
                    f"test on {budget.get('eval_episodes', '?')} fixed episodes per mode"
                ),
            )
        )
    seeds = spec.get("seeds") or _lookup(prov, "seeds.training") or []
    seed_notes = [f"episode seed {spec.get('eval_seed', '?')}"]
    if spec.get("search"):
        seed_notes.append(f"TPE sampler seed {spec['search'].get('sampler_seed', 0)}")
    facts.append(("seeds", _e(", ".join(str(s) for s in seeds) + f" ({'; '.join(seed_notes)})")))
    if run.baseline:
        facts.append(("baseline arm", _e(run.baseline)))
    started = _lookup(prov, "started")
    finished = _lookup(prov, "finished")
    if started or finished:
        end = _when(finished) if finished else "not finished"
        facts.append(("date", _e(f"{_when(started) if started else '?'} → {end}")))
    else:
        stamp = datetime.fromtimestamp(run.store.mtime("trials.parquet") or 0.0, tz=UTC)
        facts.append(("date", _e(f"results written {stamp:%Y-%m-%d %H:%M} UTC")))
    wall = _lookup(prov, "wall_seconds")
    if wall is not None:
        facts.append(("total wall time", _e(_duration(wall))))
    else:
        total = run.trials["wall_seconds"].sum()
        facts.append(("total wall time", _e(f"{_duration(total)} (sum over trials; the study recorded no total)")))
    commit = _lookup(prov, "git.commit")
    dirty = _lookup(prov, "git.dirty")
    if commit:
        facts.append(("git commit", f"<code>{_e(commit)}</code>" + (" (uncommitted changes)" if dirty else "")))
    packages = _lookup(prov, "packages")
    if isinstance(packages, Mapping):
        facts.append(("packages", " · ".join(f"{_e(k)} {_e(v)}" for k, v in packages.items() if v)))
    fingerprint = _lookup(prov, "benchmark.fingerprint")
    if fingerprint:
        facts.append(("benchmark fingerprint", f"<code>{_e(fingerprint)}</code>"))
    machine = _lookup(prov, "machine")
    if machine:
        text = ", ".join(f"{k} {v}" for k, v in machine.items()) if isinstance(machine, Mapping) else str(machine)
        facts.append(("machine", _e(text)))
    storage = prov.get("storage")
    if storage:
        facts.append(("run directory", f"<code>{_e(storage)}</code>"))
    if "node_id" in run.trials.columns:
        nodes = run.trials.filter(pl.col("node_id").is_not_null()).group_by("node_id", "node_hostname", "node_ip").len()
        if nodes.height > 1 or (nodes.height == 1 and prov.get("ray_address")):
            where = ", ".join(
                f"{r['node_hostname']} ({r['node_ip']}, {r['node_id'][:8]}): {r['len']}"
                for r in nodes.sort("node_ip", "node_id").iter_rows(named=True)
            )
            facts.append(("nodes", _e(f"trials per node: {where}")))
    concurrency = _lookup(prov, "concurrency")
    if isinstance(concurrency, Mapping):
        at_once = [
            f"{phase}: {info.get('trials_at_once')} at once"
            for phase, info in concurrency.items()
            if isinstance(info, Mapping) and info.get("trials_at_once")
        ]
        if at_once:
            facts.append(("concurrency", _e(", ".join(at_once))))
    dashboards = []
    ray_url = _lookup(prov, "dashboard_url")
    if isinstance(ray_url, str) and ray_url.startswith(("http://", "https://")):
        dashboards.append(f'Ray dashboard (while the study ran): <a href="{_e(ray_url)}">{_e(ray_url)}</a>')
    journal = run.store.where("optuna.journal")
    if run.store.is_local and run.store.exists("optuna.journal"):
        dashboards.append(
            f"Optuna: <code>optuna-dashboard {_e(journal)}</code> (installed by <code>make setup</code>)"
        )
    if dashboards:
        facts.append(("dashboards", "<br>".join(dashboards)))
    facts.append(("trials", _state_summary(run)))
    rows = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    return f'<h1>Study {_e(run.study_name)}</h1><dl class="facts">{rows}</dl>'


def _state_summary(run: RunData) -> str:
    counts = tables.state_counts(run.trials)
    parts = []
    for phase in counts["phase"].unique(maintain_order=True).to_list():
        states = counts.filter(pl.col("phase") == phase)
        text = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in zip(states["state"], states["n"], strict=True))
        parts.append(f"{_e(phase)}: {_e(text)}")
    failed = tables.failed_trials(run.trials)
    if failed.height:
        reasons = failed.group_by("failure_reason").agg(n=pl.len()).sort("n", descending=True)
        listed = "; ".join(
            f"{n}× {_e(_short(r))}" for r, n in zip(reasons["failure_reason"], reasons["n"], strict=True)
        )
        parts.append(f'<span class="worse">failures</span>: {listed} (<a href="#failures">details</a>)')
    return "<br>".join(parts)


def _short(reason: str | None, limit: int = 160) -> str:
    text = (reason or "no reason recorded").strip().splitlines()[0] if reason else "no reason recorded"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _missing(run: RunData, why: str) -> str:
    """The note shown in place of an ablation section without data: a search-only study, or ``why``."""
    ran = run.trials["phase"].is_in(TABLE_PHASES).any()
    text = why if ran else "This study ran no ablation arms (a search only), so there is nothing to show here."
    return f'<p class="note">{_e(text)}</p>'


def _ablation_html(table: pl.DataFrame, run: RunData, numbers: _Numbers) -> str:
    columns = [*run.modes, OVERALL]
    head = '<th class="name">arm</th>' + "".join(f"<th>{_e('all modes' if m == OVERALL else m)}</th>" for m in columns)
    cells = {(r["arm"], r["mode"]): r for r in table.iter_rows(named=True)}
    budgets = tables.arm_budgets(run.trials, arms=run.arms)
    body = []
    for arm in [a for a in run.arms if any((a, m) in cells for m in columns)]:
        label = _e(arm) + (' <span class="tag">baseline</span>' if arm == run.baseline else "")
        if arm in run.tuned:
            values = _tuned_values(run, arm)
            label = (
                f'{_e(arm)}<span class="sub wrap"><span class="tag tuned">search, confirmed</span> '
                f"{_e(values)}</span>"
            )
        if arm in budgets:
            label += f'<span class="sub">{_e(budgets[arm])}</span>'
        row = [f'<td class="name">{label}</td>']
        for mode in columns:
            r = cells.get((arm, mode))
            if r is None:
                row.append("<td>–</td>")
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


def _diff_html(row: Mapping[str, Any], higher_is_better: bool, numbers: _Numbers, baseline: str | None) -> str:
    diff, half = row["diff"], row["diff_ci95"]
    # Only a confirmed search configuration has another reference: the arm right above it, which it is tuned from.
    against = "" if row.get("reference") in (None, baseline) else " vs base"
    text = f"Δ{against} {numbers.interval(diff, half, signed=True)}"
    css = ""
    if half is not None and math.isfinite(half) and abs(diff) > half:
        css = "better" if (diff > 0) == higher_is_better else "worse"
    title = f"{row.get('reference') or 'the baseline'}, paired over {row['n_paired']} shared episodes"
    return f'<span class="sub {css}" title="{_e(title)}">{_e(text)}</span>'


def _tuned_values(run: RunData, arm: str) -> str:
    """The searched values a confirmed configuration trains with, e.g. 'inner_lr 0.213 · modulation sigmoid'."""
    space = (run.spec.get("search") or {}).get("space") or {}
    rows = tables.sampled_parameters(run.trials, space).filter(pl.col("trial_id") == run.tuned[arm])
    if rows.height == 0:
        return ""
    sampled = rows.row(0, named=True)
    return " · ".join(f"{p} {_param_value(sampled[p])}" for p in run.search_params() if sampled.get(p) is not None)


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
    numbers = _Numbers(run.metric_name, table["mean"].to_list())
    effects = tables.modulation_effects(episodes, run.trials, arms=run.arms, higher_is_better=run.higher_is_better)
    if effects:
        items = "".join(f"<li>{_e(tables.effect_sentence(e, run.metric_name))}</li>" for e in effects)
        table_section.blocks.append(f'<h3>Each modulation against its unmodulated base</h3><ul class="effects">{items}</ul>')
    table_section.blocks.append(_ablation_html(table, run, numbers))
    bars_section.blocks.append(("mode-bars", charts.mode_bars(table, style)))
    adaptation = tables.adaptation_table(episodes, arms=run.arms, modes=run.modes)
    if adaptation.height:
        bars_section.blocks.append(
            '<h3>Before vs after adaptation</h3><p class="caption">Hollow circle: the metric of the meta-learned '
            "initialisation on the query set before any inner-loop step; triangle: after adaptation on the "
            "support set. Arms without a pre-adaptation value (ProtoNet family) are not shown.</p>"
        )
        bars_section.blocks.append(("adaptation", charts.adaptation_chart(adaptation, style)))
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
    numbers = _Numbers(run.metric_name, costs["metric"].to_list())
    shown = costs.with_columns(
        metric_text=pl.Series(
            [numbers.interval(m, h) for m, h in zip(costs["metric"], costs["metric_ci95"], strict=True)]
        )
    )
    section.blocks.append(
        _html_table(
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
                "params_backbone": _count,
                "params_encoder": _count,
                "params_generator": _count,
                "params_total": _count,
                "seconds_per_iteration": lambda v: "–" if v is None else f"{v:.3g}",
                "peak_memory_mb": lambda v: "–" if v is None else f"{v:,.0f}",
                "wall_seconds": lambda v: "–" if v is None else _duration(v),
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
    cost = record.get("cost") or (run.spec.get("search") or {}).get("cost")
    if cost and cost in run.trials.columns:
        front = tables.pareto_front(run.trials, cost, higher_is_better=run.higher_is_better)
        on_front = front.filter(pl.col("on_front"))["trial_id"].to_list()
        words = charts.COST_WORDS.get(cost, cost)
        section.blocks.append(
            f"<h3>Pareto front: validation {_e(style.metric_label)} against {_e(words)}</h3>"
            f'<p class="caption">The search optimised two objectives (validation {_e(style.metric_label)} and '
            f"<code>{_e(cost)}</code>) with Optuna's "
            "multi-objective TPE. Red diamonds: full-budget trials no other full-budget trial beats on both "
            "(the front, joined by the staircase of what each cost buys); blue: dominated; grey: stopped "
            "early, from a shorter budget, never on the front. "
            f"On the front: {_e(', '.join(on_front) or 'no trial')}.</p>"
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
        '<h3>Parameter importance</h3><p class="caption">Share of the variance of the validation '
        f"{_e(run.metric_name)} ({_e(when)}) that each parameter explains on its own (adjusted correlation "
        "ratio ε²: 0 = no detectable effect, 1 = explains everything; a conditional parameter counts only "
        "the trials that sampled it). With few trials these are rough.</p>"
    )
    if usable.height:
        section.blocks.append(("search-importance", charts.importance_chart(usable)))
    else:
        section.blocks.append(
            '<p class="note">Too few trials (fewer than 3 per parameter) to estimate importances.</p>'
        )
    lines, labels = tables.parallel_coordinates(run.trials, space, metric_label=run.metric_name)
    if lines.height:
        section.blocks.append(
            '<h3>Parallel coordinates</h3><p class="caption">One line per trial through its parameter values '
            "(numeric axes span the search range, log-scaled where searched so), ending at its validation "
            "metric; colour: validation metric (yellow is best); dashed: stopped early.</p>"
        )
        axes = [p for p in params if p in set(lines["axis"].to_list())] + [run.metric_name]
        section.blocks.append(("search-parallel", charts.parallel_chart(lines, labels, style, axes)))
    best = tables.best_configurations(run.trials, params, higher_is_better=run.higher_is_better)
    section.blocks.append(
        '<h3>Best configurations</h3><p class="caption">Full-budget trials ranked by validation metric; '
        "early-stopped trials follow unranked, marked with the iterations they ran.</p>"
    )
    numbers = _Numbers(run.metric_name, best["val_metric"].to_list())
    headers = {
        "rank": "rank",
        "trial_id": "trial",
        **{p: p for p in params},
        "val_metric": f"validation {numbers.unit}",
        "state": "state",
    }
    formats: dict[str, Any] = {
        "rank": lambda v: "–" if v is None else str(v),
        "trial_id": lambda v: _e(v) + (' <span class="tag">base arm\'s configuration</span>' if v in base_ids else ""),
        "val_metric": numbers,
        **{p: _param_value for p in params},
    }
    shown = best.with_columns(
        state=pl.when(pl.col("state") == "stopped_early")
        .then(pl.format("stopped early ({}/{} iterations)", "iterations_done", "budget_iterations"))
        .otherwise(pl.format("{} ({}/{} iterations)", "state", "iterations_done", "budget_iterations"))
    )
    formats["state"] = lambda v: f'<span class="tag">{_e(v)}</span>' if str(v).startswith("stopped") else _e(v)
    section.blocks.append(_html_table(shown, headers, formats))
    return section


def _outcome_html(run: RunData, outcome: tables.SearchOutcome, record: Mapping[str, Any]) -> str:
    """What the search found, in words: the verdict, the confirmed configurations against the base arm on the
    test episodes (the evidence), then the search itself against the base arm's own configuration."""
    numbers = _Numbers(run.metric_name, [outcome.base_value, outcome.best_value, *outcome.confirmed["mean"]])
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
            parts.append(f"<strong>{_e(lead)}</strong>")
        which = "Its best configuration" if i == 0 else "Its next configuration"
        if i == 0 and base_won:
            which = f"Its best configuration other than {own}"
        values = _tuned_values(run, row["arm"])
        seeds = f"{row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''}"
        delta = numbers.interval(row["diff"], row["diff_ci95"], signed=True) + (" points" if percent else "")
        includes_zero = ", an interval that includes 0" if row["verdict"] == "tie" else ""
        parts.append(
            _e(
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
    parts.append(_e(context))
    if not confirmed and ("confirm" in (run.spec.get("phases") or []) or run.spec.get("confirm")):
        parts.append(
            _e(
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
    return f'<p class="caption">{_e(text)}</p>'


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
        band = shares["neutral_band"].max()
        alpha = tr["alpha"].drop_nulls().unique().to_list()
        alpha_text = ", ".join(f"{a:g}" for a in alpha) or "–"
        section.blocks.append(
            f'<p class="caption">Look-ahead step α = {_e(alpha_text)}; neutral band |1 − LR| &lt; {_e(f"{band:g}")}; '
            "cross-task pairs (source ≠ target task) at each trial's last measurement, pooled over seeds.</p>"
        )
        section.blocks.append(("transference-shares", charts.transference_shares_chart(shares, tstyle)))
        section.blocks.append(
            _html_table(
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
                    "self_lr": lambda v: "–" if v is None else f"{v:.3f}",
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
        section.blocks.append(
            '<h3>Mode × mode transference over training</h3><p class="caption">Mean LR of source tasks of '
            "one mode (rows) on target tasks of another (columns), per arm (rows of panels) and measurement "
            "iteration (columns of panels); blue cells help, red cells hurt.</p>"
        )
        section.blocks.append(("transference-matrix", charts.transference_matrix_chart(matrix, tstyle)))
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
        _html_table(
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
                    f'<span style="text-align:left;display:block">{_e(v or "no reason recorded")}</span>'
                )
            },
        )
    )
    return section


def build_sections(run: RunData) -> list[Section]:
    """All sections of the report, in the issue's order (header excluded)."""
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


@functools.cache
def _javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (vl-convert bundles them; ~0.9 MB, ~2 s once)."""
    import vl_convert

    versions = vl_convert.get_vegalite_versions()
    bundle = vl_convert.javascript_bundle(vl_version=VEGALITE_VERSION if VEGALITE_VERSION in versions else None)
    # The bundle is inlined in a <script> element: a literal closing tag would end it early.
    return bundle.replace("</script", "<\\/script")


def render_html(run: RunData, sections: Sequence[Section]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The complete HTML document and the Vega-Lite spec of every chart, by chart id."""
    specs: dict[str, dict[str, Any]] = {}
    body = [_header(run)]
    nav = " ".join(f'<a href="#{s.anchor}">{_e(s.title)}</a>' for s in sections)
    body.append(f"<nav>{nav}</nav>")
    for section in sections:
        parts = [
            f'<section id="{section.anchor}"><h2>{_e(section.title)}</h2><p class="caption">{_e(section.caption)}</p>'
        ]
        for block in section.blocks:
            if isinstance(block, str):
                parts.append(block)
                continue
            name, chart = block
            chart_id = f"chart-{len(specs) + 1:02d}-{name}"
            specs[chart_id] = chart.to_dict()
            parts.append(f'<div class="chart" id="{chart_id}" role="img" aria-label="{_e(name)}"></div>')
        parts.append("</section>")
        body.append("".join(parts))
    spec_json = json.dumps(specs, separators=(",", ":")).replace("<", "\\u003c")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>mmlo report: {_e(run.study_name)}</title><style>{_CSS}</style>"
        f"<script>{_ERROR_SCRIPT}</script></head><body><main>"
        f'<pre id="mmlo-js-errors" hidden></pre>'
        + "".join(body)
        + f'<p class="caption">Generated {generated} by <code>mmlo report</code> from {_e(run.run_dir)}.</p>'
        f'</main><script type="application/json" id="mmlo-specs">{spec_json}</script>'
        f"<script>{_javascript_bundle()}</script><script>{_EMBED_SCRIPT}</script></body></html>\n"
    )
    return document, specs


def _write_file(path: Path, data: bytes) -> None:
    """A local file, written atomically by the run directory's own writer."""
    RunStore.open(path.parent).write_bytes(path.name, data)


def write_pngs(specs: Mapping[str, dict[str, Any]], png_dir: Path, scale: float = 2.0) -> list[Path]:
    """Each chart as ``<png_dir>/<chart id>.png`` (rendered by vl-convert at ``scale``); returns the paths."""
    import vl_convert

    png_dir.mkdir(parents=True, exist_ok=True)
    versions = vl_convert.get_vegalite_versions()
    version = VEGALITE_VERSION if VEGALITE_VERSION in versions else None
    paths = []
    for chart_id, spec in specs.items():
        path = png_dir / f"{chart_id.removeprefix('chart-')}.png"
        _write_file(path, vl_convert.vegalite_to_png(spec, vl_version=version, scale=scale))
        paths.append(path)
    return paths


def write_report(
    run_dir: RunStore | Path | str, out: Path | None = None, png_dir: Path | None = None
) -> str:
    """Write the report of ``run_dir`` (a local path or a storage URI) to ``out`` (a local file; default
    ``report.html`` in the run directory); return where it is, as a user reads it.

    Raises ReportError when the run directory is missing, is not a run directory, or has no finished trial.
    """
    run = load_run(run_dir)
    document, specs = render_html(run, build_sections(run))
    data = document.encode("utf-8")
    try:
        if out is None:
            run.store.write_bytes(REPORT_FILE, data)
            target = run.store.where(REPORT_FILE)
        else:
            path = Path(out).expanduser().resolve()
            _write_file(path, data)
            target = str(path)
        if png_dir is not None:
            write_pngs(specs, Path(png_dir).expanduser().resolve())
    except OSError as err:
        raise ReportError(f"cannot write the report: {err}") from None
    return target
