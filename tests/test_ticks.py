"""Ticks: one run per scheduled instant, however many timers run."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from conftest import Spawner, System, apply_yaml, fetch, wait_for, wait_service

from shared.bus import Bus
from shared.catalog import set_paused

EVERY_SECOND = """
jobs:
  - name: each_second
    type: image_processing
    schedule: "* * * * * *"
    max_retries: 0
    overlap: allow
    run: ["true"]
"""


async def _runs_of(db: str, job: str) -> list:
    return await fetch(db, "SELECT run_id, scheduled_at, state, attempt, reason FROM runs WHERE job = $1 "
                           "ORDER BY scheduled_at", job)


async def _settle_and_check(bus: Bus, db: str, job: str, seconds: float) -> list:
    await asyncio.sleep(seconds)  # the scenario itself: let the schedule run for this long
    paused_at = datetime.now(UTC)
    await set_paused(bus.js, job, True)

    async def all_done() -> list | None:
        rows = await _runs_of(db, job)
        return rows if rows and all(r["state"] in ("succeeded", "skipped") for r in rows) else None

    await wait_for(all_done, 20, "every run to finish")
    await asyncio.sleep(1.5)  # a tick already in flight when the pause landed
    rows = await wait_for(all_done, 20, "every run to finish")
    instants = [r["scheduled_at"] for r in rows]
    assert len(instants) == len(set(instants)), "an instant ran twice"
    gaps = [b - a for a, b in zip(instants, instants[1:], strict=False)]
    assert all(g == timedelta(seconds=1) for g in gaps), f"instants missing: gaps {set(gaps)}"
    # a tick queued just before the pause is skipped as paused, never silently dropped
    for r in rows:
        if r["state"] == "skipped":
            assert r["reason"] == "job is paused" and r["scheduled_at"] > paused_at - timedelta(seconds=3), r
    return [r for r in rows if r["state"] == "succeeded"]


async def test_every_second_for_20s_one_row_per_instant(system: System, bus: Bus, db_url: str) -> None:
    await apply_yaml(bus, EVERY_SECOND)
    await system.start("history", "runner", "timer")
    rows = await _settle_and_check(bus, db_url, "each_second", 20)
    assert len(rows) >= 19


async def test_two_timer_processes_one_run_per_instant(spawn: Spawner, bus: Bus, db_url: str) -> None:
    await apply_yaml(bus, EVERY_SECOND)
    spawn.start("history", "runner", instance="hr")
    t1 = spawn.start("timer", instance="timer-a")
    t2 = spawn.start("timer", instance="timer-b")
    a = await wait_service(bus, "timer", "timer-a")
    b = await wait_service(bus, "timer", "timer-b")
    await wait_service(bus, "runner", "hr")
    roles = {a.get("role"), b.get("role")}
    rows = await _settle_and_check(bus, db_url, "each_second", 8)
    assert len(rows) >= 7
    assert t1.poll() is None and t2.poll() is None
    # by now each has settled into its role: exactly one leads
    a = await wait_service(bus, "timer", "timer-a")
    b = await wait_service(bus, "timer", "timer-b")
    assert sorted([a["role"], b["role"]]) == ["leader", "standby"], roles
