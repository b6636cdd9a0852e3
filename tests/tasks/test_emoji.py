"""emoji: a variant that a style does not draw as one glyph is refused, never drawn as its pieces."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mmlo.tasks import offline4
from mmlo.tasks.errors import DataMissingError
from mmlo.tasks.offline4 import emoji


def test_variant_not_drawn_as_one_glyph_is_refused(needs_sources: Callable[..., None]) -> None:
    # Two regional indicators that name no country (X X) are two glyphs in OpenMoji (sample 1's style):
    # the sample raises DataMissingError naming the package versions of the index.
    needs_sources("emoji")
    table = offline4.load_index()["emoji"].table
    with pytest.raises(DataMissingError, match="openmoji does not draw 1f1fd-1f1fd as one glyph"):
        emoji.render_sample(table, "1f1fd-1f1fd", [["1f1fd", "1f1fd-1f1fd"]], 1)
    assert emoji.render_sample(table, "1f600", [["1f600", "1f600"]], 1).size == (64, 64)
