"""The offline HTML ablation report of a run directory (``mmlo report RUN_DIR``).

One self-contained file (:mod:`mmlo.reports.page`): the header (:mod:`mmlo.reports.header`), then the
sections (:mod:`mmlo.reports.sections`), each opening with a one-line caption that says how to read it.
``png_dir`` also writes every chart as a PNG (vl-convert).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmlo.reports.errors import ReportError
from mmlo.reports.header import header
from mmlo.reports.page import render_page, vegalite_version
from mmlo.reports.rundir import RunData, load_run
from mmlo.reports.sections import build_sections
from mmlo.storage import REPORT_FILE, RunStore


def render_html(run: RunData) -> tuple[str, dict[str, dict[str, Any]]]:
    """The complete HTML document of ``run`` and the Vega-Lite spec of every chart, by chart id."""
    return render_page(f"mmlo report: {run.study_name}", header(run), build_sections(run), run.run_dir)


def _write_file(path: Path, data: bytes) -> None:
    """A local file, written atomically by the run directory's own writer."""
    RunStore.open(path.parent).write_bytes(path.name, data)


def write_pngs(specs: Mapping[str, dict[str, Any]], png_dir: Path, scale: float = 2.0) -> list[Path]:
    """Each chart as ``<png_dir>/<chart id>.png`` (rendered by vl-convert at ``scale``); returns the paths."""
    import vl_convert

    png_dir.mkdir(parents=True, exist_ok=True)
    version = vegalite_version()
    paths = []
    for chart_id, spec in specs.items():
        path = png_dir / f"{chart_id.removeprefix('chart-')}.png"
        _write_file(path, vl_convert.vegalite_to_png(spec, vl_version=version, scale=scale))
        paths.append(path)
    return paths


def write_report(run_dir: RunStore | Path | str, out: Path | None = None, png_dir: Path | None = None) -> str:
    """Write the report of ``run_dir`` (a local path or a storage URI) to ``out`` (a local file; default
    ``report.html`` in the run directory); return where it is, as a user reads it.

    Raises ReportError when the run directory is missing, is not a run directory, or has no finished trial.
    """
    run = load_run(run_dir)
    document, specs = render_html(run)
    data = document.encode("utf-8")
    try:
        if out is None:
            run.store.write_bytes(REPORT_FILE, data)
            target = run.store.where(REPORT_FILE)
        else:
            path = Path(out).expanduser().resolve()
            _write_file(path, data)
            target = str(path)
        if png_dir is not None:
            write_pngs(specs, Path(png_dir).expanduser().resolve())
    except OSError as err:
        raise ReportError(f"cannot write the report: {err}") from None
    return target
