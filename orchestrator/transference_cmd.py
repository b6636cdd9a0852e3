"""``mmlo transference RUN_DIR --trial ID``: task-level transference of a saved checkpoint, after the study.

The command rebuilds the trial's learner from a checkpoint that Tune persisted under ``<run>/ray/`` and the
benchmark from the run's resolved ``spec.yaml``, measures LR(i → j) on the study's fixed source and target
tasks (:func:`mmlo.models.transference.make_transference_hook`, with the study's ``transference`` block or
its defaults, ``--sources``/``--targets`` overriding the counts per mode), and merges the rows into the
trial's ledger part for that iteration and into ``<run>/transference.parquet``, each written atomically.

Rows are keyed by (trial, iteration, source task, target task): measuring the same checkpoint again, or a
checkpoint the study itself measured, replaces those rows instead of duplicating them, and a later rebuild
of the tables from the ledger keeps them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from mmlo.models.config import LearnerConfig
from mmlo.orchestrator import ledger, sink
from mmlo.orchestrator.checkpoints import local_copy, trial_checkpoints
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.plan import TrialSpec
from mmlo.orchestrator.results import open_run
from mmlo.orchestrator.spec import Transference, parse_study
from mmlo.storage import SPEC_FILE, RunStore, read_parquet, write_parquet

#: The columns that identify one measured pair; a new measurement of the same pair replaces the old row.
ROW_KEY = (
    "trial_id",
    "iteration",
    "source_split",
    "source_mode",
    "source_task",
    "target_split",
    "target_mode",
    "target_task",
)


def _pick(checkpoints: dict[int, str], trial_id: str, iteration: int | None) -> tuple[int, str]:
    """(iteration, folder) of the chosen checkpoint: the one at ``iteration``, else the newest."""
    if not checkpoints:
        raise UserError(
            f"trial {trial_id} has no checkpoint under ray/ (a trial checkpoints at every "
            "budget.checkpoint_every-th validation; Tune keeps the newest two)"
        )
    if iteration is None:
        newest = max(checkpoints)
        return newest, checkpoints[newest]
    if iteration in checkpoints:
        return iteration, checkpoints[iteration]
    have = ", ".join(str(i) for i in checkpoints)
    raise UserError(f"trial {trial_id} has no checkpoint at iteration {iteration}; it has: {have}")


def merge_rows(existing: pl.DataFrame | None, new: pl.DataFrame) -> pl.DataFrame:
    """``existing`` without the pairs that ``new`` measures again, then ``new``, in the contract's columns."""
    schema = sink.TRANSFERENCE_COLUMNS
    new = new.select([pl.col(c).cast(t) for c, t in schema.items()])
    if existing is None or existing.is_empty():
        return new
    kept = existing.select([pl.col(c).cast(t) for c, t in schema.items()]).join(
        new.select(ROW_KEY), on=list(ROW_KEY), how="anti", nulls_equal=True
    )
    return pl.concat([kept, new], how="vertical")


def _merge_into(store: RunStore, rel: str, new: pl.DataFrame) -> None:
    write_parquet(store, rel, merge_rows(read_parquet(store, rel), new))


def measure_checkpoint(
    run_dir: RunStore | Path | str,
    *,
    trial: str,
    checkpoint: int | None = None,
    sources: int | None = None,
    targets: int | None = None,
) -> str:
    """Measure transference of ``trial``'s checkpoint at iteration ``checkpoint`` (default: its newest).

    ``sources``/``targets`` are tasks per mode (default: the study's transference block, else 10 and 2).
    Prints a per (source mode, target mode) summary and returns where ``transference.parquet`` is.
    """
    import torch

    from mmlo.models.learners import build_learner
    from mmlo.models.training import load_checkpoint
    from mmlo.models.transference import make_transference_hook, summarise
    from mmlo.tasks.registry import get_benchmark

    store, resolved = open_run(run_dir)
    study = parse_study(resolved, store.where(SPEC_FILE))
    record = ledger.read_record(store, trial)
    if record is None:
        known = ", ".join(r["trial_id"] for r in ledger.records(store)) or "none"
        raise UserError(f"no trial '{trial}' in {store}; trials: {known}")
    spec = TrialSpec.from_json(record["spec"])
    iteration, folder = _pick(trial_checkpoints(store).get(trial, {}), trial, checkpoint)
    with local_copy(store, folder) as local:
        payload = load_checkpoint(local, torch.device("cpu"))
    learner_cfg = LearnerConfig.model_validate_json(payload["learner_config"])
    train_cfg = spec.train_config(study)
    benchmark = get_benchmark(study.benchmark)
    if payload["benchmark"] != benchmark.fingerprint():
        raise UserError(
            f"checkpoint {store.where(folder)} was trained on benchmark {payload['benchmark']}, but the run's spec "
            f"builds {benchmark.fingerprint()} (was the data rebuilt?)"
        )
    learner = build_learner(learner_cfg, benchmark)
    learner.load_state_dict(payload["model"])
    settings = (study.transference or Transference()).settings()
    settings = replace(
        settings,
        sources_per_mode=sources or settings.sources_per_mode,
        targets_per_mode=targets or settings.targets_per_mode,
        at=(iteration,),
    )
    hook = make_transference_hook(benchmark, train_cfg, settings)
    hook(iteration, learner, benchmark)
    ids: dict[str, Any] = {
        "study": study.name,
        "phase": record["phase"],
        "trial_id": trial,
        "arm": record["arm"],
        "seed": record["seed"],
    }
    frame = sink.transference_frame(hook.rows, ids)
    part = f"{ledger.trial_dir(store, trial)}/{ledger.TRANSFERENCE_PREFIX}{iteration:08d}.parquet"
    _merge_into(store, part, frame)
    _merge_into(store, sink.TRANSFERENCE_FILE, frame)
    table = store.where(sink.TRANSFERENCE_FILE)
    print(
        f"transference: trial {trial} at iteration {iteration}, {hook.sources.num_tasks} sources x "
        f"{hook.targets.num_tasks} targets, alpha {hook.alpha:g}, {hook.seconds:.1f} s -> {table}"
    )
    for row in summarise(hook.rows):
        kind = "self " if row["self"] else ""
        print(
            f"  {kind}{row['source_mode']} -> {row['target_mode']}: mean LR {row['mean']:.4f}, "
            f"positive {row['positive']:.0%} / neutral {row['neutral']:.0%} / negative {row['negative']:.0%}"
            f" (n={row['n']})"
        )
    return table
