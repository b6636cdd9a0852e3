"""The run directory's ledger: one folder of part files per trial, under ``<run>/parts/<trial_id>/``.

A trial's own worker writes its part files (the record ``trial.json``, one ``progress.jsonl`` line per
validation, ``episodes.parquet`` and ``transference-<iteration>.parquet``), never through ``tune.report``:
per-episode data stays out of the driver (ray#64231), and what a trial wrote survives a crash of the driver.
The driver only writes the record of a trial that Ray stopped or lost before the trial could say so itself.

The ledger lives in the run's :class:`~mmlo.storage.RunStore` (a local folder, a shared file
system or an object store), so a trial on any node of a cluster writes it where the driver reads it.

The ledger is the study's source of truth: a resumed study skips every trial whose record is final, and the
Parquet tables (:mod:`mmlo.orchestrator.sink`) are rebuilt from it. Every file is written atomically, so a
``kill -9`` never leaves half a record behind; a torn last line of ``progress.jsonl`` is ignored, and a record
that cannot be read (a damaged disk, a hand edit) is reported by :func:`damaged` and its trial run again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from mmlo.storage import PART_EPISODES_FILE as EPISODES_FILE
from mmlo.storage import PART_PROGRESS_FILE as PROGRESS_FILE
from mmlo.storage import PART_RECORD_FILE as RECORD_FILE
from mmlo.storage import PART_TRANSFERENCE_PREFIX as TRANSFERENCE_PREFIX
from mmlo.storage import PARTS_DIR, RunStore, jsonable, read_parquet, write_parquet

#: States of a trial that will not run again; ``running`` is the only other state a record has.
FINAL_STATES = ("completed", "stopped_early", "failed")

Run = RunStore | Path | str


def trial_dir(run_dir: Run, trial_id: str) -> str:
    """The trial's folder, relative to the run directory."""
    return f"{PARTS_DIR}/{trial_id}"


def read_record(run_dir: Run, trial_id: str) -> dict[str, Any] | None:
    """The trial's record, or None when it has none (or only a damaged one)."""
    try:
        data = RunStore.open(run_dir).read_json(f"{trial_dir(run_dir, trial_id)}/{RECORD_FILE}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return dict(data) if isinstance(data, dict) else None


def write_record(run_dir: Run, record: dict[str, Any]) -> None:
    RunStore.open(run_dir).write_json(f"{trial_dir(run_dir, record['trial_id'])}/{RECORD_FILE}", record)


def _record_files(store: RunStore) -> list[str]:
    return [f for f in store.list(PARTS_DIR) if f.count("/") == 2 and f.endswith(f"/{RECORD_FILE}")]


def _scan(run_dir: Run) -> tuple[list[dict[str, Any]], dict[str, str]]:
    store = RunStore.open(run_dir)
    good, bad = [], {}
    for rel in _record_files(store):
        try:
            data = store.read_json(rel)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("trial_id"), str):
            good.append(dict(data))
        elif data is not None or store.exists(rel):
            bad[rel.split("/")[1]] = store.where(rel)
    return sorted(good, key=lambda r: r["trial_id"]), bad


def records(run_dir: Run) -> list[dict[str, Any]]:
    """Every readable trial record of the run, ordered by trial id."""
    return _scan(run_dir)[0]


def damaged(run_dir: Run) -> list[str]:
    """Trial records that exist but cannot be read (where they are, as a user reads it)."""
    return list(_scan(run_dir)[1].values())


def damaged_trials(run_dir: Run) -> dict[str, str]:
    """Trial id -> where its unreadable record is, for every record that exists but cannot be read."""
    return _scan(run_dir)[1]


def finished(run_dir: Run) -> dict[str, dict[str, Any]]:
    """Records whose state is final, by trial id."""
    return {r["trial_id"]: r for r in records(run_dir) if r.get("state") in FINAL_STATES}


