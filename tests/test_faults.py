"""Faults with services as separate processes, killed by the PIDs the test started."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ledger
import psutil
from conftest import NatsProcess, Spawner, System, apply_yaml, fetch, wait_for, wait_service

from cropcron import commands
from shared import wire
from shared.bus import Bus
from shared.catalog import read_specs, set_paused
from shared.events import Trigger, tick_run_id


async def _two_runners_and_a_ledger_job(spawn: Spawner, bus: Bus, job: str, ledger_path: Path, seconds: float,
                                        max_retries: int) -> dict[str, subprocess.Popen[bytes]]:
    """A history process and two runner processes (r1, r2), and a job that runs `seconds`."""
    await apply_yaml(bus, f"""
jobs:
  - name: {job}
    type: video_analysis
    max_retries: {max_retries}
    retry_jitter: 0
    run: ["{{python}}", tests/jobs/ledger.py, "{ledger_path}", "{{run_id}}", "{{attempt}}", "{seconds}", "0"]
""")
    spawn.start("history", instance="h")
    runners = {name: spawn.start("runner", instance=name) for name in ("r1", "r2")}
    for name in runners:
        await wait_service(bus, "runner", name)
    return runners


async def test_runner_killed_mid_job_run_completes_on_another(spawn: Spawner, bus: Bus, db_url: str,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    runners = await _two_runners_and_a_ledger_job(spawn, bus, "long", path, seconds=4, max_retries=2)
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

    # the job's process dies with its runner (the runner's reaper kills its process group) instead
    # of finishing unsupervised beside the redelivered attempt
    killed = time.monotonic()
    while psutil.pid_exists(first.pid) and psutil.Process(first.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() - killed < 3, "the job outlived its killed runner"
        await asyncio.sleep(0.05)
    rows = await wait_for(done, 40, "the run to complete on the surviving runner")
    assert len(rows) == 1
    survivor = next(n for n in runners if n != victim)
    assert rows[0]["runner"] == survivor and rows[0]["attempt"] == 2
    assert len(await fetch(db_url, "SELECT 1 FROM runs")) == 1, "one row for the run"
    entries = ledger.read(path)
    starts = [e for e in entries if e.kind == "start"]
    assert [e.attempt for e in starts] == [1, 2]
    assert starts[0].pid == first.pid
    assert [e.attempt for e in entries if e.kind == "end"] == [2], "one effect: attempt 1 never finished"
    # redelivered only after the dead runner's lease lapsed (ack_wait 3 s), not before
    assert starts[1].at - starts[0].at >= 2.5
    # the lost attempt is on record as such, not `started` forever
    attempts = await fetch(db_url, "SELECT attempt, state, error FROM run_attempts WHERE run_id = $1 ORDER BY attempt",
                           run["run_id"])
    assert [(a["attempt"], a["state"]) for a in attempts] == [(1, "failed"), (2, "succeeded")]
    assert attempts[0]["error"].startswith("lost: its runner stopped reporting")


CATCHUP = """
jobs:
  - {name: c_skip, type: data_cleanup, interval: 2s, catchup: skip, overlap: allow, call: tests.jobs.calls:noop}
  - {name: c_latest, type: data_cleanup, interval: 2s, catchup: latest, overlap: allow, call: tests.jobs.calls:noop}
  - {name: c_all, type: data_cleanup, interval: 2s, catchup: all, overlap: allow, call: tests.jobs.calls:noop}
  - {name: c_window, type: data_cleanup, interval: 2s, catchup: all, catchup_window: 3s, overlap: allow,
     call: tests.jobs.calls:noop}
  # catchup all with the default overlap (skip) and a 0.9 s run: caught-up instants queue behind
  # each other (they used to be `skipped`, all but one)
  - {name: c_queue, type: data_cleanup, interval: 2s, catchup: all, run: ["sleep", "0.9"]}
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
    back = datetime.now(UTC)
    spawn.start("timer", instance="t2")
    await wait_service(bus, "timer", "t2")

    async def settled(job: str) -> list | None:
        rows = await runs(job)
        done = [r for r in rows if r["state"] in ("succeeded", "missed", "skipped")]
        return rows if len(rows) >= 8 and len(done) == len(rows) else None

    result = {job: await wait_for(lambda j=job: settled(j), 30, f"{job} runs") for job in
              ("c_skip", "c_latest", "c_all", "c_window", "c_queue")}
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
    # every instant up to the restart ran, the caught-up ones one after another; a tick that came due
    # while that backlog still ran may be skipped (overlap: skip applies to on-time ticks)
    assert {r["state"] for r in result["c_queue"] if r["scheduled_at"] < back} == {"succeeded"}, result["c_queue"]
    ran = await fetch(db_url, "SELECT started_at, finished_at FROM runs WHERE job = 'c_queue' AND state = 'succeeded'")
    starts, ends = sorted(r["started_at"] for r in ran), sorted(r["finished_at"] for r in ran)
    assert all(end <= nxt for end, nxt in zip(ends, starts[1:], strict=False)), "c_queue ran two at once"
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


