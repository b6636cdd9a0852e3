"""The report in a real browser: headless Chromium (Debian package ``chromium``) loads it with the network
cut off, and the page must show rendered charts and log no JavaScript error.

Chromium is installed by the README's test command (``make test``); these tests never install it and never
skip: without it they fail and say so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmlo.reports.html import write_report
from PIL import Image

pytestmark = pytest.mark.browser

#: stack.md's flags, plus a resolver that fails every host name: the page must not need the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=10000",
    "--enable-logging=stderr",
    "--v=0",
)


def _chromium() -> str:
    path = os.environ.get("MMLO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    if path is None:
        pytest.fail(
            "headless Chromium is not installed: run `make test` (it installs the Debian package 'chromium'), "
            "or `sudo apt-get install chromium`, or point MMLO_CHROMIUM at a Chromium binary"
        )
    return path


def _browse(report: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    command = [_chromium(), *FLAGS, f"--user-data-dir={profile}", *args, report.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def check_rendered(report: Path, tmp_path: Path) -> Path:
    """Assert the charts of ``report`` rendered without JavaScript errors; return its 1200 px screenshot."""
    shot = tmp_path / f"{report.stem}.png"
    dom = _browse(report, tmp_path, "--dump-dom", f"--screenshot={shot}", "--window-size=1200,2400")
    assert dom.returncode == 0 and shot.exists(), dom.stderr[-2000:]
    page = dom.stdout
    assert "Uncaught" not in dom.stderr, [line for line in dom.stderr.splitlines() if "Uncaught" in line]
    root = re.search(r"<html[^>]*>", page)
    assert root is not None
    assert "data-js-errors" not in root.group(0), re.search(r'id="mmlo-js-errors"[^>]*>(.*?)</pre>', page, re.S)
    containers = re.findall(r'<div class="([^"]*\bchart\b[^"]*)" id="(chart-[^"]+)"', page)
    assert containers, "the report has no chart containers"
    done = re.search(r'data-charts-done="(\d+)"', root.group(0))
    assert done is not None and int(done.group(1)) == len(containers), "vega-embed did not finish every chart"
    chunks = re.split(r'<div class="[^"]*\bchart\b[^"]*" id="chart-', page)[1:]
    for (classes, chart_id), body in zip(containers, chunks, strict=True):
        assert "vega-embed" in classes and "chart-error" not in classes, f"{chart_id} did not render"
        assert re.search(r"<(svg|canvas)\b", body), f"{chart_id} has no SVG or canvas content"
        assert body.count("<path") + body.count("<text") > 5, f"{chart_id} drew almost nothing"
    return shot


def assert_not_blank(shot: Path) -> None:
    """The screenshot shows a page: mostly white, but with plenty of ink and the first arm's colour."""
    image = Image.open(shot).convert("RGB")
    assert image.width == 1200
    pixels = np.asarray(image, dtype=np.int32).reshape(-1, 3)
    ink = float(np.mean(pixels.sum(axis=1) < 600))
    assert 0.02 < ink < 0.6, f"{ink:.1%} of the page is ink"
    first_arm = np.array([0x4E, 0x79, 0xA7])
    assert int(np.sum(np.all(np.abs(pixels - first_arm) < 8, axis=1))) > 500, "no bar of the first arm is visible"
    assert len(np.unique(pixels[::7], axis=0)) > 50


# The synthetic run's report renders every chart offline, logs no error, and its screenshot is not blank.
def test_synthetic_report_in_chromium(synthetic_run: Path, tmp_path: Path) -> None:
    report = Path(write_report(synthetic_run, out=tmp_path / "synthetic.html"))
    assert_not_blank(check_rendered(report, tmp_path))


# The same holds for a regression (MSE) report.
def test_regression_report_in_chromium(regression_run: Path, tmp_path: Path) -> None:
    report = Path(write_report(regression_run, out=tmp_path / "regression.html"))
    assert_not_blank(check_rendered(report, tmp_path))


# End to end: `mmlo study studies/smoke.yaml` writes a report that renders offline in Chromium
# (MMLO_SMOKE_RUN may name an existing smoke run directory to skip re-running the study).
@pytest.mark.slow
def test_smoke_study_report_in_chromium(tmp_path: Path) -> None:
    run_dir = Path(os.environ["MMLO_SMOKE_RUN"]) if os.environ.get("MMLO_SMOKE_RUN") else None
    if run_dir is None:
        out = tmp_path / "runs"
        root = Path(__file__).resolve().parents[2]
        study = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmlo.orchestrator",
                "study",
                str(root / "studies" / "smoke.yaml"),
                "--out",
                str(out),
                "--no-dashboard",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            cwd=root,
        )
        assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
        run_dir = out / "smoke"
    report = Path(write_report(run_dir, out=tmp_path / "smoke.html"))
    assert_not_blank(check_rendered(report, tmp_path))


# The check is not vacuous: a report whose chart spec is broken fails it (the error reaches the DOM).
def test_broken_chart_is_detected(synthetic_run: Path, tmp_path: Path) -> None:
    report = Path(write_report(synthetic_run, out=tmp_path / "broken.html"))
    text = report.read_text(encoding="utf-8")
    report.write_text(text.replace('"mark":', '"mark_broken":', 1), encoding="utf-8")
    with pytest.raises(AssertionError, match="did not render|js-errors|chart-01"):
        check_rendered(report, tmp_path)
