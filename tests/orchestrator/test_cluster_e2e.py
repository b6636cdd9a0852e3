"""A study on a real two-node Ray cluster that shares no file system, its run directory on an S3 server.

The rig is the one ``cluster.md`` describes: a head node and a worker node, each a ``ray start --block`` on this
machine, the worker in its own mount namespace with a private ``/tmp`` and ``~/.cache`` (it sees none of the
driver's files and renders the benchmark for itself, as a second machine would), and ``moto_server`` as the
S3-compatible object store on 127.0.0.1. Every process is started by this module and stopped by its process
group; nothing is stopped by name. Three studies run against the rig, in this order: the smoke study straight
through (watched on the cluster's dashboard), the smoke study with its driver killed (SIGKILL) and resumed, and
a two-trial study whose worker node is killed mid-trial.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from mmlo.orchestrator import ledger, sink
from mmlo.storage import RunStore, read_parquet

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "studies" / "smoke.yaml"
BIN = Path(sys.executable).parent
TIMEOUT_S = 600
BUCKET = "mmlo-rig"
#: Any non-empty credentials satisfy moto; every node gets them from its environment, as on a real cluster.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rig", "AWS_SECRET_ACCESS_KEY": "rig", "AWS_EC2_METADATA_DISABLED": "true"}

if os.geteuid() != 0 or shutil.which("unshare") is None:
    pytest.skip("the two-node rig needs root and unshare (a private mount namespace for the worker node)",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 120.0, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def state_api(dashboard: str, kind: str) -> list[dict[str, Any]]:
    """Ray's state API, as the dashboard serves it (what `ray list nodes|actors` reads)."""
    try:
        return list(get_json(f"{dashboard}/api/v0/{kind}?limit=1000&detail=1")["data"]["result"]["result"])
    except OSError:
        return []


def kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


