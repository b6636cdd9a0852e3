from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from mmlo.orchestrator import faults
from mmlo.orchestrator.trainable import failure_reason


def test_cpu_allocation_failure_is_out_of_memory() -> None:
    # torch words a failed CPU allocation as a RuntimeError with a C++ assertion in front: recorded as OOM
    err = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 64000000 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert failure_reason(err) == (
        "out of memory: DefaultCPUAllocator: can't allocate memory: you tried to allocate 64000000 bytes. "
        "Error code 12 (Cannot allocate memory)"
    )
    assert failure_reason(MemoryError()) == "out of memory"
    assert failure_reason(RuntimeError("shape mismatch")) == "RuntimeError: shape mismatch"


def test_memory_limit_turns_a_large_allocation_into_out_of_memory() -> None:
    # in a fresh process capped at 2 GiB by resources.memory_limit_mb, a 3 GiB tensor fails as out of memory,
    # and lifting the cap (a study without one) makes it succeed
    script = textwrap.dedent(
        """
        import torch
        from mmlo.orchestrator.trainable import failure_reason, limit_memory
        limit_memory(2048)
        try:
            torch.empty(3 * 2**30, dtype=torch.uint8)
            print("allocated")
        except Exception as err:
            print(failure_reason(err))
        limit_memory(None)
        torch.empty(3 * 2**30, dtype=torch.uint8)
        print("lifted")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first.startswith("out of memory: DefaultCPUAllocator") and second == "lifted"


def test_faults_parse_and_nan_poisons_the_learner(monkeypatch: pytest.MonkeyPatch) -> None:
    # MMLO_FAULTS names arms, kinds and iterations; a nan fault makes the next loss NaN
    monkeypatch.setenv(faults.FAULTS_ENV, "Diverges:nan@3, Killed:kill@2")
    assert faults.injected("Diverges") == [faults.Fault("nan", 3)]
    assert faults.injected("Killed")[0].iterations == frozenset({2})
    assert faults.injected("Healthy") == []
    for bad in ("Diverges:nan", "Diverges:explode@3", ":nan@3", "A:nan@0"):
        with pytest.raises(ValueError, match="MMLO_FAULTS"):
            faults.parse(bad)
    net = torch.nn.Linear(3, 1)
    faults.Fault("nan", 3)(3, net, None)
    assert torch.isnan(net(torch.ones(1, 3))).all()
