"""Live run events for browsers: one core NATS subscription to `cropcron.run.>`, fanned out to a
bounded queue per connected page and sent as server-sent events.

A core subscription (not a JetStream consumer) is right here: the page needs what happens from
now on, within a second, and costs the broker nothing per browser. What a page missed while it was
disconnected it re-reads from history when its EventSource reconnects (the "hello" event), so a
dropped event costs a refresh, never a wrong table. A page too slow to keep up is sent "resync"
and its queue is cleared, so one stalled browser cannot grow the dashboard's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from shared import wire
from shared.bus import Bus
from shared.events import RunEvent, decode

log = logging.getLogger("cropcron.dashboard")


class LiveEvents:
    def __init__(self, bus: Bus, queue_size: int, keepalive: float) -> None:
        self.bus = bus
        self.queue_size = queue_size
        self.keepalive = keepalive
        self.clients: set[asyncio.Queue[str | None]] = set()
        self.stopping = asyncio.Event()
        self._sub: Subscription | None = None
        self.delivered = 0

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(wire.RUN_EVENT_SUBJECTS, cb=self._on_event)
        await self.bus.barrier()  # live before the dashboard reports ready: no event falls between

    async def stop(self) -> None:
        self.stopping.set()
        for queue in list(self.clients):  # end every open stream, so the server can shut down
            _drain(queue)
            queue.put_nowait(None)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = decode(RunEvent, msg.data)
        except (ValidationError, ValueError) as exc:
            log.debug("dashboard: unreadable run event on %s: %s", msg.subject, str(exc)[:200])
            return  # history records it as a rejection; a page has nothing to show for it
        frame = _frame("run", _summary(event))
        for queue in list(self.clients):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:
                _drain(queue)
                queue.put_nowait(_frame("resync", {}))
        self.delivered += 1

    async def stream(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(self.queue_size)
        self.clients.add(queue)
        try:
            yield "retry: 2000\n" + _frame("hello", {})  # the page reloads its lists on every (re)connect
            while not self.stopping.is_set():
                try:
                    frame = await asyncio.wait_for(queue.get(), self.keepalive)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if frame is None:  # the dashboard is stopping
                    return
                yield frame
        finally:
            self.clients.discard(queue)


def _summary(event: RunEvent) -> dict[str, Any]:
    """What a row needs; output and results stay on the run's page."""
    return event.model_dump(mode="json", exclude={"output_tail", "result", "schema_version"}, exclude_none=True)


def _frame(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _drain(queue: asyncio.Queue[str | None]) -> None:
    while not queue.empty():
        queue.get_nowait()
