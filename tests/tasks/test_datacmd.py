"""`mmlo data` logic: the list of benchmarks, prepare, and the contact sheet."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmlo.tasks import datacmd, offline4
from mmlo.tasks.config import BenchmarkConfig


def test_data_list_covers_every_benchmark(tmp_path: Path) -> None:
    # offline4 lists its class counts per mode and split; regression is always ready; real datasets without
    # a root are listed as not ready.
    rows = datacmd.data_list(cache_dir=tmp_path)
    by_key = {(r.benchmark, r.mode, r.split): r for r in rows}
    counts = offline4.class_counts()
    for mode in offline4.MODES:
        for split, n in counts[mode].items():
            assert by_key[("offline4", mode, split)].classes == n
    assert by_key[("regression2", "sinusoid", "all")].ready
    assert not by_key[("mm2", "omniglot", "all")].ready
    table = datacmd.format_rows(rows)
    assert table.splitlines()[0].split()[:5] == ["benchmark", "mode", "split", "classes", "ready"]


def test_prepare_a_study_block(tmp_path: Path) -> None:
    # Preparing a study's benchmark block renders exactly its modes and returns their class counts.
    cfg = BenchmarkConfig(
        name="offline4", modes=["textures"], max_classes=5, samples_per_class=2, image_size=8, query=1
    )
    cfg = cfg.model_copy(update={"cache_dir": tmp_path})
    counts = datacmd.prepare("offline4", config=cfg, progress=lambda *a: None)
    assert counts == {"textures": {"train": 5, "val": 5, "test": 5}}
    assert len(list(tmp_path.rglob("*.npy"))) == 3
    with pytest.raises(ValueError, match="regression2"):
        datacmd.prepare("offline4", config=BenchmarkConfig(name="regression2"))


def test_show_writes_a_contact_sheet(tmp_path: Path) -> None:
    # A sheet of 3 classes x 8 samples of 32 px tiles enlarged to 64 px with 2 px gaps.
    path = datacmd.show("offline4", mode="textures", out=tmp_path / "sheet.png", split="val", n_classes=3)
    with Image.open(path) as sheet:
        assert sheet.size == (8 * 66 + 2, 3 * 66 + 2)
    with pytest.raises(ValueError, match="no mode"):
        datacmd.show("offline4", mode="nope", out=tmp_path / "x.png")
    with pytest.raises(ValueError, match="regression"):
        datacmd.show("regression2", mode="sinusoid", out=tmp_path / "x.png")


def test_contact_sheet_layout() -> None:
    # Tile (r, c) of the grid lands at (gap + c * (tile + gap), gap + r * (tile + gap)).
    grid = np.zeros((2, 3, 64, 64, 3), dtype=np.uint8)
    grid[1, 2] = 200
    sheet = np.asarray(datacmd.contact_sheet(grid, gap=2))
    assert sheet.shape == (2 * 66 + 2, 3 * 66 + 2, 3)
    assert (sheet[68:132, 134:198] == 200).all()
    assert (sheet[2:66, 2:66] == 0).all()


def test_stderr_progress_ends_with_a_newline() -> None:
    # The progress bar redraws in place and finishes its line when done.
    stream = io.StringIO()
    bar = datacmd.StderrProgress(stream)
    bar("glyphs/train", 0, 10)
    bar("glyphs/train", 10, 10)
    assert "10/10" in stream.getvalue() and stream.getvalue().endswith("s\n")
