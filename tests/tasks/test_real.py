"""Real-dataset loaders on tiny fixtures written in exactly the published on-disk layouts.

Every fixture image is a small noisy square whose mean colour encodes its class, so class counts, split
membership and label consistency can be checked on the prepared cache and on sampled episodes.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmlo.tasks import real, real_layouts
from mmlo.tasks.base import SPLITS
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.errors import DataMissingError
from mmlo.tasks.real_layouts import CorruptImageError

SIZE = 8  # prepared image size: every fixture is stored larger (12 or 32 px), so resizing is exercised
PER_CLASS = 4


def _colour(c: int) -> np.ndarray:
    """Class c's mean colour: classes differ by >= 25 in red or green."""
    return np.array([25 * (c % 10) + 10, 25 * (c // 10) + 10, 128])


def _images(c: int, n: int = PER_CLASS, side: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng((seed, c))
    noise = rng.integers(-20, 21, size=(n, side, side, 3))
    return np.clip(_colour(c) + noise, 0, 255).astype(np.uint8)


def _write_files(folder: Path, pixels: np.ndarray, suffix: str = ".png", stem: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(pixels):
        path = folder / f"{stem}{i:03d}{suffix}"
        if suffix == ".jpg":
            Image.fromarray(image).save(path, quality=95)
        else:
            Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _nearest_class(image: np.ndarray, candidates: dict[str, int]) -> str:
    mean = image.reshape(-1, image.shape[-1]).mean(axis=0)[:3]
    return min(candidates, key=lambda name: float(np.abs(_colour(candidates[name])[: len(mean)] - mean).sum()))


def _cfg(name: str, root: Path, tmp_path: Path, **extra: object) -> BenchmarkConfig:
    return BenchmarkConfig(
        name=name, root=root, cache_dir=tmp_path / "cache", image_size=SIZE, ways=2, shots=1, query=2, **extra
    )


def _assert_banks_match(bench: real.ImageBenchmark, mode: str, class_ids: dict[str, dict[str, int]]) -> None:
    """Every class of every split holds images of its own colour; episodes keep label -> class consistent."""
    for split, expected in class_ids.items():
        assert split in SPLITS, split
        bank = bench.bank(mode, split)
        assert bank.class_names == tuple(expected)
        for c, name in enumerate(bank.class_names):
            images = bank.class_images(c)
            assert all(_nearest_class(img, expected) == name for img in images), (split, name)
        batch = bench.tasks(split, [bench.modes.index(mode)] * 4, list(range(4)))
        for t in range(4):
            seen: dict[int, str] = {}
            pairs = [
                *zip(batch.support_x[t], batch.support_y[t], strict=True),
                *zip(batch.query_x[t], batch.query_y[t], strict=True),
            ]
            for x, y in pairs:
                pixels = (x.permute(1, 2, 0).numpy() * 255).round()
                assert seen.setdefault(int(y), _nearest_class(pixels, expected)) == _nearest_class(pixels, expected)
            assert len(set(seen.values())) == bench.ways


# Omniglot -----------------------------------------------------------------------------------------------

OMNIGLOT_TABLE = {
    "train": {"images_background/Latin": [1, 2, 3], "images_evaluation/Gurmukhi": [41]},
    "val": {"images_background/Armenian": [1, 2]},
    "test": {"images_evaluation/Gurmukhi": [42], "images_evaluation/Tibetan": [1, 2]},
}


def _omniglot_fixture(root: Path) -> dict[str, dict[str, int]]:
    """Characters as 12 px grey PNGs (dark strokes on white, like Omniglot) whose grey level codes the class."""
    ids: dict[str, dict[str, int]] = {}
    c = 0
    for split, alphabets in OMNIGLOT_TABLE.items():
        ids[split] = {}
        for alphabet_path, numbers in alphabets.items():
            for number in numbers:
                grey = 255 - _colour(c)[0]
                folder = root / "omniglot-py" / alphabet_path / f"character{number:02d}"
                _write_files(folder, np.full((PER_CLASS, 12, 12), grey, dtype=np.uint8), stem=f"{c:04d}_")
                ids[split][f"{alphabet_path.split('/')[1]}/character{number:02d}"] = c
                c += 1
    return ids


def test_shipped_omniglot_splits() -> None:
    # Vinyals is 1028/172/423 and MAML 1100/100/423; each split list is disjoint and covers all 1623 characters;
    # Vinyals' val is five whole background alphabets and its test starts at Gurmukhi/character42.
    alphabets = real_layouts._asset("omniglot_splits.json")["alphabets"]
    every = {(a, n) for a, count in alphabets.items() for n in range(1, count + 1)}
    assert len(alphabets) == 50 and len(every) == 1623
    for variant, sizes in (("vinyals", (1028, 172, 423)), ("maml", (1100, 100, 423))):
        table = real_layouts.omniglot_split_table(variant)
        members = [{(a, n) for a, ns in table[s].items() for n in ns} for s in ("train", "val", "test")]
        assert tuple(len(m) for m in members) == sizes
        assert members[0] | members[1] | members[2] == every
    vinyals = real_layouts.omniglot_split_table("vinyals")
    assert sorted(a.split("/")[1] for a in vinyals["val"]) == [
        "Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"
    ]
    assert vinyals["test"]["images_evaluation/Gurmukhi"] == [42, 43, 44, 45]
    assert vinyals["train"]["images_evaluation/Gurmukhi"] == list(range(1, 42))


def test_omniglot_split_membership_inversion_and_rotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Classes follow the split table; strokes are inverted (stored 255 - pixel); rotations make 4x classes.
    root = tmp_path / "data"
    ids = _omniglot_fixture(root)
    monkeypatch.setattr(real_layouts, "omniglot_split_table", lambda variant: OMNIGLOT_TABLE)
    cfg = _cfg("omniglot", root, tmp_path)
    assert real.prepare(cfg) == {"omniglot": {"train": 4, "val": 2, "test": 3}}
    assert real.class_counts(cfg) == {"omniglot": {"train": 16, "val": 8, "test": 12}}
    bench = real.build(cfg)
    bank = bench.bank("omniglot", "test")
    assert bank.images.shape[1:] == (SIZE, SIZE, 1) and bank.num_classes == 12
    assert bank.class_names == ("Gurmukhi/character42", "Tibetan/character01", "Tibetan/character02")
    for name, c in ids["test"].items():
        stored = bank.class_images(bank.class_names.index(name))
        assert np.all(stored == _colour(c)[0])
    unrotated = real.build(_cfg("omniglot", root, tmp_path, omniglot_rotations=False))
    assert unrotated.bank("omniglot", "train").num_classes == 4
    assert unrotated.fingerprint() != bench.fingerprint()


def test_omniglot_missing_character_is_named(tmp_path: Path) -> None:
    # With the shipped Vinyals list, a partial Omniglot folder fails naming a missing character folder.
    root = tmp_path / "data"
    _omniglot_fixture(root)
    with pytest.raises(DataMissingError, match=r"Omniglot character folder .*character\d\d is missing"):
        real.prepare(_cfg("omniglot", root, tmp_path))


# mini-ImageNet -------------------------------------------------------------------------------------------

MINI_CLASSES = {"train": ["n01532829", "n01558993", "n01704323"], "val": ["n01855672", "n02091244"],
                "test": ["n01930112", "n01981276"]}  # fmt: skip


def _mini_ids() -> dict[str, dict[str, int]]:
    ids: dict[str, dict[str, int]] = {}
    c = 0
    for split, wnids in MINI_CLASSES.items():
        ids[split] = {}
        for wnid in wnids:
            ids[split][wnid] = c
            c += 1
    return ids


def _mini_fixture(root: Path, layout: str) -> dict[str, dict[str, int]]:
    base = root / "miniimagenet"
    base.mkdir(parents=True)
    ids = _mini_ids()
    for split, classes in ids.items():
        if layout == "cache-pickle":
            # Classes interleaved in image_data: class_dict must be followed, not contiguous blocks assumed.
            data = np.concatenate([_images(c, side=16) for c in classes.values()])
            order = np.random.default_rng(1).permutation(len(data))
            image_data = data[order]
            where = np.argsort(order)
            class_dict = {w: where[i * PER_CLASS : (i + 1) * PER_CLASS].tolist() for i, w in enumerate(classes)}
            payload = {"image_data": image_data, "class_dict": class_dict}
            (base / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(payload, protocol=4))
        elif layout == "csv":
            with open(base / f"{split}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["filename", "label"])
                for wnid, c in classes.items():
                    for path in _write_files(base / "images", _images(c, side=16), ".jpg", stem=wnid):
                        writer.writerow([path.name, wnid])
        elif layout == "class-folders":
            for wnid, c in classes.items():
                _write_files(base / split / wnid, _images(c, side=16), ".jpg")
        else:
            name = real_layouts._METAOPTNET_FILES[split]
            labels = [i for i in range(len(classes)) for _ in range(PER_CLASS)]
            data = np.concatenate([_images(c, side=16) for c in classes.values()])
            payload = {"data": data, "labels": labels, "catname2label": {w: i for i, w in enumerate(classes)}}
            (base / name).write_bytes(pickle.dumps(payload, protocol=2))
    return ids


@pytest.mark.parametrize("layout", ["cache-pickle", "csv", "class-folders", "metaoptnet-pickle"])
def test_miniimagenet_layouts(tmp_path: Path, layout: str) -> None:
    # Each of the four layouts gives the same splits (64/16/20 in the real data), classes and colours.
    root = tmp_path / "data"
    ids = _mini_fixture(root, layout)
    assert real_layouts.miniimagenet_format(root / "miniimagenet") == layout
    cfg = _cfg("miniimagenet", root, tmp_path)
    assert real.prepare(cfg) == {"miniimagenet": {"train": 3, "val": 2, "test": 2}}
    _assert_banks_match(real.build(cfg), "miniimagenet", ids)


def test_malicious_miniimagenet_pickle_is_refused(tmp_path: Path) -> None:
    # A mini-ImageNet cache pickle that would run a command is refused by the restricted unpickler.
    root = tmp_path / "data"
    _mini_fixture(root, "cache-pickle")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, (f"touch {marker}",))

    (root / "miniimagenet" / "mini-imagenet-cache-train.pkl").write_bytes(pickle.dumps({"image_data": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        real.prepare(_cfg("miniimagenet", root, tmp_path))
    assert not marker.exists()


# CIFAR-100: FC100 and CIFAR-FS ----------------------------------------------------------------------------

FC100_TEST = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "people": ["baby", "boy", "girl", "man", "woman"],
}


def _cifar_fixture(root: Path) -> dict[str, int]:
    """CIFAR-100's python pickles: 3 train + 1 test image of each of the 100 classes, CIFAR's row layout."""
    asset = real_layouts._asset("cifarfs_splits.json")
    pairs = sorted(tuple(p) for s in ("train", "val", "test") for p in asset[s])
    fine_names = sorted(f for _, f in pairs)
    coarse_names = sorted({c for c, _ in pairs})
    coarse_of = {f: coarse_names.index(c) for c, f in pairs}
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    meta = {"fine_label_names": fine_names, "coarse_label_names": coarse_names}
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    for part, n, seed in (("train", 3, 0), ("test", 1, 1)):
        data, fine, coarse = [], [], []
        for f, name in enumerate(fine_names):
            data.append(_images(f, n=n, side=32, seed=seed).transpose(0, 3, 1, 2).reshape(n, 3072))
            fine += [f] * n
            coarse += [coarse_of[name]] * n
        payload = {"data": np.concatenate(data), "fine_labels": fine, "coarse_labels": coarse}
        (base / part).write_bytes(pickle.dumps(payload, protocol=2))
    return {f"{coarse_names[coarse_of[name]]}/{name}": f for f, name in enumerate(fine_names)}


def test_fc100_superclass_split(tmp_path: Path) -> None:
    # FC100 splits CIFAR-100 by superclass: 60/20/20 classes; test = aquatic mammals, insects, medium mammals,
    # people; each class keeps its train and test images (3 + 1 here) and its colour.
    root = tmp_path / "data"
    ids = _cifar_fixture(root)
    cfg = _cfg("fc100", root, tmp_path)
    assert real.prepare(cfg) == {"fc100": {"train": 60, "val": 20, "test": 20}}
    bench = real.build(cfg)
    test_names = bench.bank("fc100", "test").class_names
    assert sorted(test_names) == sorted(f"{c}/{f}" for c, fs in FC100_TEST.items() for f in fs)
    val_super = {name.split("/")[0] for name in bench.bank("fc100", "val").class_names}
    assert val_super == {
        "large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"
    }
    assert np.all(np.diff(bench.bank("fc100", "train").offsets) == 4)
    by_split = {s: {n: ids[n] for n in bench.bank("fc100", s).class_names} for s in ("train", "val", "test")}
    _assert_banks_match(bench, "fc100", by_split)


def test_cifarfs_class_lists(tmp_path: Path) -> None:
    # CIFAR-FS uses the shipped 64/16/20 class lists, disjoint, from the same pickles.
    root = tmp_path / "data"
    ids = _cifar_fixture(root)
    cfg = _cfg("cifarfs", root, tmp_path)
    assert real.prepare(cfg) == {"cifarfs": {"train": 64, "val": 16, "test": 20}}
    bench = real.build(cfg)
    names = [set(bench.bank("cifarfs", s).class_names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert "aquatic_mammals/whale" in names[2] and "fish/shark" in names[1]
    _assert_banks_match(bench, "cifarfs", {"val": {n: ids[n] for n in bench.bank("cifarfs", "val").class_names}})


# CUB-200-2011 and FGVC-Aircraft ---------------------------------------------------------------------------

# np.random.RandomState(123).shuffle(list(range(10))) == [4, 0, 7, 5, 8, 3, 1, 6, 9, 2]; 70/15/15 of 10 -> 7/1/2.
SPLIT_OF_10 = {"train": [4, 0, 7, 5, 8, 3, 1], "val": [6], "test": [9, 2]}


def _cub_fixture(root: Path) -> list[str]:
    base = root / "CUB_200_2011"
    names = [f"{i + 1:03d}.Bird_{i}" for i in range(10)]
    lines, n = [], 0
    for c, name in enumerate(names):
        pixels = _images(c)
        for i, path in enumerate(_write_files(base / "images" / name, pixels, ".jpg", stem=f"Bird_{c}_")):
            if c == 3 and i == 0:
                # CUB has a few greyscale JPEGs: they must come out as RGB of the same colour.
                Image.fromarray(pixels[i]).convert("L").convert("RGB").save(path, quality=95)
            n += 1
            lines.append(f"{n} {name}/{path.name}")
    (base / "classes.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(names)))
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    return names


def test_cub_mmaml_class_split(tmp_path: Path) -> None:
    # CUB's classes are split 70/15/15 by MMAML's RandomState(123) shuffle of classes.txt; images keep colours.
    root = tmp_path / "data"
    names = _cub_fixture(root)
    cfg = _cfg("cub", root, tmp_path)
    assert real.prepare(cfg) == {"cub": {"train": 7, "val": 1, "test": 2}}
    bench = real.build(cfg)
    for split in SPLITS:
        assert bench.bank("cub", split).class_names == tuple(names[i] for i in SPLIT_OF_10[split])
    train = {names[i]: i for i in SPLIT_OF_10["train"] if i != 3}
    bank = bench.bank("cub", "train")
    for name in train:
        assert all(_nearest_class(img, train) == name for img in bank.class_images(bank.class_names.index(name)))


def test_aircraft_variant_split(tmp_path: Path) -> None:
    # Aircraft classes are variants (names with spaces and slashes), in variants.txt order split by MMAML's
    # recipe; images from all three image lists are pooled per variant.
    root = tmp_path / "data"
    base = root / "fgvc-aircraft-2013b" / "data"
    variants = [f"F/A-{i}" if i % 2 else f"Cessna {i}" for i in range(10)]
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    (base / "images").mkdir(parents=True)
    for c, variant in enumerate(variants):
        for i, pixels in enumerate(_images(c)):
            image_id = f"{c:03d}{i:04d}"
            Image.fromarray(pixels).save(base / "images" / f"{image_id}.jpg", quality=95)
            lists[("train", "val", "test", "test")[i]].append(f"{image_id} {variant}")
    for split, lines in lists.items():
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    cfg = _cfg("aircraft", root, tmp_path)
    assert real.prepare(cfg) == {"aircraft": {"train": 7, "val": 1, "test": 2}}
    bench = real.build(cfg)
    assert bench.bank("aircraft", "val").class_names == ("Cessna 6",)
    assert np.all(np.diff(bench.bank("aircraft", "train").offsets) == PER_CLASS)
    ids = {s: {variants[i]: i for i in order} for s, order in SPLIT_OF_10.items()}
    _assert_banks_match(bench, "aircraft", {s: ids[s] for s in ("train", "test")})


# Generic folders, compositions, errors, cache -----------------------------------------------------------


def _folder_fixture(root: Path, classes: dict[str, list[int]]) -> None:
    for split, ids in classes.items():
        for c in ids:
            _write_files(root / split / f"class{c:02d}", _images(c), ".png")


def test_class_folders_and_corrupt_image(tmp_path: Path) -> None:
    # <root>/<split>/<class>/<img> gives sorted classes per split; an undecodable image is reported by path.
    root = tmp_path / "folders"
    _folder_fixture(root, {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]})
    (root / "train" / "class00" / "notes.txt").write_text("not an image, ignored")
    cfg = _cfg("folder", root, tmp_path)
    assert real.prepare(cfg) == {"folder": {"train": 3, "val": 2, "test": 2}}
    ids = {s: {f"class{c:02d}": c for c in cs} for s, cs in {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]}.items()}
    _assert_banks_match(real.build(cfg), "folder", ids)
    bad = root / "test" / "class05" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(CorruptImageError, match=str(bad)):
        real.prepare(_cfg("folder", root, tmp_path / "other"))


def test_missing_dataset_names_files_and_download(tmp_path: Path) -> None:
    # A missing dataset raises DataMissingError naming the expected files and the download; status() agrees.
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataMissingError, match=r"cifar-100-python/train.*cifar-100-python\.tar\.gz"):
        real.prepare(_cfg("fc100", root, tmp_path))
    with pytest.raises(DataMissingError, match="benchmark.root"):
        real.build(BenchmarkConfig(name="mm2", cache_dir=tmp_path))
    _folder_fixture(root, {"train": [0, 1], "val": [2, 3], "test": [4, 5]})
    state = real.status("folder", root)
    assert state["folder"].present and "present" in str(state["folder"])
    mm5 = real.status("mm5", root)
    assert list(mm5) == ["omniglot", "miniimagenet", "fc100", "cub", "aircraft"]
    assert not mm5["cub"].present and "CUB_200_2011/classes.txt" in mm5["cub"].missing
    assert "brendenlake/omniglot" in str(mm5["omniglot"])


def test_build_needs_prepare_and_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # build() before prepare names the prepare command; a second prepare decodes nothing; the cache is
    # memory-mapped; max_classes and image_size change the fingerprint.
    root = tmp_path / "folders"
    _folder_fixture(root, {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]})
    cfg = _cfg("folder", root, tmp_path)
    with pytest.raises(DataMissingError, match="mmlo data prepare folder --root"):
        real.build(cfg)
    real.prepare(cfg)

    def no_decoding(*args: object) -> None:
        raise AssertionError("prepare decoded an image although the cache was ready")

    monkeypatch.setattr(real, "decode", no_decoding)
    real.prepare(cfg)
    bench = real.build(cfg)
    assert isinstance(bench.bank("folder", "train").images, np.memmap)
    capped = real.build(_cfg("folder", root, tmp_path, max_classes=2))
    assert capped.bank("folder", "train").class_names == ("class00", "class01")
    assert capped.fingerprint() != bench.fingerprint()
    assert real.build(cfg).fingerprint() == bench.fingerprint()
    meta = json.loads(next((tmp_path / "cache" / "real" / "folder").glob("*/train.json")).read_text())
    assert meta["offsets"] == [0, 4, 8, 12] and meta["image_size"] == SIZE


def test_composition_and_default_size(tmp_path: Path) -> None:
    # mm2b composes mini-ImageNet and FC100 in that order; without an explicit image_size it is 84 px.
    root = tmp_path / "data"
    _mini_fixture(root, "cache-pickle")
    _cifar_fixture(root)
    cfg = BenchmarkConfig(name="mm2b", root=root, cache_dir=tmp_path / "cache", ways=2, shots=1, query=2)
    assert real.image_size(cfg) == 84
    counts = real.prepare(cfg)
    assert counts == {"miniimagenet": {"train": 3, "val": 2, "test": 2}, "fc100": {"train": 60, "val": 20, "test": 20}}
    bench = real.build(cfg)
    assert bench.modes == ("miniimagenet", "fc100") and bench.input_shape == (3, 84, 84)
    batch = bench.meta_batch("train", 4, np.random.default_rng(0))
    assert batch.support_x.shape == (4, 2, 3, 84, 84) and batch.mode.tolist() == [0, 1, 0, 1]


def test_registry_agrees_with_compositions(tmp_path: Path) -> None:
    # Every real-data benchmark is registered with the same modes, and the registry builds it.
    from mmlo.tasks.registry import benchmark_modes, get_benchmark

    for name, modes in real.COMPOSITIONS.items():
        assert benchmark_modes(name) == modes
    root = tmp_path / "folders"
    _folder_fixture(root, {"train": [0, 1], "val": [2, 3], "test": [4, 5]})
    cfg = _cfg("folder", root, tmp_path)
    real.prepare(cfg)
    assert get_benchmark(cfg).fingerprint() == real.build(cfg).fingerprint()


def test_prepared_cache_needs_no_raw_files_and_missing_modes_fail_first(tmp_path: Path) -> None:
    # Once prepared, build() works without the raw dataset (workers need only the cache); prepare of a
    # composition with one missing dataset fails before decoding any other.
    root = tmp_path / "data"
    _mini_fixture(root, "cache-pickle")
    cfg = _cfg("miniimagenet", root, tmp_path)
    real.prepare(cfg)
    for path in (root / "miniimagenet").iterdir():
        path.unlink()
    assert real.build(cfg).bank("miniimagenet", "val").num_classes == 2
    _mini_fixture(tmp_path / "data2", "cache-pickle")
    with pytest.raises(DataMissingError, match="cifar-100-python"):
        real.prepare(_cfg("mm2b", tmp_path / "data2", tmp_path))
    assert len(list((tmp_path / "cache" / "real" / "miniimagenet").glob("*/train.npy"))) == 1
