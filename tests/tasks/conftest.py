"""Shared fixtures of the task-data tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mmlo.tasks import offline4


@pytest.fixture
def needs_sources() -> Callable[..., None]:
    """Skip a test, naming the install command, only where this machine lacks a mode's fonts or packages.

    `make test` installs every source, so in CI these tests always run.
    """

    def check(*modes: str) -> None:
        missing = [s.describe() for m in modes for s in offline4.mode_sources(m) if not s.present]
        if missing:
            pytest.skip("; ".join(missing))

    return check
