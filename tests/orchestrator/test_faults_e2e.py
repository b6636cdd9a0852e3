"""Faults under load through the real CLI: one study whose arms each meet a different fault, on a small file
system that fills up while the study runs, with a second driver started against it meanwhile.

The study is the smoke study's shape with one seed and four arms: ``Healthy``; ``OutOfMemory``, whose task
embedding (10^6 wide) needs more than ``resources.memory_limit_mb`` allows its worker; ``Diverges``, whose
learner gets a NaN weight after iteration 3 (``MMLO_FAULTS``), so the meta-loss of iteration 4 is NaN; and
``Killed``, whose worker process SIGKILLs itself after iteration 3. Its run directory is on a 32 MiB tmpfs.
Session 1 runs until a trial is final, a second ``--resume`` driver is started meanwhile, then the tmpfs is
filled: the driver must stop with exit 2 and the resume command. The filler is removed; session 2 resumes and
is interrupted (SIGINT, as Ctrl-C sends) while a trial trains; session 3 resumes and finishes. One study in
all, in three sessions; the mount needs root.
"""

from __future__ import annotations

import html
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from mmlo.orchestrator import ledger
from mmlo.orchestrator.lease import LEASE_FILE

pytestmark = pytest.mark.slow

if os.geteuid() != 0:
    pytest.skip("needs root: the full-disk fault mounts a small tmpfs (run as root)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "studies" / "smoke.yaml"
MMLO = [str(Path(sys.executable).with_name("mmlo"))]
TIMEOUT_S = 600
FAULTS = "Diverges:nan@3,Killed:kill@3"
MEMORY_LIMIT_MB = 2560


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its file system has no space left."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 2**20)
        except OSError:
            pass


def parquet_files(run_dir: Path) -> dict[str, int | str]:
    """Every Parquet file of the run directory, with its row count (or why it does not read back)."""
    out: dict[str, int | str] = {}
    for path in sorted(run_dir.rglob("*.parquet")):
        try:
            out[str(path.relative_to(run_dir))] = pl.read_parquet(path).height
        except Exception as err:  # noqa: BLE001 - any failure to read back is what the test reports
            out[str(path.relative_to(run_dir))] = f"unreadable: {err}"
    return out


def fault_study(folder: Path) -> Path:
    spec = yaml.safe_load(SMOKE.read_text())
    spec.update(
        name="faults",
        seeds=[0],
        phases=["ablation"],
        arms=[
            {"name": "Healthy", "learner": "protonet"},
            {"name": "OutOfMemory", "learner": "mprotonet", "embedding_dim": 1_000_000},
            {"name": "Diverges", "learner": "protonet"},
            {"name": "Killed", "learner": "protonet"},
        ],
    )
    spec["resources"]["memory_limit_mb"] = MEMORY_LIMIT_MB
    for key in ("search", "scheduler", "transference"):
        spec.pop(key, None)
    file = folder / "faults.yaml"
    file.write_text(yaml.safe_dump(spec))
    return file


def mmlo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MMLO, *args], capture_output=True, text=True, timeout=TIMEOUT_S, env=env)


@pytest.fixture(scope="module")
def faults_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("faults")
    out = root / "out"
    out.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(out)], capture_output=True, text=True, check=False
    )
    if mount.returncode:  # root, but no CAP_SYS_ADMIN (an unprivileged container)
        pytest.skip(f"needs a small tmpfs; mount refused it: {mount.stderr.strip()} (run as root with CAP_SYS_ADMIN)")
    driver: subprocess.Popen[str] | None = None
    try:
        file = fault_study(root)
        run_dir = out / "faults"
        env = {**os.environ, "MMLO_FAULTS": FAULTS}
        argv = ["study", str(file), "--out", str(out), "--no-dashboard"]
        log, err = (root / "session1.out").open("w"), (root / "session1.err").open("w")
        started = time.monotonic()
        driver = session1 = subprocess.Popen([*MMLO, *argv], stdout=log, stderr=err, text=True, env=env)
        first_pid = driver.pid
        wait_for("the first driver's lease", lambda: session1.poll() is not None or (run_dir / LEASE_FILE).exists())
        second = mmlo(*argv, "--resume", env=env)
        status = mmlo("status", str(run_dir), env=env)
        wait_for("a finished trial", lambda: session1.poll() is not None or ledger.finished(run_dir))
        running_when_filled = driver.poll() is None
        fill(out)
        driver.wait(timeout=TIMEOUT_S)
        session1_s = time.monotonic() - started
        stopped = {
            "code": driver.returncode,
            "out": (root / "session1.out").read_text(),
            "err": (root / "session1.err").read_text(),
            "parquet": parquet_files(run_dir),
            "temporary": [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp")],
            "lease": (run_dir / LEASE_FILE).exists(),
            "damaged": ledger.damaged(run_dir),
        }
        (out / "filler").unlink()
        log, err = (root / "session2.out").open("w"), (root / "session2.err").open("w")
        since = time.time()
        driver = subprocess.Popen([*MMLO, *argv, "--resume"], stdout=log, stderr=err, text=True, env=env)

        def training_now() -> bool:
            return any(r.get("state") == "running" and float(r.get("updated") or 0) > since
                       for r in ledger.records(run_dir))

        wait_for("a trial of the resumed session", lambda: driver.poll() is not None or training_now())
        running_when_interrupted = driver.poll() is None
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=TIMEOUT_S)
        interrupted = {
            "code": driver.returncode,
            "out": (root / "session2.out").read_text(),
            "err": (root / "session2.err").read_text(),
            "parquet": parquet_files(run_dir),
            "lease": (run_dir / LEASE_FILE).exists(),
            "running": running_when_interrupted,
        }
        started = time.monotonic()
        resumed = mmlo(*argv, "--resume", env=env)
        yield {
            "run_dir": run_dir,
            "pid": first_pid,
            "second": second,
            "status": status,
            "running_when_filled": running_when_filled,
            "stopped": stopped,
            "interrupted": interrupted,
            "resumed": resumed,
            "wall_s": (session1_s, time.monotonic() - started),
        }
    finally:
        if driver is not None and driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
        if subprocess.run(["umount", str(out)], check=False).returncode:
            subprocess.run(["umount", "-l", str(out)], check=False)


