"""The run directory's ledger: one folder of part files per trial, under ``<run>/parts/<trial_id>/``.

A trial's own worker writes its part files (the record ``trial.json``, one ``progress.jsonl`` line per
validation, ``episodes.parquet`` and ``transference-<iteration>.parquet``), never through ``tune.report``:
per-episode data stays out of the driver (ray#64231), and what a trial wrote survives a crash of the driver.
The driver only writes the record of a trial that Ray stopped or lost before the trial could say so itself.

The ledger is the study's source of truth: a resumed study skips every trial whose record is final, and the
Parquet tables (:mod:`mmlo.orchestrator.sink`) are rebuilt from it. Every file is written atomically (a
temporary file, then ``os.replace``), so a ``kill -9`` never leaves half a record behind; a torn last line
of ``progress.jsonl`` is ignored.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

PARTS_DIR = "parts"
RECORD_FILE = "trial.json"
PROGRESS_FILE = "progress.jsonl"
EPISODES_FILE = "episodes.parquet"
TRANSFERENCE_PREFIX = "transference-"
#: States of a trial that will not run again; ``running`` is the only other state a record has.
FINAL_STATES = ("completed", "stopped_early", "failed")


def trial_dir(run_dir: Path, trial_id: str) -> Path:
    return Path(run_dir) / PARTS_DIR / trial_id


def _atomic_write(path: Path, write: Any, suffix: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers see either the old or the new content, never a mix."""
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), ".tmp")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")


def atomic_write_parquet(frame: pl.DataFrame, path: Path) -> None:
    _atomic_write(path, frame.write_parquet, ".parquet.tmp")


def _jsonable(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def read_record(run_dir: Path, trial_id: str) -> dict[str, Any] | None:
    path = trial_dir(run_dir, trial_id) / RECORD_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(trial_dir(run_dir, record["trial_id"]) / RECORD_FILE, record)


def records(run_dir: Path) -> list[dict[str, Any]]:
    """Every trial record of the run, ordered by trial id."""
    root = Path(run_dir) / PARTS_DIR
    out = []
    for path in sorted(root.glob(f"*/{RECORD_FILE}")):
        try:
            out.append(dict(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def finished(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Records whose state is final, by trial id."""
    return {r["trial_id"]: r for r in records(run_dir) if r.get("state") in FINAL_STATES}


def append_progress(run_dir: Path, trial_id: str, row: dict[str, Any]) -> None:
    """Append one validation row; one ``write`` of one line, so a crash tears at most the last line."""
    path = trial_dir(run_dir, trial_id) / PROGRESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_jsonable(row), allow_nan=False) + "\n"
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line)


def read_progress(run_dir: Path, trial_id: str) -> list[dict[str, Any]]:
    """The trial's validation rows; a repeated iteration (a resumed trial re-reporting it) keeps the last."""
    path = trial_dir(run_dir, trial_id) / PROGRESS_FILE
    if not path.exists():
        return []
    by_iteration: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_iteration[int(row["iteration"])] = row
    return [by_iteration[i] for i in sorted(by_iteration)]


def rewind(run_dir: Path, trial_id: str, iteration: int) -> None:
    """Forget what a trial wrote after ``iteration`` (it is about to resume from a checkpoint there)."""
    directory = trial_dir(run_dir, trial_id)
    rows = [r for r in read_progress(run_dir, trial_id) if int(r["iteration"]) <= iteration]
    if (directory / PROGRESS_FILE).exists():
        atomic_write_text(directory / PROGRESS_FILE, "".join(json.dumps(_jsonable(r)) + "\n" for r in rows))
    for path in directory.glob(f"{TRANSFERENCE_PREFIX}*.parquet"):
        if int(path.stem.removeprefix(TRANSFERENCE_PREFIX)) > iteration:
            path.unlink()
    (directory / EPISODES_FILE).unlink(missing_ok=True)


def write_episodes(run_dir: Path, trial_id: str, frame: pl.DataFrame) -> None:
    atomic_write_parquet(frame, trial_dir(run_dir, trial_id) / EPISODES_FILE)


def write_transference(run_dir: Path, trial_id: str, iteration: int, frame: pl.DataFrame) -> None:
    atomic_write_parquet(frame, trial_dir(run_dir, trial_id) / f"{TRANSFERENCE_PREFIX}{iteration:08d}.parquet")


def episode_files(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / PARTS_DIR).glob(f"*/{EPISODES_FILE}"))


def transference_files(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / PARTS_DIR).glob(f"*/{TRANSFERENCE_PREFIX}*.parquet"))


def remove_trial(run_dir: Path, trial_id: str) -> None:
    """Delete an abandoned trial's part files (an interrupted search trial that is sampled again)."""
    shutil.rmtree(trial_dir(run_dir, trial_id), ignore_errors=True)
