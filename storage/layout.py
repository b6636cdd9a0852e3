"""What a run directory holds: every file and folder name of ``<output>/<study name>/``, in one place.

The driver and its trials write these, ``mmlo status``/``results``/``transference`` and the report read them;
each of those modules names a file through these constants, never through a string of its own.
"""

from __future__ import annotations

#: The resolved study spec the run trains from (what ``--resume`` compares against).
SPEC_FILE = "spec.yaml"
#: Versions, machine, seeds, sessions and phases of the run (:mod:`mmlo.orchestrator.provenance`).
PROVENANCE_FILE = "provenance.json"
#: The driver that holds the run (:mod:`mmlo.orchestrator.lease`).
LEASE_FILE = "lease.json"
#: The offline HTML report.
REPORT_FILE = "report.html"
#: Ray Tune's experiments: ``ray/study-<session>/<trial id>/checkpoint_<n>/``.
TUNE_DIR = "ray"
#: Driver logs: ``logs/driver.log`` and, on this machine, ``logs/ray`` (a link to the session's Ray logs).
LOGS_DIR = "logs"
DRIVER_LOG = "driver.log"

#: The Parquet tables (:mod:`mmlo.orchestrator.sink`), rebuilt from the ledger.
TRIALS_FILE = "trials.parquet"
PROGRESS_FILE = "progress.parquet"
EPISODES_FILE = "episodes.parquet"
TRANSFERENCE_FILE = "transference.parquet"

#: The ledger (:mod:`mmlo.orchestrator.ledger`): ``parts/<trial id>/`` holds a trial's part files.
PARTS_DIR = "parts"
PART_RECORD_FILE = "trial.json"
PART_PROGRESS_FILE = "progress.jsonl"
PART_EPISODES_FILE = "episodes.parquet"
PART_TRANSFERENCE_PREFIX = "transference-"

#: The search's Optuna journal: one file on a file system, numbered segments in a folder on an object store.
JOURNAL_FILE = "optuna.journal"
JOURNAL_SEGMENTS = "optuna-journal"
