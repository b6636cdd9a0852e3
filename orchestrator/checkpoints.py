"""The checkpoints Ray Tune persisted in a run directory, found the same way by every command.

Tune writes a trial's checkpoints under ``<run>/ray/study-<session>/<trial_id>/checkpoint_<n>/`` and, once one
is fully persisted, a line of ``result.json`` naming it (``checkpoint_dir_name``) with the trial's iteration.
Only checkpoints that such a line confirms count: a folder without its line may be half uploaded. A trial
resumed in a later session has a folder in each session's experiment; the later session wins an iteration.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmlo.storage import TUNE_DIR, RunStore

_SESSION = re.compile(r"study-(\d+)$")


def trial_checkpoints(store: RunStore) -> dict[str, dict[int, str]]:
    """For each trial, its confirmed checkpoints: iteration -> folder (relative to the run directory)."""
    files = store.list(TUNE_DIR)
    present = {f.rsplit("/", 1)[0] for f in files}
    results = [f for f in files if f.count("/") == 3 and f.endswith("/result.json")]

    def session(rel: str) -> int:
        match = _SESSION.match(rel.split("/")[1])
        return int(match.group(1)) if match else 0

    found: dict[str, dict[int, str]] = {}
    for rel in sorted(results, key=session):
        trial_dir = rel.rsplit("/", 1)[0]
        trial_id = trial_dir.rsplit("/", 1)[-1]
        for line in (store.read_text(rel) or "").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            name = row.get("checkpoint_dir_name") if isinstance(row, dict) else None
            if not name or f"{trial_dir}/{name}" not in present:
                continue
            found.setdefault(trial_id, {})[int(row.get("iteration", 0))] = f"{trial_dir}/{name}"
    return {trial: dict(sorted(by_iteration.items())) for trial, by_iteration in found.items()}


def latest_checkpoints(store: RunStore) -> dict[str, str]:
    """For each trial, its newest confirmed checkpoint folder."""
    return {trial: by_iteration[max(by_iteration)] for trial, by_iteration in trial_checkpoints(store).items()}


@contextmanager
def local_copy(store: RunStore, rel: str) -> Iterator[Path]:
    """A checkpoint folder on this machine: the folder itself on a file system, else a temporary download."""
    if store.is_local:
        yield Path(store.path(rel))
        return
    with tempfile.TemporaryDirectory(prefix="mmlo-checkpoint-") as scratch:
        yield store.download_dir(rel, Path(scratch))
