"""The real-data benchmarks: the papers' multimodal compositions of published few-shot datasets.

``mm2`` = Omniglot + mini-ImageNet, ``mm2b`` = mini-ImageNet + FC100, ``mm3`` = Omniglot + mini-ImageNet +
FC100, ``mm5`` = ``mm3`` + CUB-200-2011 + FGVC-Aircraft (MMAML / KML), and every dataset alone. Images are
resized once, by ``mmlo data prepare`` (:func:`prepare`), into a cache of uint8 arrays
(``<cache>/real/<dataset>/<variant>-<size>px-<root hash>/<split>.npy`` with a ``<split>.json`` holding the
class names and offsets); trials only memory-map that cache (:func:`build`), so no trial decodes or resizes
an image and parallel trials share one copy through the page cache. A missing dataset or an unprepared
cache raises :class:`DataMissingError` naming the files and the command or download that provides them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmlo.tasks.base import SPLITS, DataRow, Prepared, Progress, Split
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.episodes import ClassBank, ImageBenchmark
from mmlo.tasks.errors import DataMissingError
from mmlo.tasks.real_layouts import LAYOUTS, Layout, decode, resize_array

#: Benchmarks built here and their modes, in the papers' order.
COMPOSITIONS: dict[str, tuple[str, ...]] = {
    "mm2": ("omniglot", "miniimagenet"),
    "mm2b": ("miniimagenet", "fc100"),
    "mm3": ("omniglot", "miniimagenet", "fc100"),
    "mm5": ("omniglot", "miniimagenet", "fc100", "cub", "aircraft"),
    **{name: (name,) for name in LAYOUTS},
}

#: The papers' image size for the real datasets, used unless the study sets ``image_size``.

#: Bumped whenever the cached pixels of an unchanged dataset would change (resampling, inversion ...).
RECIPE_VERSION = 1


@dataclass(frozen=True)
class DatasetStatus:
    """Whether one mode's dataset is on disk under a root, and what to get if not."""

    mode: str
    root: Path | None
    missing: tuple[str, ...]
    expected: tuple[str, ...]
    download: str

    @property
    def present(self) -> bool:
        return self.root is not None and not self.missing

    def __str__(self) -> str:
        if self.present:
            return f"{self.mode}: present under {self.root}"
        where = "no root given (benchmark.root / --root)" if self.root is None else f"missing under {self.root}"
        return (
            f"{self.mode}: {where}: {', '.join(self.missing) if self.missing else ''}"
            f" expected {'; '.join(self.expected)}; get it: {self.download}"
        )


def modes_of(cfg: BenchmarkConfig) -> tuple[str, ...]:
    """The modes ``cfg`` selects from its benchmark, in order."""
    if cfg.name not in COMPOSITIONS:
        raise ValueError(f"{cfg.name!r} is not a real-data benchmark; known: {', '.join(COMPOSITIONS)}")
    return tuple(cfg.modes) if cfg.modes else COMPOSITIONS[cfg.name]


def image_size(cfg: BenchmarkConfig) -> int:
    """The study's image size (BenchmarkConfig defaults it to the papers' 84 for real data)."""
    return cfg.image_size


def variant(cfg: BenchmarkConfig, mode: str) -> str:
    """The class-split variant a mode uses (Omniglot: ``cfg.omniglot_split``; others have one)."""
    return cfg.omniglot_split if mode == "omniglot" else LAYOUTS[mode].variants[0]


def cache_dir(cfg: BenchmarkConfig) -> Path:
    """``cfg.cache_dir``, else ``$MMLO_CACHE``, else ``~/.cache/mmlo``."""
    if cfg.cache_dir is not None:
        return cfg.cache_dir
    return Path(os.environ.get("MMLO_CACHE") or Path.home() / ".cache" / "mmlo").expanduser().resolve()


def status(name: str, root: Path | None) -> dict[str, DatasetStatus]:
    """Per mode of benchmark ``name``: present, or the missing files, the expected layout and the download."""
    if name not in COMPOSITIONS:
        raise ValueError(f"{name!r} is not a real-data benchmark; known: {', '.join(COMPOSITIONS)}")
    out = {}
    for mode in COMPOSITIONS[name]:
        layout = LAYOUTS[mode]
        missing = tuple(layout.missing(root)) if root is not None else layout.expected
        out[mode] = DatasetStatus(mode, root, missing, layout.expected, layout.download)
    return out


