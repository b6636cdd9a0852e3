"""The ``icons`` mode of offline4: fine-grained shapes, one concept drawn by many open icon sets.

A class is one concept named alike by at least five Iconify sets (key: the name with style prefixes and
suffixes stripped, e.g. ``bell``); its samples vary the icon set and the set's style (outline, filled,
duotone ...), the ink (a random dark colour) and the ground (a random light one), and the pose. The icon
bodies are vendored in ``assets/offline4_icons.json.gz`` (rebuilt by ``python
scripts/build_offline4_index.py --icons``); the licence of each set is in ``assets/LICENSES``. SVGs are
rasterised with resvg (the ``resvg-py`` package).

Index table: ``sets`` (prefix -> package version and licence), ``bodies_sha256`` (hash of the vendored
bodies). Class entry: the list of variants ``[set prefix, icon name]``. The bodies file holds ``sets``
(as in the table) and ``bodies``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from importlib.util import find_spec
from typing import Any

import numpy as np
from PIL import Image

from mmlo.tasks.offline4.raster import composite, downsample, fit_to_frame, random_affine, sample_rng
from mmlo.tasks.offline4.sources import ASSETS, Source, pip_install

MODE = "icons"
CHANNELS = 3
BODIES_FILE = "offline4_icons.json.gz"
#: Icons are rasterised larger than the working size so that framing only ever shrinks them.
RASTER_SIZE = 96


def bodies_bytes() -> bytes:
    """The vendored icon bodies file, as committed (gzip-compressed JSON)."""
    return (ASSETS / BODIES_FILE).read_bytes()


@functools.cache
def bodies(expected_sha256: str) -> dict[str, dict[str, list[Any]]]:
    """The vendored icon bodies, checked against the hash the class index recorded for them:
    ``prefix -> icon name -> [body, left, top, width, height]``."""
    raw = bodies_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        raise ValueError(
            f"{BODIES_FILE} has sha256 {digest[:16]}..., the class index expects {expected_sha256[:16]}...: "
            "rebuild both with `python scripts/build_offline4_index.py --icons`"
        )
    return json.loads(gzip.decompress(raw))["bodies"]


def sources(table: Mapping[str, Any], classes: Sequence[tuple[str, Any]]) -> list[Source]:
    """The rasteriser (pip ``resvg-py``); the icon bodies themselves ship with mmlo."""
    return [
        Source("Python package resvg-py (SVG rasteriser)", find_spec("resvg_py") is not None, pip_install("resvg-py"))
    ]


def svg_of(icon: Sequence[Any], ink: str, size: int = RASTER_SIZE) -> str:
    """An Iconify body wrapped in a standalone ``<svg>``; ``currentColor`` resolves to ``ink``."""
    body, left, top, width, height = icon
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left} {top} {width} {height}" width="{size}" height="{size}" color="{ink}">{body}</svg>'
    )


def rasterise(svg: str) -> Image.Image:
    """An SVG document as an RGBA image."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True)
    with Image.open(io.BytesIO(bytes(png))) as image:
        return image.convert("RGBA")


def render_sample(table: Mapping[str, Any], key: str, variants: Sequence[Sequence[str]], index: int) -> Image.Image:
    """Sample ``index`` of concept ``key`` at the 64 px working size (RGB)."""
    rng = sample_rng(MODE, key, index)
    sets = sorted({prefix for prefix, _ in variants})
    chosen_set = sets[int(rng.integers(len(sets)))]
    names = [name for prefix, name in variants if prefix == chosen_set]
    name = names[int(rng.integers(len(names)))]
    ink = rng.integers(0, 96, size=3)
    ground = rng.integers(200, 256, size=3)
    icon = bodies(table["bodies_sha256"])[chosen_set][name]
    picture = rasterise(svg_of(icon, "#{:02x}{:02x}{:02x}".format(*ink.tolist())))
    posed = random_affine(fit_to_frame(picture, rng), rng, rotation=10.0, shear=0.1)
    return composite(posed, (int(ground[0]), int(ground[1]), int(ground[2])))


def render_class(table: Mapping[str, Any], key: str, entry: Any, samples: int, size: int) -> np.ndarray:
    """``samples`` images of icon concept ``key`` as uint8 ``[samples, size, size, 3]``."""
    return np.stack([downsample(render_sample(table, key, entry, i), size) for i in range(samples)])
