"""``mmlo status`` and ``mmlo results``: a run directory read back in the terminal.

``status`` reads the ledger (the per-trial part files), so it shows a study while it runs, from another
terminal: counts per phase and state, then one line per trial (iteration/budget, last validation score,
failure reason). ``results`` prints the ablation table from ``episodes.parquet``: one row per arm of the
ablation and confirm phases, one column per mode plus ``all``, each cell the mean over test episodes
(each episode averaged over seeds first, as the report does) ± ``1.96 s / sqrt(n)``; ``--format csv|json``
gives one record per (arm, mode).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from mmlo.orchestrator import lease, ledger
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.progress import duration
from mmlo.orchestrator.provenance import read_provenance
from mmlo.orchestrator.sink import EPISODES_FILE, PHASE_ORDER
from mmlo.reports.rundir import TABLE_PHASES
from mmlo.storage import SPEC_FILE, RunStore, StorageError, read_parquet

RESULT_FIELDS = ("arm", "mode", "metric", "mean", "ci95", "n_episodes", "n_seeds")


def open_run(run_dir: RunStore | Path | str) -> tuple[RunStore, dict[str, Any]]:
    """The run directory's store and its resolved spec; UserError when it is not a run directory."""
    try:
        store = RunStore.open(run_dir)
        store.check_reachable()
    except StorageError as err:
        raise UserError(str(err)) from None
    text = store.read_text(SPEC_FILE)
    if text is None:
        raise UserError(f"{store}: not a run directory (no {SPEC_FILE}); give <output>/<study name>")
    return store, yaml.safe_load(text) or {}


def show_status(run_dir: RunStore | Path | str) -> None:
    """Print the progress of a study (running or finished)."""
    store, spec = open_run(run_dir)
    print(status_text(store, spec))


def status_text(run_dir: RunStore, spec: dict[str, Any]) -> str:
    records = sorted(ledger.records(run_dir), key=lambda r: (PHASE_ORDER.get(r.get("phase", ""), 9), r["trial_id"]))
    record = read_provenance(run_dir)
    sessions = record.get("sessions") or []
    state = "finished" if record.get("finished") else (sessions[-1].get("outcome", "running") if sessions else "?")
    holder = lease.read_holder(run_dir)
    stale = lease.stale_reason(holder) if holder is not None else None
    if state == "running" and (holder is None or stale is not None):
        # The last session never recorded its end: its driver crashed or was killed.
        state = "interrupted (its driver is gone; --resume finishes the study)"
    lines = [f"study {spec.get('name', run_dir.name)}  ({run_dir})", f"  state      {state}"]
    if holder is not None:
        lines.append(
            f"  driver     {holder.describe()}"
            + (f"; its lease is stale ({stale}): --resume takes it over" if stale else "")
        )
    broken = ledger.damaged(run_dir)
    if broken:
        lines.append(f"  damaged    {len(broken)} unreadable trial record(s), re-run by --resume: {', '.join(broken)}")
    if sessions:
        lines.append(f"  started    {record.get('started')}  ({len(sessions)} session(s))")
    # A record still 'running' after its session ended (Ctrl-C, a crash) waits for `--resume`.
    live = not sessions or state == "running"
    for r in records:
        if r.get("state") == "running" and not live:
            r["state"] = "interrupted"
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        counts.setdefault(r.get("phase", "?"), {}).setdefault(r.get("state", "?"), 0)
        counts[r.get("phase", "?")][r.get("state", "?")] += 1
    for phase, by_state in counts.items():
        lines.append(f"  {phase:<10} " + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())))
    if not records:
        lines.append("  no trial has started yet")
    for r in records:
        progress = ledger.read_progress(run_dir, r["trial_id"])
        iteration = int(progress[-1]["iteration"]) if progress else int(r.get("iterations_done") or 0)
        val = r.get("val_metric")
        if val is None and progress:
            val = progress[-1].get("val_metric")
        shown_val = f"val {val:.4f}" if isinstance(val, (int, float)) and math.isfinite(val) else ""
        age = ""
        if r.get("state") in ("running", "interrupted") and r.get("updated"):
            age = f"(updated {duration(time.time() - float(r['updated']))} ago)"
        reason = f"  {r['failure_reason']}" if r.get("failure_reason") else ""
        lines.append(
            f"  {r['trial_id']:<26} {str(r.get('arm', '')):<26} s{r.get('seed', '?'):<3} {r.get('state', '?'):<13} "
            f"{iteration:>6}/{r.get('budget_iterations', '?'):<6} {shown_val:<12} {age}{reason}".rstrip()
        )
    return "\n".join(lines)


