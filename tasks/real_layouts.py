"""The on-disk layouts of the published few-shot datasets, read into per-split class lists.

Each dataset is a :class:`Layout`: the files it expects under the datasets root, where to download them,
and a reader that lists one split's classes with their images (image files, or uint8 arrays for datasets
shipped as pickles). Class splits are fixed by the dataset (mini-ImageNet's csv files, Omniglot's and
CIFAR-FS's shipped lists, FC100's superclasses) or by MMAML's recipe (CUB and FGVC-Aircraft: the class list
shuffled by ``np.random.RandomState(123)`` and cut 70/15/15; MMAML shuffled ``os.listdir`` order for CUB,
we shuffle classes.txt order, for Aircraft variants.txt order as MMAML does). Resizing happens in
:mod:`mmlo.tasks.real`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmlo.tasks import safe_pickle
from mmlo.tasks.base import SPLITS
from mmlo.tasks.errors import DataMissingError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})

#: FC100 (Oreshkin et al. 2018): CIFAR-100 superclass indices per split, as MMAML's proc_cifar.py uses them.
FC100_SUPERCLASSES: dict[str, tuple[int, ...]] = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "val": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
}

#: Class share per split of MMAML's CUB and Aircraft recipes (percent).
CLASS_SPLIT_PERCENT: tuple[int, int, int] = (70, 15, 15)

#: A class's images: image files to decode, or decoded uint8 images ``[n, H, W, C]``.
ClassImages = tuple[Path, ...] | np.ndarray
SplitClasses = list[tuple[str, ClassImages]]


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names its path (such files are never skipped)."""


@dataclass(frozen=True)
class Layout:
    """One dataset's on-disk layout under the datasets root."""

    name: str
    title: str
    #: 1 for grey datasets (stored as one channel, tiled to RGB when sampled), else 3.
    channels: int
    #: The files it needs, relative to the root, as a person should read them.
    expected: tuple[str, ...]
    #: Where to get them and how to unpack them under the root.
    download: str
    #: The expected paths that are missing under a root (empty when the dataset is present).
    missing: Callable[[Path], list[str]]
    #: ``read(root, variant, split)``: the split's classes with their images, in a fixed order.
    read: Callable[[Path, str, str], SplitClasses]
    #: The variants a study can choose (Omniglot's class split); the first is the default.
    variants: tuple[str, ...] = ("default",)
    #: Store ``255 - pixel`` (Omniglot: bright strokes on black, as MMAML's loader does).
    invert: bool = False

    def require(self, root: Path) -> None:
        """Raise :class:`DataMissingError` naming the missing files and the download, if any are missing."""
        missing = self.missing(root)
        if missing:
            raise DataMissingError(self.describe_missing(root, missing))

    def describe_missing(self, root: Path, missing: Sequence[str]) -> str:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        return (
            f"{self.title} ({self.name}) is missing under {root}: {shown}. "
            f"Expected: {'; '.join(self.expected)}. Get it: {self.download}"
        )


def decode(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file as uint8 ``[size, size, channels]`` (squashed to a square, LANCZOS), or an error naming it."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.LANCZOS)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"cannot decode image {path}: {exc}") from exc
    return pixels.reshape(size, size, channels)


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """Decoded uint8 images ``[n, H, W, C]`` at ``size`` x ``size`` (LANCZOS); unchanged if already that size."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, pixels in enumerate(images):
        image = Image.fromarray(pixels[..., 0] if images.shape[3] == 1 else pixels)
        out[i] = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS)).reshape(size, size, -1)
    return out


def _image_files(folder: Path) -> tuple[Path, ...]:
    return tuple(sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))


def _class_folder_images(folder: Path) -> tuple[Path, ...]:
    files = _image_files(folder)
    if not files:
        raise DataMissingError(f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _asset(name: str) -> dict:
    return json.loads((Path(__file__).resolve().parent / name).read_text(encoding="utf-8"))


def _mmaml_class_split(classes: Sequence[str], split: str) -> list[str]:
    """MMAML's CUB/Aircraft recipe: shuffle with RandomState(123), cut by int(percent/100 * n)."""
    order = list(classes)
    np.random.RandomState(123).shuffle(order)
    n_train, n_val = (int(p / sum(CLASS_SPLIT_PERCENT) * len(order)) for p in CLASS_SPLIT_PERCENT[:2])
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(order))}
    start, stop = bounds[split]
    return order[start:stop]


