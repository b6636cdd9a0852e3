"""``offline4``: the built-in multimodal image benchmark (glyphs, emoji, icons, textures).

Four visually distinct modes stand in for the papers' datasets on machines that reach package registries
but no dataset host: ``glyphs`` (Omniglot), ``emoji`` (natural objects), ``icons`` (fine-grained shapes),
``textures`` (CIFAR-like full frames). Each mode's train, val and test classes are disjoint and fixed by a
committed class index (``assets/offline4_index.json.gz``, built by ``python -m
mmlo.tasks.build_offline4_index``) whose sha256 is checked on load and enters the benchmark fingerprint.

Images are rendered from installed fonts and packages (:mod:`mmlo.tasks.sources`), never downloaded by a
trial: a bank (one mode's split at one image size and ``samples_per_class``) is rendered on first use into
a cache (``cache_dir``, else ``$MMLO_CACHE``, else ``~/.cache/mmlo``) and reused; ``mmlo data prepare
offline4`` renders every bank once, before a study, on every core. A mode whose sources are missing is
refused with :class:`~mmlo.tasks.errors.DataMissingError` naming the install command.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmlo.tasks.base import SPLITS, Split
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.episodes import ClassBank, ImageBenchmark
from mmlo.tasks.rendering import MODE_MODULES, Progress, mode_module, render_classes
from mmlo.tasks.sources import ASSETS, Source, require

NAME = "offline4"
MODES: tuple[str, ...] = tuple(MODE_MODULES)
INDEX_FILE = "offline4_index.json.gz"
#: Bumped whenever a renderer draws different pixels for the same class and sample index; part of the
#: cache key and of the fingerprint, so old caches and old results are never mixed with new ones.
RECIPE_VERSION = 2


@dataclass(frozen=True)
class ModeIndex:
    """One mode of the committed class index: its renderer table and the ``(key, entry)`` classes per split."""

    mode: str
    table: Mapping[str, Any]
    splits: Mapping[Split, tuple[tuple[str, Any], ...]]
    sha256: str

    def classes(self, split: Split, max_classes: int | None = None) -> tuple[tuple[str, Any], ...]:
        """The classes of ``split``; with ``max_classes``, the deterministic prefix of that length."""
        found = self.splits[split]
        return found if max_classes is None else found[:max_classes]


def canonical_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def index_sha256(mode_hashes: Mapping[str, str]) -> str:
    """The hash of the whole index: of the per-mode hashes, in mode-name order."""
    return hashlib.sha256("".join(f"{m}:{mode_hashes[m]}\n" for m in sorted(mode_hashes)).encode()).hexdigest()


def verify_index(raw: Mapping[str, Any]) -> dict[str, ModeIndex]:
    """The modes of a decoded index, after checking every recorded hash against the content."""
    modes: dict[str, ModeIndex] = {}
    for mode, content in raw["modes"].items():
        digest = canonical_sha256({"table": content["table"], "splits": content["splits"]})
        if digest != content["sha256"]:
            raise ValueError(
                f"{INDEX_FILE}: mode {mode!r} has content hash {digest[:16]}..., the file records "
                f"{content['sha256'][:16]}...; the index was edited by hand or damaged. Restore it from git "
                "or rebuild it with `python -m mmlo.tasks.build_offline4_index`."
            )
        splits = {s: tuple((key, entry) for key, entry in content["splits"][s]) for s in SPLITS}
        modes[mode] = ModeIndex(mode, content["table"], splits, digest)
    whole = index_sha256({m: i.sha256 for m, i in modes.items()})
    if whole != raw["sha256"]:
        raise ValueError(f"{INDEX_FILE}: index hash {whole[:16]}... differs from the recorded {raw['sha256'][:16]}...")
    return modes


@functools.cache
def load_index() -> dict[str, ModeIndex]:
    """The committed class index, verified."""
    return verify_index(json.loads(gzip.decompress((ASSETS / INDEX_FILE).read_bytes())))


def class_index_sha256() -> str:
    """The recorded sha256 of the whole committed class index."""
    return index_sha256({m: i.sha256 for m, i in load_index().items()})


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where rendered banks live: ``cache_dir``, else ``$MMLO_CACHE``, else ``~/.cache/mmlo``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MMLO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmlo"


def _bank_dir(root: Path, mode: str) -> Path:
    return root / NAME / f"{mode}-{load_index()[mode].sha256[:16]}-r{RECIPE_VERSION}"


def _bank_stem(split: Split, image_size: int, samples_per_class: int) -> str:
    return f"{split}-{image_size}px-{samples_per_class}s"


def cached_bank_file(
    root: Path, mode: str, split: Split, image_size: int, samples_per_class: int, classes: int
) -> Path | None:
    """The smallest cached bank file holding at least the first ``classes`` classes, if any.

    A bank of n classes is a prefix of every larger bank of the same split, size and sample count (samples
    are seeded per class), so a full cache also serves every ``max_classes``.
    """
    folder = _bank_dir(root, mode)
    best: tuple[int, Path] | None = None
    for path in folder.glob(f"{_bank_stem(split, image_size, samples_per_class)}-*c.npy"):
        held = int(path.stem.rsplit("-", 1)[1][:-1])
        if held >= classes and (best is None or held < best[0]):
            best = (held, path)
    return None if best is None else best[1]


def mode_sources(mode: str, classes: Sequence[tuple[str, Any]] | None = None) -> list[Source]:
    """What ``mode`` renders ``classes`` (default: all of them) from, and whether each source is present."""
    index = load_index()[mode]
    chosen = [c for s in SPLITS for c in index.splits[s]] if classes is None else classes
    return mode_module(mode).sources(index.table, chosen)


def status() -> dict[str, list[Source]]:
    """Per mode, its sources: present or missing, with the command that installs each."""
    return {mode: mode_sources(mode) for mode in MODES}


def ensure_bank(
    mode: str,
    split: Split,
    *,
    image_size: int,
    samples_per_class: int,
    max_classes: int | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = 1,
) -> Path:
    """The cache file holding (at least) the bank of ``mode`` on ``split``, rendered first if missing.

    ``workers`` defaults to one process: a trial that finds no cache renders on its own CPU only (and never
    forks beside Ray's threads); :func:`prepare` renders on every core.
    """
    index = load_index()[mode]
    classes = index.classes(split, max_classes)
    root = cache_root(cache_dir)
    found = cached_bank_file(root, mode, split, image_size, samples_per_class, len(classes))
    if found is not None:
        return found
    require(mode, mode_sources(mode, classes))
    images = render_classes(
        mode,
        index.table,
        classes,
        samples_per_class,
        image_size,
        progress=progress,
        label=f"{mode}/{split}",
        workers=workers,
    )
    path = _bank_dir(root, mode) / f"{_bank_stem(split, image_size, samples_per_class)}-{len(classes)}c.npy"
    _save_atomic(path, images)
    return path


def load_bank(
    mode: str,
    split: Split,
    *,
    image_size: int,
    samples_per_class: int,
    max_classes: int | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = 1,
) -> ClassBank:
    """The bank of ``mode`` on ``split``: read from the cache, or rendered into it first (atomically)."""
    classes = load_index()[mode].classes(split, max_classes)
    path = ensure_bank(
        mode,
        split,
        image_size=image_size,
        samples_per_class=samples_per_class,
        max_classes=max_classes,
        cache_dir=cache_dir,
        progress=progress,
        workers=workers,
    )
    # Memory-mapped, not read: parallel trials share one copy of the bank through the page cache.
    images = np.load(path, mmap_mode="r")[: len(classes) * samples_per_class]
    offsets = np.arange(len(classes) + 1, dtype=np.int64) * samples_per_class
    return ClassBank(images, offsets, tuple(key for key, _ in classes))


def _save_atomic(path: Path, images: np.ndarray) -> None:
    # Concurrent renderers (two trials, two shells) each write a private file and rename it into place:
    # readers see a whole bank or none, and the banks they race to write are identical.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, images)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def selected_modes(cfg: BenchmarkConfig) -> tuple[str, ...]:
    """The study's modes (a subset of offline4's, in the study's order), checked."""
    modes = tuple(cfg.modes) if cfg.modes is not None else MODES
    unknown = [m for m in modes if m not in MODES]
    if unknown or len(set(modes)) != len(modes) or not modes:
        raise ValueError(f"offline4 modes must be distinct names from {MODES}, got {list(modes)}")
    return modes


def fingerprint(cfg: BenchmarkConfig) -> str:
    """Everything that fixes the images tasks are drawn from: the modes and their index hashes, the recipe,
    the image size, the samples per class and ``max_classes`` (the episode shape is the study's own record)."""
    modes = selected_modes(cfg)
    index = load_index()
    parts = {
        "benchmark": NAME,
        "modes": [[m, index[m].sha256] for m in modes],
        "recipe": RECIPE_VERSION,
        "image_size": cfg.image_size,
        "samples_per_class": cfg.samples_per_class,
        "max_classes": cfg.max_classes,
    }
    return canonical_sha256(parts)[:16]


def build(cfg: BenchmarkConfig) -> ImageBenchmark:
    """The offline4 benchmark of ``cfg``: lazy banks (rendered or read on first use), refused up front if a
    selected mode's sources are missing and its banks are not already cached."""
    modes = selected_modes(cfg)
    need = cfg.shots + cfg.query
    if cfg.samples_per_class < need:
        raise ValueError(
            f"samples_per_class={cfg.samples_per_class} is fewer than shots + query = {need}: "
            "raise samples_per_class or lower query"
        )
    root = cache_root(cfg.cache_dir)
    banks: dict[str, dict[Split, Any]] = {}
    for mode in modes:
        index = load_index()[mode]
        chosen = {s: index.classes(s, cfg.max_classes) for s in SPLITS}
        cached = all(
            cached_bank_file(root, mode, s, cfg.image_size, cfg.samples_per_class, len(chosen[s])) for s in SPLITS
        )
        if not cached:
            require(mode, mode_sources(mode, [c for s in SPLITS for c in chosen[s]]))
        banks[mode] = {
            split: functools.partial(
                load_bank,
                mode,
                split,
                image_size=cfg.image_size,
                samples_per_class=cfg.samples_per_class,
                max_classes=cfg.max_classes,
                cache_dir=cfg.cache_dir,
            )
            for split in SPLITS
        }
    return ImageBenchmark(NAME, banks, cfg.ways, cfg.shots, cfg.query, fingerprint(cfg), image_size=cfg.image_size)


def prepare(cfg: BenchmarkConfig, progress: Progress | None = None, *, workers: int | None = None) -> list[Path]:
    """Render (or find) every bank ``cfg`` needs, before a study, on ``workers`` processes (default: every
    CPU, or ``$MMLO_RENDER_WORKERS``); returns the cache files.

    Every selected mode's sources are checked first, so a missing font package is reported before minutes
    of rendering, not after.
    """
    modes = selected_modes(cfg)
    for mode in modes:
        require(mode, mode_sources(mode))
    return [
        ensure_bank(
            mode,
            split,
            image_size=cfg.image_size,
            samples_per_class=cfg.samples_per_class,
            max_classes=cfg.max_classes,
            cache_dir=cfg.cache_dir,
            progress=progress,
            workers=workers,
        )
        for mode in modes
        for split in SPLITS
    ]


def prepare_here(cfg: BenchmarkConfig) -> None:
    """Every bank ``cfg`` needs, found in this machine's cache or rendered there on one CPU (a trial's node)."""
    for mode in selected_modes(cfg):
        for split in SPLITS:
            ensure_bank(
                mode,
                split,
                image_size=cfg.image_size,
                samples_per_class=cfg.samples_per_class,
                max_classes=cfg.max_classes,
                cache_dir=cfg.cache_dir,
                workers=1,
            )


def class_counts(max_classes: int | None = None) -> dict[str, dict[Split, int]]:
    """Classes per mode and split (capped by ``max_classes``)."""
    index = load_index()
    return {m: {s: len(index[m].classes(s, max_classes)) for s in SPLITS} for m in MODES}


def render_preview(mode: str, split: Split, classes: Sequence[int], samples: int, image_size: int) -> np.ndarray:
    """Fresh renders (no cache) of the first ``samples`` samples of the given classes of ``mode``:
    uint8 ``[len(classes), samples, image_size, image_size, 3]``, for contact sheets."""
    index = load_index()[mode]
    require(mode, mode_sources(mode))
    chosen = [index.splits[split][c] for c in classes]
    images = render_classes(mode, index.table, chosen, samples, image_size, workers=1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images.reshape(len(chosen), samples, image_size, image_size, 3)
