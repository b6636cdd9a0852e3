"""The report's header: what was studied and how (from the resolved spec), what produced the numbers (from
``provenance.json``, see :mod:`mmlo.orchestrator.provenance`), and how every trial ended."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from mmlo.reports import tables
from mmlo.reports.format import duration, escape, first_line, when
from mmlo.reports.rundir import RunData
from mmlo.storage import JOURNAL_FILE

#: One line of the header: a label and its value as HTML.
Fact = tuple[str, str]


def header(run: RunData) -> str:
    """The study's name and a list of facts: the study, its provenance, dashboards, and trial outcomes."""
    facts = [*_study_facts(run), *_provenance_facts(run)]
    dashboards = _dashboards(run)
    if dashboards:
        facts.append(("dashboards", "<br>".join(dashboards)))
    facts.append(("trials", _state_summary(run)))
    rows = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    return f'<h1>Study {escape(run.study_name)}</h1><dl class="facts">{rows}</dl>'


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    """The non-empty value at dotted ``path`` of the provenance record (it nests some facts), else None."""
    node: Any = data
    for key in path.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return None if node in (None, "", {}, []) else node


def _study_facts(run: RunData) -> list[Fact]:
    """What the resolved spec says: description, benchmark, task shape, budget, seeds, baseline arm."""
    spec = run.spec
    bench = spec.get("benchmark") or {}
    budget = spec.get("budget") or {}
    facts: list[Fact] = []
    if spec.get("description"):
        facts.append(("description", escape(spec["description"])))
    modes = f"{escape(', '.join(run.modes))} ({len(run.modes)} modes)"
    facts.append(("benchmark", f"{escape(bench.get('name', '?'))}: {modes}"))
    if run.metric_name == "accuracy":
        task = f"{bench.get('ways', '?')}-way {bench.get('shots', '?')}-shot, {bench.get('query', '?')} query per class"
        if bench.get("image_size"):
            task += f", {bench['image_size']}×{bench['image_size']} px"
    else:
        task = f"{bench.get('shots', '?')} support and {bench.get('query', '?')} query points per task"
    facts.append(("tasks", escape(task)))
    if budget:
        facts.append(
            (
                "budget",
                escape(
                    f"{budget.get('iterations', '?')} meta-training iterations; validation every "
                    f"{budget.get('val_interval', '?')} on {budget.get('val_episodes', '?')} episodes per mode; "
                    f"test on {budget.get('eval_episodes', '?')} fixed episodes per mode"
                ),
            )
        )
    seed_notes = [f"episode seed {spec.get('eval_seed', '?')}"]
    if spec.get("search"):
        seed_notes.append(f"TPE sampler seed {spec['search'].get('sampler_seed')}")
    seeds = ", ".join(str(s) for s in spec.get("seeds") or [])
    facts.append(("seeds", escape(f"{seeds} ({'; '.join(seed_notes)})")))
    if run.baseline:
        facts.append(("baseline arm", escape(run.baseline)))
    return facts


def _provenance_facts(run: RunData) -> list[Fact]:
    """What produced the numbers: when, how long, which code and packages, which data, where it ran."""
    prov = run.provenance
    facts: list[Fact] = []
    started, finished = _lookup(prov, "started"), _lookup(prov, "finished")
    end = when(finished) if finished else "not finished"
    facts.append(("date", escape(f"{when(started) if started else '?'} → {end}")))
    wall = _lookup(prov, "wall_seconds")
    if wall is not None:
        facts.append(("total wall time", escape(duration(wall))))
    else:  # a session that did not finish records no total
        total = float(run.trials["wall_seconds"].sum())
        facts.append(("total wall time", escape(f"{duration(total)} (sum over trials; the study recorded no total)")))
    commit = _lookup(prov, "git.commit")
    if commit:
        dirty = " (uncommitted changes)" if _lookup(prov, "git.dirty") else ""
        facts.append(("git commit", f"<code>{escape(commit)}</code>{dirty}"))
    packages = _lookup(prov, "packages")
    if isinstance(packages, Mapping):
        facts.append(("packages", " · ".join(f"{escape(k)} {escape(v)}" for k, v in packages.items() if v)))
    fingerprint = _lookup(prov, "benchmark.fingerprint")
    if fingerprint:
        facts.append(("benchmark fingerprint", f"<code>{escape(fingerprint)}</code>"))
    machine = _lookup(prov, "machine")
    if isinstance(machine, Mapping):
        facts.append(("machine", escape(", ".join(f"{k} {v}" for k, v in machine.items()))))
    storage = prov.get("storage")
    if storage:
        facts.append(("run directory", f"<code>{escape(storage)}</code>"))
    nodes = _nodes(run)
    if nodes:
        facts.append(("nodes", escape(f"trials per node: {nodes}")))
    concurrency = _lookup(prov, "concurrency")
    if isinstance(concurrency, Mapping):
        at_once = [
            f"{phase}: {info.get('trials_at_once')} at once"
            for phase, info in concurrency.items()
            if isinstance(info, Mapping) and info.get("trials_at_once")
        ]
        if at_once:
            facts.append(("concurrency", escape(", ".join(at_once))))
    return facts


def _nodes(run: RunData) -> str | None:
    """Trials per node ('host (ip, id): n, ...') when the study ran on a cluster, else None."""
    nodes = run.trials.filter(pl.col("node_id").is_not_null()).group_by("node_id", "node_hostname", "node_ip").len()
    if nodes.height > 1 or (nodes.height == 1 and run.provenance.get("ray_address")):
        return ", ".join(
            f"{r['node_hostname']} ({r['node_ip']}, {r['node_id'][:8]}): {r['len']}"
            for r in nodes.sort("node_ip", "node_id").iter_rows(named=True)
        )
    return None


def _dashboards(run: RunData) -> list[str]:
    """Where to look further: the Ray dashboard the study ran with, the Optuna dashboard command."""
    out = []
    ray_url = _lookup(run.provenance, "dashboard_url")
    if isinstance(ray_url, str) and ray_url.startswith(("http://", "https://")):
        out.append(f'Ray dashboard (while the study ran): <a href="{escape(ray_url)}">{escape(ray_url)}</a>')
    if run.store.is_local and run.store.exists(JOURNAL_FILE):
        journal = run.store.where(JOURNAL_FILE)
        out.append(f"Optuna: <code>optuna-dashboard {escape(journal)}</code> (installed by <code>make setup</code>)")
    return out


def _state_summary(run: RunData) -> str:
    """Per phase, how many trials ended in each state; the failure reasons, most frequent first."""
    counts = tables.state_counts(run.trials)
    parts = []
    for phase in counts["phase"].unique(maintain_order=True).to_list():
        states = counts.filter(pl.col("phase") == phase)
        text = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in zip(states["state"], states["n"], strict=True))
        parts.append(f"{escape(phase)}: {escape(text)}")
    failed = tables.failed_trials(run.trials)
    if failed.height:
        reasons = failed.group_by("failure_reason").agg(n=pl.len()).sort("n", descending=True)
        listed = "; ".join(
            f"{n}× {escape(first_line(r))}" for r, n in zip(reasons["failure_reason"], reasons["n"], strict=True)
        )
        parts.append(f'<span class="worse">failures</span>: {listed} (<a href="#failures">details</a>)')
    return "<br>".join(parts)