def _missing_paths(root: Path, paths: Sequence[str]) -> list[str]:
    return [p for p in paths if not (root / p).exists()]


# Omniglot ----------------------------------------------------------------------------------------------

OMNIGLOT_DIR = "omniglot-py"


def omniglot_split_table(variant: str) -> dict[str, dict[str, list[int]]]:
    """The shipped class split ``variant`` ('vinyals' or 'maml'): split -> 'folder/Alphabet' -> character numbers."""
    splits = _asset("omniglot_splits.json")["splits"]
    if variant not in splits:
        raise ValueError(f"unknown Omniglot split {variant!r}; shipped: {sorted(splits)}")
    return splits[variant]


def read_omniglot_table(root: Path, table: dict[str, dict[str, list[int]]], split: str) -> SplitClasses:
    """One split of Omniglot under the torchvision layout, with its classes given by ``table``."""
    base = root / OMNIGLOT_DIR
    classes: SplitClasses = []
    for alphabet_path, characters in table[split].items():
        alphabet = alphabet_path.split("/", 1)[1]
        for number in characters:
            folder = base / alphabet_path / f"character{number:02d}"
            if not folder.is_dir():
                raise DataMissingError(f"Omniglot character folder {folder} is missing (split {split})")
            classes.append((f"{alphabet}/character{number:02d}", _class_folder_images(folder)))
    return classes


def _read_omniglot(root: Path, variant: str, split: str) -> SplitClasses:
    return read_omniglot_table(root, omniglot_split_table(variant), split)


def _missing_omniglot(root: Path) -> list[str]:
    return _missing_paths(root, [f"{OMNIGLOT_DIR}/images_background", f"{OMNIGLOT_DIR}/images_evaluation"])


# mini-ImageNet -----------------------------------------------------------------------------------------

MINIIMAGENET_DIR = "miniimagenet"
_METAOPTNET_FILES = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
}


def miniimagenet_format(base: Path) -> str | None:
    """Which of the four common mini-ImageNet layouts ``base`` holds (checked in this order), or None."""
    if all((base / f"mini-imagenet-cache-{s}.pkl").is_file() for s in SPLITS):
        return "cache-pickle"
    if all((base / f"{s}.csv").is_file() for s in SPLITS) and (base / "images").is_dir():
        return "csv"
    if all((base / s).is_dir() for s in SPLITS):
        return "class-folders"
    if all((base / f).is_file() for f in _METAOPTNET_FILES.values()):
        return "metaoptnet-pickle"
    return None


def _read_miniimagenet(root: Path, variant: str, split: str) -> SplitClasses:
    base = root / MINIIMAGENET_DIR
    layout = miniimagenet_format(base)
    if layout == "cache-pickle":
        path = base / f"mini-imagenet-cache-{split}.pkl"
        data = safe_pickle.load(path)
        images = _pickled_images(data, "image_data", path)
        class_dict = data["class_dict"]
        return [(str(label), images[np.asarray(class_dict[label], dtype=np.int64)]) for label in sorted(class_dict)]
    if layout == "csv":
        by_label: dict[str, list[Path]] = {}
        with open(base / f"{split}.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                by_label.setdefault(row["label"], []).append(base / "images" / row["filename"])
        for files in by_label.values():
            for path in files:
                if not path.is_file():
                    raise DataMissingError(f"mini-ImageNet image {path} listed in {base / f'{split}.csv'} is missing")
        return [(label, tuple(files)) for label, files in sorted(by_label.items())]
    if layout == "class-folders":
        return _read_class_folders(base / split)
    if layout == "metaoptnet-pickle":
        path = base / _METAOPTNET_FILES[split]
        data = safe_pickle.load(path)
        images = _pickled_images(data, "data", path)
        labels = np.asarray(data["labels"], dtype=np.int64)
        names = {int(v): str(k) for k, v in data["catname2label"].items()}
        return [(names[int(c)], images[labels == c]) for c in np.unique(labels)]
    raise DataMissingError(MINIIMAGENET.describe_missing(root, MINIIMAGENET.missing(root)))


def _pickled_images(data: object, key: str, path: Path) -> np.ndarray:
    images = data.get(key) if isinstance(data, dict) else None
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: expected a dict with {key!r} = uint8 array [N, H, W, 3]")
    return images


def _missing_miniimagenet(root: Path) -> list[str]:
    base = root / MINIIMAGENET_DIR
    if miniimagenet_format(base) is not None:
        return []
    return [f"{MINIIMAGENET_DIR}/ in one of the expected layouts"]


# CIFAR-100: FC100 and CIFAR-FS -------------------------------------------------------------------------

CIFAR_DIR = "cifar-100-python"


def _cifar100(root: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str], dict[int, int]]:
    """All 60,000 CIFAR-100 images (train then test) as uint8 [N, 32, 32, 3], fine labels, label names."""
    base = root / CIFAR_DIR
    meta = safe_pickle.load(base / "meta")
    parts = [safe_pickle.load(base / name) for name in ("train", "test")]
    images = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts])
    fine = np.concatenate([np.asarray(p["fine_labels"], dtype=np.int64) for p in parts])
    coarse = np.concatenate([np.asarray(p["coarse_labels"], dtype=np.int64) for p in parts])
    superclass = {int(f): int(c) for f, c in zip(fine, coarse, strict=True)}
    pixels = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return pixels, fine, list(meta["fine_label_names"]), list(meta["coarse_label_names"]), superclass


