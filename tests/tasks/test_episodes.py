"""The N-way K-shot sampler: shapes, determinism, label consistency, rotations, lazy banks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mmlo.tasks.base import SPLITS, TaskBatch
from mmlo.tasks.episodes import ClassBank, ImageBenchmark


def _tagged_bank(sizes: list[int], size: int = 8, channels: int = 3, base: int = 0) -> ClassBank:
    """Each image carries its identity: pixel (0, 0) = class, (0, 1) = index within class, (0, 2) = base."""
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    images = np.zeros((int(offsets[-1]), size, size, channels), dtype=np.uint8)
    for c, n in enumerate(sizes):
        images[offsets[c] : offsets[c + 1], 0, 0] = c
        images[offsets[c] : offsets[c + 1], 0, 1] = np.arange(n)[:, None]
        images[offsets[c] : offsets[c + 1], 0, 2] = base
    return ClassBank(images, offsets, tuple(f"class{c}" for c in range(len(sizes))))


def _benchmark(ways: int = 5, shots: int = 1, query: int = 3) -> ImageBenchmark:
    banks = {
        "a": {s: _tagged_bank([6 + c % 3 for c in range(12)], base=10 + i) for i, s in enumerate(SPLITS)},
        "b": {s: _tagged_bank([20] * 7, base=20 + i) for i, s in enumerate(SPLITS)},
    }
    return ImageBenchmark("toy", banks, ways=ways, shots=shots, query=query, fingerprint="toyhash")


def _ids(x: torch.Tensor) -> np.ndarray:
    """(class, index within class, bank tag) of every image of a [T, n, 3, H, W] tensor."""
    return np.rint(x[:, :, 0, 0, :3].numpy() * 255).astype(int)


def test_shapes_dtypes_and_labels() -> None:
    # Support is [T, ways*shots, 3, H, W] float32 in [0, 1], labels 0..ways-1 class-major, mode/seed echoed.
    bench = _benchmark(ways=4, shots=2, query=3)
    batch = bench.tasks("train", [0, 1, 0], [5, 6, 7])
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (3, 8, 3, 8, 8) and batch.support_x.dtype == torch.float32
    assert batch.query_x.shape == (3, 12, 3, 8, 8)
    assert batch.support_y.tolist()[0] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.query_y.tolist()[2] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert batch.mode.tolist() == [0, 1, 0] and batch.seed.tolist() == [5, 6, 7]
    assert float(batch.support_x.min()) >= 0.0 and float(batch.query_x.max()) <= 1.0
    assert bench.input_shape == (3, 8, 8) and bench.output_dim == 4 and bench.kind == "classification"
    assert bench.fingerprint() == "toyhash"


def test_label_consistency_and_disjoint_support_query() -> None:
    # Every image of one label comes from one class; labels map to distinct classes; no image is both
    # support and query; images come from the requested mode and split.
    bench = _benchmark(ways=5, shots=2, query=4)
    for split_index, split in enumerate(SPLITS):
        batch = bench.tasks(split, [0, 1] * 10, list(range(20)))
        sup, qry = _ids(batch.support_x), _ids(batch.query_x)
        for t in range(20):
            assert set(sup[t, :, 2]) == set(qry[t, :, 2]) == {10 * (1 + t % 2) + split_index}
            label_class: dict[int, int] = {}
            for ids, labels in ((sup[t], batch.support_y[t]), (qry[t], batch.query_y[t])):
                for (c, _, _), y in zip(ids, labels.tolist(), strict=True):
                    assert label_class.setdefault(y, c) == c
            assert len(set(label_class.values())) == 5
            images = [(c, i) for c, i, _ in np.concatenate([sup[t], qry[t]])]
            assert len(images) == len(set(images))


def test_same_triple_same_pixels_regardless_of_batch() -> None:
    # A task depends only on (split, mode, seed): alone or inside a mixed batch it has the same pixels.
    bench = _benchmark()
    alone = bench.tasks("val", [1], [123])
    mixed = bench.tasks("val", [0, 1, 0], [9, 123, 123])
    assert torch.equal(alone.support_x[0], mixed.support_x[1])
    assert torch.equal(alone.query_x[0], mixed.query_x[1])
    other = bench.tasks("val", [1], [124])
    assert not torch.equal(alone.query_x, other.query_x)


def test_mode_task_is_the_same_in_every_composition() -> None:
    # The sampler is salted by the mode's name, not its position: mode 'b' gives the same episode when it
    # is mode 1 of one benchmark and mode 0 of another.
    bank = {s: _tagged_bank([20] * 7) for s in SPLITS}
    first = ImageBenchmark("x", {"a": bank, "b": bank}, 5, 1, 3, "x").tasks("test", [1], [77])
    second = ImageBenchmark("y", {"b": bank}, 5, 1, 3, "y").tasks("test", [0], [77])
    assert torch.equal(first.query_x, second.query_x)


def test_every_class_and_image_is_reachable() -> None:
    # Over many seeds the draw covers every class and every image of a class (no truncation of ranges).
    bench = _benchmark(ways=5, shots=1, query=3)
    ids = _ids(bench.tasks("train", [0] * 300, list(range(300))).query_x)
    seen = {(c, i) for c, i, _ in ids.reshape(-1, 3)}
    sizes = [6 + c % 3 for c in range(12)]
    assert seen == {(c, i) for c in range(12) for i in range(sizes[c])}


def test_grey_banks_are_tiled_and_rotations_are_extra_classes() -> None:
    # A grey bank gives three equal channels; with rotations=4 class c + k*n is class c turned k*90 degrees.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 6, 6, 1), dtype=np.uint8)
    bank = ClassBank(images, np.array([0, 4, 8]), ("p", "q"), rotations=4)
    assert bank.num_classes == 8 and bank.class_name(5) == "q/rot180"
    assert np.array_equal(bank.class_images(5), np.rot90(images[4:8], 2, axes=(1, 2)))
    bench = ImageBenchmark("g", {"g": dict.fromkeys(SPLITS, bank)}, ways=8, shots=1, query=3, fingerprint="g")
    batch = bench.tasks("train", [0], [3])
    x = batch.support_x[0]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    pool = {bank.class_name(c): bank.class_images(c)[..., 0] for c in range(8)}
    for img in torch.cat([batch.support_x[0], batch.query_x[0]]):
        pixels = np.rint(img[0].numpy() * 255).astype(np.uint8)
        assert any((cls == pixels).all(axis=(1, 2)).any() for cls in pool.values())


class _CountingLoader:
    """A picklable bank source that counts how often it is called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> ClassBank:
        self.calls += 1
        return _tagged_bank([5] * 6)


