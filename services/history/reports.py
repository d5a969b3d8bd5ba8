"""Aggregates for the dashboard (issue 5): runs per hour by state, duration per run of a job, and
runs by state in a time range. Answered by the history service like its other queries; each
handler is one indexed statement over `runs` (the runs_time / runs_job_time indexes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from services.history.rows import Route, Where, hour_axis
from services.history.rows import hourly as hourly_series
from services.history.store import WHEN
from shared import wire
from shared.events import RunState
from shared.queries import CountsQuery, DigestQuery, DurationsQuery, HourlyQuery


async def hourly(pool: asyncpg.Pool, q: HourlyQuery) -> dict[str, Any]:
    """{"hours": [ISO hour, ...], "series": {state: [count per hour]}}: every hour in the range is
    present (zeros included), so a chart's x axis has no gaps."""
    first, now, hours = hour_axis(q.days)
    sql = (f"SELECT date_trunc('hour', {WHEN}) AS hour, state, count(*) AS n FROM runs "
           f"WHERE {WHEN} >= $1 AND {WHEN} <= $2 GROUP BY 1, 2")
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, first, now)
    return hourly_series(rows, hours, "state", [s.value for s in RunState])


async def durations(pool: asyncpg.Pool, q: DurationsQuery) -> list[dict[str, Any]]:
    where = Where("duration_s IS NOT NULL")
    where.add("job = {}", q.job)
    where.add(f"{WHEN} >= {{}}", q.since)
    # the newest `limit` runs, returned oldest first for plotting
    sql = (f"SELECT run_id, state, attempt, coalesce(started_at, {WHEN}) AS at, duration_s FROM runs"
           f"{where.sql()} ORDER BY {WHEN} DESC LIMIT {where.bind(q.limit)}")
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, *where.args)
    return [{"run_id": r["run_id"], "state": r["state"], "attempt": r["attempt"], "at": r["at"].isoformat(),
             "duration_s": r["duration_s"]} for r in reversed(rows)]


async def counts(pool: asyncpg.Pool, q: CountsQuery) -> dict[str, int]:
    where = Where()
    where.add(f"{WHEN} >= {{}}", q.since)
    where.add(f"{WHEN} < {{}}", q.until)
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT state, count(*) AS n FROM runs{where.sql()} GROUP BY state", *where.args)
    return {r["state"]: int(r["n"]) for r in rows}


# the latest overdue alert of each job: reported if it came in the period or is still firing
OVERDUE = """
SELECT * FROM (SELECT DISTINCT ON (job) job, at, resolved FROM alerts
               WHERE kind = 'overdue' AND job IS NOT NULL AND at < $2 ORDER BY job, at DESC) latest
WHERE at >= $1 OR NOT resolved ORDER BY job
"""


def _buckets(q: DigestQuery) -> list[datetime]:
    """The chart's x axis: every hour (or day of the farm's zone) from since to until."""
    zone = ZoneInfo(q.timezone)
    if q.bucket == "hour":
        at = q.since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        step = timedelta(hours=1)
    else:
        at = q.since.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        step = timedelta(days=1)
    out: list[datetime] = []
    while at < q.until and len(out) < 2000:
        out.append(at)
        at += step  # a day: the same wall time (midnight) the next day, whatever the offset
    return out


async def digest(pool: asyncpg.Pool, q: DigestQuery) -> dict[str, Any]:
    """Runs by job and state, file/batch runs by job, the newest dead runs, overdue jobs and runs
    per hour (or per day of the farm's zone) by state, over [since, until)."""
    zone = ZoneInfo(q.timezone)  # checked by the query model
    span = f"{WHEN} >= $1 AND {WHEN} < $2 AND run_id IS DISTINCT FROM $3"
    args = (q.since, q.until, q.exclude_run)
    async with pool.acquire() as conn:
        by_state = await conn.fetch(f"SELECT job, state, count(*) AS n FROM runs WHERE {span} GROUP BY 1, 2", *args)
        by_kind = await conn.fetch(f"SELECT job, trigger_kind, count(*) AS n FROM runs WHERE {span} "
                                   "AND trigger_kind IN ('file', 'batch') GROUP BY 1, 2", *args)
        failures = await conn.fetch(f"SELECT run_id, job, state, attempt, {WHEN} AS at, coalesce(error, reason) "
                                    f"AS error FROM runs WHERE {span} AND state = 'dead' ORDER BY {WHEN} DESC "
                                    "LIMIT $4", *args, q.max_failures)
        hourly = await conn.fetch(f"SELECT date_trunc('hour', {WHEN}) AS hour, state, count(*) AS n FROM runs "
                                  f"WHERE {span} GROUP BY 1, 2", *args)
        overdue = await conn.fetch(OVERDUE, q.since, q.until)
    jobs: dict[str, dict[str, int]] = {}
    for r in by_state:
        jobs.setdefault(r["job"], {})[r["state"]] = int(r["n"])
    kinds: dict[str, dict[str, int]] = {}
    for r in by_kind:
        kinds.setdefault(r["job"], {})[r["trigger_kind"]] = int(r["n"])
    buckets = _buckets(q)
    index = {b: i for i, b in enumerate(buckets)}
    series = {s.value: [0] * len(buckets) for s in RunState}
    for r in hourly:
        hour = r["hour"].astimezone(UTC)
        key = hour if q.bucket == "hour" else hour.astimezone(zone).replace(hour=0, minute=0, second=0,
                                                                             microsecond=0)
        i = index.get(key)
        if i is not None and r["state"] in series:
            series[r["state"]][i] += int(r["n"])
    return {"by_job": jobs, "by_kind": kinds, "failures_total": sum(j.get("dead", 0) for j in jobs.values()),
            "failures": [{"run_id": r["run_id"], "job": r["job"], "state": r["state"], "attempt": r["attempt"],
                          "at": r["at"].isoformat(), "error": r["error"]} for r in failures],
            "overdue": [{"job": r["job"], "at": r["at"].isoformat(), "resolved": r["resolved"]} for r in overdue],
            "buckets": [b.isoformat() for b in buckets], "series": series}


def routes(pool: asyncpg.Pool) -> list[Route]:
    """(subject, query model, handler) for HistoryService._respond."""
    return [
        (wire.HISTORY_REPORT_HOURLY, HourlyQuery, lambda q: hourly(pool, q)),
        (wire.HISTORY_REPORT_DURATIONS, DurationsQuery, lambda q: durations(pool, q)),
        (wire.HISTORY_REPORT_COUNTS, CountsQuery, lambda q: counts(pool, q)),
        (wire.HISTORY_REPORT_DIGEST, DigestQuery, lambda q: digest(pool, q)),
    ]
