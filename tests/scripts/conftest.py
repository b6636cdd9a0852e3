"""The maintainer tools in scripts/ are not part of the installed package: their tests import them from the
checkout."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
