"""glyphs: a font that lacks a letter the index assigns it is refused, never drawn as its missing-glyph box."""

from __future__ import annotations

import pytest

from mmlo.tasks.errors import DataMissingError
from mmlo.tasks.offline4 import glyphs
from mmlo.tasks.offline4.sources import locate_font

NOTO_SANS = "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf"


@pytest.fixture
def noto_sans() -> str:
    if locate_font(NOTO_SANS) is None:
        pytest.skip("fonts-noto-core is not installed (sudo apt-get install fonts-noto-core)")
    return NOTO_SANS


def test_covers_tells_a_glyph_from_the_missing_glyph_box(noto_sans: str) -> None:
    # Noto Sans draws Latin A; it has no Tibetan, so THA would come out as its missing-glyph box.
    assert glyphs.covers(noto_sans, "A")
    assert not glyphs.covers(noto_sans, "\u0f50")


def test_a_font_lacking_its_letter_is_refused(noto_sans: str) -> None:
    # An index entry drawing Tibetan THA with Noto Sans (as a different font version could) raises
    # DataMissingError naming the package version the index was built with.
    table = {"fonts": [[noto_sans, "fonts-noto-core"]], "packages": {"fonts-noto-core": "20201225-1"}}
    with pytest.raises(DataMissingError, match="fonts-noto-core 20201225-1"):
        glyphs.render_sample(table, "Tibt-0F50", [0], 0)
    assert glyphs.render_sample(table, "Latn-0041", [0], 0).size == (64, 64)
