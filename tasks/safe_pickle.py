"""A restricted unpickler for dataset pickles (mini-ImageNet caches, CIFAR-100 batches).

Unpickling calls whatever global a pickle names, so a downloaded pickle can run any code (``os.system``).
Dataset pickles only ever need numpy's array, dtype and scalar reconstructors and Python's plain containers
and numbers; :func:`load` resolves exactly those from a fixed table and refuses every other global with an
:class:`UnsafePickleError` that names it. Plain containers (dict, list, tuple, str, bytes, numbers, bool,
None) have their own opcodes and need no global at all.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global that is not a numpy array, dtype, scalar or plain-container constructor."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes into protocol-2 pickles, limited to that use."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r} (only latin1 is used for bytes)")
    return text.encode("latin1")


def _numpy_globals() -> dict[str, Callable[..., Any]]:
    # numpy 2 moved numpy.core to numpy._core; pickles written by numpy 1 still name the old path.
    multiarray = np._core.multiarray  # type: ignore[attr-defined]
    numeric = np._core.numeric  # type: ignore[attr-defined]
    table: dict[str, Callable[..., Any]] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for package in ("numpy.core", "numpy._core"):
        table[f"{package}.multiarray._reconstruct"] = multiarray._reconstruct
        table[f"{package}.multiarray.scalar"] = multiarray.scalar
        table[f"{package}.numeric._frombuffer"] = numeric._frombuffer
    return table


_ALLOWED: dict[str, Callable[..., Any]] = {
    **_numpy_globals(),
    "builtins.complex": complex,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": bytearray,
    "collections.OrderedDict": collections.OrderedDict,
    "_codecs.encode": _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, *, source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles (and Python 3 ones at protocol < 3) spell the builtins module the old way.
        module = "builtins" if module == "__builtin__" else module
        target = _ALLOWED.get(f"{module}.{name}")
        if target is None:
            raise UnsafePickleError(
                f"refusing to unpickle {self._source}: it references the global {module}.{name}, "
                "which is not a numpy array, dtype or scalar, nor a plain container or number"
            )
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to unpickle {self._source}: it uses persistent ids")


def load(file: str | Path | BinaryIO, *, encoding: str = "latin1") -> Any:
    """Unpickle a dataset file, allowing only numpy arrays/dtypes/scalars and plain containers and numbers.

    ``encoding="latin1"`` reads Python 2 pickles (CIFAR-100, MetaOptNet's mini-ImageNet) with their numpy
    buffers intact; Python 3 pickles are unaffected by it.
    """
    if isinstance(file, (str, Path)):
        with open(file, "rb") as handle:
            return _RestrictedUnpickler(handle, source=str(file), encoding=encoding).load()
    return _RestrictedUnpickler(file, source=getattr(file, "name", "<stream>"), encoding=encoding).load()


def loads(data: bytes, *, encoding: str = "latin1") -> Any:
    """:func:`load` for a pickle held in memory."""
    return _RestrictedUnpickler(io.BytesIO(data), source="<bytes>", encoding=encoding).load()
