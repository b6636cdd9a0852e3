"""How the report writes values into HTML: escaping, metric numbers, counts, durations, times and plain tables.

One precision per report for metric values (:class:`Numbers`) keeps a column of numbers aligned; every
other value goes through :func:`escape` before it reaches the page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import polars as pl

#: What a cell shows for a missing value.
MISSING = "–"


def escape(value: object) -> str:
    """``value`` as HTML text (quotes escaped too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def duration(seconds: float) -> str:
    """Seconds as a reader wants them: '12.5 s', '7 min 30 s', '2 h 05 min'."""
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def when(stamp: Any) -> str:
    """An ISO 8601 time stamp as 'YYYY-MM-DD HH:MM:SS +zone' (other text unchanged)."""
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S %z").strip()


def count(value: Any) -> str:
    """An integer with thousands separators."""
    return MISSING if value is None else f"{int(value):,}"


def param_value(value: Any) -> str:
    """A searched value as a reader wants it: floats to 4 significant digits, everything else as is."""
    if value is None:
        return MISSING
    return f"{value:.4g}" if isinstance(value, float) else escape(value)


def first_line(reason: str | None, limit: int = 160) -> str:
    """The first line of a failure reason, cut to ``limit`` characters."""
    lines = (reason or "").strip().splitlines()
    text = lines[0] if lines else "no reason recorded"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Numbers:
    """Formats metric values with one precision per report: accuracy in percent with 2 decimals, MSE with
    four significant digits of the largest value, so a column of numbers lines up."""

    def __init__(self, metric_name: str, values: Iterable[float | None]):
        self.percent = metric_name == "accuracy"
        finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
        largest = max(finite, default=1.0) or 1.0
        self.decimals = 2 if self.percent else min(max(3 - math.floor(math.log10(largest)), 1), 6)
        self.unit = "accuracy (%)" if self.percent else ("MSE" if metric_name == "mse" else metric_name)

    def __call__(self, value: float | None, signed: bool = False) -> str:
        if value is None or not math.isfinite(value):
            return MISSING
        scaled = value * 100 if self.percent else value
        return f"{scaled:+.{self.decimals}f}" if signed else f"{scaled:.{self.decimals}f}"

    def interval(self, mean: float | None, half: float | None, signed: bool = False) -> str:
        """'mean ± half' (just the mean when the half-width is unknown)."""
        text = self(mean, signed)
        return text if half is None or not math.isfinite(half) else f"{text} ± {self(half)}"


def html_table(
    frame: pl.DataFrame, headers: Mapping[str, str], formats: Mapping[str, Callable[[Any], str]] | None = None
) -> str:
    """A plain table: ``headers`` maps column -> header text; ``formats`` column -> value formatter (it returns
    HTML); other values are escaped. The first column is the row's name, left-aligned."""
    formats = formats or {}
    head = "".join(
        f'<th class="{"name" if i == 0 else ""}">{escape(h)}</th>' for i, h in enumerate(headers.values())
    )
    rows = []
    for record in frame.iter_rows(named=True):
        cells = []
        for i, column in enumerate(headers):
            value = record.get(column)
            text = formats[column](value) if column in formats else (MISSING if value is None else escape(value))
            cells.append(f'<td class="{"name" if i == 0 else ""}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
