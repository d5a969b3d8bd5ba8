"""History: fenced upserts, queries over NATS, statistics, retention, outages."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import System, fetch, wait_for
from nats.errors import NoRespondersError

from cropcron import commands
from services.history import store
from services.history.migrate import migrate
from shared import wire
from shared.bus import Bus
from shared.events import RunEvent, RunState
from shared.queries import RunsQuery
from shared.reply import ask

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def ev(run_id: str, state: RunState, attempt: int, **kw: object) -> RunEvent:
    fields: dict[str, object] = {"job": "j", "scheduled_at": T0, **kw}
    return RunEvent(run_id=run_id, job_type="image_processing", state=state, attempt=attempt,
                    at=T0 + timedelta(seconds=attempt * 10 + len(state)), trigger_kind="tick",
                    **fields)  # type: ignore[arg-type]


async def test_stale_attempt_never_overwrites_newer(db_url: str) -> None:
    pool = await store.create_pool(db_url)
    try:
        await migrate(pool)
        assert await migrate(pool) == [], "migrations are idempotent"
        # attempt 2 succeeded; then a stale runner's late events for attempt 1 arrive, and
        # the redelivered duplicates of attempt 2's events
        await store.apply_events(pool, [ev("r1", RunState.STARTED, 2, runner="b"),
                                        ev("r1", RunState.SUCCEEDED, 2, runner="b", exit_code=0, duration_s=1.5)], [])
        await store.apply_events(pool, [ev("r1", RunState.STARTED, 1, runner="a"),
                                        ev("r1", RunState.FAILED, 1, runner="a", exit_code=9, error="late"),
                                        ev("r1", RunState.STARTED, 2, runner="b"),
                                        ev("r1", RunState.SUCCEEDED, 2, runner="b", exit_code=0, duration_s=1.5)], [])
        rows = await fetch(db_url, "SELECT * FROM runs")
        assert len(rows) == 1
        row = rows[0]
        assert (row["state"], row["attempt"], row["runner"], row["exit_code"], row["error"]) == (
            "succeeded", 2, "b", 0, None)
        # out of order within one attempt: the terminal state is kept
        await store.apply_events(pool, [ev("r2", RunState.SUCCEEDED, 1, duration_s=2.0),
                                        ev("r2", RunState.STARTED, 1)], [])
        r2 = await fetch(db_url, "SELECT state FROM runs WHERE run_id = 'r2'")
        assert r2[0]["state"] == "succeeded"
        # a missed instant (attempt 0) that is run after all is superseded by the run
        await store.apply_events(pool, [ev("r3", RunState.MISSED, 0, reason="timer down"),
                                        ev("r3", RunState.STARTED, 1)], [])
        r3 = await fetch(db_url, "SELECT state FROM runs WHERE run_id = 'r3'")
        assert r3[0]["state"] == "started"
    finally:
        await pool.close()


async def test_queries_filters_and_stats(db_url: str) -> None:
    pool = await store.create_pool(db_url)
    try:
        await migrate(pool)
        events = []
        for i in range(30):
            job = "a" if i % 3 else "b"
            state = RunState.SUCCEEDED if i % 5 else RunState.DEAD
            e = ev(f"q{i}", state, 1, job=job, duration_s=float(i), scheduled_at=T0 - timedelta(hours=i))
            events.append(e)
        events.append(ev("qm", RunState.MISSED, 0, job="a", reason="x"))
        await store.apply_events(pool, events, [])
        rows = await store.query_runs(pool, RunsQuery(job="b", limit=100))
        assert {r["job"] for r in rows} == {"b"} and len(rows) == 10
        rows = await store.query_runs(pool, RunsQuery(state=RunState.DEAD, limit=100))
        assert len(rows) == 6 and all(r["state"] == "dead" for r in rows)
        rows = await store.query_runs(pool, RunsQuery(since=T0 - timedelta(hours=4, minutes=30), limit=100))
        assert len(rows) == 6  # q0..q4 and the missed one
        page1 = await store.query_runs(pool, RunsQuery(limit=10))
        page2 = await store.query_runs(pool, RunsQuery(limit=10, offset=10))
        assert len(page1) == 10 and not {r["run_id"] for r in page1} & {r["run_id"] for r in page2}
        assert [r["scheduled_at"] for r in page1] == sorted((r["scheduled_at"] for r in page1), reverse=True)
        stats = await store.query_stats(pool, days=3650)
        total = stats["total"]
        assert (total["total"], total["succeeded"], total["failed"], total["missed"]) == (31, 24, 6, 1)
        durations = sorted(float(i) for i in range(30) if i % 5)
        assert abs(total["mean_duration_s"] - sum(durations) / len(durations)) < 1e-9
        assert durations[-3] <= total["p95_duration_s"] <= durations[-1]
        assert {j["job"]: j["total"] for j in stats["jobs"]} == {"a": 21, "b": 10}
        assert stats["types"][0]["job_type"] == "image_processing"
        last = await store.query_last(pool, ["a", "b"])
        assert last["b"]["run_id"] == "q0"
        removed = await store.cleanup(pool, older_than_days=365 * 100)
        assert removed["runs"] == 0
    finally:
        await pool.close()


async def test_history_over_nats_and_bad_requests(system: System, bus: Bus, db_url: str) -> None:
    await system.start("history")
    reply = await bus.nc.request(wire.HISTORY_RUNS, b'{"limit": 0}', timeout=5)
    assert b'"ok": false' in reply.data and b"limit" in reply.data
    reply = await bus.nc.request(wire.HISTORY_RUNS, b"not json", timeout=5)
    assert b'"ok": false' in reply.data
    rows = await commands.history(bus, RunsQuery(limit=5))
    assert rows == []
    stats = await commands.stats(bus, 1)
    assert stats["total"]["total"] == 0


async def test_an_answer_over_max_payload_arrives_whole(system: System, bus: Bus, db_url: str) -> None:
    # 120 runs with 40 KB of output each: a 4.8 MB answer, over the broker's 1 MiB max_payload (the
    # reply used to be refused and the CLI said "is it running?")
    pool = await store.create_pool(db_url)
    try:
        await migrate(pool)
        await store.apply_events(pool, [ev(f"big{i:03d}", RunState.SUCCEEDED, 1, output_tail=f"{i:03d}" + "x" * 40_000)
                                        for i in range(120)], [])
    finally:
        await pool.close()
    await system.start("history")
    rows = await commands.history(bus, RunsQuery(limit=1000))
    assert sorted(r["run_id"] for r in rows) == [f"big{i:03d}" for i in range(120)]
    assert all(len(r["output_tail"]) == 40_003 and r["output_tail"].startswith(r["run_id"][3:]) for r in rows)
    # a small answer is still one plain message: any NATS client's request works
    reply = await bus.nc.request(wire.HISTORY_RUNS, b'{"limit": 1}', timeout=5)
    assert reply.headers is None or wire.HEADER_CHUNKS not in reply.headers
    assert len(json.loads(reply.data)["data"]) == 1
    # nobody serving a subject fails at once, not after the timeout
    started = time.monotonic()
    with pytest.raises(NoRespondersError):
        await ask(bus.nc, "cropcron.history.nobody", b"{}", timeout=10)
    assert time.monotonic() - started < 2


async def test_events_survive_a_database_outage(system: System, bus: Bus, db_url: str,
                                                pg_admin_url: str) -> None:
    """Postgres refusing connections delays history; it loses nothing (naks, then redelivery)."""
    await system.start("history")
    dbname = db_url.split("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", dbname)
        for i in range(20):
            e = ev(f"o{i}", RunState.SUCCEEDED, 1)
            await bus.js.publish(wire.run_event_subject("j", "succeeded"), e.to_bytes(),
                                 headers={wire.HEADER_MSG_ID: e.msg_id()})
        info = await bus.js.consumer_info(wire.STREAM_RUNS, wire.HISTORY_CONSUMER)
        await wait_for(lambda: _redelivering(bus), 20, "history to nak while the database is away")
        await admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
    finally:
        await admin.close()

    async def all_rows() -> bool:
        return len(await fetch(db_url, "SELECT 1 FROM runs")) == 20

    await wait_for(all_rows, 30, "every event once the database is back")
    assert info.config.durable_name == wire.HISTORY_CONSUMER


async def _redelivering(bus: Bus) -> bool:
    info = await bus.js.consumer_info(wire.STREAM_RUNS, wire.HISTORY_CONSUMER)
    return bool(info.num_redelivered and info.num_redelivered > 0)


async def test_unstorable_text_does_not_block_history(system: System, bus: Bus, db_url: str) -> None:
    """A NUL in a job's output (Postgres text refuses it) is stored replaced, and never holds
    back the other events of its batch."""
    await system.start("history")
    nasty = ev("nul", RunState.DEAD, 1, error="bad\x00byte", output_tail="tail\x00", result={"k": "v\x00"})
    fine = [ev(f"ok{i}", RunState.SUCCEEDED, 1) for i in range(5)]
    for e in [nasty, *fine]:
        await bus.js.publish(wire.run_event_subject("j", e.state), e.to_bytes(), headers={wire.HEADER_MSG_ID: e.msg_id()})

    async def stored() -> list:
        rows = await fetch(db_url, "SELECT run_id, error, output_tail, result FROM runs ORDER BY run_id")
        return rows if len(rows) == 6 else []

    rows = {r["run_id"]: r for r in await wait_for(stored, 20, "all six runs")}
    assert rows["nul"]["error"] == "bad\ufffdbyte" and rows["nul"]["output_tail"] == "tail\ufffd"
    assert rows["nul"]["result"] == {"k": "v\ufffd"}


async def test_event_postgres_refuses_is_rejected_alone(system: System, bus: Bus, db_url: str) -> None:
    await system.start("history")
    # valid JSON and a valid model, but its attempt does not fit Postgres' integer
    huge = ev("huge", RunState.SUCCEEDED, 1).model_copy(update={"attempt": 2**40})
    fine = [ev(f"f{i}", RunState.SUCCEEDED, 1) for i in range(5)]
    for e in [*fine[:2], huge, *fine[2:]]:
        await bus.js.publish(wire.run_event_subject("j", e.state), e.to_bytes(), headers={wire.HEADER_MSG_ID: e.msg_id()})

    async def settled() -> tuple | None:
        runs = await fetch(db_url, "SELECT run_id FROM runs ORDER BY run_id")
        rejected = await fetch(db_url, "SELECT reason FROM rejections")
        return (runs, rejected) if len(runs) == 5 and rejected else None

    runs, rejected = await wait_for(settled, 20, "the good events stored and the bad one rejected")
    assert [r["run_id"] for r in runs] == [f"f{i}" for i in range(5)]
    assert "not storable" in rejected[0]["reason"]


def _life(run: str, attempts: int, rng: object) -> list[RunEvent]:
    """The events of one run as runners publish them: each attempt started, then failed+retrying
    or, the last, succeeded or failed+dead; timestamps and fields per attempt."""
    import random

    assert isinstance(rng, random.Random)
    out: list[RunEvent] = []
    for a in range(1, attempts + 1):
        start = T0 + timedelta(seconds=10 * a)
        common: dict[str, object] = {"started_at": start, "runner": f"r{a}"}
        done: dict[str, object] = {**common, "finished_at": start + timedelta(seconds=1), "duration_s": 1.0}
        if rng.random() < 0.7:
            out.append(ev(run, RunState.STARTED, a, **common))
        if a < attempts:
            out += [ev(run, RunState.FAILED, a, error=f"exit {a}", exit_code=a, **done),
                    ev(run, RunState.RETRYING, a, reason=f"attempt {a} failed", error=f"exit {a}", exit_code=a,
                       next_attempt_at=start + timedelta(seconds=5), **done)]
        elif rng.random() < 0.5:
            out.append(ev(run, RunState.SUCCEEDED, a, exit_code=0, **done))
        else:
            out += [ev(run, RunState.FAILED, a, error="exit 9", exit_code=9, **done),
                    ev(run, RunState.DEAD, a, reason="all failed", error="exit 9", exit_code=9, **done)]
    return out


async def test_staged_batches_end_where_one_upsert_per_event_ends(db_url: str) -> None:
    """The fold + COPY path (store.apply_events) against the fence applied one event at a time
    (UPSERT_RUN per event, the path it replaced): shuffled, duplicated, split into batches at
    random, every run ends in the same state, attempt and attempt fields either way."""
    import random

    rng = random.Random(20261205)
    events = [e for i in range(200) for e in _life(f"run{i}", rng.randint(1, 3), rng)]
    events += rng.sample(events, 100)  # redeliveries
    rng.shuffle(events)
    pool = await store.create_pool(db_url)
    try:
        await migrate(pool)
        i = 0
        while i < len(events):
            n = rng.randint(1, 60)
            await store.apply_events(pool, events[i:i + n], [])
            i += n
        staged = {r["run_id"]: r for r in await fetch(db_url, "SELECT * FROM runs")}
        staged_attempts = {(r["run_id"], r["attempt"]): r for r in await fetch(db_url, "SELECT * FROM run_attempts")}
        async with pool.acquire() as conn:
            await conn.execute("TRUNCATE runs, run_attempts")
            for e in events:
                await conn.execute(store.UPSERT_RUN, *store._run_row(e))
                if e.attempt > 0:
                    await conn.execute(store.UPSERT_ATTEMPT, *store._attempt_row(e))
        single = {r["run_id"]: r for r in await fetch(db_url, "SELECT * FROM runs")}
        single_attempts = {(r["run_id"], r["attempt"]): r for r in await fetch(db_url, "SELECT * FROM run_attempts")}
    finally:
        await pool.close()
    assert staged.keys() == single.keys() and len(staged) == 200
    fields = ("state", "attempt", "state_rank", "started_at", "finished_at", "exit_code", "error", "reason", "runner",
              "next_attempt_at", "scheduled_at", "job_type", "trigger_kind")
    differ = [(k, f, staged[k][f], single[k][f]) for k in staged for f in fields if staged[k][f] != single[k][f]]
    assert not differ, differ[:5]
    assert staged_attempts.keys() == single_attempts.keys()
    differ = [(k, f) for k in staged_attempts for f in ("state", "started_at", "finished_at", "error", "exit_code")
              if staged_attempts[k][f] != single_attempts[k][f]]
    assert not differ, differ[:5]


async def test_an_unforeseen_store_error_naks_the_batch_and_ingestion_goes_on(bus: Bus, tmp_path: Path) -> None:
    """A store function raising what it did not foresee (not a database outage) must not end the
    ingest loop: the batch comes back and is stored on a later try."""
    import asyncio

    from dispatch_helpers import file_event, publish_events

    from services.history.ingest import ingest

    (tmp_path / "a.jpg").write_bytes(b"x")
    await publish_events(bus, [file_event("w", tmp_path, b"a.jpg")])
    calls: list[int] = []
    stored = asyncio.Event()

    async def store_fn(msgs: list[Any]) -> None:
        calls.append(len(msgs))
        if len(calls) == 1:
            raise RuntimeError("a bug the loop did not foresee")
        for msg in msgs:
            await msg.ack()
        stored.set()

    stop = asyncio.Event()
    task = asyncio.create_task(ingest(bus, wire.STREAM_FILES, wire.HISTORY_FILES_CONSUMER, 10, stop, "test", store_fn))
    try:
        await asyncio.wait_for(stored.wait(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert calls[:2] == [1, 1], calls