def _read_fc100(root: Path, variant: str, split: str) -> SplitClasses:
    pixels, fine, fine_names, coarse_names, superclass = _cifar100(root)
    chosen = [f for f in range(len(fine_names)) if superclass.get(f) in FC100_SUPERCLASSES[split]]
    return [(f"{coarse_names[superclass[f]]}/{fine_names[f]}", pixels[fine == f]) for f in chosen]


def _read_cifarfs(root: Path, variant: str, split: str) -> SplitClasses:
    pixels, fine, fine_names, coarse_names, superclass = _cifar100(root)
    index = {name: i for i, name in enumerate(fine_names)}
    classes: SplitClasses = []
    for coarse_name, fine_name in _asset("cifarfs_splits.json")[split]:
        if fine_name not in index:
            raise ValueError(f"CIFAR-FS class {fine_name!r} is not in {root / CIFAR_DIR / 'meta'}")
        classes.append((f"{coarse_name}/{fine_name}", pixels[fine == index[fine_name]]))
    return classes


def _missing_cifar(root: Path) -> list[str]:
    return _missing_paths(root, [f"{CIFAR_DIR}/{name}" for name in ("train", "test", "meta")])


# CUB-200-2011 ------------------------------------------------------------------------------------------

CUB_DIR = "CUB_200_2011"


def _read_cub(root: Path, variant: str, split: str) -> SplitClasses:
    base = root / CUB_DIR
    classes = [line.split(" ", 1)[1] for line in _lines(base / "classes.txt")]
    files: dict[str, list[Path]] = {name: [] for name in classes}
    for line in _lines(base / "images.txt"):
        relative = line.split(" ", 1)[1]
        folder = relative.split("/", 1)[0]
        if folder not in files:
            raise ValueError(f"{base / 'images.txt'} lists {relative}, whose class is not in classes.txt")
        files[folder].append(base / "images" / relative)
    return [(name, tuple(files[name])) for name in _mmaml_class_split(classes, split)]


def _missing_cub(root: Path) -> list[str]:
    return _missing_paths(root, [f"{CUB_DIR}/{name}" for name in ("images", "classes.txt", "images.txt")])


# FGVC-Aircraft 2013b -----------------------------------------------------------------------------------

AIRCRAFT_DIR = "fgvc-aircraft-2013b/data"


def _read_aircraft(root: Path, variant: str, split: str) -> SplitClasses:
    base = root / AIRCRAFT_DIR
    files: dict[str, list[Path]] = {}
    for part in SPLITS:
        for line in _lines(base / f"images_variant_{part}.txt"):
            image_id, name = line.split(" ", 1)
            files.setdefault(name, []).append(base / "images" / f"{image_id}.jpg")
    # variants.txt fixes the class order MMAML shuffles; without it, the sorted variant names.
    listed = base / "variants.txt"
    classes = _lines(listed) if listed.is_file() else sorted(files)
    unlisted = [name for name in classes if name not in files]
    if unlisted:
        raise ValueError(f"variants {unlisted[:3]} of {listed} have no images in images_variant_*.txt")
    return [(name, tuple(sorted(files[name]))) for name in _mmaml_class_split(classes, split)]


def _missing_aircraft(root: Path) -> list[str]:
    names = ["images"] + [f"images_variant_{s}.txt" for s in SPLITS]
    return _missing_paths(root, [f"{AIRCRAFT_DIR}/{name}" for name in names])


# Generic <root>/<split>/<class>/<img> ------------------------------------------------------------------


