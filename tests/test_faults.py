"""Faults with services as separate processes, killed by the PIDs the test started."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path

import ledger
from conftest import Spawner, System, apply_yaml, fetch, wait_for, wait_service

from cropcron import commands
from shared.bus import Bus
from shared.catalog import set_paused


async def test_runner_killed_mid_job_run_completes_on_another(spawn: Spawner, bus: Bus, db_url: str,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    await apply_yaml(bus, f"""
jobs:
  - name: long
    type: video_analysis
    max_retries: 2
    retry_jitter: 0
    run: ["{{python}}", tests/jobs/ledger.py, "{path}", "{{run_id}}", "{{attempt}}", "4", "0"]
""")
    spawn.start("history", instance="h")
    runners = {name: spawn.start("runner", instance=name) for name in ("r1", "r2")}
    for name in runners:
        await wait_service(bus, "runner", name)
    run = await commands.run_now(bus, "long", wait=None)

    async def started() -> list:
        return [e for e in ledger.read(path) if e.kind == "start"]

    first = (await wait_for(started, 20, "the job to start"))[0]
    rows = await wait_for(lambda: fetch(db_url, "SELECT runner FROM runs WHERE run_id = $1", run["run_id"]), 10,
                          "the started event in history")
    victim = rows[0]["runner"]
    runners[victim].send_signal(signal.SIGKILL)
    runners[victim].wait(5)

    async def done() -> list:
        rows = await fetch(db_url, "SELECT * FROM runs WHERE run_id = $1 AND state = 'succeeded'", run["run_id"])
        return rows

    rows = await wait_for(done, 40, "the run to complete on the surviving runner")
    assert len(rows) == 1
    survivor = next(n for n in runners if n != victim)
    assert rows[0]["runner"] == survivor and rows[0]["attempt"] == 2
    assert len(await fetch(db_url, "SELECT 1 FROM runs")) == 1, "one row for the run"
    starts = [e for e in ledger.read(path) if e.kind == "start"]
    assert [e.attempt for e in starts] == [1, 2]
    assert starts[0].pid == first.pid
    # redelivered only after the dead runner's lease lapsed (ack_wait 3 s), not before
    assert starts[1].at - starts[0].at >= 2.5


CATCHUP = """
jobs:
  - {name: c_skip, type: data_cleanup, interval: 2s, catchup: skip, overlap: allow, call: tests.jobs.calls:noop}
  - {name: c_latest, type: data_cleanup, interval: 2s, catchup: latest, overlap: allow, call: tests.jobs.calls:noop}
  - {name: c_all, type: data_cleanup, interval: 2s, catchup: all, overlap: allow, call: tests.jobs.calls:noop}
  - {name: c_window, type: data_cleanup, interval: 2s, catchup: all, catchup_window: 3s, overlap: allow,
     call: tests.jobs.calls:noop}
"""


async def test_timer_down_across_instants_each_catchup_policy(spawn: Spawner, system: System, bus: Bus,
                                                              db_url: str) -> None:
    await apply_yaml(bus, CATCHUP)
    await system.start("history", "runner")
    timer = spawn.start("timer", instance="t1")
    await wait_service(bus, "timer", "t1")

    async def runs(job: str) -> list:
        return await fetch(db_url, "SELECT scheduled_at, state, reason FROM runs WHERE job = $1 ORDER BY scheduled_at",
                           job)

    await wait_for(lambda: _count(runs, "c_all", 2), 15, "two runs before the outage")
    timer.send_signal(signal.SIGTERM)  # a clean stop releases the leader lease at once
    timer.wait(10)
    await asyncio.sleep(7.5)  # the outage: three or four 2-second instants pass
    spawn.start("timer", instance="t2")
    await wait_service(bus, "timer", "t2")

    async def settled(job: str) -> list | None:
        rows = await runs(job)
        done = [r for r in rows if r["state"] in ("succeeded", "missed")]
        return rows if len(rows) >= 8 and len(done) == len(rows) else None

    result = {job: await wait_for(lambda j=job: settled(j), 30, f"{job} runs") for job in
              ("c_skip", "c_latest", "c_all", "c_window")}
    for job, rows in result.items():
        instants = [r["scheduled_at"] for r in rows]
        assert len(set(instants)) == len(instants), f"{job}: an instant recorded twice"
        gaps = {b - a for a, b in zip(instants, instants[1:], strict=False)}
        assert gaps == {timedelta(seconds=2)}, f"{job}: instants lost: {gaps}"
    missed = {job: [r for r in rows if r["state"] == "missed"] for job, rows in result.items()}
    k = len(missed["c_skip"])
    assert k >= 3, "the outage spanned at least three instants"
    assert all("catchup=skip" in r["reason"] for r in missed["c_skip"])
    assert len(missed["c_latest"]) == k - 1
    assert all("catchup=latest" in r["reason"] for r in missed["c_latest"])
    latest_gap = [r for r in result["c_latest"] if r["scheduled_at"] > missed["c_latest"][-1]["scheduled_at"]][0]
    assert latest_gap["state"] == "succeeded"
    assert missed["c_all"] == []
    # catchup all, but a 3 s window: the older gap instants are missed as outside the window
    assert 1 <= len(missed["c_window"]) < k
    assert all("catchup_window" in r["reason"] for r in missed["c_window"])


async def _count(fn, job: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await fn(job)) >= n


async def test_leader_killed_standby_takes_over(spawn: Spawner, system: System, bus: Bus, db_url: str) -> None:
    await apply_yaml(bus, """
jobs:
  - {name: every, type: data_cleanup, schedule: "* * * * * *", overlap: allow, catchup: all,
     call: tests.jobs.calls:noop}
""")
    await system.start("history", "runner")
    procs = {name: spawn.start("timer", instance=name) for name in ("ta", "tb")}
    beats = {name: await wait_service(bus, "timer", name) for name in procs}

    async def leader() -> str | None:
        beats = {name: await wait_service(bus, "timer", name) for name in procs if procs[name].poll() is None}
        leaders = [n for n, b in beats.items() if b.get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    first = await wait_for(leader, 10, "one leader")
    procs[first].send_signal(signal.SIGKILL)
    procs[first].wait(5)
    await wait_for(leader, 15, "the standby to take over")
    await asyncio.sleep(2)
    await set_paused(bus.js, "every", True)
    await asyncio.sleep(1.5)

    async def all_succeeded() -> list | None:
        rows = await fetch(db_url, "SELECT scheduled_at, state FROM runs WHERE job = 'every' ORDER BY scheduled_at")
        return rows if rows and all(r["state"] in ("succeeded", "missed") for r in rows) else None

    rows = await wait_for(all_succeeded, 20, "runs to finish")
    instants = [r["scheduled_at"] for r in rows]
    assert len(instants) == len(set(instants))
    gaps = {b - a for a, b in zip(instants, instants[1:], strict=False)}
    assert gaps == {timedelta(seconds=1)}, f"an instant was lost across the failover: {gaps}"
    assert beats  # both started
