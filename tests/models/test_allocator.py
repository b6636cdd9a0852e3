"""The process allocator: glibc tuning in-process, jemalloc for image trials' child processes, and the
reason for it: a large freed block is reused without page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmlo.models import allocator
from mmlo.models.allocator import JEMALLOC_CONF, choose, find_jemalloc, preload_environment, reuse_large_allocations

needs_jemalloc = pytest.mark.skipif(
    find_jemalloc() is None, reason="jemalloc is not installed: sudo apt-get install libjemalloc2 (make setup does)"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_glibc_accepts_the_tuning() -> None:
    # mallopt accepts every threshold on glibc (it returns 0 for a value it refuses)
    assert reuse_large_allocations() is True


def test_preload_environment_prepends_jemalloc_and_keeps_the_users_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # jemalloc goes first in LD_PRELOAD (once), other preloads stay; a MALLOC_CONF the user set wins
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: str(library))
    assert preload_environment({}) == {"LD_PRELOAD": str(library), "MALLOC_CONF": JEMALLOC_CONF}
    mine = {"LD_PRELOAD": f"/opt/libfoo.so {library}", "MALLOC_CONF": "narenas:1"}
    assert preload_environment(mine) == {"LD_PRELOAD": f"{library}:/opt/libfoo.so", "MALLOC_CONF": "narenas:1"}
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    assert preload_environment({}) == {}


def test_choose_gives_image_benchmarks_jemalloc_and_regression_the_system_malloc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = tmp_path / "libjemalloc.so.2"
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: str(library))
    environment, line = choose("classification")
    assert environment["LD_PRELOAD"] == str(library) and line.startswith(f"jemalloc ({library}")
    assert choose("regression") == ({}, "system malloc")
    assert choose("classification", "system") == ({}, "system malloc")
    assert choose("regression", "jemalloc")[0]["LD_PRELOAD"] == str(library)
    monkeypatch.setattr(allocator, "find_jemalloc", lambda: None)
    environment, line = choose("classification")
    assert environment == {} and "libjemalloc2 is not installed" in line
    with pytest.raises(ValueError, match="auto, jemalloc or system"):
        choose("classification", "tcmalloc")


REUSE = """
import json, resource, torch
from mmlo.models.allocator import process_allocator
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
keep, counts = [], []
for _ in range(4):
    before = faults()
    block = torch.empty(50_000_000)  # 200 MB, allocated aligned as every tensor is
    block.fill_(1.0)
    keep.append(torch.empty(1000))  # a small block lands behind the large one
    del block
    counts.append(faults() - before)
print(json.dumps({"allocator": process_allocator(), "faults": counts}))
"""


@needs_jemalloc
def test_a_jemalloc_child_reuses_a_freed_large_block_without_page_faults() -> None:
    # 200 MB = 48,828 pages of 4 KB: the first fill faults them in; with jemalloc's kept pages every later
    # block of the same size reuses them (Debian 12's glibc faults all 48,828 in again, every round).
    result = subprocess.run(
        [sys.executable, "-c", REUSE], env={**_environ(), **preload_environment({})}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["allocator"] == "jemalloc"
    first, *later = report["faults"]
    assert first > 0
    assert max(later) < 48_828 // 20


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
