"""Errors that end a command or a request with a clear message (never a traceback)."""

from __future__ import annotations


class CommandError(RuntimeError):
    """A failure to report to the user in one line (exit 1)."""


class UserError(ValueError):
    """Bad input from the user (exit 2)."""
