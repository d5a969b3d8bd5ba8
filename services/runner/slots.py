"""Run slots shared by the fetch loops of one runner, granted to the most urgent band with work.

When the runner is saturated, a slot freed by a finished run goes to the waiting fetcher of the
most urgent band, so high-priority triggers are taken before normal and low ones. A fetcher whose
band was empty at its last fetch waits as `idle`, behind every band known to have work, so idle
bands cannot pass a slot back and forth while a lower band starves; it is promoted as soon as its
band has pending messages again (`promote`).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from shared.wire import BANDS, Band

_RANK = {band: i for i, band in enumerate(BANDS)}


@dataclass
class _Waiter:
    band: Band
    idle: bool
    seq: int
    fut: asyncio.Future[None] = field(repr=False)

    def key(self) -> tuple[bool, int, int]:
        return (self.idle, _RANK[self.band], self.seq)


class PrioritySlots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def busy(self) -> int:
        return self.size - self.free

    def waiting(self) -> bool:
        return any(not w.fut.done() for w in self._waiters)

    def _ahead(self, band: Band, idle: bool) -> bool:
        me = (idle, _RANK[band])
        return any(not w.fut.done() and (w.idle, _RANK[w.band]) <= me for w in self._waiters)

    async def acquire(self, band: Band, idle: bool = False) -> None:
        """One slot; waits while none is free or a more urgent (or equal, earlier) waiter exists."""
        if self.free > 0 and not self._ahead(band, idle):
            self.free -= 1
            return
        waiter = _Waiter(band, idle, next(self._seq), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.fut
        except asyncio.CancelledError:
            if waiter.fut.done() and not waiter.fut.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def promote(self, band: Band) -> None:
        """The band has work again: its idle waiter moves up to its band's place."""
        for w in self._waiters:
            if w.band == band and w.idle and not w.fut.done():
                w.idle = False
        self._grant()

    def take_more(self, wanted: int) -> int:
        """Grab up to `wanted` extra free slots without waiting (for batch fetches)."""
        if self.waiting():
            return 0  # someone is waiting: do not starve them with a batch
        taken = min(self.free, wanted)
        self.free -= taken
        return taken

    def release(self, n: int = 1) -> None:
        self.free += n
        self._grant()

    def _grant(self) -> None:
        while self.free > 0:
            pending = [w for w in self._waiters if not w.fut.done()]
            if not pending:
                return
            best = min(pending, key=_Waiter.key)
            self.free -= 1
            best.fut.set_result(None)
