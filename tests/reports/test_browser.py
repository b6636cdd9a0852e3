"""The report in a real browser: headless Chromium (Debian package ``chromium``) loads it with the network
cut off, and the page must show rendered charts and log no JavaScript error.

Chromium is installed by the README's test command (``make test``); these tests never install it and never
skip: without it they fail and say so.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmlo.reports.charts import ARM_COLOURS
from mmlo.reports.html import write_report
from mmlo.reports.rundir import load_run

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


def check_rendered(report: Path, tmp_path: Path) -> tuple[Path, str]:
    """Assert the charts of ``report`` rendered without JavaScript errors; return its 1200 px screenshot and the
    page as the browser left it (the DOM, with every chart's SVG)."""
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
    for (classes, chart_id), body in zip(containers, _chart_bodies(page), strict=True):
        assert "vega-embed" in classes and "chart-error" not in classes, f"{chart_id} did not render"
        assert re.search(r"<(svg|canvas)\b", body), f"{chart_id} has no SVG or canvas content"
        assert body.count("<path") + body.count("<text") > 5, f"{chart_id} drew almost nothing"
    return shot, page


def _chart_bodies(page: str) -> list[str]:
    """The markup of each chart container, in page order."""
    return re.split(r'<div class="[^"]*\bchart\b[^"]*" id="chart-', page)[1:]


def drawn_bars(page: str) -> dict[str, dict[str, str]]:
    """The bars of the per-mode chart as the browser drew them: arm -> mode -> fill colour. Vega's SVG scenegraph
    has one ``<path>`` per bar, labelled with its fields; legend swatches and other charts' marks are not bars
    of this chart. A bar of zero height is an error."""
    body = next(b for b in _chart_bodies(page) if re.match(r"\d+-mode-bars\b", b))
    drawn: dict[str, dict[str, str]] = {}
    for label, path, fill in re.findall(
        r'<path aria-label="([^"]*)"[^>]*aria-roledescription="bar" d="([^"]*)" fill="([^"]*)"', body
    ):
        fields = dict(part.split(": ", 1) for part in html.unescape(label).split("; "))
        heights = [abs(float(v)) for v in re.findall(r"v(-?[\d.]+)", path)]
        assert heights and max(heights) > 0, f"the bar of {fields['arm']} in {fields['mode']} has no height"
        drawn.setdefault(fields["arm"], {})[fields["mode"]] = fill
    return drawn


def assert_every_arm_has_bars(page: str, run_dir: Path) -> None:
    """Every arm of the report has a bar in every mode (and all modes), in its own colour of the palette."""
    run = load_run(run_dir)
    expected = {
        arm: dict.fromkeys([*run.modes, "all modes"], ARM_COLOURS[i % len(ARM_COLOURS)])
        for i, arm in enumerate(run.arms)
    }
    assert drawn_bars(page) == expected


def assert_not_blank(shot: Path) -> None:
    """The screenshot shows a page: mostly white, with plenty of ink in many colours."""
    image = Image.open(shot).convert("RGB")
    assert image.width == 1200
    pixels = np.asarray(image, dtype=np.int32).reshape(-1, 3)
    ink = float(np.mean(pixels.sum(axis=1) < 600))
    assert 0.02 < ink < 0.6, f"{ink:.1%} of the page is ink"
    assert len(np.unique(pixels[::7], axis=0)) > 50


def check_report(run_dir: Path, report: Path, tmp_path: Path) -> None:
    """The whole browser check of one report: it renders, every arm's bars are drawn, the page is not blank."""
    shot, page = check_rendered(report, tmp_path)
    assert_every_arm_has_bars(page, run_dir)
    assert_not_blank(shot)


# The synthetic run's report renders every chart offline, logs no error, draws every arm's bars, and its
# screenshot is not blank.
def test_synthetic_report_in_chromium(synthetic_run: Path, tmp_path: Path) -> None:
    report = Path(write_report(synthetic_run, out=tmp_path / "synthetic.html"))
    check_report(synthetic_run, report, tmp_path)


# The same holds for a regression (MSE) report.
def test_regression_report_in_chromium(regression_run: Path, tmp_path: Path) -> None:
    report = Path(write_report(regression_run, out=tmp_path / "regression.html"))
    check_report(regression_run, report, tmp_path)


# End to end: the report of `mmlo study studies/smoke.yaml` (the session's shared smoke run) renders offline.
@pytest.mark.slow
def test_smoke_study_report_in_chromium(smoke_run: Any, tmp_path: Path) -> None:
    report = Path(write_report(smoke_run.run_dir, out=tmp_path / "smoke.html"))
    check_report(smoke_run.run_dir, report, tmp_path)


# The check is not vacuous: a report whose chart spec is broken fails it (the error reaches the DOM).
def test_broken_chart_is_detected(synthetic_run: Path, tmp_path: Path) -> None:
    report = Path(write_report(synthetic_run, out=tmp_path / "broken.html"))
    text = report.read_text(encoding="utf-8")
    report.write_text(text.replace('"mark":', '"mark_broken":', 1), encoding="utf-8")
    with pytest.raises(AssertionError, match="did not render|js-errors|chart-01"):
        check_rendered(report, tmp_path)


# Nor is the bar check: a report whose bar chart lost one arm's rows renders, but fails it by that arm.
def test_missing_arm_is_detected(synthetic_run: Path, tmp_path: Path) -> None:
    report = Path(write_report(synthetic_run, out=tmp_path / "one-arm-short.html"))
    text = report.read_text(encoding="utf-8")
    block = re.search(r'(<script type="application/json" id="mmlo-specs">)(.*?)(</script>)', text, re.S)
    assert block is not None
    specs = json.loads(block.group(2))
    bars = next(spec for chart_id, spec in specs.items() if chart_id.endswith("-mode-bars"))
    for name, rows in bars["datasets"].items():
        bars["datasets"][name] = [row for row in rows if row.get("arm") != "MMAML (FiLM)"]
    doctored = json.dumps(specs, separators=(",", ":")).replace("<", "\\u003c")
    report.write_text(text[: block.start(2)] + doctored + text[block.end(2) :], encoding="utf-8")
    _, page = check_rendered(report, tmp_path)
    assert "MMAML (FiLM)" not in drawn_bars(page)
    with pytest.raises(AssertionError):
        assert_every_arm_has_bars(page, synthetic_run)
