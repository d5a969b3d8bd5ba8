"""The one way a chore fails."""

from __future__ import annotations


class ChoreFailed(Exception):
    """The chore could not do its work; the message says why (`output`: what a program printed)."""

    def __init__(self, reason: str, output: str | None = None) -> None:
        super().__init__(reason)
        self.output = output