def test_callable_banks_load_once_and_are_not_pickled() -> None:
    # A bank given as a callable is loaded on first use only; a pickled benchmark carries the callable,
    # not the loaded images, and gives the same tasks.
    loader = _CountingLoader()
    bench = ImageBenchmark("lazy", {"m": dict.fromkeys(SPLITS, loader)}, 5, 1, 2, "f", image_size=8)
    assert bench.input_shape == (3, 8, 8) and loader.calls == 0
    first = bench.tasks("train", [0, 0], [1, 2])
    bench.tasks("train", [0], [3])
    assert loader.calls == 1
    clone = pickle.loads(pickle.dumps(bench))
    assert clone._loaded == {}
    assert torch.equal(clone.tasks("train", [0, 0], [1, 2]).query_x, first.query_x)


def test_head_keeps_a_prefix_of_classes() -> None:
    # head(n) keeps the first n classes and their images only (max_classes).
    bank = _tagged_bank([3, 4, 5, 6])
    small = bank.head(2)
    assert small.class_names == ("class0", "class1") and len(small.images) == 7
    assert bank.head(10) is bank


def test_too_small_banks_are_refused() -> None:
    # Fewer classes than ways, or fewer images than shots + query, is an error naming the mode and class.
    bench = ImageBenchmark("s", {"m": dict.fromkeys(SPLITS, _tagged_bank([4, 9, 9]))}, 3, 1, 4, "s")
    with pytest.raises(ValueError, match="class0.*4 images"):
        bench.tasks("train", [0], [0])
    bench = ImageBenchmark("s", {"m": dict.fromkeys(SPLITS, _tagged_bank([9, 9]))}, 3, 1, 4, "s")
    with pytest.raises(ValueError, match="fewer than ways=3"):
        bench.tasks("train", [0], [0])


def test_bank_validation() -> None:
    # Offsets must cover the images exactly and images must be uint8 NHWC with 1 or 3 channels.
    with pytest.raises(ValueError, match="offsets"):
        ClassBank(np.zeros((5, 4, 4, 3), np.uint8), np.array([0, 2, 4]), ("a", "b"))
    with pytest.raises(ValueError, match="uint8"):
        ClassBank(np.zeros((4, 4, 4, 3), np.float32), np.array([0, 2, 4]), ("a", "b"))


def test_meta_batch_has_equal_mode_shares() -> None:
    # meta_batch labels each task with its mode, in equal shares.
    batch = _benchmark().meta_batch("train", 10, np.random.default_rng(0))
    assert sorted(batch.mode.tolist()) == [0] * 5 + [1] * 5