def append_progress(run_dir: Run, trial_id: str, row: dict[str, Any]) -> None:
    """Append one validation row (one line, so a crash tears at most the last line)."""
    line = json.dumps(jsonable(row), allow_nan=False) + "\n"
    RunStore.open(run_dir).append_text(f"{trial_dir(run_dir, trial_id)}/{PROGRESS_FILE}", line)


def read_progress(run_dir: Run, trial_id: str) -> list[dict[str, Any]]:
    """The trial's validation rows; a repeated iteration (a resumed trial re-reporting it) keeps the last."""
    text = RunStore.open(run_dir).read_text(f"{trial_dir(run_dir, trial_id)}/{PROGRESS_FILE}")
    if text is None:
        return []
    by_iteration: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            by_iteration[int(row["iteration"])] = row
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return [by_iteration[i] for i in sorted(by_iteration)]


def rewind(run_dir: Run, trial_id: str, iteration: int) -> None:
    """Forget what a trial wrote after ``iteration`` (it is about to resume from a checkpoint there)."""
    store = RunStore.open(run_dir)
    directory = trial_dir(run_dir, trial_id)
    rows = [r for r in read_progress(store, trial_id) if int(r["iteration"]) <= iteration]
    if store.exists(f"{directory}/{PROGRESS_FILE}"):
        store.write_text(f"{directory}/{PROGRESS_FILE}", "".join(json.dumps(jsonable(r)) + "\n" for r in rows))
    for rel in _trial_files(store, trial_id):
        name = rel.rsplit("/", 1)[-1]
        if (
            name.startswith(TRANSFERENCE_PREFIX)
            and int(name.removeprefix(TRANSFERENCE_PREFIX).split(".")[0]) > iteration
        ):
            store.delete(rel)
    store.delete(f"{directory}/{EPISODES_FILE}")


def _trial_files(store: RunStore, trial_id: str) -> list[str]:
    return store.list(trial_dir(store, trial_id))


def write_episodes(run_dir: Run, trial_id: str, frame: pl.DataFrame) -> None:
    write_parquet(RunStore.open(run_dir), f"{trial_dir(run_dir, trial_id)}/{EPISODES_FILE}", frame)


def write_transference(run_dir: Run, trial_id: str, iteration: int, frame: pl.DataFrame) -> None:
    rel = f"{trial_dir(run_dir, trial_id)}/{TRANSFERENCE_PREFIX}{iteration:08d}.parquet"
    write_parquet(RunStore.open(run_dir), rel, frame)


def episode_files(run_dir: Run) -> list[str]:
    """``parts/<trial>/episodes.parquet`` of every trial that wrote one, relative to the run directory."""
    return [f for f in RunStore.open(run_dir).list(PARTS_DIR) if f.endswith(f"/{EPISODES_FILE}") and f.count("/") == 2]


def transference_files(run_dir: Run) -> list[str]:
    return [
        f
        for f in RunStore.open(run_dir).list(PARTS_DIR)
        if f.count("/") == 2 and f.rsplit("/", 1)[-1].startswith(TRANSFERENCE_PREFIX) and f.endswith(".parquet")
    ]


def read_table(run_dir: Run, rel: str) -> pl.DataFrame | None:
    """A part file's Parquet table (``rel`` as :func:`episode_files` gives it)."""
    return read_parquet(RunStore.open(run_dir), rel)


def damaged_tables(run_dir: Run) -> list[str]:
    """Parquet part files (episodes, transference) that exist but cannot be read, relative to the run
    directory. Reads every part, so the driver asks once per session, not ``mmlo status``."""
    store = RunStore.open(run_dir)
    bad = []
    for rel in [*episode_files(store), *transference_files(store)]:
        try:
            read_table(store, rel)
        except Exception:  # noqa: BLE001 - polars and pyarrow raise several types for a damaged file
            bad.append(rel)
    return bad


def remove_trial(run_dir: Run, trial_id: str) -> None:
    """Delete an abandoned trial's part files (an interrupted search trial that is sampled again)."""
    RunStore.open(run_dir).delete(trial_dir(run_dir, trial_id))
