"""Reading a run directory: the resolved spec, the provenance record and the Parquet tables.

The report's only input is what the orchestrator wrote into ``<output>/<study name>/`` (see the Parquet
contract in README.md). Everything the report needs to order and label its tables and charts (the arms in
the YAML's order, the modes in the benchmark's order, the baseline arm, the metric and its direction) is
resolved here once, so every section agrees. A confirm arm (in the Parquet tables, the id of the search trial
it re-runs) is named here after the arm the search started from, ``MMAML (FiLM), tuned (search-011)``, and
sits right below that arm.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from mmlo.reports.errors import ReportError
from mmlo.storage import (
    EPISODES_FILE,
    PROGRESS_FILE,
    PROVENANCE_FILE,
    SPEC_FILE,
    TRANSFERENCE_FILE,
    TRIALS_FILE,
    RunStore,
    StorageError,
    read_parquet,
)

#: Phases whose trials are rows of the ablation table (confirm re-runs the best search configurations).
TABLE_PHASES = ("ablation", "confirm")


def tuned_label(base_arm: str | None, search_trial: str) -> str:
    """The report's name of a confirm arm: the arm the search started from, tuned by one search trial."""
    return f"{base_arm}, tuned ({search_trial})" if base_arm else f"tuned ({search_trial})"


@dataclass(frozen=True)
class RunData:
    """Everything the report reads from one run directory, with the derived orderings."""

    store: RunStore
    spec: dict[str, Any]
    provenance: dict[str, Any]
    trials: pl.DataFrame
    progress: pl.DataFrame | None
    episodes: pl.DataFrame | None
    transference: pl.DataFrame | None
    metric_name: str
    modes: tuple[str, ...]
    arms: tuple[str, ...]
    baseline: str | None
    #: Confirm arms by their report name (see :func:`tuned_label`) -> the search trial they re-run.
    tuned: dict[str, str] = field(default_factory=dict)

    @property
    def search_record(self) -> dict[str, Any]:
        """How the search sampled and judged (provenance ``seeds.search``; empty for older runs)."""
        return _search_record(self.provenance)

    @property
    def search_base(self) -> str | None:
        """The arm the search started from: recorded in provenance, else the spec's explicit ``search.base``."""
        return _search_base(self.spec, self.provenance)

    @property
    def references(self) -> dict[str, str]:
        """Arms whose paired difference is taken against another arm than the baseline: each confirmed
        search configuration against the arm the search started from."""
        base = self.search_base
        return {label: base for label in self.tuned} if base in self.arms else {}

    @property
    def run_dir(self) -> str:
        """Where the run directory is, as a user reads it (a local path or a storage URI)."""
        return self.store.where()

    @property
    def study_name(self) -> str:
        return str(self.spec.get("name") or self.store.name)

    @property
    def higher_is_better(self) -> bool:
        """Accuracy is maximised, MSE minimised."""
        return self.metric_name != "mse"

    def table_episodes(self) -> pl.DataFrame | None:
        """Test episodes of the ablation and confirm trials: the rows every arm is compared on."""
        if self.episodes is None:
            return None
        rows = self.episodes.filter(pl.col("phase").is_in(TABLE_PHASES) & (pl.col("split") == "test"))
        return rows if rows.height else None

    def search_params(self) -> list[str]:
        """Names of the searched parameters, in the order the study declares them."""
        search = self.spec.get("search") or {}
        return [name for name in (search.get("space") or {}) if f"cfg_{name}" in self.trials.columns]


def _search_record(provenance: dict[str, Any]) -> dict[str, Any]:
    seeds = provenance.get("seeds")
    record = seeds.get("search") if isinstance(seeds, dict) else None
    return record if isinstance(record, dict) else {}


def _search_base(spec: dict[str, Any], provenance: dict[str, Any]) -> str | None:
    base = _search_record(provenance).get("base_arm") or (spec.get("search") or {}).get("base")
    return str(base) if base else None


def _read_table(store: RunStore, name: str) -> pl.DataFrame | None:
    try:
        return read_parquet(store, name)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ReportError(
            f"{store.where(name)}: cannot read this Parquet table ({err}); re-run `mmlo study --resume`"
        ) from None


def _ordered(preferred: Sequence[str], present: Sequence[str]) -> tuple[str, ...]:
    """``preferred`` entries that are present, in their order, then the other present ones as they appear."""
    present_set = set(present)
    head = [name for name in preferred if name in present_set]
    tail = [name for name in dict.fromkeys(present) if name not in set(head)]
    return (*head, *tail)


