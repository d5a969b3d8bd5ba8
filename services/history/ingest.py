"""The loop each of history's consumers runs: batches from a durable consumer into a store
function. A store that fails in a way it did not foresee naks its batch (redelivered in 2 s) and
the loop goes on: an ingest task that died would leave history answering queries while it
silently stopped recording (after a Postgres restart, the failure seen in a fault run)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from shared.bus import Bus, fetch_batches

log = logging.getLogger("cropcron.history")
# a writer waits this long for a pooled connection, then its batch is nak'ed like any outage
# (TimeoutError): a connection stuck after a database restart must not stall ingestion forever
ACQUIRE_TIMEOUT = 30.0


async def ingest(bus: Bus, stream: str, durable: str, batch: int, stop: asyncio.Event, what: str,
                 store: Callable[[list[Msg]], Awaitable[None]]) -> None:
    async for msgs in fetch_batches(bus, stream, durable, batch, 2, stop, what):
        try:
            await store(msgs)
        except Exception:
            log.exception("%s: storing %d messages failed unexpectedly; they will be redelivered", what, len(msgs))
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2)
