"""Errors raised by task sources."""

from __future__ import annotations


class DataMissingError(Exception):
    """A benchmark's data source is missing.

    The message names what is missing and the exact command or download that provides it; the CLI turns
    this error into exit code 2 instead of a traceback, and a study refuses the mode rather than silently
    substituting another.
    """
