"""Aggregates for the dashboard (issue 5): runs per hour by state, duration per run of a job, and
runs by state in a time range. Answered by the history service like its other queries; each
handler is one indexed statement over `runs` (the runs_time / runs_job_time indexes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import BaseModel

from services.history.store import WHEN
from shared import wire
from shared.events import RunState
from shared.queries import CountsQuery, DurationsQuery, HourlyQuery

Route = tuple[str, type[BaseModel], Callable[[Any], Awaitable[Any]]]


async def hourly(pool: asyncpg.Pool, q: HourlyQuery) -> dict[str, Any]:
    """{"hours": [ISO hour, ...], "series": {state: [count per hour]}}: every hour in the range is
    present (zeros included), so a chart's x axis has no gaps."""
    now = datetime.now(UTC)
    first = (now - timedelta(days=q.days)).replace(minute=0, second=0, microsecond=0)
    sql = (f"SELECT date_trunc('hour', {WHEN}) AS hour, state, count(*) AS n FROM runs "
           f"WHERE {WHEN} >= $1 AND {WHEN} <= $2 GROUP BY 1, 2")
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, first, now)
    hours: list[datetime] = []
    at = first
    while at <= now:
        hours.append(at)
        at += timedelta(hours=1)
    index = {h: i for i, h in enumerate(hours)}
    series = {s.value: [0] * len(hours) for s in RunState}
    for r in rows:
        i = index.get(r["hour"].astimezone(UTC))
        if i is not None and r["state"] in series:
            series[r["state"]][i] = int(r["n"])
    return {"since": first.isoformat(), "hours": [h.isoformat() for h in hours], "series": series}


async def durations(pool: asyncpg.Pool, q: DurationsQuery) -> list[dict[str, Any]]:
    args: list[Any] = [q.job]
    where = "job = $1 AND duration_s IS NOT NULL"
    if q.since is not None:
        args.append(q.since)
        where += f" AND {WHEN} >= $2"
    args.append(q.limit)
    # the newest `limit` runs, returned oldest first for plotting
    sql = (f"SELECT run_id, state, attempt, coalesce(started_at, {WHEN}) AS at, duration_s FROM runs "
           f"WHERE {where} ORDER BY {WHEN} DESC LIMIT ${len(args)}")
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, *args)
    return [{"run_id": r["run_id"], "state": r["state"], "attempt": r["attempt"], "at": r["at"].isoformat(),
             "duration_s": r["duration_s"]} for r in reversed(rows)]


async def counts(pool: asyncpg.Pool, q: CountsQuery) -> dict[str, int]:
    args: list[Any] = [q.since]
    where = f"{WHEN} >= $1"
    if q.until is not None:
        args.append(q.until)
        where += f" AND {WHEN} < $2"
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT state, count(*) AS n FROM runs WHERE {where} GROUP BY state", *args)
    return {r["state"]: int(r["n"]) for r in rows}


def routes(pool: asyncpg.Pool) -> list[Route]:
    """(subject, query model, handler) for HistoryService._respond."""
    return [
        (wire.HISTORY_REPORT_HOURLY, HourlyQuery, lambda q: hourly(pool, q)),
        (wire.HISTORY_REPORT_DURATIONS, DurationsQuery, lambda q: durations(pool, q)),
        (wire.HISTORY_REPORT_COUNTS, CountsQuery, lambda q: counts(pool, q)),
    ]
