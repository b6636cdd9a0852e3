"""The ``when`` conditions of a study's search space, as ``spec.yaml`` records them.

A parameter with ``when: {modulation: kml}`` is sampled only when every parameter it names was sampled
before it with the given value (or one of a listed few). The driver samples by this rule and the report
reads a trial's sampled parameters back by it; both call :func:`condition_holds`, so the two never
disagree on which parameters a trial had.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def allowed_values(expected: Any) -> list[Any]:
    """The values a condition on one parameter accepts: a list as it is, one value as a list of one."""
    return list(expected) if isinstance(expected, list) else [expected]


def condition_holds(when: Mapping[str, Any] | None, values: Mapping[str, Any]) -> bool:
    """True when every parameter ``when`` names is in ``values`` with an accepted value.

    A value matches an accepted one when they are equal or read the same as text (a Parquet column may hold
    ``5.0`` where the spec says ``5``, or a string where the spec has a number).
    """
    for key, expected in (when or {}).items():
        if key not in values:
            return False
        value = values[key]
        if not any(value == a or str(value) == str(a) for a in allowed_values(expected)):
            return False
    return True
