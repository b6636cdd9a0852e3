from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from mmlo.orchestrator.provenance import record_dashboard
from mmlo.reports.errors import ReportError
from mmlo.reports.html import render_html, write_pngs, write_report
from mmlo.reports.rundir import load_run


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text of <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _parse(path: Path) -> _Tags:
    parser = _Tags()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def report(synthetic_run: Path) -> Path:
    return Path(write_report(synthetic_run))


# Self-contained: no script, stylesheet, frame or image is loaded from anywhere; links only jump within the page.
def test_no_external_resources(report: Path) -> None:
    parsed = _parse(report)
    for tag, attrs in parsed.tags:
        assert "src" not in attrs, f"<{tag}> loads {attrs['src']}"
        assert tag not in ("link", "iframe", "object", "embed", "img"), f"unexpected <{tag}>"
        if "href" in attrs:
            assert (attrs["href"] or "").startswith("#"), f"<{tag}> links to {attrs['href']}"
    assert not any("@import" in s or "url(" in s for s in parsed.styles)


# The Vega libraries are inlined exactly once for the whole report, and every chart has a spec and a container.
def test_bundle_inlined_once_and_charts_listed(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert text.count("window.vegaEmbed=") == 1
    parsed = _parse(report)
    scripts = [a for t, a in parsed.tags if t == "script"]
    assert len(scripts) == 4  # error hook, spec JSON, library bundle, embedding
    spec_json = re.search(r'<script type="application/json" id="mmlo-specs">(.*?)</script>', text, re.S)
    assert spec_json is not None
    specs = json.loads(spec_json.group(1))
    containers = [a["id"] for t, a in parsed.tags if t == "div" and "chart" in (a.get("class") or "").split()]
    assert containers == list(specs)
    assert len(specs) >= 10
    assert all(spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/v6") for spec in specs.values())
    assert len(text) < 2_000_000


# Sections come in the order, each with a caption.
def test_section_order_and_captions(report: Path) -> None:
    parsed = _parse(report)
    sections = [a["id"] for t, a in parsed.tags if t == "section"]
    assert sections == ["ablation", "modes", "curves", "cost", "search", "transference", "failures"]
    text = report.read_text(encoding="utf-8")
    assert text.count('<p class="caption">') >= len(sections)


# The header names study, benchmark, tasks, budget, seeds, commit, packages, wall time, states, failure reasons.
def test_header_facts(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    head = text[: text.index('<section id="ablation"')]
    for fact in (
        "Study synthetic",
        "offline4: glyphs, emoji, icons, textures",
        "5-way 1-shot, 15 query per class",
        "100 meta-training iterations",
        "0, 1 (episode seed 1234; TPE sampler seed 0)",
        "0123456789abcdef0123456789abcdef01234567",
        "torch 2.13.0",
        "7 min 30 s",
        "search: 3 completed, 2 stopped early, 1 failed",
        "TrainingDiverged: NaN loss at iteration 21",
    ):
        assert fact in head, fact


# The ablation table highlights the best cell per column, marks the baseline, and prints accuracy in percent.
def test_ablation_table_cells(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    table = text[text.index('<section id="ablation"') : text.index('<section id="modes"')]
    assert table.count('class="best"') == 5  # four modes and all modes: KML-ProtoNet everywhere
    assert "baseline</span>" in table
    assert re.search(r"\d\d\.\d\d ± \d\.\d\d", table)
    assert "seeds (k=2)" in table and "Δ +" in table


# Dashboards: the optuna-dashboard command appears when the journal exists; a recorded Ray URL becomes a link.
def test_dashboard_links(make_run) -> None:
    run_dir = make_run(name="dashboards")
    (run_dir / "optuna.journal").write_text("")
    record_dashboard(run_dir, "http://127.0.0.1:8265")  # as the driver records the URL it printed
    text = Path(write_report(run_dir)).read_text(encoding="utf-8")
    assert f"optuna-dashboard {run_dir.resolve() / 'optuna.journal'}" in text
    assert '<a href="http://127.0.0.1:8265">' in text


# A regression study has the same structure with MSE, lower is better, and no transference section without data.
def test_regression_report(regression_run: Path, tmp_path: Path) -> None:
    out = Path(write_report(regression_run, out=tmp_path / "r.html"))
    assert out == (tmp_path / "r.html").resolve()
    text = out.read_text(encoding="utf-8")
    assert "MSE (lower is better)" in text
    assert "lower is better" in text[text.index('<section id="ablation"') :]
    sections = [a["id"] for t, a in _parse(out).tags if t == "section"]
    assert sections == ["ablation", "modes", "curves", "cost", "search", "failures"]
    table = text[text.index('<section id="ablation"') : text.index('<section id="modes"')]
    # A row's name cell: the arm, then (in a sub-line) its budget.
    names = [row.split("</td>")[0].split('<span class="sub">')[0] for row in table.split("<tr>")[2:]]
    rows = {re.sub(r"<.*?>", "", name): row for name, row in zip(names, table.split("<tr>")[2:], strict=True)}
    # The synthetic KML arm has the lowest MSE in both modes: its three cells are the highlighted ones.
    assert rows["KML-ProtoNet"].count('class="best"') == 3
    assert table.count('class="best"') == 3


# A study whose ablation trials all failed still gets a report that lists the failures.
def test_all_failed_study(make_run) -> None:
    run_dir = make_run(name="all-failed", transference=False)
    trials = pl.read_parquet(run_dir / "trials.parquet").with_columns(
        state=pl.lit("failed"), failure_reason=pl.lit("CUDA out of memory"), val_metric=pl.lit(None, dtype=pl.Float64)
    )
    trials.write_parquet(run_dir / "trials.parquet")
    (run_dir / "episodes.parquet").unlink()
    (run_dir / "progress.parquet").unlink()
    text = Path(write_report(run_dir)).read_text(encoding="utf-8")
    assert "No test episodes were recorded" in text
    assert text.count("CUDA out of memory") >= 2


# A missing run directory is a ReportError (the CLI turns it into exit code 2), and nothing is written.
def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ReportError):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


# --png writes each chart as a real PNG file named after its chart id.
def test_png_export(synthetic_run: Path, tmp_path: Path) -> None:
    run = load_run(synthetic_run)
    _, specs = render_html(run)
    first = dict(list(specs.items())[:2])
    paths = write_pngs(first, tmp_path / "png", scale=1.0)
    assert [p.name for p in paths] == [f"{k.removeprefix('chart-')}.png" for k in first]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# reports/ reads Parquet only: importing and running it loads neither torch, Ray nor the orchestrator.
def test_no_heavy_imports(synthetic_run: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from mmlo.reports.html import write_report; "
        f"write_report({str(synthetic_run)!r}, out={str(tmp_path / 'x.html')!r}); "
        "bad = [m for m in ('torch', 'ray', 'mmlo.orchestrator', 'mmlo.models') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# A search-only study (no arms) says so in the ablation sections instead of pretending trials failed.
def test_search_only_study(make_run) -> None:
    run_dir = make_run(name="search-only", transference=False)
    for table in ("trials", "episodes", "progress"):
        frame = pl.read_parquet(run_dir / f"{table}.parquet")
        frame.filter(pl.col("phase") == "search").write_parquet(run_dir / f"{table}.parquet")
    text = Path(write_report(run_dir)).read_text(encoding="utf-8")
    assert text.count("This study ran no ablation arms") == 3
    assert '<section id="search">' in text


# A confirmed search configuration sits right below its base arm, tagged, with its values and Δ vs the base arm.
def test_confirmed_configuration_beside_its_base_arm(make_run) -> None:
    run = load_run(make_run(name="confirmed", confirm=0.05))
    tuned = "KML-ProtoNet, tuned (search-000)"
    assert run.arms == ("ProtoNet", "MMAML (FiLM)", "KML-ProtoNet", tuned)
    text = Path(write_report(run.run_dir)).read_text(encoding="utf-8")
    table = text[text.index('<section id="ablation"') : text.index('<section id="modes"')]
    rows = re.findall(r'<td class="name">(.*?)</td>', table)
    assert rows[-2].startswith("KML-ProtoNet") and rows[-1].startswith(tuned)
    assert "search, confirmed" in rows[-1] and "lr 0.003" in rows[-1]
    tuned_row = table[table.index(tuned) :]
    assert tuned_row.count("Δ vs base +") == 5 and 'class="sub better"' in tuned_row


# The search section says in words whether the search beat its base arm, by how much, and what ASHA kept.
@pytest.mark.parametrize(("shift", "verdict"), [(0.05, "The search beat its base arm, KML-ProtoNet."),
                                                (-0.05, "The search did not beat its base arm, KML-ProtoNet.")])
def test_search_outcome_in_words(make_run, shift: float, verdict: str) -> None:
    run_dir = make_run(name=f"outcome{shift}", confirm=shift)
    text = Path(write_report(run_dir)).read_text(encoding="utf-8")
    search = text[text.index('<section id="search"') : text.index('<section id="transference"')]
    found = re.search(r'<p class="finding">(.*?)</p>', search)
    assert found is not None
    finding = found.group(1)
    assert finding.startswith(f"<strong>{verdict}</strong>")
    assert "the base arm&#x27;s own configuration (search-005) was stopped early." in finding
    assert "Its best configuration, search-000 (learner kml · kml_variant residual · lr 0.003), re-run" in finding
    sign = re.escape("+" if shift > 0 else "-")
    assert re.search(sign + r"[45]\.\d\d ± \d\.\d\d points, paired over 80 test episodes", finding), finding
    assert "at iteration 40 it kept 4 of the 5 trials that reached it" in search
    assert "search-005 <span class=\"tag\">base arm's configuration</span>" in search  # marked in the best table