def ablation_table(episodes: pl.DataFrame, arms: list[str], modes: list[str]) -> pl.DataFrame:
    """One row per (arm, mode) and (arm, 'all'): mean, 95 % half-width over episodes, episode and seed counts.

    The numbers are the report's (mmlo.reports.tables): each episode is first averaged over the arm's
    seeds, then ``1.96 s / sqrt(n)`` runs over the n shared episodes, so the terminal and the HTML agree.
    """
    from mmlo.reports.tables import ablation_table as report_table

    rows = episodes.filter(pl.col("phase").is_in(TABLE_PHASES) & (pl.col("split") == "test"))
    if rows.height == 0:
        return pl.DataFrame(schema={f: pl.Utf8 for f in RESULT_FIELDS})
    present = rows["arm"].unique(maintain_order=True).to_list()
    order = [a for a in arms if a in present] + sorted(set(present) - set(arms))
    metric = str(rows["metric"][0])
    table = report_table(rows, arms=order, modes=modes, baseline=None, higher_is_better=metric == "accuracy")
    return table.with_columns(pl.lit(metric).alias("metric")).select(RESULT_FIELDS)


def _load_table(run_dir: RunStore, spec: dict[str, Any]) -> pl.DataFrame:
    episodes = read_parquet(run_dir, EPISODES_FILE)
    if episodes is None:
        raise UserError(f"{run_dir}: no {EPISODES_FILE} yet; `mmlo status {run_dir}` shows the study's progress")
    arms = [str(a["name"]) for a in spec.get("arms") or []]
    modes = list((read_provenance(run_dir).get("benchmark") or {}).get("modes") or [])
    modes += [m for m in episodes["mode"].unique(maintain_order=True).to_list() if m not in modes]
    table = ablation_table(episodes, arms, modes)
    if table.height == 0:
        raise UserError(f"{run_dir}: no ablation or confirm trial has finished its test episodes yet")
    return table


def show_results(run_dir: RunStore | Path | str, fmt: str = "table") -> None:
    """Print the ablation table as ``table`` (arm x mode), ``csv`` or ``json`` (one object per arm and mode)."""
    store, spec = open_run(run_dir)
    table = _load_table(store, spec)
    if fmt == "json":
        records = [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in table.to_dicts()
        ]
        print(json.dumps(records, indent=1))
    elif fmt == "csv":
        print(table.write_csv(), end="")
    else:
        print(format_table(table))


def _cell(mean: float, ci: float | None, percent: bool) -> str:
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    half = "" if ci is None or not math.isfinite(ci) else f" ± {ci * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}{half}"


def format_table(table: pl.DataFrame) -> str:
    """The arm x mode grid; accuracy in percent, MSE as is."""
    metric = str(table["metric"][0])
    percent = metric == "accuracy"
    modes = table["mode"].unique(maintain_order=True).to_list()
    modes = [m for m in modes if m != "all"] + ["all"]
    arms = table["arm"].unique(maintain_order=True).to_list()
    cells: dict[tuple[str, str], str] = {}
    seeds: dict[str, int] = {}
    episodes: dict[str, int] = {}
    for r in table.iter_rows(named=True):
        cells[(r["arm"], r["mode"])] = _cell(r["mean"], r["ci95"], percent)
        if r["mode"] == "all":
            seeds[r["arm"]], episodes[r["arm"]] = r["n_seeds"], r["n_episodes"]
    header = ["arm", *modes, "seeds", "episodes"]
    body = [
        [a, *[cells.get((a, m), "-") for m in modes], str(seeds.get(a, "")), str(episodes.get(a, ""))] for a in arms
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    title = (
        f"test {metric}{' (%)' if percent else ''}: "
        "mean ± 95 % CI over episodes (1.96 s/√n, episodes averaged over seeds)"
    )
    lines = [
        title,
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))),
    ]
    for row in body:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)
