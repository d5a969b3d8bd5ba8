"""Wall-clock access behind one seam, so tests can move time (RELIABILITY §7.4). Durations,
timeouts and retry delays use asyncio's loop clock, which is monotonic."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
