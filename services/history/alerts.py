"""Alert history (issue 4): every Alert and every DeliveryRecord on the alerts stream -> Postgres
(consumer "history-alerts"), and the HISTORY_ALERTS query behind `cropcron alerts`. Acked only
after the commit, like run events; a database outage delays alert history, it loses none."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from pydantic import ValidationError

from services.history.ingest import ACQUIRE_TIMEOUT
from services.history.ingest import ingest as consume
from services.history.rows import Where, jsonable, text
from shared import wire
from shared.bus import Bus
from shared.events import Alert, DeliveryRecord, Rejected, decode
from shared.notify_config import LEVEL_RANK
from shared.queries import AlertsQuery

log = logging.getLogger("cropcron.history")
DELIVERY_PREFIX = wire.delivery_subject("")

INSERT_ALERT = """
INSERT INTO alerts (id, level, level_rank, kind, summary, text, job, job_type, run_id, source, at, resolved,
                    fingerprint, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (id) DO NOTHING"""
INSERT_DELIVERY = """
INSERT INTO alert_deliveries (notification_id, attempt, outcome, channel, status, alert_ids, error, message_id, at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING"""


def _alert_row(a: Alert) -> tuple[Any, ...]:
    details = json.dumps(a.details).replace("\\u0000", "\\ufffd")
    return (a.id, a.level, LEVEL_RANK[a.level], a.kind, text(a.summary), text(a.text), a.job, a.job_type,
            a.run_id, a.source, a.at, a.resolved, a.group_key(), details)


def _delivery_row(d: DeliveryRecord) -> tuple[Any, ...]:
    return (d.notification_id, d.attempt, d.outcome, d.channel, d.status, d.alert_ids, text(d.error),
            d.message_id, d.at)


async def store_batch(pool: asyncpg.Pool, alerts: list[Alert], deliveries: list[DeliveryRecord],
                      rejected: list[Rejected]) -> None:
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
        if rejected:  # unreadable alerts are kept like refused triggers: never silently lost
            await conn.executemany(
                "INSERT INTO rejections (source, subject, reason, payload_excerpt, at) VALUES ($1, $2, $3, $4, $5)",
                [(r.source, r.subject, text(r.reason), text(r.payload_excerpt), r.at) for r in rejected])
        if alerts:
            await conn.executemany(INSERT_ALERT, [_alert_row(a) for a in alerts])
        if deliveries:
            await conn.executemany(INSERT_DELIVERY, [_delivery_row(d) for d in deliveries])


async def ingest(bus: Bus, pool: asyncpg.Pool, batch: int, stop: asyncio.Event) -> None:
    await consume(bus, wire.STREAM_ALERTS, wire.HISTORY_ALERTS_CONSUMER, batch, stop, "history alerts", lambda msgs: _store(pool, msgs))


async def _store(pool: asyncpg.Pool, msgs: list[Msg]) -> None:
    alerts: list[Alert] = []
    deliveries: list[DeliveryRecord] = []
    rejected: list[Rejected] = []
    for msg in msgs:
        try:
            if msg.subject.startswith(DELIVERY_PREFIX):
                deliveries.append(decode(DeliveryRecord, msg.data))
            else:
                alerts.append(decode(Alert, msg.data))
        except (ValidationError, ValueError) as exc:
            log.error("history: unreadable alert message on %s: %s", msg.subject, str(exc)[:300])
            rejected.append(Rejected(source="alert", subject=msg.subject, reason=str(exc)[:500],
                                     at=msg.metadata.timestamp,
                                     payload_excerpt=msg.data[:500].decode("utf-8", "replace")))
    good = msgs  # the unreadable ones too: they are stored as rejections in the same transaction
    try:
        await store_batch(pool, alerts, deliveries, rejected)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        log.error("history: cannot write %d alert records (%r); they will be redelivered", len(good), exc)
        for msg in good:
            with contextlib.suppress(Exception):
                await msg.nak(delay=2)
        return
    for msg in good:
        await msg.ack()


async def cleanup(pool: asyncpg.Pool, older_than_days: float) -> dict[str, int]:
    """Alerts and delivery records older than the retention (system.history_retention)."""
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    async with pool.acquire() as conn, conn.transaction():
        a = await conn.execute("DELETE FROM alerts WHERE at < $1", cutoff)
        d = await conn.execute("DELETE FROM alert_deliveries WHERE at < $1", cutoff)
    return {"alerts": int(a.split()[-1]), "deliveries": int(d.split()[-1])}


async def query_alerts(pool: asyncpg.Pool, q: AlertsQuery) -> list[dict[str, Any]]:
    """Newest first, each with its delivery attempts (oldest first)."""
    where = Where()
    where.add("level_rank >= {}", LEVEL_RANK[q.level] if q.level is not None else None)
    where.add("job = {}", q.job)
    where.add("at >= {}", q.since)
    sql = f"SELECT * FROM alerts{where.sql()} ORDER BY at DESC, id{where.page(q.limit, q.offset)}"
    async with pool.acquire() as conn:
        rows = [jsonable(r) for r in await conn.fetch(sql, *where.args)]
        if rows:
            deliveries = await conn.fetch(
                "SELECT * FROM alert_deliveries WHERE alert_ids && $1::text[] ORDER BY at", [r["id"] for r in rows])
            for r in rows:
                r.pop("level_rank", None)
                r["deliveries"] = [jsonable(d) for d in deliveries if r["id"] in d["alert_ids"]]
    return rows
