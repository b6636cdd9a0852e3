"""offline4's committed class index: which classes each mode's train, val and test splits hold, and what
each class is drawn from.

The index (``assets/offline4_index.json.gz``, rebuilt by the maintainer tool
``scripts/build_offline4_index.py``) records a content hash per mode and one for the whole file; both are
checked on load, and the per-mode hashes enter the benchmark fingerprint and the cache key, so results and
caches made with different indexes are never mixed.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmlo.tasks.base import SPLITS, Split
from mmlo.tasks.offline4.sources import ASSETS

INDEX_FILE = "offline4_index.json.gz"


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
                "or rebuild it with `python scripts/build_offline4_index.py`."
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
