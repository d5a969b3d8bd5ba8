"""History: run events -> Postgres, and the queries `cropcron history`/`stats` ask over NATS.

Events are fetched in batches and written in one transaction; a message is acked only after the
commit (RELIABILITY A5). If Postgres is down the batch is nak'ed with a delay and comes back: a
database outage delays history, it loses none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from services.history import store
from shared import wire
from shared.bus import Bus
from shared.events import Rejected, RunEvent, decode
from shared.queries import CleanupRequest, LastQuery, RunsQuery, StatsQuery, fail, ok
from shared.settings import ServiceSettings

log = logging.getLogger("cropcron.history")

RETENTION_EVERY = 6 * 3600.0


class HistoryService:
    def __init__(self, bus: Bus, pool: asyncpg.Pool, settings: ServiceSettings,
                 retention_days: Callable[[], float] | None = None) -> None:
        self.bus = bus
        self.pool = pool
        self.settings = settings
        self.retention_days = retention_days
        self.written = 0
        self.db_ok = True

    def status(self) -> dict[str, Any]:
        return {"written": self.written, "db_ok": self.db_ok}

    async def run(self, stop: asyncio.Event) -> None:
        subs = [
            await self._respond(wire.HISTORY_RUNS, RunsQuery, lambda q: store.query_runs(self.pool, q)),
            await self._respond(wire.HISTORY_STATS, StatsQuery, lambda q: store.query_stats(self.pool, q.days)),
            await self._respond(wire.HISTORY_LAST, LastQuery, lambda q: store.query_last(self.pool, q.jobs)),
            await self._respond(wire.HISTORY_CLEANUP, CleanupRequest,
                                lambda q: store.cleanup(self.pool, q.older_than_days)),
        ]
        tasks = [asyncio.create_task(self._ingest(stop)), asyncio.create_task(self._retention(stop))]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    # -- ingest ------------------------------------------------------------------------
    async def _ingest(self, stop: asyncio.Event) -> None:
        psub = None
        delay = 0.2
        while not stop.is_set():
            try:
                if psub is None:
                    psub = await self.bus.js.pull_subscribe_bind(durable=wire.HISTORY_CONSUMER, stream=wire.STREAM_RUNS)
                msgs = await psub.fetch(self.settings.history_batch, timeout=2)
            except TimeoutError:  # nats' own TimeoutError subclasses it: nothing to store yet
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("history: fetch failed (%r); re-subscribing in %.1fs", exc, delay)
                if psub is not None:
                    with contextlib.suppress(Exception):
                        await psub.unsubscribe()
                psub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            await self._store(msgs)

    async def _store(self, msgs: list[Msg]) -> None:
        events: list[RunEvent] = []
        rejected: list[Rejected] = []
        good: list[Msg] = []
        bad: list[Msg] = []
        for msg in msgs:
            try:
                if msg.subject.startswith(wire.REJECTED_SUBJECTS[:-1]):
                    rejected.append(decode(Rejected, msg.data))
                else:
                    events.append(decode(RunEvent, msg.data))
                good.append(msg)
            except (ValidationError, ValueError) as exc:
                log.error("history: unreadable event on %s: %s", msg.subject, str(exc)[:300])
                rejected.append(Rejected(source="run-event", subject=msg.subject, reason=str(exc)[:500],
                                         at=msg.metadata.timestamp, payload_excerpt=msg.data[:500].decode(
                                             "utf-8", "replace")))
                bad.append(msg)
        try:
            await store.apply_events(self.pool, events, rejected)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.db_ok = False
            log.error("history: cannot write %d events (%r); they will be redelivered", len(msgs), exc)
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2)
            return
        self.db_ok = True
        self.written += len(events)
        for msg in good:
            await msg.ack()
        for msg in bad:
            await msg.term()  # recorded in rejections; redelivering it would not make it readable

    # -- queries -----------------------------------------------------------------------
    async def _respond(self, subject: str, model: type[BaseModel],
                       handler: Callable[[Any], Awaitable[Any]]) -> Any:
        async def on_request(msg: Msg) -> None:
            try:
                query = model.model_validate_json(msg.data or b"{}")
            except ValidationError as exc:
                reply = fail("bad request: " + "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()))
            else:
                try:
                    reply = ok(await handler(query))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    reply = fail(f"database unavailable: {exc}")
            with contextlib.suppress(Exception):
                await msg.respond(json.dumps(reply, default=str).encode())

        return await self.bus.nc.subscribe(subject, queue=wire.HISTORY_QUEUE, cb=on_request)

    async def _retention(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.retention_days is not None:
                try:
                    removed = await store.cleanup(self.pool, self.retention_days())
                    if removed["runs"]:
                        log.info("history: retention removed %d runs", removed["runs"])
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("history: retention clean-up failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETENTION_EVERY)
