"""Run slots shared by the fetch loops of one runner, granted to the highest band first.

When the runner is saturated, a slot freed by a finished run goes to the waiting fetcher of the
most urgent band, so high-priority triggers are taken before normal and low ones.
"""

from __future__ import annotations

import asyncio
from collections import deque

from shared.wire import BANDS, Band


class PrioritySlots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiters: dict[Band, deque[asyncio.Future[None]]] = {band: deque() for band in BANDS}

    @property
    def busy(self) -> int:
        return self.size - self.free

    def _higher_waiting(self, band: Band) -> bool:
        for other in BANDS:
            if other == band:
                return False
            if any(not f.done() for f in self._waiters[other]):
                return True
        return False

    async def acquire(self, band: Band) -> None:
        """One slot; waits while none is free or a more urgent band is waiting."""
        if self.free > 0 and not self._higher_waiting(band):
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[band].append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            raise
        finally:
            if fut in self._waiters[band]:
                self._waiters[band].remove(fut)

    def take_more(self, wanted: int) -> int:
        """Grab up to `wanted` extra free slots without waiting (for batch fetches)."""
        if any(not f.done() for q in self._waiters.values() for f in q):
            return 0  # someone is waiting: do not starve them with a batch
        taken = min(self.free, wanted)
        self.free -= taken
        return taken

    def release(self, n: int = 1) -> None:
        self.free += n
        for band in BANDS:
            queue = self._waiters[band]
            while queue and self.free > 0:
                fut = queue.popleft()
                if not fut.done():
                    self.free -= 1
                    fut.set_result(None)
