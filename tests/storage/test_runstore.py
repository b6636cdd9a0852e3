"""RunStore on a local folder and on a real S3-compatible server (moto_server on 127.0.0.1), the same assertions."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path

import polars as pl
import pytest

from mmlo.storage import (
    RunStore,
    StorageError,
    is_uri,
    join_location,
    normalise_location,
    read_parquet,
    shown,
    storage_full,
    write_parquet,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RunStore:
    if request.param == "local":
        return RunStore.open(tmp_path / "run")
    endpoint = request.getfixturevalue("s3_endpoint")
    return RunStore.open(f"s3://runs/{tmp_path.name}/run?{endpoint}")


def test_write_read_list_delete(store: RunStore) -> None:
    # what is written reads back; listing is recursive and relative; absent files read as None; delete is deep
    store.write_text("spec.yaml", "name: x\n")
    store.write_json("parts/a/trial.json", {"trial_id": "a", "val": float("nan")})
    store.write_bytes("parts/b/trial.json", b"{}")
    assert store.read_text("spec.yaml") == "name: x\n"
    assert store.read_json("parts/a/trial.json") == {"trial_id": "a", "val": None}
    assert store.read_bytes("missing.txt") is None and store.read_json("missing.json") is None
    assert store.list() == ["parts/a/trial.json", "parts/b/trial.json", "spec.yaml"]
    assert store.list("parts") == ["parts/a/trial.json", "parts/b/trial.json"]
    assert store.exists("spec.yaml") and not store.exists("nope") and store.is_dir("parts")
    store.delete("parts")
    store.delete("parts/never/there")
    assert store.list() == ["spec.yaml"]


def test_append_keeps_every_line(store: RunStore) -> None:
    # appending (a real append locally, a rewrite on an object store) keeps earlier lines in order
    for i in range(3):
        store.append_text("parts/a/progress.jsonl", json.dumps({"iteration": i}) + "\n")
    lines = (store.read_text("parts/a/progress.jsonl") or "").splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [0, 1, 2]


def test_parquet_and_folders_round_trip(store: RunStore, tmp_path: Path) -> None:
    # a polars frame survives write/read; a folder uploads and downloads file for file
    frame = pl.DataFrame({"trial_id": ["a", "b"], "val": [0.5, None]})
    write_parquet(store, "trials.parquet", frame)
    assert read_parquet(store, "trials.parquet").equals(frame)
    source = tmp_path / "checkpoint"
    (source / "sub").mkdir(parents=True)
    (source / "state.pt").write_bytes(b"\x00\x01")
    (source / "sub" / "extra.txt").write_text("x")
    store.upload_dir(source, "ray/study-1/a/checkpoint_000001")
    copy = store.download_dir("ray/study-1/a/checkpoint_000001", tmp_path / "copy")
    assert (copy / "state.pt").read_bytes() == b"\x00\x01" and (copy / "sub" / "extra.txt").read_text() == "x"


def test_local_writes_are_atomic_and_group_readable(tmp_path: Path) -> None:
    # no temporary file is left behind; files get the umask's mode (0644 under umask 022), not mkstemp's 0600
    store = RunStore.open(tmp_path)
    old = os.umask(0o022)
    try:
        store.write_text("report.html", "<html>")
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644


def test_locations() -> None:
    # local paths become absolute; URIs keep their query; children go before the query; secrets are not shown
    assert normalise_location("~/x") == str(Path.home() / "x")
    assert normalise_location("rel") == str(Path.cwd() / "rel")
    assert is_uri("s3://b/p") and is_uri("gs://b/p") and not is_uri("/tmp/x") and not is_uri("file:///tmp/x")
    assert join_location("s3://b/p?region=eu", "study") == "s3://b/p/study?region=eu"
    assert join_location("/runs", "study") == "/runs/study"
    assert shown("s3://b/p?endpoint_override=http://h:9000&secret_key=SECRET&region=r") == (
        "s3://b/p?endpoint_override=http://h:9000&region=r"
    )


def test_child_and_where_on_s3(s3_endpoint: str) -> None:
    # the study's folder of an output URI is itself a URI a user can pass back to mmlo
    store = RunStore.open(f"s3://runs/out?{s3_endpoint}").child("smoke")
    assert store.root == "runs/out/smoke" and store.name == "smoke"
    assert store.where("report.html") == f"s3://runs/out/smoke/report.html?{s3_endpoint}"
    assert RunStore.open(store.where()).root == "runs/out/smoke"


def test_unreachable_and_missing_bucket_are_one_message(s3_endpoint: str) -> None:
    # a wrong endpoint and a bucket that does not exist each raise StorageError naming the location
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageError, match="storage not reachable"):
        RunStore.open(f"s3://runs/x?endpoint_override=http://127.0.0.1:{port}&region=us-east-1&scheme=http").check_reachable()
    with pytest.raises(StorageError, match="bucket 'nobucket' does not exist"):
        RunStore.open(f"s3://nobucket/x?{s3_endpoint}").check_reachable()
    RunStore.open(f"s3://runs/fine?{s3_endpoint}").check_reachable()


def test_full_storage_is_recognised_through_causes_and_text() -> None:
    # ENOSPC/EDQUOT anywhere in the chain, or the words Ray and Tune leave in a trial's error text
    assert storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("Trial raised")  # noqa: B904 - a wrapper as Tune raises it
    except RuntimeError as wrapped:
        assert storage_full(wrapped)
    assert storage_full("OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert not storage_full(OSError(errno.EACCES, "Permission denied"))
    assert not storage_full(RuntimeError("TrainingDiverged: meta-loss is nan at iteration 4"))