def _mode_cache(cfg: BenchmarkConfig, mode: str) -> Path:
    root_hash = hashlib.sha256(str(_root(cfg)).encode()).hexdigest()[:8]
    return cache_dir(cfg) / "real" / mode / f"{variant(cfg, mode)}-{image_size(cfg)}px-{root_hash}"


def _root(cfg: BenchmarkConfig) -> Path:
    if cfg.root is None:
        wanted = "; ".join(f"{mode}: {', '.join(LAYOUTS[mode].expected)}" for mode in modes_of(cfg))
        raise DataMissingError(
            f"benchmark {cfg.name} reads real datasets: set benchmark.root in the study (or pass --root) to the "
            f"folder holding {wanted}"
        )
    return cfg.root


def prepare(cfg: BenchmarkConfig, progress: Progress | None = None) -> dict[str, dict[Split, int]]:
    """Decode and resize every mode's images into the cache, once; return the class counts per mode and split.

    Splits already in the cache are not read again. Every mode that needs reading is checked for its files
    before any is decoded, so a missing dataset fails at once. Run by ``mmlo data prepare``, never in a trial.
    """
    root = _root(cfg)
    todo = {
        mode: [s for s in SPLITS if not (_mode_cache(cfg, mode) / f"{s}.json").is_file()] for mode in modes_of(cfg)
    }
    for mode, splits in todo.items():
        if splits:
            LAYOUTS[mode].require(root)
    size = image_size(cfg)
    for mode, splits in todo.items():
        for split in splits:
            _write_split(LAYOUTS[mode], root, variant(cfg, mode), split, size, _mode_cache(cfg, mode), progress)
    return {mode: {s: len(m["class_names"]) for s, m in _load_meta(cfg, mode).items()} for mode in modes_of(cfg)}


def _write_split(
    layout: Layout, root: Path, variant_name: str, split: str, size: int, target: Path, progress: Progress | None
) -> None:
    classes = layout.read(root, variant_name, split)
    sizes = [len(images) for _, images in classes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pixels = np.empty((int(offsets[-1]), size, size, layout.channels), dtype=np.uint8)
    label = f"{layout.name}/{split}"
    for c, (_, images) in enumerate(classes):
        start = int(offsets[c])
        if isinstance(images, np.ndarray):
            if images.shape[3] != layout.channels:
                raise ValueError(f"{label}: arrays have {images.shape[3]} channels, expected {layout.channels}")
            pixels[start : start + len(images)] = resize_array(images, size)
        else:
            for i, path in enumerate(images):
                pixels[start + i] = decode(path, size, layout.channels)
        if progress is not None:
            progress(label, int(offsets[c + 1]), int(offsets[-1]))
    if layout.invert:
        np.subtract(255, pixels, out=pixels)
    target.mkdir(parents=True, exist_ok=True)
    # The .npy goes first and the .json last, both atomically: a split counts as prepared only when its
    # metadata exists, so an interrupted prepare is redone rather than half-read.
    tmp = target / f".{split}.{os.getpid()}.npy"
    np.save(tmp, pixels, allow_pickle=False)
    os.replace(tmp, target / f"{split}.npy")
    meta = {
        "dataset": layout.name,
        "variant": variant_name,
        "image_size": size,
        "recipe_version": RECIPE_VERSION,
        "root": str(root),
        "class_names": [name for name, _ in classes],
        "offsets": offsets.tolist(),
    }
    tmp_meta = target / f".{split}.{os.getpid()}.json"
    tmp_meta.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp_meta, target / f"{split}.json")


def _load_meta(cfg: BenchmarkConfig, mode: str) -> dict[Split, dict[str, Any]]:
    """The cached metadata of every split of ``mode``, or DataMissingError saying how to create it.

    Only the cache is needed once it exists: workers can train without the raw dataset files.
    """
    root = _root(cfg)
    layout = LAYOUTS[mode]
    target = _mode_cache(cfg, mode)
    metas: dict[Split, dict[str, Any]] = {}
    for split in SPLITS:
        path = target / f"{split}.json"
        if not path.is_file():
            layout.require(root)
            raise DataMissingError(
                f"{layout.title} is on disk under {root} but not prepared at {image_size(cfg)}px: run "
                f"`mmlo data prepare {cfg.name} --root {root}` (or `mmlo data prepare {cfg.name} --study STUDY.yaml`) "
                f"once before the study; expected cache {target}"
            )
        metas[split] = json.loads(path.read_text(encoding="utf-8"))
    return metas


