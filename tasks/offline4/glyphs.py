"""The ``glyphs`` mode of offline4: letters of many Unicode scripts, drawn as Omniglot draws characters.

A class is one letter (key ``<script>-<code point hex>``, e.g. ``Latn-0041``); its samples vary the font
design (every installed font of fonts-noto-core, fonts-unifont, fonts-freefont-ttf and fonts-dejavu-core
that covers the letter, as listed in the committed index), the pen width (a 3x3 min or max filter at 64 px),
a random affine pose and an elastic warp. Images are dark ink on white, one grey channel (the episode
sampler tiles it to RGB).

Index table (``table``): ``fonts``, a list of ``[Debian path, package]``, and ``packages``, the Debian
package versions the index was built from. Class entry: the list of font ids that draw the letter.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mmlo.tasks.errors import DataMissingError
from mmlo.tasks.offline4.raster import downsample, elastic_warp, fit_to_frame, random_affine, sample_rng
from mmlo.tasks.offline4.sources import Source, apt_install, describe_names, locate_font

MODE = "glyphs"
CHANNELS = 1
#: Pixel size letters are drawn at before being framed: large enough that framing only ever shrinks them.
FONT_SIZE = 80
#: Unifont's native pixel grid (em size in pixels).
UNIFONT_GRID = 16
#: A code point no font maps: what a font draws for it is its missing-glyph box.
_NONCHARACTER = "\U0010ffff"
#: A thinner pen is used only where it keeps this share of the ink, i.e. on strokes of 7 px and more (bold
#: faces): eroding thinner strokes, or Unifont's pixels that touch only at their corners, breaks letters
#: into dashes.
_MIN_INK_KEPT = 0.7


def sources(table: Mapping[str, Any], classes: Sequence[tuple[str, Any]]) -> list[Source]:
    """One source per Debian font package the index uses: present when every font file the ``classes`` are
    drawn with is found. (A font that lacks one of its letters, from another package version, is refused
    when the letter is drawn: :func:`render_sample`.)"""
    used = {int(f) for _, fonts in classes for f in fonts}
    missing: dict[str, list[str]] = {package: [] for _, package in table["fonts"]}
    for font_id, (path, package) in enumerate(table["fonts"]):
        if font_id in used and locate_font(path) is None:
            missing[package].append(path.rsplit("/", 1)[-1])
    return [
        Source(
            f"Debian package {package}",
            not names,
            apt_install([package]),
            f"{len(names)} font files not found ({describe_names(names)})" if names else "",
        )
        for package, names in sorted(missing.items())
    ]


def letter(key: str) -> str:
    """The character of class ``key`` (``Latn-0041`` -> ``A``)."""
    return chr(int(key.rsplit("-", 1)[1], 16))


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    located = locate_font(path)
    if located is None:
        raise FileNotFoundError(path)
    return ImageFont.truetype(str(located), size, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=512)
def draw_letter(path: str, char: str, size: int = FONT_SIZE) -> Image.Image:
    """The letter's ink (white on black, L mode) in one font, cropped to its box; empty if the font draws
    nothing for it. Unifont, a bitmap design, is drawn on its own pixel grid and smoothed into pen strokes
    (see :func:`_smoothed_bitmap`)."""
    if path.rsplit("/", 1)[-1].startswith("unifont"):
        return _smoothed_bitmap(path, char, size)
    return _outline(path, char, size)


@functools.lru_cache(maxsize=512)
def covers(path: str, char: str) -> bool:
    """Whether the font draws ``char`` with a glyph of its own rather than its missing-glyph box."""
    drawn = _outline(path, char, UNIFONT_GRID)
    notdef = _outline(path, _NONCHARACTER, UNIFONT_GRID)
    return drawn.size != notdef.size or drawn.tobytes() != notdef.tobytes()


def _outline(path: str, char: str, size: int, margin: int = 2) -> Image.Image:
    font = _font(path, size)
    left, top, right, bottom = font.getbbox(char)  # whole pixels: Pillow's floats come from a stroke width, unused
    width, height = int(right - left), int(bottom - top)
    canvas = Image.new("L", (max(1, width) + 2 * margin, max(1, height) + 2 * margin), 0)
    ImageDraw.Draw(canvas).text((margin - left, margin - top), char, font=font, fill=255)
    return canvas


def _smoothed_bitmap(path: str, char: str, size: int) -> Image.Image:
    """Unifont's 16 px bitmap scaled up and blurred, then re-sharpened by a contrast ramp: pixels that touch
    only at their corners (every diagonal stroke) join into one line instead of falling apart into dots
    once the letter is posed and shrunk to 32 px."""
    bitmap = _outline(path, char, UNIFONT_GRID, margin=3)
    scale = size / UNIFONT_GRID
    large = bitmap.resize((round(bitmap.width * scale), round(bitmap.height * scale)), Image.Resampling.BICUBIC)
    blurred = np.asarray(large.filter(ImageFilter.GaussianBlur(0.4 * scale)), dtype=np.float32)
    return Image.fromarray(np.clip((blurred - 64.0) * 4.0, 0.0, 255.0).astype(np.uint8), mode="L")


def render_sample(table: Mapping[str, Any], key: str, fonts: Sequence[int], index: int) -> Image.Image:
    """Sample ``index`` of letter ``key`` at the 64 px working size, dark ink on white (L mode)."""
    rng = sample_rng(MODE, key, index)
    path, package = table["fonts"][int(fonts[int(rng.integers(len(fonts)))])]
    if not covers(path, letter(key)):
        raise DataMissingError(
            f"{path.rsplit('/', 1)[-1]} has no glyph for {key}: the class index was built with {package} "
            f"{table['packages'].get(package, '?')}; install that version ({apt_install([package])}) or "
            "rebuild the index (python scripts/build_offline4_index.py), which changes its hash"
        )
    ink = fit_to_frame(draw_letter(path, letter(key)), rng)
    pen = int(rng.integers(3))
    if pen == 0:
        thinner = ink.filter(ImageFilter.MinFilter(3))
        if np.asarray(thinner).sum() >= _MIN_INK_KEPT * np.asarray(ink).sum():
            ink = thinner
    elif pen == 2:
        ink = ink.filter(ImageFilter.MaxFilter(3))
    ink = random_affine(ink, rng)
    warped = elastic_warp(np.asarray(ink, dtype=np.float32), rng)
    return Image.fromarray((255.0 - np.clip(warped, 0.0, 255.0)).round().astype(np.uint8), mode="L")


def render_class(table: Mapping[str, Any], key: str, entry: Any, samples: int, size: int) -> np.ndarray:
    """``samples`` images of letter ``key`` as uint8 ``[samples, size, size, 1]``."""
    out = np.empty((samples, size, size, 1), dtype=np.uint8)
    for i in range(samples):
        out[i, :, :, 0] = downsample(render_sample(table, key, entry, i), size)
    return out