def test_second_driver_is_refused_while_the_first_runs(faults_run: dict[str, Any]) -> None:
    # `--resume` against a running study: exit 2, one message naming the holder's host and pid; status names it
    second = faults_run["second"]
    assert second.returncode == 2, second.stdout + second.stderr
    assert "in use by another mmlo driver" in second.stderr and f"pid {faults_run['pid']}" in second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    assert f"pid {faults_run['pid']}" in faults_run["status"].stdout


def test_full_disk_stops_the_study_cleanly(faults_run: dict[str, Any]) -> None:
    # the tmpfs filled mid-study: exit 2, the reason and the resume command, no traceback; every table on the
    # full disk reads back, no temporary file is left, the lease is given back
    assert faults_run["running_when_filled"], "the study ended before the disk filled"
    stopped = faults_run["stopped"]
    assert stopped["code"] == 2, stopped["out"] + stopped["err"]
    assert "is full" in stopped["err"] and "--resume" in stopped["err"]
    assert "Traceback" not in stopped["out"] + stopped["err"]
    assert stopped["parquet"] and all(isinstance(rows, int) for rows in stopped["parquet"].values()), stopped["parquet"]
    assert stopped["temporary"] == [] and stopped["damaged"] == [] and not stopped["lease"]


def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(faults_run: dict[str, Any]) -> None:
    # SIGINT while a trial trains: exit 130, the resume command, no traceback, tables whole, lease given back
    interrupted = faults_run["interrupted"]
    assert interrupted["running"], "the resumed session ended before it could be interrupted"
    assert interrupted["code"] == 130, interrupted["out"] + interrupted["err"]
    assert "resume with:" in interrupted["out"] and "--resume" in interrupted["out"]
    assert "Traceback" not in interrupted["out"] + interrupted["err"]
    assert all(isinstance(rows, int) for rows in interrupted["parquet"].values()), interrupted["parquet"]
    assert not interrupted["lease"]


def test_resumed_study_records_each_fault_with_its_reason(faults_run: dict[str, Any]) -> None:
    # once space is freed, --resume finishes: the healthy arm completes, each fault is a failed trial whose
    # reason names it, and the faults mid-training kept the iterations validated before them
    resumed = faults_run["resumed"]
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stdout + resumed.stderr
    trials = pl.read_parquet(faults_run["run_dir"] / "trials.parquet")
    rows = {r["arm"]: r for r in trials.iter_rows(named=True)}
    assert sorted(rows) == ["Diverges", "Healthy", "Killed", "OutOfMemory"]
    assert rows["Healthy"]["state"] == "completed" and rows["Healthy"]["failure_reason"] is None
    assert all(rows[arm]["state"] == "failed" for arm in ("Diverges", "Killed", "OutOfMemory"))
    assert rows["OutOfMemory"]["failure_reason"].startswith("out of memory: ")
    assert f"resources.memory_limit_mb: {MEMORY_LIMIT_MB}" in rows["OutOfMemory"]["failure_reason"]
    assert rows["Diverges"]["failure_reason"] == "TrainingDiverged: meta-loss is nan at iteration 4"
    assert rows["Killed"]["failure_reason"].startswith("the trial's worker process on node ")
    assert "worker process has died" in rows["Killed"]["failure_reason"]
    assert rows["Diverges"]["iterations_done"] == rows["Killed"]["iterations_done"] == 2
    assert "3 trial(s) failed" in resumed.stdout


def test_every_table_reads_back_and_the_report_lists_the_failures(faults_run: dict[str, Any]) -> None:
    # after the resume, every Parquet file is whole; the report's Failures section names each reason
    run_dir = faults_run["run_dir"]
    files = parquet_files(run_dir)
    assert all(isinstance(rows, int) for rows in files.values()), files
    episodes = files["episodes.parquet"]
    assert files["trials.parquet"] == 4 and isinstance(episodes, int) and episodes > 0
    report = html.unescape((run_dir / "report.html").read_text(encoding="utf-8"))
    failures = report[report.index('id="failures"') :]
    trials = pl.read_parquet(run_dir / "trials.parquet").filter(pl.col("state") == "failed")
    for reason in trials["failure_reason"]:
        assert reason in failures, reason
