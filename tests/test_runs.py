"""Running jobs: retries by redelivery, dead runs, timeouts, overlap, pause, manual runs."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import ledger
from conftest import System, apply_yaml, fetch, wait_for

from cropcron import commands
from shared import wire
from shared.bus import Bus
from shared.catalog import set_paused
from shared.names import subject_key


def _job(name: str, ledger_path: Path, sleep: float, code: int, extra: str = "", argv_extra: str = "") -> str:
    return f"""
  - name: {name}
    type: batch_detection
    run: ["{{python}}", tests/jobs/ledger.py, "{ledger_path}", "{{run_id}}", "{{attempt}}", "{sleep}", "{code}"{argv_extra}]
{extra}"""


async def _run(db: str, run_id: str) -> dict | None:
    rows = await fetch(db, "SELECT * FROM runs WHERE run_id = $1", run_id)
    return dict(rows[0]) if rows else None


async def _terminal(db: str, run_id: str, timeout: float) -> dict:
    async def check() -> dict | None:
        row = await _run(db, run_id)
        return row if row and row["state"] in ("succeeded", "dead", "skipped", "missed") else None

    result: dict = await wait_for(check, timeout, f"run {run_id} to finish")
    return result


async def test_failing_command_retries_with_exponential_backoff_then_dead(
        system: System, bus: Bus, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    await apply_yaml(bus, "jobs:" + _job("flaky", path, 0, 3, extra="""    max_retries: 2
    retry_delay: 1s
    backoff: exponential
    retry_jitter: 0
"""))
    await system.start("history", "runner")
    run = await commands.run_now(bus, "flaky", wait=None)
    row = await _terminal(db_url, run["run_id"], 30)
    assert row["state"] == "dead"
    assert row["attempt"] == 3
    assert row["exit_code"] == 3 and "exited with code 3" in row["error"]
    assert "last words before exit" in row["output_tail"]
    attempts = await fetch(db_url, "SELECT * FROM run_attempts WHERE run_id = $1 ORDER BY attempt", run["run_id"])
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["state"] for a in attempts] == ["retrying", "retrying", "dead"]
    starts = [e.at for e in ledger.read(path) if e.kind == "start"]
    assert len(starts) == 3, "exactly three executions"
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # delays 1 s then 2 s (exponential), plus process start-up; never early
    assert 1.0 <= gaps[0] < 2.0, gaps
    assert 2.0 <= gaps[1] < 3.2, gaps
    # the exhausted trigger was terminated: nothing left in the work queue
    await wait_for(lambda: _queue_empty(bus), 5, "the work queue to be empty")


async def test_timeout_kills_process_group_and_is_recorded(system: System, bus: Bus, db_url: str,
                                                           tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    await apply_yaml(bus, "jobs:" + _job("slow", tmp_path / "ledger", 60, 0, extra="""    timeout: 2s
    max_retries: 0
""", argv_extra=f', --child, "{pidfile}"'))
    await system.start("history", "runner")
    run = await commands.run_now(bus, "slow", wait=None)
    row = await _terminal(db_url, run["run_id"], 30)
    assert row["state"] == "dead"
    assert row["timed_out"] is True
    assert "timed out after 2s" in row["error"]
    child = int(pidfile.read_text())

    async def child_gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return _zombie(child)  # killed, not yet reaped by init: gone too

    assert await wait_for(child_gone, 5, "the job's child process to be killed")
    assert 1.9 <= row["duration_s"] < 6


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


async def test_manual_run_of_call_job_stores_result(system: System, bus: Bus, db_url: str) -> None:
    await apply_yaml(bus, """
jobs:
  - name: echo
    type: report_generation
    call: tests.jobs.calls:echo
""")
    await system.start("history", "runner")
    result = await commands.run_now(bus, "echo", wait=20)
    assert result["state"] == "succeeded"
    row = await _terminal(db_url, result["run_id"], 10)
    assert row["result"] == {"run_id": result["run_id"], "attempt": 1, "kind": "manual"}
    assert row["trigger_kind"] == "manual"


async def test_cpu_bound_call_does_not_stall_heartbeats(system: System, bus: Bus, db_url: str) -> None:
    # ack_wait is 3 s in tests and the job burns CPU for 2 s in a thread: heartbeats must go on,
    # so the trigger is delivered exactly once
    await apply_yaml(bus, """