class Rig:
    """The running rig: endpoints, the two nodes' ids, and the worker node's processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {**os.environ, **CREDENTIALS, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.s3_port, self.gcs_port, self.dashboard_port = free_port(), free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.kept: list[str] = []
        self.head_id = self.worker_id = ""
        self.worker: subprocess.Popen[bytes] | None = None

    def uri(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint_override=http://127.0.0.1:{self.s3_port}&region=us-east-1&scheme=http"

    def store(self, prefix: str) -> RunStore:
        return RunStore.open(self.uri(prefix))

    def spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        handle = (self.tmp / log).open("wb")
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.processes.append(process)
        return process

    def start(self) -> None:
        # This process reads the bucket too (RunStore), with the same credentials as every node.
        self.saved = {key: os.environ.get(key) for key in CREDENTIALS}
        os.environ.update(CREDENTIALS)
        self.spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)], "moto.log")
        wait_for("the S3 server", lambda: _answers(f"http://127.0.0.1:{self.s3_port}"), 60)
        import pyarrow.fs

        pyarrow.fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.s3_port}", scheme="http", region="us-east-1",
            access_key="rig", secret_key="rig", allow_bucket_creation=True,
        ).create_dir(BUCKET)
        ray = str(BIN / "ray")
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", str(100 * 2**20)]
        self.spawn(
            [ray, "start", "--head", "--port", str(self.gcs_port), *common, "--resources", '{"rig_head": 1}',
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
             str(self.dashboard_port), "--dashboard-agent-listen-port", str(free_port()),
             "--temp-dir", str(self.tmp / "head"), "--block"],
            "head.log",
        )
        wait_for("the head node", lambda: len(self.alive()) == 1, 120)
        worker_start = [ray, "start", "--address", self.address, *common, "--resources", '{"rig_worker": 1}',
                        "--dashboard-agent-listen-port", str(free_port()), "--block"]
        self.worker = self.spawn(["unshare", "-m", "--propagation", "private", "sh", "-c", self._private_tmp(),
                                  "rig-worker", *worker_start], "worker.log")
        nodes = wait_for("the worker node", lambda: (lambda n: n if len(n) == 2 else None)(self.alive()), 120)
        for node in nodes:
            if "rig_worker" in (node.get("resources_total") or {}):
                self.worker_id = node["node_id"]
            else:
                self.head_id = node["node_id"]
        assert self.head_id and self.worker_id, nodes

    def _private_tmp(self) -> str:
        """The worker node's shell: private /tmp and ~/.cache; the project (its virtualenv) stays visible even
        when it lives under /tmp, by a bind mount kept aside before /tmp is covered."""
        keep = ""
        if str(ROOT).startswith("/tmp/"):
            keep = tempfile.mkdtemp(prefix="mmlo-rig-", dir="/var/tmp")
            self.kept.append(keep)
        lines = ["set -e"]
        if keep:
            lines.append(f"mount --bind /tmp {keep}")
        lines += ["mount -t tmpfs tmpfs /tmp", 'mkdir -p "$HOME/.cache"', 'mount -t tmpfs tmpfs "$HOME/.cache"']
        if keep:
            inside = str(ROOT).removeprefix("/tmp")
            lines += [f"mkdir -p {ROOT}", f"mount --bind {keep}{inside} {ROOT}"]
        lines.append('exec "$@"')
        return "\n".join(lines)

    def alive(self) -> list[dict[str, Any]]:
        return [n for n in state_api(self.dashboard, "nodes") if n.get("state") == "ALIVE"]

    def kill_worker_node(self) -> None:
        """SIGKILL every process of the worker node: all that live in its mount namespace (raylet, its agents,
        the trial actors Ray started there in sessions of their own)."""
        assert self.worker is not None
        namespace = os.readlink(f"/proc/{self.worker.pid}/ns/mnt")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "mnt") == namespace:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue

    def stop(self) -> None:
        # Ray starts its workers in sessions of their own: find every descendant before the parents go.
        doomed = descendants({p.pid for p in self.processes})
        for process in reversed(self.processes):
            kill_group(process)
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for keep in self.kept:
            subprocess.run(["rmdir", keep], check=False)
        for key, value in getattr(self, "saved", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def descendants(roots: set[int]) -> set[int]:
    """Every process below ``roots`` (by parent pid, read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig(tmp_path_factory.mktemp("rig"))
    try:
        rig.start()
        yield rig
    finally:
        rig.stop()


def mmlo(rig: Rig, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mmlo"), *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=rig.env, cwd=cwd)


def tables(store: RunStore) -> dict[str, pl.DataFrame]:
    return {name: read_parquet(store, name) for name in ("trials.parquet", "episodes.parquet", "progress.parquet")}


@pytest.fixture(scope="module")
def straight(rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The smoke study on the cluster with its dashboard; the trial actors the state API listed while it ran."""
    cwd = tmp_path_factory.mktemp("driver")
    started = time.monotonic()
    driver = subprocess.Popen(
        [str(BIN / "mmlo"), "study", str(SMOKE), "--address", rig.address, "--out", rig.uri("straight")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=rig.env, cwd=cwd,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(driver.stdout or []), daemon=True)
    reader.start()
    url = wait_for("the printed dashboard URL", lambda: next(
        (line.split(": ", 1)[1].strip() for line in list(lines) if line.startswith("cluster dashboard: ")), None),
        TIMEOUT_S)
    actors = wait_for("trial actors in the state API", lambda: [
        a["repr_name"] for a in state_api(url, "actors") if str(a.get("repr_name") or "").startswith("mmlo smoke/")
    ], TIMEOUT_S, 0.2)
    driver.wait(timeout=TIMEOUT_S)
    reader.join(timeout=10)
    return {"code": driver.returncode, "out": "".join(lines), "url": url, "actors": actors, "cwd": cwd,
            "wall_s": time.monotonic() - started}


def test_every_trial_completes_on_both_nodes_with_results_in_s3(rig: Rig, straight: dict[str, Any]) -> None:
    # exit 0; each planned trial accounted for; trials ran on both nodes; tables complete in the bucket
    assert straight["code"] == 0, straight["out"]
    smoke = yaml.safe_load(SMOKE.read_text())
    store = rig.store("straight/smoke")
    found = tables(store)
    trials = found["trials.parquet"]
    assert dict(trials.schema) == sink.trials_schema()
    assert trials.filter(pl.col("phase") == "ablation").height == len(smoke["arms"]) * len(smoke["seeds"])
    assert trials.filter(pl.col("phase") == "search").height == smoke["search"]["trials"]
    assert set(trials["state"]) <= {"completed", "stopped_early"}
    assert set(trials["node_id"]) == {rig.head_id, rig.worker_id}
    assert set(trials["device"]) == {"cpu"}
    completed = trials.filter(pl.col("state") == "completed")["trial_id"].to_list()
    assert set(found["episodes.parquet"]["trial_id"]) == set(completed)
    assert dict(found["episodes.parquet"].schema) == sink.EPISODE_COLUMNS
    for name in ("spec.yaml", "provenance.json", "report.html", "transference.parquet", "logs/driver-session-1.log"):
        assert store.exists(name), name
    assert store.list("optuna-journal"), "the search state is in the bucket"
    # nothing was written on the driver's disk
    assert not any(straight["cwd"].iterdir())


def test_results_and_report_read_the_bucket(rig: Rig, straight: dict[str, Any], tmp_path: Path) -> None:
    # `mmlo results URI` prints the ablation table; `mmlo report URI --out FILE` writes a local report
    results = mmlo(rig, "results", rig.uri("straight/smoke"), cwd=tmp_path)
    assert results.returncode == 0, results.stderr
    assert "ProtoNet" in results.stdout and "KML-ProtoNet" in results.stdout and "all" in results.stdout
    report = mmlo(rig, "report", rig.uri("straight/smoke"), "--out", str(tmp_path / "r.html"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<h1>Study smoke</h1>" in html
    assert f"{rig.head_id[:8]}):" in html and f"{rig.worker_id[:8]}):" in html, "trials per node in the header"


def test_dashboard_lists_the_trials_by_name(rig: Rig, straight: dict[str, Any]) -> None:
    # the printed URL is the cluster's dashboard; while the study ran, its state API named trial actors by id
    assert straight["url"] == rig.dashboard
    trial_ids = set(read_parquet(rig.store("straight/smoke"), "trials.parquet")["trial_id"])
    named = {name.removeprefix("mmlo smoke/") for name in straight["actors"]}
    assert named and named <= trial_ids


@pytest.fixture(scope="module")
def killed_and_resumed(rig: Rig, straight: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SIGKILL the driver once a trial has finished, then resume against the same bucket."""
    cwd = tmp_path_factory.mktemp("killed")
    store = rig.store("killed/smoke")
    argv = [str(BIN / "mmlo"), "study", str(SMOKE), "--address", rig.address, "--out", rig.uri("killed"),
            "--no-dashboard"]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=rig.env, cwd=cwd)
    wait_for("a finished trial", lambda: driver.poll() is not None or ledger.finished(store), TIMEOUT_S, 0.2)
    assert driver.poll() is None, "the study ended before a trial finished: nothing to interrupt"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = ledger.finished(store)
    resumed = mmlo(rig, "study", str(SMOKE), "--address", rig.address, "--out", rig.uri("killed"), "--resume",
                   "--no-dashboard", cwd=cwd)
    return before, resumed, store


def test_driver_killed_then_resumed_loses_nothing(rig: Rig, killed_and_resumed: Any) -> None:
    # finished trials keep their records; every trial is in the table once; the search ran exactly its trials
    before, resumed, store = killed_and_resumed
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = ledger.finished(store)
    for trial_id, record in before.items():
        assert after[trial_id] == record
    smoke = yaml.safe_load(SMOKE.read_text())
    trials = read_parquet(store, "trials.parquet")
    assert trials["trial_id"].is_unique().all()
    assert trials.height == len(smoke["arms"]) * len(smoke["seeds"]) + smoke["search"]["trials"]
    episodes = read_parquet(store, "episodes.parquet")
    assert not episodes.select("trial_id", "mode", "episode").is_duplicated().any()


def class_folders(root: Path, classes: int = 5, per_class: int = 6, side: int = 12) -> None:
    """A tiny real dataset in the 'folder' layout (<root>/<split>/<class>/<image>), one mean colour a class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for s, split in enumerate(("train", "val", "test")):
        for c in range(classes):
            folder = root / split / f"class{s}{c}"
            folder.mkdir(parents=True)
            colour = rng.integers(0, 256, size=3)
            for i in range(per_class):
                noise = rng.integers(-20, 21, size=(side, side, 3))
                Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")


@pytest.fixture(scope="module")
def data_missing(rig: Rig, killed_and_resumed: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real dataset under the driver's /tmp, which the worker node cannot see: its trials there must fail
    at once, naming the node and the path, while the head node's trials train."""
    cwd = tmp_path_factory.mktemp("datamissing")
    root = cwd / "data"
    class_folders(root)
    spec = yaml.safe_load(SMOKE.read_text())
    spec.update(name="datamissing", seeds=[0, 1, 2, 3], phases=["ablation"],
                arms=[{"name": "ProtoNet", "learner": "protonet"}])
    spec["benchmark"] = {"name": "folder", "root": str(root), "ways": 5, "shots": 1, "query": 5, "image_size": 16}
    for key in ("search", "scheduler", "transference"):
        spec.pop(key, None)
    file = cwd / "datamissing.yaml"
    file.write_text(yaml.safe_dump(spec))
    result = mmlo(rig, "study", str(file), "--address", rig.address, "--out", rig.uri("datamissing"),
                  "--no-dashboard", cwd=cwd)
    return result, root, rig.store("datamissing/datamissing")


def test_a_node_without_the_data_fails_its_trials_and_the_study_goes_on(rig: Rig, data_missing: Any) -> None:
    # trials on the node without the dataset fail naming node and path; the other node's trials complete
    result, root, store = data_missing
    assert result.returncode == 0, result.stdout + result.stderr
    trials = read_parquet(store, "trials.parquet")
    assert trials.height == 4
    failed = trials.filter(pl.col("state") == "failed")
    completed = trials.filter(pl.col("state") == "completed")
    assert failed.height >= 1 and completed.height >= 1, trials.select("trial_id", "state", "node_id")
    assert set(failed["node_id"]) == {rig.worker_id} and set(completed["node_id"]) == {rig.head_id}
    for reason in failed["failure_reason"]:
        assert reason.startswith("DataMissingError: on node ") and str(root) in reason, reason


@pytest.fixture(scope="module")
def node_lost(rig: Rig, data_missing: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two long trials, one per node; the worker node is killed while its trial trains. Runs last: the rig
    has one node afterwards."""
    cwd = tmp_path_factory.mktemp("nodeloss")
    spec = yaml.safe_load(SMOKE.read_text())
    spec.update(
        name="nodeloss",
        seeds=[0],
        phases=["ablation"],
        arms=[{"name": "A", "learner": "protonet"}, {"name": "B", "learner": "protonet", "train": {"lr": 0.002}}],
    )
    spec["budget"].update(iterations=4000, val_interval=200)
    spec["resources"]["max_failures"] = 1
    for key in ("search", "scheduler", "transference"):
        spec.pop(key, None)
    file = cwd / "nodeloss.yaml"
    file.write_text(yaml.safe_dump(spec))
    store = rig.store("nodeloss/nodeloss")
    argv = [str(BIN / "mmlo"), "study", str(file), "--address", rig.address, "--out", rig.uri("nodeloss"),
            "--no-dashboard"]
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=rig.env, cwd=cwd)

    def training_on_worker() -> str | None:
        for record in ledger.records(store):
            if record.get("node_id") == rig.worker_id and int(record.get("iterations_done") or 0) > 0:
                return str(record["trial_id"])
        return None

    lost = wait_for("a trial training on the worker node", lambda: driver.poll() is not None or training_on_worker(),
                    TIMEOUT_S, 0.2)
    assert isinstance(lost, str), "the study ended before a trial trained on the worker node"
    rig.kill_worker_node()
    out, _ = driver.communicate(timeout=TIMEOUT_S)
    return driver.returncode, out, lost, store


def test_lost_node_trial_is_retried_and_the_study_finishes(rig: Rig, node_lost: Any) -> None:
    # the trial whose node died is retried on the surviving node (max_failures: 1), its record says why
    code, out, lost, store = node_lost
    assert code == 0, out
    trials = read_parquet(store, "trials.parquet")
    assert set(trials["state"]) == {"completed"} and trials.height == 2
    record = trials.filter(pl.col("trial_id") == lost).row(0, named=True)
    assert record["retries"] == 1
    assert "died during the trial" in record["retry_reasons"] and rig.worker_id[:12] in record["retry_reasons"]
    assert record["node_id"] == rig.head_id
    assert f"retry   {lost}" in out
