"""Run directories for the report tests: a classification run, a regression run, and the generator itself
(see ``synthetic.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from synthetic import write_synthetic_run


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification run directory (accuracy), with search and transference."""
    return write_synthetic_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A regression run directory (MSE, lower is better), without transference."""
    return write_synthetic_run(tmp_path_factory.mktemp("runs"), metric="mse", transference=False, name="regr")


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The generator itself, for tests that need a variant: ``make_run(name=..., metric=..., ...)``."""

    def make(**options: Any) -> Path:
        return write_synthetic_run(tmp_path_factory.mktemp("runs"), **options)

    return make