jobs:
  - name: busy
    type: batch_detection
    call: tests.jobs.calls:busy
    max_retries: 3
""")
    await system.start("history", "runner")
    run = await commands.run_now(bus, "busy", wait=None)
    row = await _terminal(db_url, run["run_id"], 30)
    assert row["state"] == "succeeded" and row["attempt"] == 1
    assert row["result"] > 0


async def test_overlap_skip_never_runs_concurrently(system: System, bus: Bus, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    await apply_yaml(bus, "jobs:" + _job("slowtick", path, 2.5, 0, extra="""    schedule: "* * * * * *"
    overlap: skip
    max_retries: 0
"""))
    await system.start("history", "runner", "timer", concurrency=8)

    async def enough() -> bool:
        rows = await fetch(db_url, "SELECT state FROM runs WHERE job = 'slowtick'")
        return sum(r["state"] == "skipped" for r in rows) >= 4 and sum(r["state"] == "succeeded" for r in rows) >= 2

    await wait_for(enough, 30, "skipped and succeeded runs")
    await set_paused(bus.js, "slowtick", True)
    spans = ledger.intervals(ledger.read(path))
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two runs overlapped: {spans}"
    skipped = await fetch(db_url, "SELECT reason FROM runs WHERE job = 'slowtick' AND state = 'skipped'")
    assert all("overlap=skip" in r["reason"] for r in skipped)


async def test_a_run_asked_for_as_the_last_one_finishes_is_not_skipped(system: System, bus: Bus) -> None:
    """overlap: skip, one run after another, each asked for the moment the previous outcome is
    seen: the finished run's lease is freed before its outcome is published, so none is skipped
    (under load the next trigger used to find the lease still held)."""
    await apply_yaml(bus, """
jobs:
  - name: nightly_ok
    type: database_backup
    overlap: skip
    call: tests.jobs.calls:echo
""")
    await system.start("history", "runner")
    states = [(await commands.run_now(bus, "nightly_ok", wait=20))["state"] for _ in range(15)]
    assert states == ["succeeded"] * 15, states
    leases = await bus.js.key_value(wire.KV_LEASES)
    held = json.loads((await leases.get(subject_key("nightly_ok"))).value or b"{}")
    assert held == {}, "no lease left behind"


async def test_pause_stops_schedule_but_manual_run_works(system: System, bus: Bus, db_url: str) -> None:
    await apply_yaml(bus, """
jobs:
  - name: tick
    type: data_cleanup
    schedule: "* * * * * *"
    overlap: allow
    call: tests.jobs.calls:noop
""")
    await system.start("history", "runner", "timer")

    async def count() -> int:
        return len(await fetch(db_url, "SELECT 1 FROM runs WHERE job = 'tick' AND trigger_kind = 'tick'"))

    await wait_for(lambda: _at_least(count, 2), 15, "scheduled runs")
    await commands.pause(bus, "tick", True)
    await asyncio.sleep(1.5)  # let a tick that was already published land
    before = await count()
    await asyncio.sleep(3)  # the scenario: three instants pass while paused
    assert await count() == before, "a paused job was still scheduled"
    manual = await commands.run_now(bus, "tick", wait=15)
    assert manual["state"] == "succeeded"
    await commands.pause(bus, "tick", False)
    await wait_for(lambda: _at_least(count, before + 2), 15, "runs after resume")


async def _at_least(count, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await count() >= n)


async def test_malformed_triggers_are_terminated_and_reported(system: System, bus: Bus, db_url: str) -> None:
    await apply_yaml(bus, """
jobs:
  - name: good
    type: data_cleanup
    call: tests.jobs.calls:noop
