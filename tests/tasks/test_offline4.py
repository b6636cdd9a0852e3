"""offline4: the committed class index, the cache, the benchmark it builds, and that its modes are learnable."""

from __future__ import annotations

import copy
import gzip
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mmlo.tasks import offline4
from mmlo.tasks.base import SPLITS
from mmlo.tasks.config import BenchmarkConfig
from mmlo.tasks.errors import DataMissingError
from mmlo.tasks.offline4 import benchmark, rendering
from mmlo.tasks.offline4.glyphs import letter
from mmlo.tasks.offline4.sources import ASSETS

MODES = offline4.MODES


def tiny(tmp_path: Path, **update: object) -> BenchmarkConfig:
    values: dict[str, object] = {
        "name": "offline4",
        "max_classes": 10,
        "samples_per_class": 4,
        "image_size": 16,
        "ways": 5,
        "shots": 1,
        "query": 3,
        "cache_dir": tmp_path,
    }
    values.update(update)
    return BenchmarkConfig(**values)


def test_index_hashes_match_content() -> None:
    # The committed index carries a sha256 per mode and one for the whole; both match the content.
    raw = json.loads(gzip.decompress((ASSETS / offline4.INDEX_FILE).read_bytes()))
    modes = offline4.verify_index(raw)
    assert set(modes) == set(MODES)
    assert offline4.class_index_sha256() == raw["sha256"]
    for mode, index in modes.items():
        assert index.sha256 == offline4.canonical_sha256(
            {"table": raw["modes"][mode]["table"], "splits": raw["modes"][mode]["splits"]}
        )


def test_edited_index_is_refused() -> None:
    # Moving one class from test to train (a silent change of the class list) fails the hash check.
    raw = json.loads(gzip.decompress((ASSETS / offline4.INDEX_FILE).read_bytes()))
    edited = copy.deepcopy(raw)
    edited["modes"]["emoji"]["splits"]["train"].append(edited["modes"]["emoji"]["splits"]["test"].pop())
    with pytest.raises(ValueError, match="emoji"):
        offline4.verify_index(edited)


def test_canonical_hash_ignores_key_order() -> None:
    # The content hash is of canonical JSON: key order does not matter, values do.
    assert offline4.canonical_sha256({"a": 1, "b": [2, 3]}) == offline4.canonical_sha256({"b": [2, 3], "a": 1})
    assert offline4.canonical_sha256({"a": 1}) != offline4.canonical_sha256({"a": 2})


@pytest.mark.parametrize("mode", MODES)
def test_splits_are_disjoint_and_large(mode: str) -> None:
    # Train, val and test classes never share a key, and every split has at least a hundred classes.
    index = offline4.load_index()[mode]
    keys = {s: [k for k, _ in index.splits[s]] for s in SPLITS}
    for s in SPLITS:
        assert len(set(keys[s])) == len(keys[s])
        assert len(keys[s]) >= 100
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])


def test_glyphs_split_by_script() -> None:
    # Omniglot's protocol: a script's letters all lie in one split, so test alphabets are never seen.
    index = offline4.load_index()["glyphs"]
    scripts = {s: {k.split("-")[0] for k, _ in index.splits[s]} for s in SPLITS}
    assert not scripts["train"] & scripts["val"]
    assert not scripts["train"] & scripts["test"]
    assert not scripts["val"] & scripts["test"]
    assert len(scripts["test"]) >= 10


# Letters drawn alike in Latin, Greek and Cyrillic (escaped, since they look identical in the source): the
# index may keep at most one letter of each group. Capitals A B E H I K M O P T X Y, then a c e o p x y i j s,
# then Greek kappa / Cyrillic ka, Latin J / Cyrillic je, Latin S / Cyrillic dze.
TWINS = [
    "A\u0391\u0410", "B\u0392\u0412", "E\u0395\u0415", "H\u0397\u041d", "I\u0399\u0406",
    "K\u039a\u041a", "M\u039c\u041c", "O\u039f\u041e", "P\u03a1\u0420", "T\u03a4\u0422",
    "X\u03a7\u0425", "Y\u03a5\u04ae", "a\u0430", "c\u0441", "e\u0435", "o\u03bf\u043e",
    "p\u03c1\u0440", "x\u0445", "y\u0443", "i\u0456", "j\u0458", "s\u0455", "\u03ba\u043a",
    "J\u0408", "S\u0405",
]  # fmt: skip


