"""``offline4``: the built-in multimodal image benchmark (glyphs, emoji, icons, textures).

Four visually distinct modes stand in for the papers' datasets on machines that reach package registries
but no dataset host: ``glyphs`` (Omniglot), ``emoji`` (natural objects), ``icons`` (fine-grained shapes),
``textures`` (CIFAR-like full frames). Each mode's train, val and test classes are disjoint and fixed by a
committed class index (:mod:`.index`, ``assets/offline4_index.json.gz``) whose sha256 is checked on load and
enters the benchmark fingerprint.

Images are rendered from installed fonts and packages (:mod:`.sources`), never downloaded by a trial: one
module per mode (:mod:`.glyphs`, :mod:`.emoji`, :mod:`.icons`, :mod:`.textures`) draws a class's samples on
the shared recipe of :mod:`.raster`; :mod:`.rendering` renders many classes on every core; and
:mod:`.benchmark` caches the rendered banks and builds the benchmark of a study. A mode whose sources are
missing is refused with :class:`~mmlo.tasks.errors.DataMissingError` naming the install command.
"""

from mmlo.tasks.offline4.benchmark import (
    MODES,
    NAME,
    RECIPE_VERSION,
    build,
    cache_root,
    cached_bank_file,
    class_counts,
    data_rows,
    ensure_bank,
    fingerprint,
    load_bank,
    mode_sources,
    prepare,
    prepare_data,
    prepare_here,
    preview_grid,
    render_preview,
    selected_modes,
    status,
)
from mmlo.tasks.offline4.index import (
    INDEX_FILE,
    ModeIndex,
    canonical_sha256,
    class_index_sha256,
    index_sha256,
    load_index,
    verify_index,
)

__all__ = [
    "INDEX_FILE",
    "MODES",
    "NAME",
    "RECIPE_VERSION",
    "ModeIndex",
    "build",
    "cache_root",
    "cached_bank_file",
    "canonical_sha256",
    "class_counts",
    "class_index_sha256",
    "data_rows",
    "ensure_bank",
    "fingerprint",
    "index_sha256",
    "load_bank",
    "load_index",
    "mode_sources",
    "prepare",
    "prepare_data",
    "prepare_here",
    "preview_grid",
    "render_preview",
    "selected_modes",
    "status",
    "verify_index",
]