async def test_broker_killed_and_restarted_work_resumes(system: System, bus: Bus, db_url: str,
                                                        nats_server: NatsProcess) -> None:
    """kill -9 of nats-server mid-stream: services reconnect, pull consumers resume fetching
    (nats.py #504), and no instant is lost or run twice (R1 store, sync_interval always)."""
    await apply_yaml(bus, """
jobs:
  - {name: steady, type: data_cleanup, schedule: "* * * * * *", overlap: allow, catchup: all,
     call: tests.jobs.calls:noop}
""")
    await system.start("history", "runner", "timer")

    async def succeeded() -> list:
        return await fetch(db_url, "SELECT scheduled_at FROM runs WHERE job = 'steady' AND state = 'succeeded' "
                                   "ORDER BY scheduled_at")

    await wait_for(lambda: _len_at_least(succeeded, 3), 15, "runs before the broker dies")
    nats_server.stop(signal.SIGKILL)
    await asyncio.sleep(3)  # the outage
    nats_server.start()
    restarted = datetime.now(UTC)

    async def after_restart() -> list:
        rows = await succeeded()
        return [r for r in rows if r["scheduled_at"] > restarted + timedelta(seconds=2)]

    await wait_for(after_restart, 40, "scheduled runs to resume after the broker restart")
    await set_paused(bus.js, "steady", True)
    await asyncio.sleep(2)

    async def all_done() -> list | None:
        rows = await fetch(db_url, "SELECT scheduled_at, state FROM runs WHERE job = 'steady' ORDER BY scheduled_at")
        return rows if all(r["state"] in ("succeeded", "missed") for r in rows) else None

    rows = await wait_for(all_done, 30, "every run to finish")
    instants = [r["scheduled_at"] for r in rows]
    assert len(instants) == len(set(instants))
    gaps = {b - a for a, b in zip(instants, instants[1:], strict=False)}
    holes = [(a, b) for a, b in zip(instants, instants[1:], strict=False) if b - a != timedelta(seconds=1)]
    assert gaps == {timedelta(seconds=1)}, f"instants lost across the broker restart: {holes}, restart {restarted}"


async def _len_at_least(fn, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await fn()) >= n


