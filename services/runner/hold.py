"""Holding early ticks to their instant: one gate per instant, opened by one task.

The runs of one instant used to hold each on its own: a timer and, for its last HOLD_SPIN, a
task yielding in a loop, for each of them. At 1,000 ticks an instant that was 1,000 tasks spinning
together, each turn of the loop visiting all of them, and the instant crossed in the middle of a
turn: the runs behind the crossing started a turn later, after the completions of those before
it (bench/results.md). With a gate the instant is watched once; when it opens, every run held for
it is woken in the same turn of the loop and they start one after another, before anything else.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from shared.events import utcnow

HOLD_SPIN = 0.002  # seconds: the end of a hold is yielded away rather than slept (hold_until)
MAX_HOLD = 60.0  # seconds; a tick further ahead than this (a clock far off) is held no longer


async def hold_until(instant: datetime) -> None:
    """Wait for `instant` on this machine's wall clock, never returning before it."""
    for _ in range(100_000):  # bounded: a wall clock stepped back mid-hold cannot keep it forever
        left = (instant - utcnow()).total_seconds()
        if left <= 0:
            return
        # the loop's timers wake up to a millisecond late (epoll counts in ms): the last of the
        # hold is spent yielding to the other tasks instead of asleep
        await asyncio.sleep(min(left - HOLD_SPIN, MAX_HOLD) if left > HOLD_SPIN else 0)


class InstantGates:
    def __init__(self) -> None:
        self._gates: dict[datetime, asyncio.Event] = {}
        self._openers: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._gates)

    async def wait(self, instant: datetime | None) -> None:
        """Return at `instant` (never before it), with every other run held for it."""
        if instant is None or instant <= utcnow():
            return
        gate = self._gates.get(instant)
        if gate is None:
            gate = self._gates[instant] = asyncio.Event()
            opener = asyncio.create_task(self._open(instant, gate))
            self._openers.add(opener)  # a reference, so the task is not collected mid-hold
            opener.add_done_callback(self._openers.discard)
        await gate.wait()  # a cancelled waiter leaves the gate to the others

    async def _open(self, instant: datetime, gate: asyncio.Event) -> None:
        try:
            await hold_until(instant)
        except asyncio.CancelledError:
            self._gates.pop(instant, None)  # never opened early: its waiters are cancelled too
            raise
        # removed first: a tick for this instant arriving from now on passes without a gate
        self._gates.pop(instant, None)
        gate.set()

    async def close(self) -> None:
        """After the runner's drain (held runs were cancelled or have run): stop what is left."""
        for task in list(self._openers):
            task.cancel()
        await asyncio.gather(*self._openers, return_exceptions=True)
