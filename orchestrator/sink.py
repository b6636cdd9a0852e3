"""The Parquet tables of a run directory, with exactly the columns of the contract (documented in README.md).

Tables are rebuilt from the ledger (:mod:`mmlo.orchestrator.ledger`) whenever a trial finishes and at the
end of a study, each written atomically into the run's store (:mod:`mmlo.storage`): a reader, or a
crash, never sees half a table. Rebuilding from the ledger rather than appending makes the tables idempotent: a
resumed study writes the same rows once, whatever happened before.

- ``trials.parquet``: one row per finished trial (``completed``, ``stopped_early`` or ``failed``) with one
  ``cfg_<field>`` column per :class:`LearnerConfig` and :class:`TrainConfig` field;
- ``progress.parquet``: one row per validation report of every trial (running ones too);
- ``episodes.parquet``: one row per test episode of every completed trial;
- ``transference.parquet``: one row per (source, target) pair, when the study measures transference.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from mmlo.models.config import LearnerConfig, TrainConfig
from mmlo.orchestrator import ledger
from mmlo.orchestrator.plan import encode_value
from mmlo.storage import EPISODES_FILE, PROGRESS_FILE, TRANSFERENCE_FILE, TRIALS_FILE, RunStore, write_parquet

PHASE_ORDER = {"ablation": 0, "search": 1, "confirm": 2}

#: Columns that identify the trial a row belongs to, first in every table.
ID_COLUMNS: dict[str, pl.DataType] = {
    "study": pl.String(),
    "phase": pl.String(),
    "trial_id": pl.String(),
    "arm": pl.String(),
    "seed": pl.Int64(),
}

TRIAL_COLUMNS: dict[str, pl.DataType] = {
    **ID_COLUMNS,
    "state": pl.String(),
    "failure_reason": pl.String(),
    "iterations_done": pl.Int64(),
    "budget_iterations": pl.Int64(),
    "wall_seconds": pl.Float64(),
    "seconds_per_iteration": pl.Float64(),
    "params_backbone": pl.Int64(),
    "params_encoder": pl.Int64(),
    "params_generator": pl.Int64(),
    "params_total": pl.Int64(),
    "metric_name": pl.String(),
    "val_metric": pl.Float64(),
    "peak_memory_mb": pl.Float64(),
    "allocator": pl.String(),
    "node_hostname": pl.String(),
    "node_ip": pl.String(),
    "node_id": pl.String(),
    "device": pl.String(),
    "peak_gpu_memory_mb": pl.Float64(),
    "retries": pl.Int64(),
    "retry_reasons": pl.String(),
}

EPISODE_COLUMNS: dict[str, pl.DataType] = {
    **ID_COLUMNS,
    "split": pl.String(),
    "mode": pl.String(),
    "episode": pl.Int64(),
    "episode_seed": pl.Int64(),
    "metric": pl.String(),
    "value_before": pl.Float64(),
    "value_after": pl.Float64(),
}

TRANSFERENCE_COLUMNS: dict[str, pl.DataType] = {
    **ID_COLUMNS,
    "iteration": pl.Int64(),
    "source_split": pl.String(),
    "target_split": pl.String(),
    "source_mode": pl.String(),
    "target_mode": pl.String(),
    "source_task": pl.Int64(),
    "target_task": pl.Int64(),
    "self": pl.Boolean(),
    "loss_before": pl.Float64(),
    "loss_after": pl.Float64(),
    "lr": pl.Float64(),
    "alpha": pl.Float64(),
    "neutral_band": pl.Float64(),
}

PROGRESS_HEAD: dict[str, pl.DataType] = {
    **ID_COLUMNS,
    "iteration": pl.Int64(),
    "elapsed_s": pl.Float64(),
    "train_loss": pl.Float64(),
    "lr": pl.Float64(),
    "val_metric": pl.Float64(),
}


def _dtype(annotation: Any) -> pl.DataType:
    """The Parquet type of a configuration field: lists and literals become strings."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _dtype(args[0])
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _dtype(args[0])
    if annotation is bool:
        return pl.Boolean()
    if annotation is int:
        return pl.Int64()
    if annotation is float:
        return pl.Float64()
    return pl.String()