async def test_crash_between_publish_and_progress_republishes_same_ids(system: System, bus: Bus,
                                                                       db_url: str) -> None:
    """The timer died after publishing ticks up to `firing_through` but before recording them as
    fired: on restart those instants are republished under the same ids (and run once), even for
    a catchup=skip job; only instants after that count as missed."""
    await apply_yaml(bus, """
jobs:
  - {name: sk, type: data_cleanup, interval: 1s, catchup: skip, overlap: allow, call: tests.jobs.calls:noop}
""")
    now = datetime.now(UTC).replace(microsecond=0)
    fired, firing = now - timedelta(seconds=6), now - timedelta(seconds=3)
    # ... as if the dead timer had published the tick at fired+1s before it died
    spec = (await read_specs(bus.js))["sk"]
    kv = await bus.js.key_value(wire.KV_JOBS)
    await kv.put("sk", spec.model_copy(update={"defined_at": now - timedelta(hours=1)}).model_dump_json().encode())
    early = Trigger(run_id=tick_run_id("sk", fired + timedelta(seconds=1)), job="sk", kind="tick",
                    scheduled_at=fired + timedelta(seconds=1), created_at=fired)
    await bus.js.publish(wire.trigger_subject("normal", "sk"), early.to_bytes(),
                         headers={wire.HEADER_MSG_ID: early.run_id})
    timer_kv = await bus.js.key_value(wire.KV_TIMER)
    await timer_kv.put(wire.TIMER_WATERMARK_KEY, json.dumps(
        {"fired_through": fired.isoformat(), "firing_through": firing.isoformat()}).encode())
    await system.start("history", "runner", "timer")

    async def window() -> list | None:
        rows = await fetch(db_url, "SELECT run_id, scheduled_at, state FROM runs WHERE scheduled_at <= $1 "
                                   "ORDER BY scheduled_at", now)
        return rows if len(rows) == 6 and all(r["state"] in ("succeeded", "missed") for r in rows) else None

    rows = await wait_for(window, 20, "the instants of the crash window")
    states = {r["scheduled_at"]: r["state"] for r in rows}
    for k in (1, 2, 3):  # (fired, firing]: republished, run once
        assert states[fired + timedelta(seconds=k)] == "succeeded"
    for k in (4, 5, 6):  # (firing, restart]: catchup=skip
        assert states[fired + timedelta(seconds=k)] == "missed"
    assert len({r["run_id"] for r in rows}) == 6


async def test_stalled_runner_is_fenced_when_it_wakes(spawn: Spawner, bus: Bus, db_url: str, tmp_path: Path) -> None:
    """SIGSTOP a runner mid-job past ack_wait: another runner takes the run over and finishes it;
    when the stale one wakes and reports its older attempt, history keeps the newer one."""
    path = tmp_path / "ledger"
    runners = await _two_runners_and_a_ledger_job(spawn, bus, "stall", path, seconds=3, max_retries=3)
    run = await commands.run_now(bus, "stall", wait=None)
    rows = await wait_for(lambda: fetch(db_url, "SELECT runner FROM runs WHERE run_id = $1", run["run_id"]), 15,
                          "the run to start")
    stale = rows[0]["runner"]
    runners[stale].send_signal(signal.SIGSTOP)
    try:
        async def taken_over() -> list:
            return await fetch(db_url, "SELECT * FROM runs WHERE run_id = $1 AND state = 'succeeded'", run["run_id"])

        done = await wait_for(taken_over, 30, "the other runner to finish the run")
        assert done[0]["attempt"] == 2 and done[0]["runner"] != stale
    finally:
        runners[stale].send_signal(signal.SIGCONT)

    async def stale_reported() -> bool:
        # the stale attempt's job finishes and its runner publishes attempt 1's outcome
        return len([e for e in ledger.read(path) if e.kind == "end"]) == 2

    await wait_for(stale_reported, 20, "the stale runner's job to finish")

    async def stale_recorded() -> list | None:
        # history records the stale attempt's own outcome in its attempt row ...
        rows = await fetch(db_url, "SELECT attempt, state FROM run_attempts WHERE run_id = $1 ORDER BY attempt",
                           run["run_id"])
        return rows if rows and rows[0]["state"] == "succeeded" else None

    attempts = await wait_for(stale_recorded, 20, "the stale attempt's report in history")
    rows = await fetch(db_url, "SELECT * FROM runs WHERE run_id = $1", run["run_id"])
    assert len(rows) == 1
    # ... but the run itself stays at the newer attempt
    assert (rows[0]["state"], rows[0]["attempt"]) == ("succeeded", 2), "a stale attempt overwrote a newer one"
    assert [a["attempt"] for a in attempts][-1] == 2
