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

from services.history import alerts, reports, store, uploads
from services.history.ingest import ingest
from shared import metrics, wire
from shared.bus import Bus
from shared.events import FlightClosed, Rejected, RunEvent, decode, utcnow
from shared.queries import AlertsQuery, CleanupRequest, LastQuery, RunsQuery, StatsQuery, fail, ok
from shared.reply import ReplyTooLarge, respond
from shared.settings import ServiceSettings

log = logging.getLogger("cropcron.history")

RETENTION_EVERY = 6 * 3600.0
# what the runs stream carries: run events, refused input, and closed flights (issue 14)
Item = RunEvent | Rejected | FlightClosed
_REJECTED_PREFIX = wire.REJECTED_SUBJECTS[:-1]
_FLIGHT_PREFIX = wire.FLIGHT_SUBJECTS[:-1]


def _model_of(subject: str) -> type[Item]:
    if subject.startswith(_REJECTED_PREFIX):
        return Rejected
    return FlightClosed if subject.startswith(_FLIGHT_PREFIX) else RunEvent


class HistoryService:
    def __init__(self, bus: Bus, pool: asyncpg.Pool, settings: ServiceSettings,
                 retention_days: Callable[[], float] | None = None) -> None:
        self.bus = bus
        self.pool = pool
        self.settings = settings
        self.retention_days = retention_days
        self.written = 0
        self.db_ok = True
        self.ready = asyncio.Event()

    def status(self) -> dict[str, Any]:
        return {"written": self.written, "db_ok": self.db_ok}

    async def run(self, stop: asyncio.Event) -> None:
        subs = [
            await self._respond(wire.HISTORY_RUNS, RunsQuery, lambda q: store.query_runs(self.pool, q)),
            await self._respond(wire.HISTORY_STATS, StatsQuery, lambda q: store.query_stats(self.pool, q.days)),
            await self._respond(wire.HISTORY_LAST, LastQuery, lambda q: store.query_last(self.pool, q.jobs)),
            await self._respond(wire.HISTORY_CLEANUP, CleanupRequest, lambda q: self._cleanup(q.older_than_days)),
        ]
        # the dashboard's aggregates (issue 5)
        subs += [await self._respond(subject, model, handler) for subject, model, handler in reports.routes(self.pool)]
        # flights, files and refused files (issue 14)
        subs += [await self._respond(subject, model, handler) for subject, model, handler in uploads.routes(self.pool)]
        # alerts and their delivery attempts (issue 4)
        subs.append(await self._respond(wire.HISTORY_ALERTS, AlertsQuery, lambda q: alerts.query_alerts(self.pool, q)))
        tasks = [asyncio.create_task(self._ingest(stop)), asyncio.create_task(self._retention(stop)),
                 asyncio.create_task(alerts.ingest(self.bus, self.pool, self.settings.history_batch, stop)),
                 asyncio.create_task(uploads.ingest(self.bus, self.pool, self.settings.history_batch, stop))]
        await self.bus.barrier()  # the subscriptions are registered with the server: queries answered
        self.ready.set()
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
        await ingest(self.bus, wire.STREAM_RUNS, wire.HISTORY_CONSUMER, self.settings.history_batch, stop, "history",
                     self._store)

    async def _store(self, msgs: list[Msg]) -> None:
        parsed: list[tuple[Msg, Item]] = []
        unreadable: list[Item] = []
        bad: list[Msg] = []
        for msg in msgs:
            try:
                parsed.append((msg, decode(_model_of(msg.subject), msg.data)))
            except (ValidationError, ValueError) as exc:
                log.error("history: unreadable event on %s: %s", msg.subject, str(exc)[:300])
                unreadable.append(_rejection(msg, str(exc)))
                bad.append(msg)
        try:
            await self._write([item for _, item in parsed] + unreadable)
        except (asyncpg.DataError, store.Unstorable) as exc:
            # one event Postgres refuses must not hold the batch back forever: store them one by
            # one, and record those it refuses as rejections
            log.error("history: a batch of %d events was refused (%r); storing them one by one", len(msgs), exc)
            await self._store_singly(parsed, bad)
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.db_ok = False
            log.error("history: cannot write %d events (%r); they will be redelivered", len(msgs), exc)
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2)
            return
        self.db_ok = True
        for msg, _ in parsed:
            await msg.ack()
        for msg in bad:
            await msg.term()  # recorded in rejections; redelivering it would not make it readable

    async def _write(self, items: list[Item]) -> None:
        events = [i for i in items if isinstance(i, RunEvent)]
        await store.apply_events(self.pool, events, [i for i in items if isinstance(i, Rejected)],
                                 [i for i in items if isinstance(i, FlightClosed)])
        self.written += len(events)
        committed = utcnow()
        metrics.written((committed - e.at).total_seconds() for e in events)

    async def _store_singly(self, parsed: list[tuple[Msg, Item]], bad: list[Msg]) -> None:
        for msg, item in parsed:
            try:
                await self._write([item])
            except (asyncpg.DataError, store.Unstorable) as exc:
                log.error("history: event on %s cannot be stored: %r", msg.subject, exc)
                with contextlib.suppress(asyncpg.PostgresError, OSError):
                    await self._write([_rejection(msg, f"not storable: {exc}")])
                bad.append(msg)
                continue
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2)
                continue
            await msg.ack()
        for msg in bad:
            await msg.term()

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
            body = json.dumps(reply, default=str).encode()
            try:
                await respond(self.bus.nc, msg, body)  # in chunks when over the broker's max_payload
            except ReplyTooLarge as exc:
                with contextlib.suppress(Exception):
                    await msg.respond(json.dumps(fail(f"{exc}: narrow the query (a smaller limit, a later "
                                                      "since, one job)")).encode())
            except Exception as exc:  # the asker went away, or the bus is reconnecting
                log.debug("history: reply on %s not sent: %r", subject, exc)

        return await self.bus.nc.subscribe(subject, queue=wire.HISTORY_QUEUE, cb=on_request)

    async def _cleanup(self, days: float) -> dict[str, int]:
        """Runs, rejections, alerts, delivery records, files and flights older than `days`: `cropcron cleanup`
        and the automatic retention remove the same things."""
        return {**await store.cleanup(self.pool, days), **await alerts.cleanup(self.pool, days),
                **await uploads.cleanup(self.pool, days)}

    async def _retention(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.retention_days is not None:
                try:
                    removed = await self._cleanup(self.retention_days())
                    if any(removed.values()):
                        log.info("history: retention removed %s", removed)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("history: retention clean-up failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETENTION_EVERY)


def _rejection(msg: Msg, reason: str) -> Rejected:
    return Rejected(source="run-event", subject=msg.subject, reason=reason[:500], at=msg.metadata.timestamp,
                    payload_excerpt=msg.data[:500].decode("utf-8", "replace"))
