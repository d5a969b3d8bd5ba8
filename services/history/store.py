"""Postgres access for run history: fenced batch upserts and the queries behind `cropcron
history` / `stats`. One asyncpg pool per process."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.history import uploads
from services.history.ingest import ACQUIRE_TIMEOUT
from services.history.rows import Where, jsonable, text
from shared.events import STATE_RANK, FlightClosed, Rejected, RunEvent
from shared.queries import RunsQuery

RUN_COLS = ["run_id", "job", "job_type", "trigger_kind", "state", "state_rank", "attempt", "scheduled_at",
            "started_at", "finished_at", "duration_s", "exit_code", "timed_out", "error", "output_tail", "result",
            "reason", "next_attempt_at", "runner", "updated_at", "file_id", "file_watch", "file_path", "file_size"]
# fields that describe one attempt: a newer attempt replaces them, the same attempt fills gaps
PER_ATTEMPT = {"started_at", "finished_at", "duration_s", "exit_code", "timed_out", "error", "output_tail",
               "result", "reason", "next_attempt_at", "runner"}
KEYS = {"run_id"}


def _merge(col: str, table: str) -> str:
    if col in {"state", "state_rank", "attempt", "updated_at"}:
        return f"{col} = excluded.{col}"
    if col in PER_ATTEMPT:
        return (f"{col} = CASE WHEN excluded.attempt > {table}.attempt THEN excluded.{col} "
                f"ELSE coalesce(excluded.{col}, {table}.{col}) END")
    return f"{col} = coalesce(excluded.{col}, {table}.{col})"


# The fence (RELIABILITY A6): a row only moves forward, by attempt first and state rank second.
# A stale runner's late events for an older attempt, and redelivered duplicates, change nothing.
UPSERT_RUN = (
    f"INSERT INTO runs ({', '.join(RUN_COLS)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(RUN_COLS)))}) "
    f"ON CONFLICT (run_id) DO UPDATE SET {', '.join(_merge(c, 'runs') for c in RUN_COLS if c not in KEYS)} "
    "WHERE (excluded.attempt, excluded.state_rank) > (runs.attempt, runs.state_rank)"
)

ATTEMPT_COLS = ["run_id", "attempt", "state", "state_rank", "started_at", "finished_at", "duration_s", "exit_code",
                "timed_out", "error", "output_tail", "runner", "updated_at"]
UPSERT_ATTEMPT = (
    f"INSERT INTO run_attempts ({', '.join(ATTEMPT_COLS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(ATTEMPT_COLS)))}) "
    "ON CONFLICT (run_id, attempt) DO UPDATE SET "
    + ", ".join(f"{c} = coalesce(excluded.{c}, run_attempts.{c})" if c not in {"state", "state_rank", "updated_at"}
                else f"{c} = excluded.{c}" for c in ATTEMPT_COLS if c not in {"run_id", "attempt"})
    + " WHERE excluded.state_rank > run_attempts.state_rank"
)


# An attempt still `started` when a later attempt of the same run reports was lost with its
# runner (killed, or cut off past ack_wait, and the trigger redelivered): say so instead of leaving
# it "started" forever. Its own late report, if the runner was only stalled, still wins (rank 3).
LOST_ATTEMPTS = """
UPDATE run_attempts a SET state = 'failed', state_rank = 2, updated_at = n.at,
       error = coalesce(a.error, 'lost: its runner stopped reporting (killed or cut off); the trigger was '
                                 || 'redelivered as attempt ' || n.attempt)
FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS n(run_id, attempt, at)
WHERE a.run_id = n.run_id AND a.attempt < n.attempt AND a.state_rank = 1
"""


def _run_row(ev: RunEvent) -> tuple[Any, ...]:
    values = {**ev.model_dump(), "state": ev.state.value, "state_rank": STATE_RANK[ev.state], "updated_at": ev.at,
              # json.dumps writes NUL as \u0000, which jsonb refuses too
              "result": None if ev.result is None else json.dumps(ev.result).replace("\\u0000", "\\ufffd"),
              # a file run's file, for `history` and the run page (issue 14)
              "file_id": ev.file.id if ev.file else None, "file_watch": ev.file.watch if ev.file else None,
              "file_path": ev.file.rel_path if ev.file else None, "file_size": ev.file.size if ev.file else None}
    return tuple(text(values[c]) for c in RUN_COLS)


def _attempt_row(ev: RunEvent) -> tuple[Any, ...]:
    values = {**ev.model_dump(), "state": ev.state.value, "state_rank": STATE_RANK[ev.state], "updated_at": ev.at}
    return tuple(text(values[c]) for c in ATTEMPT_COLS)


async def _init_conn(conn: asyncpg.Connection) -> None:
    # binary, so COPY can carry it (apply_events); on the wire jsonb is a version byte (1) + the text
    await conn.set_type_codec("jsonb", encoder=lambda v: b"\x01" + v.encode(), decoder=lambda b: json.loads(b[1:]),
                              schema="pg_catalog", format="binary")


async def create_pool(dsn: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=5, init=_init_conn)
    assert pool is not None
    return pool


# A fetched batch is folded to one row per run (and per attempt), copied into a temporary table
# and upserted from it in one statement: COPY instead of a statement per event (issue 12). One
# INSERT ... ON CONFLICT cannot touch a row twice, hence the fold, which applies the same fence.
STAGE_RUNS = (f"CREATE TEMP TABLE IF NOT EXISTS runs_stage ON COMMIT DELETE ROWS AS SELECT {', '.join(RUN_COLS)} "
              "FROM runs WITH NO DATA")
STAGE_ATTEMPTS = (f"CREATE TEMP TABLE IF NOT EXISTS attempts_stage ON COMMIT DELETE ROWS AS SELECT "
                  f"{', '.join(ATTEMPT_COLS)} FROM run_attempts WITH NO DATA")
UPSERT_RUNS_STAGED = UPSERT_RUN.replace(
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(RUN_COLS)))})", f"SELECT {', '.join(RUN_COLS)} FROM runs_stage")
UPSERT_ATTEMPTS_STAGED = UPSERT_ATTEMPT.replace(
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(ATTEMPT_COLS)))})",
    f"SELECT {', '.join(ATTEMPT_COLS)} FROM attempts_stage")
_ATTEMPT, _RANK = RUN_COLS.index("attempt"), RUN_COLS.index("state_rank")
_A_RANK = ATTEMPT_COLS.index("state_rank")
_REPLACED = {"state", "state_rank", "attempt", "updated_at"}


class Unstorable(Exception):
    """An event Postgres cannot take as it is (Postgres refused it, or it cannot even be encoded for
    COPY: a number out of a column's range): the batch is stored one by one, this one rejected."""


async def _copy(conn: asyncpg.Connection, table: str, rows: list[tuple[Any, ...]], columns: list[str]) -> None:
    try:
        await conn.copy_records_to_table(table, records=rows, columns=columns)
    except (OverflowError, TypeError, ValueError) as exc:  # asyncpg encodes COPY rows on this side
        raise Unstorable(f"{type(exc).__name__}: {exc}") from exc


def fold_runs(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One row per run: its events in fence order, each newer one merged in as UPSERT_RUN would
    (state and attempt replaced, an attempt's fields replaced by a newer attempt's, the rest
    filled where missing); an event not newer than what is held is dropped, as the fence drops it."""
    by_run: dict[Any, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_run.setdefault(row[0], []).append(row)
    out = []
    for group in by_run.values():
        group.sort(key=lambda r: (r[_ATTEMPT], r[_RANK]))
        held = group[0]
        for row in group[1:]:
            if (row[_ATTEMPT], row[_RANK]) > (held[_ATTEMPT], held[_RANK]):
                newer_attempt = row[_ATTEMPT] > held[_ATTEMPT]
                held = tuple(new if col in _REPLACED or (col in PER_ATTEMPT and newer_attempt) or new is not None
                             else old for col, old, new in zip(RUN_COLS, held, row, strict=True))
        out.append(held)
    return out


def fold_attempts(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One row per (run, attempt), merged as UPSERT_ATTEMPT would: a higher rank wins the state,
    the other fields are filled where missing."""
    by_attempt: dict[tuple[Any, Any], list[tuple[Any, ...]]] = {}
    for row in rows:
        by_attempt.setdefault((row[0], row[1]), []).append(row)
    out = []
    for group in by_attempt.values():
        group.sort(key=lambda r: r[_A_RANK])
        held = group[0]
        for row in group[1:]:
            if row[_A_RANK] > held[_A_RANK]:
                held = tuple(new if col in _REPLACED or new is not None else old
                             for col, old, new in zip(ATTEMPT_COLS, held, row, strict=True))
        out.append(held)
    return out


async def apply_events(pool: asyncpg.Pool, events: Sequence[RunEvent], rejected: Sequence[Rejected],
                       flights: Sequence[FlightClosed] = ()) -> None:
    """One transaction for a whole fetched batch: COPY into staging tables, one upsert each."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
        if flights:
            await uploads.store_flights(conn, flights)
        if events:
            await conn.execute(STAGE_RUNS)
            await _copy(conn, "runs_stage", fold_runs([_run_row(e) for e in events]), RUN_COLS)
            await conn.execute(UPSERT_RUNS_STAGED)
            attempts = [e for e in events if e.attempt > 0]
            if attempts:
                await conn.execute(STAGE_ATTEMPTS)
                await _copy(conn, "attempts_stage", fold_attempts([_attempt_row(e) for e in attempts]), ATTEMPT_COLS)
                await conn.execute(UPSERT_ATTEMPTS_STAGED)
            later = [e for e in attempts if e.attempt > 1]
            if later:
                await conn.execute(LOST_ATTEMPTS, [e.run_id for e in later], [e.attempt for e in later],
                                   [e.at for e in later])
        if rejected:
            await conn.executemany(
                "INSERT INTO rejections (source, subject, reason, payload_excerpt, at) VALUES ($1, $2, $3, $4, $5)",
                [(text(r.source), text(r.subject), text(r.reason), text(r.payload_excerpt), r.at)
                 for r in rejected])


WHEN = "coalesce(scheduled_at, started_at, updated_at)"


async def query_runs(pool: asyncpg.Pool, q: RunsQuery) -> list[dict[str, Any]]:
    where = Where()
    for col, value in (("run_id", q.run_id), ("job", q.job), ("state", q.state.value if q.state else None)):
        where.add(f"{col} = {{}}", value)
    where.add(f"{WHEN} >= {{}}", q.since)
    where.add(f"{WHEN} < {{}}", q.until)
    sql = f"SELECT * FROM runs{where.sql()} ORDER BY {WHEN} DESC, run_id{where.page(q.limit, q.offset)}"
    async with pool.acquire() as conn:
        rows = [jsonable(r) for r in await conn.fetch(sql, *where.args)]
        if q.with_attempts and rows:
            attempts = await conn.fetch(
                "SELECT * FROM run_attempts WHERE run_id = ANY($1::text[]) ORDER BY run_id, attempt",
                [r["run_id"] for r in rows])
            by_run: dict[str, list[dict[str, Any]]] = {}
            for a in attempts:
                by_run.setdefault(a["run_id"], []).append(jsonable(a))
            for r in rows:
                r["attempts"] = by_run.get(r["run_id"], [])
    return rows


STATS_SELECT = """
    count(*) AS total,
    count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
    count(*) FILTER (WHERE state IN ('dead', 'failed')) AS failed,
    count(*) FILTER (WHERE state = 'missed') AS missed,
    count(*) FILTER (WHERE state = 'skipped') AS skipped,
    count(*) FILTER (WHERE state IN ('started', 'retrying')) AS in_progress,
    avg(duration_s) FILTER (WHERE state = 'succeeded') AS mean_duration_s,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_s) FILTER (WHERE state = 'succeeded') AS p95_duration_s
"""


async def query_stats(pool: asyncpg.Pool, days: float) -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(days=days)
    where = f"WHERE {WHEN} >= $1"
    async with pool.acquire() as conn:
        total = await conn.fetchrow(f"SELECT {STATS_SELECT} FROM runs {where}", since)
        per_job = await conn.fetch(f"SELECT job, {STATS_SELECT} FROM runs {where} GROUP BY job ORDER BY job", since)
        per_type = await conn.fetch(
            f"SELECT job_type, {STATS_SELECT} FROM runs {where} GROUP BY job_type ORDER BY job_type", since)
    return {"days": days, "since": since.isoformat(), "total": jsonable(total) if total else {},
            "jobs": [jsonable(r) for r in per_job], "types": [jsonable(r) for r in per_type]}


async def query_last(pool: asyncpg.Pool, jobs: list[str] | None) -> dict[str, dict[str, Any]]:
    sql = (f"SELECT DISTINCT ON (job) job, run_id, state, attempt, {WHEN} AS at, finished_at, error FROM runs "
           + ("WHERE job = ANY($1::text[]) " if jobs else "") + f"ORDER BY job, {WHEN} DESC")
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, jobs) if jobs else await conn.fetch(sql)
    return {r["job"]: jsonable(r) for r in rows}


async def cleanup(pool: asyncpg.Pool, older_than_days: float) -> dict[str, int]:
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    async with pool.acquire() as conn, conn.transaction():
        runs = await conn.fetch(f"DELETE FROM runs WHERE {WHEN} < $1 AND state_rank >= 3 RETURNING run_id", cutoff)
        ids = [r["run_id"] for r in runs]
        await conn.execute("DELETE FROM run_attempts WHERE run_id = ANY($1::text[])", ids)
        rej = await conn.execute("DELETE FROM rejections WHERE at < $1", cutoff)
    return {"runs": len(ids), "rejections": int(rej.split()[-1])}