def _read_class_folders(split_dir: Path) -> SplitClasses:
    if not split_dir.is_dir():
        raise DataMissingError(f"split folder {split_dir} is missing")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not folders:
        raise DataMissingError(f"split folder {split_dir} holds no class folders")
    return [(folder.name, _class_folder_images(folder)) for folder in folders]


def _read_folder(root: Path, variant: str, split: str) -> SplitClasses:
    return _read_class_folders(root / split)


def _missing_folder(root: Path) -> list[str]:
    return _missing_paths(root, list(SPLITS))


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataMissingError(f"{path} is missing")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


OMNIGLOT = Layout(
    name="omniglot",
    title="Omniglot",
    channels=1,
    expected=(
        f"{OMNIGLOT_DIR}/images_background/<Alphabet>/characterNN/*.png",
        f"{OMNIGLOT_DIR}/images_evaluation/<Alphabet>/characterNN/*.png",
    ),
    download=(
        "images_background.zip and images_evaluation.zip from https://github.com/brendenlake/omniglot "
        f"(python/), unzipped into <root>/{OMNIGLOT_DIR}/ (torchvision.datasets.Omniglot's layout)"
    ),
    missing=_missing_omniglot,
    read=_read_omniglot,
    variants=("vinyals", "maml"),
    invert=True,
)

MINIIMAGENET = Layout(
    name="miniimagenet",
    title="mini-ImageNet",
    channels=3,
    expected=(
        f"{MINIIMAGENET_DIR}/mini-imagenet-cache-{{train,val,test}}.pkl",
        f"or {MINIIMAGENET_DIR}/{{train,val,test}}.csv with {MINIIMAGENET_DIR}/images/",
        f"or {MINIIMAGENET_DIR}/{{train,val,test}}/<wnid>/*.jpg",
        f"or {MINIIMAGENET_DIR}/miniImageNet_category_split_{{train_phase_train,val,test}}.pickle",
    ),
    download=(
        "Ravi & Larochelle's split files train.csv/val.csv/test.csv "
        "(https://github.com/twitter/meta-learning-lstm, data/miniImagenet) with the ImageNet images they name, "
        f"or the mini-imagenet-cache-*.pkl pickles, placed in <root>/{MINIIMAGENET_DIR}/"
    ),
    missing=_missing_miniimagenet,
    read=_read_miniimagenet,
)

FC100 = Layout(
    name="fc100",
    title="FC100 (CIFAR-100 by superclass)",
    channels=3,
    expected=(f"{CIFAR_DIR}/train", f"{CIFAR_DIR}/test", f"{CIFAR_DIR}/meta"),
    download=f"https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, extracted into <root>/ (gives {CIFAR_DIR}/)",
    missing=_missing_cifar,
    read=_read_fc100,
)

CIFARFS = Layout(
    name="cifarfs",
    title="CIFAR-FS (CIFAR-100 by class list)",
    channels=3,
    expected=FC100.expected,
    download=FC100.download,
    missing=_missing_cifar,
    read=_read_cifarfs,
)

CUB = Layout(
    name="cub",
    title="CUB-200-2011",
    channels=3,
    expected=(f"{CUB_DIR}/images/<NNN.Name>/*.jpg", f"{CUB_DIR}/classes.txt", f"{CUB_DIR}/images.txt"),
    download=(
        f"CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vp158, extracted into <root>/ (gives {CUB_DIR}/)"
    ),
    missing=_missing_cub,
    read=_read_cub,
)

AIRCRAFT = Layout(
    name="aircraft",
    title="FGVC-Aircraft 2013b",
    channels=3,
    expected=(
        f"{AIRCRAFT_DIR}/images/*.jpg",
        f"{AIRCRAFT_DIR}/images_variant_{{train,val,test}}.txt",
        f"{AIRCRAFT_DIR}/variants.txt (fixes the class order)",
    ),
    download=(
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz, "
        "extracted into <root>/ (gives fgvc-aircraft-2013b/)"
    ),
    missing=_missing_aircraft,
    read=_read_aircraft,
)

FOLDER = Layout(
    name="folder",
    title="Class folders",
    channels=3,
    expected=("<root>/{train,val,test}/<class>/<image>",),
    download="your own images, one folder per class under train/, val/ and test/",
    missing=_missing_folder,
    read=_read_folder,
)

LAYOUTS: dict[str, Layout] = {
    layout.name: layout for layout in (OMNIGLOT, MINIIMAGENET, FC100, CIFARFS, CUB, AIRCRAFT, FOLDER)
}