def test_no_duplicate_letters_across_glyph_splits() -> None:
    # Cross-script twins were removed before splitting: of each twin group at most one letter remains,
    # no code point is in two splits, and every letter is its own NFKC form.
    index = offline4.load_index()["glyphs"]
    present = {letter(k): s for s in SPLITS for k, _ in index.splits[s]}
    assert len(present) == sum(len(index.splits[s]) for s in SPLITS)
    for group in TWINS:
        kept = [ch for ch in group if ch in present]
        assert len(kept) <= 1, f"twins {kept} all kept"
    assert all(unicodedata.normalize("NFKC", ch) == ch for ch in present)


@pytest.mark.parametrize("mode", MODES)
def test_tiny_configuration_renders(mode: str, needs_sources: Callable[..., None]) -> None:
    # About 10 classes x 4 samples render to uint8 images of the asked size (the unit tests' configuration).
    needs_sources(mode)
    index = offline4.load_index()[mode]
    images = rendering.render_classes(mode, index.table, index.classes("train", 10), 4, 32, workers=1)
    assert images.shape == (40, 32, 32, 1 if mode == "glyphs" else 3)
    assert images.dtype == np.uint8


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_pixels(mode: str, needs_sources: Callable[..., None]) -> None:
    # A sample depends only on (mode, class, index): rendering a class alone or after others gives the
    # same pixels, and two samples of one class differ.
    needs_sources(mode)
    index = offline4.load_index()[mode]
    classes = index.classes("val", 3)
    together = rendering.render_classes(mode, index.table, classes, 3, 24, workers=1)
    alone = rendering.render_classes(mode, index.table, classes[2:], 3, 24, workers=1)
    np.testing.assert_array_equal(together[6:], alone)
    assert not np.array_equal(together[0], together[1])


def test_worker_pool_gives_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rendering on two worker processes equals the single-process loop, image for image.
    monkeypatch.setattr(rendering, "PARALLEL_MIN_IMAGES", 0)
    monkeypatch.setattr(rendering, "CHUNK_CLASSES", 2)
    index = offline4.load_index()["textures"]
    classes = index.classes("train", 4)
    seen: list[tuple[int, int]] = []
    pooled = rendering.render_classes(
        "textures", index.table, classes, 2, 16, workers=2, progress=lambda _, d, t: seen.append((d, t))
    )
    inline = rendering.render_classes("textures", index.table, classes, 2, 16, workers=1)
    np.testing.assert_array_equal(pooled, inline)
    assert seen == [(0, 8), (4, 8), (8, 8)]


def test_build_gives_episodes_and_reuses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, needs_sources: Callable[..., None]
) -> None:
    # build() honours modes, image size and max_classes; a second build reads the cache without rendering,
    # and a larger cached bank serves a smaller max_classes as its prefix.
    needs_sources("textures", "glyphs")
    cfg = tiny(tmp_path, modes=["textures", "glyphs"])
    bench = offline4.build(cfg)
    assert bench.modes == ("textures", "glyphs")
    assert bench.input_shape == (3, 16, 16)
    batch = bench.tasks("train", [0, 1], [7, 7])
    assert batch.support_x.shape == (2, 5, 3, 16, 16)
    assert batch.query_x.shape == (2, 15, 3, 16, 16)
    assert float(batch.support_x.min()) >= 0.0 and float(batch.support_x.max()) <= 1.0
    # Grey glyphs are tiled to three equal channels.
    torch_glyphs = batch.support_x[1]
    assert bool((torch_glyphs[:, 0] == torch_glyphs[:, 2]).all())
    assert len(list((tmp_path / "offline4").rglob("*.npy"))) == 2
    assert bench.bank("glyphs", "test").num_classes == 10

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered although cached")

    monkeypatch.setattr(benchmark, "render_classes", refuse)
    again = offline4.build(cfg).tasks("train", [0, 1], [7, 7])
    np.testing.assert_array_equal(again.support_x.numpy(), batch.support_x.numpy())
    smaller = offline4.build(tiny(tmp_path, modes=["textures"], max_classes=6)).bank("textures", "train")
    full = offline4.build(cfg).bank("textures", "train")
    assert smaller.class_names == full.class_names[:6]
    np.testing.assert_array_equal(smaller.images, full.images[:24])


