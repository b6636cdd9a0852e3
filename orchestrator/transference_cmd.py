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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mmlo.models.config import LearnerConfig
from mmlo.orchestrator import ledger, sink
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.plan import TrialSpec
from mmlo.orchestrator.spec import Transference
from mmlo.orchestrator.trainable import SPEC_FILE, load_resolved_study

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


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory written by :func:`mmlo.models.training.fit` and the iteration it holds."""

    path: Path
    iteration: int


def trial_checkpoints(run_dir: Path, trial_id: str) -> list[Checkpoint]:
    """Every checkpoint of a trial under Tune's storage ``<run>/ray/<experiment>/<trial_id>/``, by iteration.

    Tune keeps the newest few per session; a trial resumed in a later session has a folder in each
    experiment, and a checkpoint iteration found twice keeps the newest file.
    """
    import torch

    from mmlo.models.training import CHECKPOINT_FILE, load_checkpoint

    found: dict[int, Path] = {}
    states = (Path(run_dir) / "ray").glob(f"*/{trial_id}/checkpoint_*/{CHECKPOINT_FILE}")
    for state in sorted(states, key=lambda p: p.stat().st_mtime):
        iteration = int(load_checkpoint(state.parent, torch.device("cpu"))["iteration"])
        found[iteration] = state.parent
    return [Checkpoint(found[i], i) for i in sorted(found)]


def _pick(checkpoints: list[Checkpoint], trial_id: str, iteration: int | None) -> Checkpoint:
    if not checkpoints:
        raise UserError(
            f"trial {trial_id} has no checkpoint under ray/ (a trial checkpoints at every "
            "budget.checkpoint_every-th validation; Tune keeps the newest two)"
        )
    if iteration is None:
        return checkpoints[-1]
    for candidate in checkpoints:
        if candidate.iteration == iteration:
            return candidate
    have = ", ".join(str(c.iteration) for c in checkpoints)
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


def _merge_into(path: Path, new: pl.DataFrame) -> None:
    existing = pl.read_parquet(path) if path.exists() else None
    ledger.atomic_write_parquet(merge_rows(existing, new), path)


def measure_checkpoint(
    run_dir: Path,
    *,
    trial: str,
    checkpoint: int | None = None,
    sources: int | None = None,
    targets: int | None = None,
) -> Path:
    """Measure transference of ``trial``'s checkpoint at iteration ``checkpoint`` (default: its newest).

    ``sources``/``targets`` are tasks per mode (default: the study's transference block, else 10 and 2).
    Prints a per (source mode, target mode) summary and returns the path of ``transference.parquet``.
    """
    import torch

    from mmlo.models.learners import build_learner
    from mmlo.models.training import load_checkpoint
    from mmlo.models.transference import make_transference_hook, summarise
    from mmlo.tasks.registry import get_benchmark

    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / SPEC_FILE).is_file():
        raise UserError(f"{run_dir} is not a run directory: it has no {SPEC_FILE} (run `mmlo study` first)")
    study = load_resolved_study(run_dir)
    record = ledger.read_record(run_dir, trial)
    if record is None:
        known = ", ".join(r["trial_id"] for r in ledger.records(run_dir)) or "none"
        raise UserError(f"no trial '{trial}' in {run_dir}; trials: {known}")
    spec = TrialSpec.from_json(record["spec"])
    chosen = _pick(trial_checkpoints(run_dir, trial), trial, checkpoint)
    payload = load_checkpoint(chosen.path, torch.device("cpu"))
    learner_cfg = LearnerConfig.model_validate_json(payload["learner_config"])
    train_cfg = spec.train_config(study)
    benchmark = get_benchmark(study.benchmark)
    if payload["benchmark"] != benchmark.fingerprint():
        raise UserError(
            f"checkpoint {chosen.path} was trained on benchmark {payload['benchmark']}, but the run's spec "
            f"builds {benchmark.fingerprint()} (was the data rebuilt?)"
        )
    learner = build_learner(learner_cfg, benchmark)
    learner.load_state_dict(payload["model"])
    block = study.transference or Transference()
    hook = make_transference_hook(
        benchmark,
        train_cfg,
        sources_per_mode=sources or block.sources_per_mode,
        targets_per_mode=targets or block.targets_per_mode,
        source_split=block.source_split,
        target_split=block.target_split,
        alpha=block.alpha,
        neutral_band=block.neutral_band,
        at=[chosen.iteration],
    )
    hook(chosen.iteration, learner, benchmark)
    ids: dict[str, Any] = {
        "study": study.name,
        "phase": record["phase"],
        "trial_id": trial,
        "arm": record["arm"],
        "seed": record["seed"],
    }
    frame = sink.transference_frame(hook.rows, ids)
    part = ledger.trial_dir(run_dir, trial) / f"{ledger.TRANSFERENCE_PREFIX}{chosen.iteration:08d}.parquet"
    _merge_into(part, frame)
    table = run_dir / sink.TRANSFERENCE_FILE
    _merge_into(table, frame)
    print(
        f"transference: trial {trial} at iteration {chosen.iteration}, {hook.sources.num_tasks} sources x "
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
