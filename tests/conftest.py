"""Session-wide test settings (one CPU thread for torch, Ray's CI settings, an isolated data cache), the
session's shared resources (a moto S3 server and one finished smoke study), and the no-skip rule of `make test`.

A test skips only where a resource it needs is missing, and its reason names that resource (and how to get
it). CI (`.ci/run`: `make test`, which installs every resource first, as root) sets ``MMLO_NO_SKIPS=1``: there
a skip means the set-up failed, so the session fails and lists each skip, instead of passing with part of the
suite left out."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
#: Set by CI (.ci/run): any skip fails the session.
NO_SKIPS = os.environ.get("MMLO_NO_SKIPS") == "1"
_skipped: list[str] = []


def _note_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note_skip(report)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note_skip(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped:
        lines = "\n  ".join(_skipped)
        print(f"\nmmlo: MMLO_NO_SKIPS=1 (CI), yet {len(_skipped)} test(s) skipped; install what each names:\n  {lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
#: The longest the shared smoke study may take.
SMOKE_TIMEOUT_S = 900


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's ~/.cache/mmlo."""
    if "MMLO_CACHE" not in os.environ:
        os.environ["MMLO_CACHE"] = str(tmp_path_factory.mktemp("mmlo-cache"))


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server for the tests that need object storage (stopped by its process id), one bucket, 'runs';
    yields the URI query that reaches it. Sets test credentials in this process's environment meanwhile."""
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        deadline = time.monotonic() + 120  # a guard against a hang: moto starts slowly on a loaded machine
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        import pyarrow.fs

        pyarrow.fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
        ).create_dir("runs")
        yield f"endpoint_override=http://127.0.0.1:{port}&region=us-east-1&scheme=http"
    finally:
        server.kill()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass(frozen=True)
class SmokeRun:
    """The finished run of ``mmlo study studies/smoke.yaml``: the CLI's outcome and the run directory."""

    result: subprocess.CompletedProcess[str]
    run_dir: Path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """One `mmlo study studies/smoke.yaml` through the real CLI, shared by every test that only reads its run
    directory (a test that changes it works on a copy)."""
    out = tmp_path_factory.mktemp("smoke")
    command = [str(Path(sys.executable).with_name("mmlo")), "study", str(ROOT / "studies" / "smoke.yaml"),
               "--out", str(out), "--no-dashboard"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return SmokeRun(result, out / "smoke")