CONFIG_COLUMNS: dict[str, pl.DataType] = {
    f"cfg_{name}": _dtype(info.annotation)
    for model in (LearnerConfig, TrainConfig)
    for name, info in model.model_fields.items()
}


def trials_schema() -> dict[str, pl.DataType]:
    return {**TRIAL_COLUMNS, **CONFIG_COLUMNS}


def progress_schema(modes: Sequence[str]) -> dict[str, pl.DataType]:
    return {**PROGRESS_HEAD, **{f"val_{mode}": pl.Float64() for mode in modes}}


def config_columns(learner: LearnerConfig, train: TrainConfig) -> dict[str, Any]:
    """``cfg_<field>`` values of one trial. ``cfg_modulation`` and ``cfg_base`` hold the resolved values (the
    modulation applied, the base algorithm maml|protonet), so that unset defaults still compare in tables."""
    values = {**learner.model_dump(), **train.model_dump()}
    values["modulation"] = learner.resolved_modulation
    values["base"] = learner.base_algorithm
    return {f"cfg_{name}": encode_value(value) for name, value in values.items()}


def _frame(rows: Sequence[dict[str, Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame([{k: row.get(k) for k in schema} for row in rows], schema=schema, orient="row")


def episodes_frame(rows: Sequence[dict[str, Any]], ids: dict[str, Any]) -> pl.DataFrame:
    """Per-episode rows of :func:`mmlo.models.evaluation.evaluate` with the trial's id columns."""
    return _frame([{**ids, **row} for row in rows], EPISODE_COLUMNS)


def transference_frame(rows: Sequence[dict[str, Any]], ids: dict[str, Any]) -> pl.DataFrame:
    """Rows of a transference hook (``iteration`` + ``TransferenceResult.rows``) with the trial's ids."""
    return _frame([{**ids, **row} for row in rows], TRANSFERENCE_COLUMNS)


def _order(record: dict[str, Any]) -> tuple[int, str]:
    return PHASE_ORDER.get(str(record.get("phase")), 9), str(record["trial_id"])


def _concat(store: RunStore, files: Sequence[str], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    frames = []
    for rel in files:
        frame = ledger.read_table(store, rel)
        if frame is not None:
            frames.append(frame.select([pl.col(c).cast(t) for c, t in schema.items()]))
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)


def build_tables(
    run_dir: RunStore | Path | str, study: str, modes: Sequence[str], *, transference: bool
) -> dict[str, pl.DataFrame]:
    """The tables of a run directory, from its ledger (file name -> frame)."""
    store = RunStore.open(run_dir)
    every = sorted(ledger.records(store), key=_order)
    final = [r for r in every if r.get("state") in ledger.FINAL_STATES]
    completed = {r["trial_id"] for r in final if r["state"] == "completed"}
    progress_rows = [
        {**{k: record.get(k) for k in ID_COLUMNS}, "study": study, **row}
        for record in every
        for row in ledger.read_progress(store, record["trial_id"])
    ]
    tables = {
        TRIALS_FILE: _frame([{**r, "study": study} for r in final], trials_schema()),
        PROGRESS_FILE: _frame(progress_rows, progress_schema(modes)),
        EPISODES_FILE: _concat(
            store, [f for f in ledger.episode_files(store) if f.split("/")[1] in completed], EPISODE_COLUMNS
        ),
    }
    if transference:
        tables[TRANSFERENCE_FILE] = _concat(store, ledger.transference_files(store), TRANSFERENCE_COLUMNS)
    return tables


def write_tables(
    run_dir: RunStore | Path | str, study: str, modes: Sequence[str], *, transference: bool
) -> dict[str, str]:
    """Rebuild and atomically replace every table; returns where each one is (as a user reads it)."""
    store = RunStore.open(run_dir)
    paths = {}
    for name, frame in build_tables(store, study, modes, transference=transference).items():
        write_parquet(store, name, frame)
        paths[name] = store.where(name)
    return paths
