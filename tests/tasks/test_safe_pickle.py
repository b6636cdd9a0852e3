"""The restricted unpickler: dataset pickles load, code-running pickles are refused by name."""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmlo.tasks.safe_pickle import UnsafePickleError, load, loads

# A Python 2 cPickle (protocol 2) of {'data': uint8 array [1, 2, 255], 'fine_labels': [5, 7]}, written out
# by hand: the format of CIFAR-100's python batches, with numpy 1's module path and a py2 str buffer.
PY2_CIFAR_LIKE = (
    b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00"
    b"\x85U\x01b\x87Rq\x04(K\x01K\x03\x85cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNNJ"
    b"\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbI00\nU\x03\x01\x02\xfftbU\x0bfine_labelsq\x07]q\x08(K\x05K"
    b"\x07eu."
)


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_and_plain_containers_round_trip(protocol: int) -> None:
    # Everything a dataset pickle holds (arrays of any layout and dtype, scalars, dicts, lists, bytes,
    # numbers) loads unchanged at every protocol.
    payload = {
        "image_data": np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3),
        "class_dict": {"n01532829": [0, 1], "n01558993": [2]},
        "transposed": np.arange(6.0).reshape(2, 3).T,
        "names": np.array(["ab", "c"]),
        "record": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]),
        "scalar": np.float32(3.5),
        "dtype": np.dtype("<f8"),
        b"raw": (b"xy", 1.5, 2 + 1j, True, None, {1, 2}, frozenset({3})),
        "ordered": collections.OrderedDict(a=1),
    }
    out = loads(pickle.dumps(payload, protocol=protocol))
    assert out.keys() == payload.keys()
    for key, value in payload.items():
        if isinstance(value, np.ndarray):
            assert out[key].dtype == value.dtype and np.array_equal(out[key], value)
        else:
            assert out[key] == value


def test_python2_pickle_with_numpy1_paths() -> None:
    # A py2 pickle naming numpy.core (numpy 1) loads with its byte buffer intact (latin1 decoding).
    out = loads(PY2_CIFAR_LIKE)
    assert out["fine_labels"] == [5, 7]
    assert out["data"].dtype == np.uint8 and out["data"].tolist() == [1, 2, 255]


def test_shell_command_is_refused_and_not_run(tmp_path: Path) -> None:
    # A pickle that would call os.system is refused, names the global, and the command never runs.
    marker = tmp_path / "pwned"
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(pickle.dumps({"image_data": _RunsShell(marker)}))
    with pytest.raises(UnsafePickleError, match=r"(posix|nt|os)\.system") as info:
        load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj, name",
    [(_CallsEval(), "builtins.eval"), (np.load, "numpy.load"), (Path("x"), "pathlib")],
)
def test_other_globals_are_refused(obj: object, name: str) -> None:
    # Any global outside the allow-list is refused, including harmless-looking numpy functions.
    with pytest.raises(UnsafePickleError, match=name):
        loads(pickle.dumps(obj, protocol=2))


def test_codecs_encode_only_for_latin1() -> None:
    # _codecs.encode is allowed only as protocol-2 pickles use it (latin1 bytes), not with other codecs.
    assert loads(pickle.dumps(b"\x00\xff", protocol=2)) == b"\x00\xff"
    crafted = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match="rot13"):
        loads(crafted)