def _load_bank(images_path: Path, class_names: tuple[str, ...], offsets: tuple[int, ...], rotations: int) -> ClassBank:
    images = np.load(images_path, mmap_mode="r", allow_pickle=False)
    if images.shape[0] < offsets[-1]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images, its metadata {offsets[-1]}: prepare again")
    return ClassBank(images[: offsets[-1]], np.asarray(offsets, dtype=np.int64), class_names, rotations)


def class_counts(cfg: BenchmarkConfig) -> dict[str, dict[str, int]]:
    """Classes per mode and split as the study will see them (after ``max_classes``, rotations included)."""
    out: dict[str, dict[str, int]] = {}
    for mode in modes_of(cfg):
        rotations = _rotations(cfg, mode)
        metas = _load_meta(cfg, mode)
        out[mode] = {s: _capped(len(m["class_names"]), cfg.max_classes) * rotations for s, m in metas.items()}
    return out


def _rotations(cfg: BenchmarkConfig, mode: str) -> int:
    return 4 if mode == "omniglot" and cfg.omniglot_rotations else 1


def _capped(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, cap)


def build(cfg: BenchmarkConfig) -> ImageBenchmark:
    """The benchmark ``cfg.name`` over the prepared cache; images are memory-mapped on first use."""
    size = image_size(cfg)
    banks: dict[str, Mapping[Split, Callable[[], ClassBank]]] = {}
    recipe: dict[str, object] = {"name": cfg.name, "image_size": size, "recipe_version": RECIPE_VERSION}
    for mode in modes_of(cfg):
        metas = _load_meta(cfg, mode)
        rotations = _rotations(cfg, mode)
        target = _mode_cache(cfg, mode)
        splits: dict[Split, Callable[[], ClassBank]] = {}
        for split, meta in metas.items():
            n = _capped(len(meta["class_names"]), cfg.max_classes)
            names = tuple(meta["class_names"][:n])
            offsets = tuple(meta["offsets"][: n + 1])
            splits[split] = functools.partial(_load_bank, target / f"{split}.npy", names, offsets, rotations)
            recipe[f"{mode}/{split}"] = [variant(cfg, mode), rotations, names, offsets]
        banks[mode] = splits
    fingerprint = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return ImageBenchmark(cfg.name, banks, cfg.ways, cfg.shots, cfg.query, fingerprint, image_size=size)


def data_rows(name: str, root: Path | None, cache_dir: Path | None) -> list[DataRow]:
    """``name``'s lines of ``mmlo data list``: ready when its files are under ``root``; class counts per split
    once it is prepared."""
    found = status(name, root)
    counts: dict[str, dict[str, int]] = {}
    if root is not None and all(s.present for s in found.values()):
        try:
            counts = class_counts(BenchmarkConfig(name=name, root=root, cache_dir=cache_dir))
        except DataMissingError:
            counts = {}
    rows = []
    for mode, st in found.items():
        if st.present:
            note = "present"
        elif root is None:
            note = f"needs --root, a folder holding {'; '.join(st.expected)}"
        else:
            note = str(st)
        if mode in counts:
            rows += [DataRow(name, mode, s, counts[mode][s], st.present, note) for s in SPLITS]
        else:
            suffix = "; run `mmlo data prepare` for class counts" if st.present else ""
            rows.append(DataRow(name, mode, "all", None, st.present, note + suffix))
    return rows


def prepare_data(cfg: BenchmarkConfig, progress: Progress | None = None) -> Prepared:
    """``mmlo data prepare``: the files checked under ``cfg.root`` and resized into the cache (:func:`prepare`)."""
    return Prepared(dict(prepare(cfg, progress)))


def preview_grid(
    name: str, mode: str, split: Split, n_classes: int, samples: int, root: Path | None, image_size: int | None
) -> np.ndarray:
    """``mmlo data show``: the first ``samples`` images of the first ``n_classes`` classes of ``mode``, read
    from the prepared cache (white tiles where a class has fewer), as uint8 RGB."""
    update = {} if image_size is None else {"image_size": image_size}
    bank = build(BenchmarkConfig(name=name, modes=[mode], root=root, **update)).bank(mode, split)
    rows = []
    for c in range(min(n_classes, bank.num_classes)):
        images = bank.class_images(c)[:samples]
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        pad = np.full((samples - len(images), *images.shape[1:]), 255, dtype=np.uint8)
        rows.append(np.concatenate([images, pad]))
    return np.stack(rows)
