"""Errors a report cannot recover from: the CLI prints the message (no traceback) and exits with code 2."""

from __future__ import annotations


class ReportError(Exception):
    """The run directory cannot be reported on (missing, empty, unreadable); the message says what to do."""
