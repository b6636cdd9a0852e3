"""Ray stays behind one module: orchestrator/ray_engine.py is the only source file of mmlo that imports it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "models", "tasks", "reports", "storage")
IMPORTS_RAY = re.compile(r"^\s*(import ray\b|from ray\b)", re.MULTILINE)


def test_only_the_ray_engine_imports_ray() -> None:
    # a Ray upgrade (ray#49454: its APIs churn) touches one module; every other module hands it plain objects
    importers = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if IMPORTS_RAY.search(path.read_text(encoding="utf-8"))
    )
    assert importers == ["orchestrator/ray_engine.py"]
