"""The report's page: one self-contained HTML document around its sections.

The Vega, Vega-Lite and vega-embed JavaScript comes from vl-convert and is inlined once for the whole page;
chart specs travel as one JSON block; the styles (``assets/report.css``) and the two small scripts
(``assets/errors.js`` shows any JavaScript error on the page, ``assets/embed.js`` draws every chart) are
inlined too. Nothing is fetched, so the file opens offline, in e-mail, or years later.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import altair as alt

from mmlo.reports.format import escape

#: Vega-Lite version of the specs altair writes, e.g. "6.4"; vl-convert bundles the matching library.
VEGALITE_VERSION = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])

ASSETS = Path(__file__).resolve().with_name("assets")

#: A block of a section: HTML text, or a chart with the name its container id ends with.
Block = str | tuple[str, alt.TopLevelMixin]


@dataclass
class Section:
    """One ``<section>``: a heading, a one-line caption, then blocks (HTML strings or charts) in order."""

    anchor: str
    title: str
    caption: str
    blocks: list[Block] = field(default_factory=list)


@functools.cache
def asset(name: str) -> str:
    """The text of ``assets/<name>``."""
    return (ASSETS / name).read_text(encoding="utf-8")


def vegalite_version() -> str | None:
    """The Vega-Lite version vl-convert should use: the one altair writes when vl-convert has it, else its own."""
    import vl_convert

    return VEGALITE_VERSION if VEGALITE_VERSION in vl_convert.get_vegalite_versions() else None


@functools.cache
def javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (vl-convert bundles them; ~0.9 MB, ~2 s once)."""
    import vl_convert

    # vl-convert's stub marks ``snippet`` required; it defaults to None (the library's own snippet)
    bundle = vl_convert.javascript_bundle(vl_version=vegalite_version())  # type: ignore[call-arg]
    # The bundle is inlined in a <script> element: a literal closing tag would end it early.
    return bundle.replace("</script", "<\\/script")


def _section_html(section: Section, specs: dict[str, dict[str, Any]]) -> str:
    """The HTML of one section; each chart gets a numbered container and its spec goes into ``specs``."""
    parts = [
        f'<section id="{section.anchor}"><h2>{escape(section.title)}</h2>'
        f'<p class="caption">{escape(section.caption)}</p>'
    ]
    for block in section.blocks:
        if isinstance(block, str):
            parts.append(block)
            continue
        name, chart = block
        chart_id = f"chart-{len(specs) + 1:02d}-{name}"
        specs[chart_id] = chart.to_dict()
        parts.append(f'<div class="chart" id="{chart_id}" role="img" aria-label="{escape(name)}"></div>')
    parts.append("</section>")
    return "".join(parts)


def render_page(
    title: str, header: str, sections: Sequence[Section], source: str
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The complete HTML document (``header`` HTML, a link to each section, the sections, a footer naming
    ``source``) and the Vega-Lite spec of every chart, by chart id."""
    specs: dict[str, dict[str, Any]] = {}
    nav = " ".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in sections)
    body = [header, f"<nav>{nav}</nav>", *(_section_html(s, specs) for s in sections)]
    spec_json = json.dumps(specs, separators=(",", ":")).replace("<", "\\u003c")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>\n{asset('report.css')}</style>"
        f"<script>\n{asset('errors.js')}</script></head><body><main>"
        '<pre id="mmlo-js-errors" hidden></pre>'
        + "".join(body)
        + f'<p class="caption">Generated {generated} by <code>mmlo report</code> from {escape(source)}.</p>'
        f'</main><script type="application/json" id="mmlo-specs">{spec_json}</script>'
        f"<script>{javascript_bundle()}</script><script>\n{asset('embed.js')}</script></body></html>\n"
    )
    return document, specs
