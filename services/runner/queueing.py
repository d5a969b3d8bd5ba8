"""Triggers waiting for a place under their job's concurrency limit: `overlap: queue` runs, and
caught-up instants of any job (the timer marks them; `catchup: all` promises each one runs, so at
the limit they wait their turn instead of being skipped as `overlap: skip` would).

A waiting trigger holds no run slot (services/runner/slots.py): one job's backlog (an hour of
caught-up instants) must not take every slot of the runner and starve every other job. Within
this runner, a job's waiters take places in the order of their instants; a place freed here wakes
the first one at once, and the first one also polls for places freed by other runners.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from services.runner.leases import Leases

POLL = 1.0  # seconds between tries of the first waiter for places freed by other runners


@dataclass(order=True)
class _Waiter:
    instant: datetime  # scheduled_at, else when the trigger was made
    seq: int
    woken: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class LeaseQueue:
    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self._waiting: dict[str, list[_Waiter]] = {}
        self._seq = itertools.count()

    def waiting(self, job: str) -> int:
        return len(self._waiting.get(job, ()))

    async def wait(self, job: str, run_id: str, limit: int, instant: datetime,
                   keepalive: Callable[[], Awaitable[None]]) -> None:
        """Until `run_id` holds one of `job`'s `limit` places. `keepalive` is called between tries
        (the runner keeps the trigger's delivery alive with it)."""
        me = _Waiter(instant, next(self._seq))
        queue = self._waiting.setdefault(job, [])
        bisect.insort(queue, me)
        try:
            while True:
                if queue[0] is me and await self.leases.acquire(job, run_id, limit):
                    return
                await keepalive()
                me.woken.clear()
                try:
                    await asyncio.wait_for(me.woken.wait(), POLL)
                except TimeoutError:
                    pass
        finally:
            queue.remove(me)
            if queue:
                queue[0].woken.set()  # the next in line tries now (a place may be free)
            else:
                self._waiting.pop(job, None)

    async def release(self, job: str, run_id: str) -> None:
        await self.leases.release(job, run_id)
        queue = self._waiting.get(job)
        if queue:
            queue[0].woken.set()
