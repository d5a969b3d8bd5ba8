"""Upload history (issue 14): every announced file (the files stream, consumer "history-files"),
every closed flight (FlightClosed on the runs stream, stored with the run events), and the queries
behind the Flights page, `cropcron files refused` and the notifier's `expect:` alarms.

Files are acked only after the commit, like run events: a database outage delays this history, it
loses none of it. A file or flight stored twice (a redelivery) is the same row."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from pydantic import ValidationError

from services.history.ingest import ACQUIRE_TIMEOUT
from services.history.ingest import ingest as consume
from services.history.rows import Route, Where, hour_axis, jsonable, text
from services.history.rows import hourly as hourly_series
from shared import wire
from shared.bus import Bus
from shared.events import FileEvent, FlightClosed, decode
from shared.names import name_of_key
from shared.queries import FilesHourlyQuery, FlightsQuery, RefusedQuery, UploadsQuery

log = logging.getLogger("cropcron.history")

INSERT_FILE = """
INSERT INTO files (id, watch, rel_path, size, mtime_ns, detected_at, source, sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"""
INSERT_FLIGHT = """
INSERT INTO flights (id, job, watch, folder, partial, reason, opened_at, closed_at, files, bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING"""
INSERT_FLIGHT_FILES = """
INSERT INTO flight_files (flight_id, position, file_id, rel_path, size)
SELECT $1, f.position - 1, f.file_id, f.rel_path, f.size
FROM unnest($2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS f(file_id, rel_path, size, position)
ON CONFLICT DO NOTHING"""


async def store_flights(conn: asyncpg.Connection, flights: Sequence[FlightClosed]) -> None:
    """In the caller's transaction (the run events' one): a flight and its files land together."""
    for f in flights:
        b = f.batch
        await conn.execute(INSERT_FLIGHT, b.id, f.job, b.watch, text(b.folder), b.partial, b.reason, b.opened_at,
                           b.closed_at, len(b.files), sum(x.size for x in b.files))
        await conn.execute(INSERT_FLIGHT_FILES, b.id, [x.id for x in b.files], [text(x.rel_path) for x in b.files],
                           [x.size for x in b.files])


async def ingest(bus: Bus, pool: asyncpg.Pool, batch: int, stop: asyncio.Event) -> None:
    await consume(bus, wire.STREAM_FILES, wire.HISTORY_FILES_CONSUMER, batch, stop, "history files", lambda msgs: _store(pool, msgs))


async def _store(pool: asyncpg.Pool, msgs: list[Msg]) -> None:
    files: list[FileEvent] = []
    for msg in msgs:
        try:
            files.append(decode(FileEvent, msg.data))
        except (ValidationError, ValueError) as exc:
            # the dispatcher refuses (and records) it too; here it is simply not a file to list
            log.error("history: unreadable file event on %s: %s", msg.subject, str(exc)[:300])
    try:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
            if files:
                await conn.executemany(INSERT_FILE, [
                    (e.id, e.watch, text(e.rel_path), e.size, e.mtime_ns, e.detected_at, text(e.source), e.sha256)
                    for e in files])
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        log.error("history: cannot write %d file events (%r); they will be redelivered", len(msgs), exc)
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak(delay=2)
        return
    for msg in msgs:
        await msg.ack()


# a flight's first and last arrival come from the files history holds (a file announced by a
# tool that bypassed the stream has none: null then), its run from the runs table (same id)
FLIGHT_SELECT = """
SELECT f.*, CASE WHEN f.partial THEN 'partial' ELSE 'closed' END AS state,
       r.state AS run_state, r.attempt AS run_attempt, r.finished_at AS run_finished_at,
       a.first_arrival, a.last_arrival
FROM flights f LEFT JOIN runs r ON r.run_id = f.id
LEFT JOIN LATERAL (SELECT min(x.detected_at) AS first_arrival, max(x.detected_at) AS last_arrival
                   FROM flight_files ff JOIN files x ON x.id = ff.file_id WHERE ff.flight_id = f.id) a ON true"""


async def query_flights(pool: asyncpg.Pool, q: FlightsQuery) -> dict[str, Any]:
    """{"flights": [...]} newest first; with `id`: that flight and a page of its files
    ({"flights": [flight] or [], "files": [...], "total_files": n})."""
    where = Where()
    for col, value in (("f.id", q.id), ("f.watch", q.watch), ("f.job", q.job)):
        where.add(f"{col} = {{}}", value)
    where.add("f.closed_at >= {}", q.since)
    sql = FLIGHT_SELECT + where.sql()
    async with pool.acquire() as conn:
        if q.id is None:
            page = where.page(q.limit, q.offset)
            rows = await conn.fetch(f"{sql} ORDER BY f.closed_at DESC, f.id{page}", *where.args)
            return {"flights": [jsonable(r) for r in rows]}
        rows = await conn.fetch(sql, *where.args)
        files = await conn.fetch(
            "SELECT ff.position, ff.file_id AS id, ff.rel_path, ff.size, x.detected_at FROM flight_files ff "
            "LEFT JOIN files x ON x.id = ff.file_id WHERE ff.flight_id = $1 ORDER BY ff.position LIMIT $2 OFFSET $3",
            q.id, q.limit, q.offset)
    return {"flights": [jsonable(r) for r in rows], "files": [jsonable(r) for r in files],
            "total_files": rows[0]["files"] if rows else 0}


async def query_refused(pool: asyncpg.Pool, q: RefusedQuery) -> list[dict[str, Any]]:
    """Files the watcher refused, newest first: {watch, path, reason, at}. The watcher records each
    as a Rejected (source "watcher") on the file subject of its watch, reason "<path>: <why>"."""
    # a watch-wide note (inotify fell back to polling) has no path: it is not a refused file
    where = Where("source = 'watcher'", "payload_excerpt <> ''")
    where.add("subject = {}", wire.file_subject(q.watch) if q.watch is not None else None)
    where.add("at >= {}", q.since)
    sql = (f"SELECT subject, reason, payload_excerpt, at FROM rejections{where.sql()} "
           f"ORDER BY at DESC, id DESC{where.page(q.limit, q.offset)}")
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, *where.args)
    out = []
    prefix = wire.file_subject("x")[:-1]
    for r in rows:
        path = r["payload_excerpt"] or ""
        reason = r["reason"]
        if path and reason.startswith(path + ": "):
            reason = reason[len(path) + 2:]
        key = r["subject"][len(prefix):] if r["subject"].startswith(prefix) else ""
        out.append({"watch": _watch_name(key), "path": path, "reason": reason, "at": r["at"].isoformat()})
    return out


def _watch_name(key: str) -> str:
    return name_of_key(key) or key


async def files_hourly(pool: asyncpg.Pool, q: FilesHourlyQuery) -> dict[str, Any]:
    """{"hours": [ISO hour, ...], "series": {watch: [files per hour]}}, every hour present."""
    first, now, hours = hour_axis(q.days)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT date_trunc('hour', detected_at) AS hour, watch, count(*) AS n FROM files "
                                "WHERE detected_at >= $1 AND detected_at <= $2 GROUP BY 1, 2", first, now)
    return hourly_series(rows, hours, "watch")


async def uploads(pool: asyncpg.Pool, q: UploadsQuery) -> dict[str, Any]:
    """Per watch over [since, until): files, the last file's time, the flights closed (with their
    file counts and partial flag) and the files no closed flight holds yet (an open flight)."""
    async with pool.acquire() as conn:
        files = await conn.fetch(
            "SELECT x.watch, count(*) AS files, max(x.detected_at) AS last_file_at, "
            "count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM flight_files ff WHERE ff.file_id = x.id)) AS unbatched "
            "FROM files x WHERE x.watch = ANY($1::text[]) AND x.detected_at >= $2 AND x.detected_at < $3 "
            "GROUP BY x.watch", q.watches, q.since, q.until)
        flights = await conn.fetch(
            "SELECT id, job, watch, folder, files, partial, reason, opened_at, closed_at FROM flights "
            "WHERE watch = ANY($1::text[]) AND closed_at >= $2 AND closed_at < $3 ORDER BY closed_at",
            q.watches, q.since, q.until)
    out: dict[str, Any] = {w: {"files": 0, "last_file_at": None, "unbatched": 0, "flights": []} for w in q.watches}
    for r in files:
        out[r["watch"]].update(files=int(r["files"]), unbatched=int(r["unbatched"]),
                               last_file_at=r["last_file_at"].isoformat())
    for r in flights:
        out[r["watch"]]["flights"].append(jsonable(r))
    return out


async def cleanup(pool: asyncpg.Pool, older_than_days: float) -> dict[str, int]:
    """Files and flights older than the retention (system.history_retention)."""
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    async with pool.acquire() as conn, conn.transaction():
        gone = await conn.fetch("DELETE FROM flights WHERE closed_at < $1 RETURNING id", cutoff)
        await conn.execute("DELETE FROM flight_files WHERE flight_id = ANY($1::text[])", [r["id"] for r in gone])
        files = await conn.execute("DELETE FROM files WHERE detected_at < $1", cutoff)
    return {"flights": len(gone), "files": int(files.split()[-1])}


def routes(pool: asyncpg.Pool) -> list[Route]:
    """(subject, query model, handler) for HistoryService._respond."""
    return [
        (wire.HISTORY_FLIGHTS, FlightsQuery, lambda q: query_flights(pool, q)),
        (wire.HISTORY_REFUSED, RefusedQuery, lambda q: query_refused(pool, q)),
        (wire.HISTORY_REPORT_FILES, FilesHourlyQuery, lambda q: files_hourly(pool, q)),
        (wire.HISTORY_REPORT_UPLOADS, UploadsQuery, lambda q: uploads(pool, q)),
    ]
