"""The process's memory allocator: reuse large tensor buffers instead of faulting in fresh pages every step.

A vectorised meta-batch allocates activations of 100 MB (32x32 images) to 700 MB (84x84) per tensor, and
frees them every iteration. PyTorch asks for them with ``posix_memalign(64)``, and glibc (2.36, Debian 12)
does not reuse a freed block for an aligned request of the same size (the request is padded by the
alignment), so every iteration extends the heap or maps new memory and pays a page fault per 4 KB page:
``mmlo bench --case protonet-84`` measured 630,000 minor faults and 3.7 s of kernel time per iteration,
against 15,000 for the per-task loop, whose smaller blocks happen to be reused.

Two remedies, in order of preference:

- :func:`preload_environment`: child processes (Ray trial workers of image studies, ``mmlo bench``'s image
  cases) start with jemalloc preloaded (``LD_PRELOAD``, Debian package ``libjemalloc2``, installed by
  ``make setup``), configured never to hand freed pages back (:data:`JEMALLOC_CONF`): the same
  protonet-84 iteration then takes ~360 faults, 7.0-7.4 s instead of 9.5-10.4 s, at a 30 % lower peak.
  At 32x32 it changes nothing measurable, and regression's blocks are small: :func:`choose` keeps the
  system malloc there.
- :func:`reuse_large_allocations`: in a process already running on glibc, raise malloc's mmap and trim
  thresholds so that blocks are at least not unmapped on free (protonet-32: 1.49 -> 1.08 s per
  iteration); it does not cure the aligned-request misses above.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from collections.abc import Mapping
from pathlib import Path

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: jemalloc options for training processes: keep freed pages (dirty and muzzy) for reuse instead of
#: purging them; jemalloc's default decay returns blocks this large to the OS at once.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
#: Where Debian/Ubuntu (multiarch), Fedora and source installs put the shared library.
_SEARCH = (
    "/usr/lib/*-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
#: The package that provides it, for messages.
JEMALLOC_PACKAGE = "libjemalloc2"

_done = False


def reuse_large_allocations() -> bool:
    """Tune glibc's allocator once per process; returns False where there is no glibc (macOS, musl)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_MMAP_THRESHOLD, 1 << 30),
            (_M_TRIM_THRESHOLD, 2**31 - 1),
            (_M_TOP_PAD, 1 << 28),
        )
    )
    _done = bool(ok)
    return _done


def find_jemalloc() -> str | None:
    """The path of jemalloc's shared library on this machine, or None (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    for pattern in _SEARCH:
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(path):
                return path
    return None


def preload_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that start a child process on jemalloc (empty where it is not installed).

    Prepends the library to the caller's ``LD_PRELOAD``; a ``MALLOC_CONF`` the user set is kept.
    """
    environ = os.environ if environ is None else environ
    path = find_jemalloc()
    if path is None:
        return {}
    preload = [p for p in environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    return {
        "LD_PRELOAD": ":".join([path, *[p for p in preload if p != path]]),
        "MALLOC_CONF": environ.get("MALLOC_CONF", JEMALLOC_CONF),
    }


def process_allocator() -> str:
    """``jemalloc`` when it is loaded into this process, else ``system`` (glibc's malloc on Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in maps else "system"


def choose(kind: str, policy: str = "auto") -> tuple[dict[str, str], str]:
    """The allocator environment for training processes on a ``kind`` benchmark, and a line describing it.

    ``policy`` ``auto`` (what studies use): jemalloc for image benchmarks, whose blocks are large, and the
    system malloc for regression, whose blocks are small enough for glibc's reuse; ``jemalloc`` or
    ``system`` force one. jemalloc falls back to the system malloc where it is not installed.
    """
    if policy not in ("auto", "jemalloc", "system"):
        raise ValueError(f"unknown allocator policy '{policy}'; choose auto, jemalloc or system")
    wanted = policy == "jemalloc" or (policy == "auto" and kind == "classification")
    environment = preload_environment() if wanted else {}
    if environment:
        library = environment["LD_PRELOAD"].split(":")[0]
        return environment, f"jemalloc ({library}, MALLOC_CONF={environment['MALLOC_CONF']})"
    if wanted:
        return {}, (
            f"system malloc ({JEMALLOC_PACKAGE} is not installed, so large meta-batches pay page faults: "
            f"sudo apt-get install {JEMALLOC_PACKAGE}, or make setup)"
        )
    return {}, "system malloc"