""")
    await system.start("history", "runner")
    bad = [
        (wire.trigger_subject("normal", "good"), b"\xff not json"),
        (wire.trigger_subject("normal", "good"), b'{"run_id": "x"}'),
        (wire.trigger_subject("normal", "good"),
         b'{"schema_version": 99, "run_id": "x", "job": "good", "kind": "tick", "created_at": "2026-01-01T00:00:00Z"}'),
        (wire.trigger_subject("high", "ghost"),
         b'{"run_id": "y", "job": "ghost", "kind": "manual", "created_at": "2026-01-01T00:00:00Z"}'),
        (wire.trigger_subject("low", "good"),
         b'{"run_id": "z", "job": "other", "kind": "manual", "created_at": "2026-01-01T00:00:00Z"}'),
    ]
    for subject, payload in bad:
        await bus.js.publish(subject, payload)

    async def rejected() -> list:
        rows = await fetch(db_url, "SELECT reason FROM rejections ORDER BY id")
        return rows if len(rows) == len(bad) else []

    rows = await wait_for(rejected, 20, "every bad trigger to be reported")
    reasons = " | ".join(r["reason"] for r in rows)
    assert "malformed trigger" in reasons and "unsupported schema_version 99" in reasons
    assert "unknown job 'ghost'" in reasons and "arrived on subject" in reasons
    # the runner is alive and the bad messages are gone, not looping
    assert (await commands.run_now(bus, "good", wait=15))["state"] == "succeeded"
    await wait_for(lambda: _queue_empty(bus), 5, "the work queue to be empty")


async def _queue_empty(bus: Bus) -> bool:
    # the outcome is published before the trigger is acked, so the ack may trail it briefly
    info = await bus.js.stream_info(wire.STREAM_TRIGGERS)
    return info.state.messages == 0


async def test_long_job_heartbeats_keep_it_on_one_runner(system: System, bus: Bus, db_url: str,
                                                         tmp_path: Path) -> None:
    """A job running 3.5 x ack_wait (3 s in tests) is delivered once: in_progress() every
    ack_wait/3 keeps the trigger, so it is redelivered only when a runner really dies."""
    path = tmp_path / "ledger"
    await apply_yaml(bus, "jobs:" + _job("long", path, 10.5, 0, extra="    max_retries: 3\n"))
    await system.start("history", "runner")
    run = await commands.run_now(bus, "long", wait=None)
    row = await _terminal(db_url, run["run_id"], 40)
    assert row["state"] == "succeeded" and row["attempt"] == 1
    assert len([e for e in ledger.read(path) if e.kind == "start"]) == 1


async def test_a_short_run_stores_only_its_outcome_and_a_long_one_announces_itself_while_running(
        system: System, bus: Bus, db_url: str, tmp_path: Path) -> None:
    # CROPCRON_STARTED_AFTER (0.25 s): the runner's announcer publishes `started` for a run still
    # going then (within 1.5 times that), and nothing but the outcome for a shorter one
    path = tmp_path / "ledger"
    await apply_yaml(bus, "jobs:" + _job("short", path, 0, 0) + _job("long", path, 1.5, 0))
    seen: list[tuple[str, str, float]] = []  # (run_id, state, time it arrived)

    async def on_event(msg: Any) -> None:
        body = json.loads(msg.data)
        seen.append((body["run_id"], body["state"], time.time()))

    sub = await bus.nc.subscribe(wire.RUN_EVENT_SUBJECTS, cb=on_event)
    await system.start("history", "runner")
    short = await commands.run_now(bus, "short", wait=None)
    long = await commands.run_now(bus, "long", wait=None)
    for run in (short, long):
        assert (await _terminal(db_url, run["run_id"], 30))["state"] == "succeeded"
    await wait_for(lambda: _settled(seen, long["run_id"]), 10, "the long run's outcome on the bus")
    await sub.unsubscribe()
    assert [state for rid, state, _ in seen if rid == short["run_id"]] == ["succeeded"]
    row = await _run(db_url, short["run_id"])
    assert row is not None and row["started_at"] is not None  # from the outcome
    events = [(state, at) for rid, state, at in seen if rid == long["run_id"]]
    assert [state for state, _ in events] == ["started", "succeeded"]
    started = (await _run(db_url, long["run_id"]) or {})["started_at"].timestamp()
    end = next(e.at for e in ledger.read(path) if e.kind == "end" and e.run_id == long["run_id"])
    announced = events[0][1]
    assert started + 0.25 <= announced < end, (started, announced, end)  # while it ran, not at once


async def _settled(seen: list[tuple[str, str, float]], run_id: str) -> bool:
    return any(rid == run_id and state == "succeeded" for rid, state, _ in seen)