def _metric_name(trials: pl.DataFrame, provenance: dict[str, Any]) -> str:
    """The metric the trials recorded; when none did (every trial failed before it built its benchmark), the
    one of the benchmark kind the driver recorded in provenance."""
    names = trials["metric_name"].drop_nulls().unique(maintain_order=True).to_list()
    if names:
        return str(names[0])
    return "mse" if (provenance.get("benchmark") or {}).get("kind") == "regression" else "accuracy"


def _modes(
    spec: dict[str, Any],
    provenance: dict[str, Any],
    episodes: pl.DataFrame | None,
    progress: pl.DataFrame | None,
) -> tuple[str, ...]:
    declared = (provenance.get("benchmark") or {}).get("modes") or (spec.get("benchmark") or {}).get("modes") or []
    present: list[str] = []
    if episodes is not None:
        present += episodes["mode"].unique(maintain_order=True).to_list()
    if progress is not None:
        present += [c.removeprefix("val_") for c in progress.columns if c.startswith("val_") and c != "val_metric"]
    return _ordered([str(m) for m in declared], present) if present else tuple(str(m) for m in declared)


def load_run(run_dir: RunStore | Path | str) -> RunData:
    """Read a run directory (a local path or a storage URI); raise ReportError naming what is missing when it
    cannot be reported on."""
    try:
        store = RunStore.open(run_dir)
        store.check_reachable()
    except StorageError as err:
        raise ReportError(str(err)) from None
    if not store.is_dir():
        raise ReportError(
            f"{store}: no such run directory (a run directory is <output>/<study name>, written by `mmlo study`)"
        )
    spec_text = store.read_text(SPEC_FILE)
    if spec_text is None:
        raise ReportError(f"{store}: not a run directory (no {SPEC_FILE}); give the folder `mmlo study` wrote")
    try:
        spec = yaml.safe_load(spec_text) or {}
    except yaml.YAMLError as err:
        raise ReportError(f"{store.where(SPEC_FILE)}: unreadable resolved spec ({err})") from None
    try:
        provenance = store.read_json(PROVENANCE_FILE) or {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{store.where(PROVENANCE_FILE)}: unreadable provenance record ({err})") from None
    trials = _read_table(store, TRIALS_FILE)
    if trials is None or trials.height == 0:
        raise ReportError(
            f"{store}: no finished trials yet (trials.parquet is missing or empty); "
            f"`mmlo status {store}` shows progress, `mmlo study FILE --resume` finishes the study"
        )
    progress = _read_table(store, PROGRESS_FILE)
    episodes = _read_table(store, EPISODES_FILE)
    transference = _read_table(store, TRANSFERENCE_FILE)
    progress = progress if progress is not None and progress.height else None
    episodes = episodes if episodes is not None and episodes.height else None
    transference = transference if transference is not None and transference.height else None

    spec_arms = [str(arm["name"]) for arm in spec.get("arms") or [] if isinstance(arm, dict) and "name" in arm]
    search_base = _search_base(spec, provenance)
    tuned = {
        tuned_label(search_base, trial): trial
        for trial in trials.filter(pl.col("phase") == "confirm")["arm"].cast(pl.String).unique(maintain_order=True)
    }
    trials = _relabel(trials, tuned)
    progress, episodes = (None if frame is None else _relabel(frame, tuned) for frame in (progress, episodes))
    table_trials = trials.filter(pl.col("phase").is_in(TABLE_PHASES))
    arms = _beside_base(_ordered(spec_arms, table_trials["arm"].cast(pl.String).to_list()), tuned, search_base)
    baseline = spec.get("baseline") or (spec_arms[0] if spec_arms else None)
    if baseline not in arms:
        baseline = arms[0] if arms else None
    return RunData(
        store=store,
        spec=spec,
        provenance=provenance,
        trials=trials,
        progress=progress,
        episodes=episodes,
        transference=transference,
        metric_name=_metric_name(trials, provenance),
        modes=_modes(spec, provenance, episodes, progress),
        arms=arms,
        baseline=baseline,
        tuned=tuned,
    )


def _relabel(frame: pl.DataFrame, tuned: dict[str, str]) -> pl.DataFrame:
    """``frame`` with each confirm row's arm (a search trial id) replaced by its report name."""
    if not tuned:
        return frame
    names = {trial: label for label, trial in tuned.items()}
    confirm = pl.col("phase") == "confirm"
    return frame.with_columns(
        arm=pl.when(confirm).then(pl.col("arm").replace(names)).otherwise(pl.col("arm")).cast(pl.String)
    )


def _beside_base(arms: tuple[str, ...], tuned: dict[str, str], base: str | None) -> tuple[str, ...]:
    """``arms`` with the confirmed search configurations moved right below the arm the search started from."""
    if base not in arms:
        return arms
    rest = [a for a in arms if a not in tuned]
    at = rest.index(base) + 1
    return (*rest[:at], *[a for a in arms if a in tuned], *rest[at:])
