"""What ``--resume`` checks before a session starts, and the command that resumes a study.

A run directory is started once: a second start is refused, and a resume needs a run to resume whose
recorded spec is the study's own (only :data:`~mmlo.orchestrator.spec.RESUMABLE_KEYS` may change), so that
every trial of the run stays comparable.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from mmlo.orchestrator import ledger
from mmlo.orchestrator.errors import UserError
from mmlo.orchestrator.spec import Study, spec_changes
from mmlo.storage import SPEC_FILE, RunStore


def resume_command(study_file: Path, output: str, address: str | None, max_concurrent: int | None) -> str:
    """The command that resumes a study: the same file, run directory, cluster and cap, plus --resume."""
    words = ["mmlo", "study", str(study_file.resolve()), "--out", output, "--resume"]
    if address:
        words += ["--address", address]
    if max_concurrent:
        words += ["--max-concurrent", str(max_concurrent)]
    return shlex.join(words)


def check_run_dir(run_dir: RunStore, study: Study, resume: bool) -> None:
    """Refuse a start on a run directory that holds a run, and a resume of no run or of a changed spec."""
    recorded_text = run_dir.read_text(SPEC_FILE)
    if not resume:
        if recorded_text is not None:
            raise UserError(
                f"{run_dir} already holds a run of '{study.name}' ({len(ledger.finished(run_dir))} finished "
                "trials): add --resume to finish it, or choose another --out (or delete the folder) to start over"
            )
        return
    if recorded_text is None:
        raise UserError(f"--resume: there is no run to resume at {run_dir} (start it without --resume)")
    recorded = yaml.safe_load(recorded_text) or {}
    changes = spec_changes(recorded, study.model_dump(mode="json"))
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise UserError(
            f"--resume: the study changed since {run_dir} was started, and its results would no longer be "
            f"comparable. Changed: {shown}. Restore the file, or run the new spec into another --out"
        )
