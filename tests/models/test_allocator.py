"""The allocator tuning is accepted by glibc and applied once per process."""

from __future__ import annotations

import sys

import pytest

from mmlo.models.allocator import reuse_large_allocations


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_tuning_applies_and_is_idempotent() -> None:
    # mallopt accepts the thresholds on glibc, and a second call is a no-op that still reports success
    assert reuse_large_allocations() is True
    assert reuse_large_allocations() is True

