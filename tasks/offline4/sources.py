"""Where the built-in image modes get their pictures: installable font files and Python packages.

A mode needs each of its sources present; a missing one is reported with the exact command that installs
it, and the mode is refused (:class:`~mmlo.tasks.errors.DataMissingError`), never rendered with a
substitute, because the committed class index names every font file a class is drawn with.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mmlo.tasks.errors import DataMissingError

#: The committed data files of offline4 (class index, vendored icon bodies, licences).
ASSETS = Path(__file__).resolve().parent / "assets"

#: Debian's font folders first, then the usual places other systems and users keep fonts.
FONT_DIRS: tuple[Path, ...] = (
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".local/share/fonts",
    Path.home() / ".fonts",
)


@dataclass(frozen=True)
class Source:
    """One thing a mode renders from: a Debian font package or a Python package."""

    name: str
    present: bool
    install: str
    detail: str = ""

    def describe(self) -> str:
        state = "present" if self.present else f"MISSING{': ' + self.detail if self.detail else ''}"
        return f"{self.name}: {state} (install: {self.install})"


def apt_install(packages: Iterable[str]) -> str:
    """The command that installs Debian font packages."""
    return "sudo apt-get install " + " ".join(sorted(set(packages)))


def pip_install(package: str) -> str:
    """The command that installs a Python package into the environment running mmlo."""
    return f"pip install {package}"


def _search_dirs() -> tuple[Path, ...]:
    extra = tuple(Path(p).expanduser() for p in os.environ.get("MMLO_FONT_DIRS", "").split(os.pathsep) if p)
    return extra + FONT_DIRS


@functools.cache
def _fonts_by_name(dirs: tuple[Path, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in dirs:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.suffix.lower() in (".ttf", ".otf", ".ttc") and path.name not in found:
                    found[path.name] = path
    return found


def locate_font(debian_path: str) -> Path | None:
    """The installed file of a font the index names by its Debian path; on other systems (or with
    ``$MMLO_FONT_DIRS``) a file of the same name in the usual font folders. None when absent."""
    path = Path(debian_path)
    if path.is_file():
        return path
    return _fonts_by_name(_search_dirs()).get(path.name)


def describe_names(names: list[str], shown: int = 5) -> str:
    """``a, b, c and 7 more``."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def require(mode: str, sources: Iterable[Source]) -> None:
    """Refuse ``mode`` when any of its sources is missing, naming each and how to install it."""
    missing = [s for s in sources if not s.present]
    if missing:
        lines = "\n".join(f"  - {s.name}: {s.detail or 'not found'}\n    install: {s.install}" for s in missing)
        raise DataMissingError(
            f"offline4 mode '{mode}' cannot be rendered; missing sources:\n{lines}\n"
            "The class index is fixed, so the mode is refused rather than drawn from a substitute."
        )
