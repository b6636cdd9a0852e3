"""Run directories on any storage Ray Tune accepts: a local folder, a shared file system, or an object store.

The orchestrator writes through it and the report reads through it; it depends on pyarrow only.
"""

from mmlo.storage.runstore import (
    LOGS_DIR,
    PROVENANCE_FILE,
    REPORT_FILE,
    SPEC_FILE,
    TUNE_DIR,
    RunStore,
    StorageError,
    StorageFull,
    first_line,
    is_uri,
    join_location,
    jsonable,
    normalise_location,
    read_parquet,
    shown,
    storage_full,
    write_parquet,
)

__all__ = [
    "LOGS_DIR",
    "PROVENANCE_FILE",
    "REPORT_FILE",
    "SPEC_FILE",
    "TUNE_DIR",
    "RunStore",
    "StorageError",
    "StorageFull",
    "first_line",
    "is_uri",
    "join_location",
    "jsonable",
    "normalise_location",
    "read_parquet",
    "shown",
    "storage_full",
    "write_parquet",
]