def test_prepare_renders_every_split(tmp_path: Path, needs_sources: Callable[..., None]) -> None:
    # prepare() writes one bank per mode and split, reporting progress up to the image count.
    needs_sources("icons")
    calls: list[tuple[str, int, int]] = []
    files = offline4.prepare(tiny(tmp_path, modes=["icons"], max_classes=5), lambda *a: calls.append(a))
    assert [f.name for f in files] == [f"{s}-16px-4s-5c.npy" for s in SPLITS]
    assert ("icons/val", 20, 20) in calls
    assert np.load(files[0]).shape == (20, 16, 16, 3)


def test_missing_font_package_refuses_the_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without its fonts a mode is refused with the package to install, never rendered from a substitute.
    from mmlo.tasks.offline4 import glyphs

    monkeypatch.setattr(glyphs, "locate_font", lambda path: None)
    with pytest.raises(DataMissingError, match="sudo apt-get install fonts-noto-core"):
        offline4.build(tiny(tmp_path, modes=["glyphs"]))
    status = offline4.status()
    assert not any(s.present for s in status["glyphs"])
    assert all(s.present for s in status["textures"])


def test_samples_per_class_must_cover_the_episode(tmp_path: Path) -> None:
    # An episode needs shots + query distinct samples per class.
    with pytest.raises(ValueError, match="shots \\+ query"):
        offline4.build(tiny(tmp_path, samples_per_class=3, shots=1, query=3))


def test_fingerprint_tracks_what_defines_the_tasks(tmp_path: Path) -> None:
    # The same images give the same fingerprint (wherever cached, whatever the episode shape); modes, image
    # size or max_classes change it.
    base = offline4.fingerprint(tiny(tmp_path))
    assert base == offline4.fingerprint(tiny(tmp_path / "elsewhere", shots=2))
    assert base != offline4.fingerprint(tiny(tmp_path, modes=["glyphs", "emoji"]))
    assert base != offline4.fingerprint(tiny(tmp_path, image_size=32))
    assert base != offline4.fingerprint(tiny(tmp_path, max_classes=11))


def nearest_centroid_accuracy(images: np.ndarray, per_class: int, ways: int, shots: int, episodes: int) -> float:
    """Mean accuracy of nearest-centroid classification on raw pixels over seeded episodes."""
    n_classes = len(images) // per_class
    x = images.reshape(n_classes, per_class, -1).astype(np.float64) / 255.0
    rng = np.random.default_rng(0)
    correct = 0
    for _ in range(episodes):
        classes = rng.choice(n_classes, ways, replace=False)
        picks = np.stack([rng.permutation(per_class) for _ in classes])
        support = np.stack([x[c, p[:shots]] for c, p in zip(classes, picks, strict=True)])
        query = np.stack([x[c, p[shots:]] for c, p in zip(classes, picks, strict=True)])
        centroids = support.mean(axis=1)
        d = ((query[:, :, None, :] - centroids[None, None]) ** 2).sum(-1)
        correct += int((d.argmin(-1) == np.arange(ways)[:, None]).sum())
    return correct / (episodes * ways * (per_class - shots))


@pytest.mark.parametrize("mode", MODES)
def test_nearest_centroid_beats_chance(mode: str, needs_sources: Callable[..., None]) -> None:
    # Each mode is learnable from raw pixels: 5-way 5-shot nearest centroid on 30 test classes clears
    # chance (0.20) by a wide margin (measured: glyphs 0.79, emoji 0.71, icons 0.51, textures 0.44).
    needs_sources(mode)
    index = offline4.load_index()[mode]
    images = rendering.render_classes(mode, index.table, index.classes("test", 30), 8, 32, workers=1)
    accuracy = nearest_centroid_accuracy(images, 8, ways=5, shots=5, episodes=60)
    assert accuracy > 0.32, f"{mode}: {accuracy:.2f}"
