"""Errors that are the user's to fix: the CLI prints their message (no traceback) and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a study file, a run directory, a missing package); the message says how to fix it."""
