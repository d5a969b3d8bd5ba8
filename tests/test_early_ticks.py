"""Early ticks (CROPCRON_TICK_LEAD, issue 12 item 3): the timer publishes a tick ahead of its
instant, the runner hands it back to the broker until just before the instant and starts it at
the instant. Never before it, once, as attempt 1, whether its runner dies or the job is paused or
edited in the lead window."""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ledger
from conftest import Spawner, System, apply_yaml, fetch, wait_for, wait_service

from shared.bus import Bus
from shared.catalog import set_paused


def _instant(ahead: float) -> datetime:
    """A whole second at least `ahead` seconds from now."""
    return (datetime.now(UTC) + timedelta(seconds=ahead + 1)).replace(microsecond=0)


def _cron(at: datetime) -> str:
    """A six-field cron (UTC) that comes due at `at` and then not again for a day."""
    return f"{at.second} {at.minute} {at.hour} * * *"


def _ledger_job(name: str, at: datetime, path: Path) -> str:
    return (f'  - {{name: {name}, type: data_cleanup, schedule: "{_cron(at)}", max_retries: 0, overlap: allow, '
            f'run: ["{{python}}", tests/jobs/ledger.py, "{path}", "{{run_id}}", "{{attempt}}", "0", "0"]}}\n')


async def _held(bus: Bus, instance: str, count: int, timeout: float) -> None:
    await wait_service(bus, "runner", instance, timeout, check=lambda s: s.get("held", 0) >= count,
                       what=f"{count} early tick(s) handed back")


async def test_every_second_with_a_lead_starts_each_instant_once_never_early(system: System, bus: Bus,
                                                                             db_url: str) -> None:
    await apply_yaml(bus, """
jobs:
  - {name: each_second, type: data_cleanup, schedule: "* * * * * *", max_retries: 0, overlap: allow,
     call: tests.jobs.calls:noop}
""")
    await system.start("history", "runner", "timer", tick_lead=1.5, instance="lead")
    await _held(bus, "lead", 6, 20)
    await set_paused(bus.js, "each_second", True)

    async def runs() -> list:
        rows = await fetch(db_url, "SELECT scheduled_at, started_at, state, attempt FROM runs "
                                   "WHERE job = 'each_second' AND state = 'succeeded' ORDER BY scheduled_at")
        return rows if len(rows) >= 4 else []

    rows = await wait_for(runs, 20, "four runs of the every-second job")
    instants = [r["scheduled_at"] for r in rows]
    assert len(instants) == len(set(instants)), "an instant ran twice"
    assert all(b - a == timedelta(seconds=1) for a, b in zip(instants, instants[1:], strict=False)), instants
    assert all(r["attempt"] == 1 for r in rows), "the handed-back delivery was counted as an attempt"
    early = [(r["scheduled_at"], r["started_at"]) for r in rows if r["started_at"] < r["scheduled_at"]]
    assert not early, f"started before the instant: {early}"


async def test_runner_killed_while_holding_an_early_tick_it_runs_once_on_another(
        spawn: Spawner, bus: Bus, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    spawn.start("history", instance="h")
    r1 = spawn.start("runner", instance="r1")
    spawn.start("timer", instance="t", tick_lead=5)
    await wait_service(bus, "runner", "r1")
    await wait_service(bus, "timer", "t", check=lambda s: s.get("role") == "leader", what="leading")
    at = _instant(7)
    await apply_yaml(bus, "jobs:\n" + _ledger_job("held", at, path))
    await _held(bus, "r1", 1, 15)
    assert datetime.now(UTC) < at - timedelta(seconds=1), "the tick came too late to kill its runner before it"
    r1.send_signal(signal.SIGKILL)  # the broker has the tick now; nothing of it is left in r1
    r1.wait(5)
    spawn.start("runner", instance="r2")

    async def done() -> list:
        return await fetch(db_url, "SELECT * FROM runs WHERE job = 'held' AND state = 'succeeded'")

    rows = await wait_for(done, 30, "the held tick to run on the second runner")
    assert len(rows) == 1 and rows[0]["runner"] == "r2" and rows[0]["attempt"] == 1, dict(rows[0])
    assert rows[0]["scheduled_at"] == at
    assert at <= rows[0]["started_at"] < at + timedelta(seconds=3), "not at its instant (or after ack_wait)"
    starts = [e for e in ledger.read(path) if e.kind == "start"]
    assert [e.attempt for e in starts] == [1], "ran other than once"
    assert len(await fetch(db_url, "SELECT 1 FROM runs WHERE job = 'held'")) == 1


async def test_paused_or_edited_in_the_lead_window(system: System, bus: Bus, db_url: str, tmp_path: Path) -> None:
    """Paused after its tick went out: skipped at the instant. Edited: the tick already out runs
    with the job as it is at its instant; the new schedule applies from its next instant."""
    before, after = tmp_path / "before", tmp_path / "after"
    await system.start("history", "runner", "timer", tick_lead=4, instance="lw")
    at = _instant(6)
    later = at + timedelta(seconds=3)
    await apply_yaml(bus, "jobs:\n" + _ledger_job("to_pause", at, before) + _ledger_job("to_edit", at, before))
    await _held(bus, "lw", 2, 15)
    assert datetime.now(UTC) < at, "the ticks came too late for an edit in the lead window"
    await set_paused(bus.js, "to_pause", True)
    await apply_yaml(bus, "jobs:\n" + _ledger_job("to_pause", at, before)
                     + _ledger_job("to_edit", at, after).replace(_cron(at), f"{later.second} * * * * *"))

    async def settled() -> list:
        rows = await fetch(db_url, "SELECT job, scheduled_at, started_at, state, reason, updated_at FROM runs "
                                   "ORDER BY job, scheduled_at")
        return rows if len(rows) == 3 and all(r["state"] in ("succeeded", "skipped") for r in rows) else []

    rows = await wait_for(settled, 20, "the paused tick skipped and both edited-job runs")
    paused, edited_at, edited_later = rows[2], rows[0], rows[1]
    assert (paused["job"], paused["state"], paused["reason"]) == ("to_pause", "skipped", "job is paused")
    assert paused["scheduled_at"] == at and paused["updated_at"] >= at, "skipped before its instant"
    assert [(r["job"], r["scheduled_at"], r["state"]) for r in (edited_at, edited_later)] == [
        ("to_edit", at, "succeeded"), ("to_edit", later, "succeeded")]
    assert all(r["started_at"] >= r["scheduled_at"] for r in (edited_at, edited_later))
    assert not before.exists(), "the old command ran"
    assert len([e for e in ledger.read(after) if e.kind == "start"]) == 2


async def test_timer_killed_after_publishing_early_restarts_without_a_second_run(
        spawn: Spawner, bus: Bus, db_url: str, tmp_path: Path) -> None:
    """The progress record is ahead of the clock by the lead when the timer dies: the next timer
    neither publishes the instant again under another decision nor skips the instants after it."""
    path = tmp_path / "ledger"
    spawn.start("history", "runner", instance="hr")
    t1 = spawn.start("timer", instance="t1", tick_lead=4)
    await wait_service(bus, "runner", "hr")
    await wait_service(bus, "timer", "t1", check=lambda s: s.get("role") == "leader", what="leading")
    at = _instant(6)
    after = at + timedelta(seconds=2)
    job = _ledger_job("restarted", at, path).replace(_cron(at), f"{at.second},{after.second} * * * * *")
    await apply_yaml(bus, "jobs:\n" + job)
    await _held(bus, "hr", 1, 15)
    assert datetime.now(UTC) < at, "the tick came too late to kill the timer in the lead window"
    t1.send_signal(signal.SIGKILL)
    t1.wait(5)
    spawn.start("timer", instance="t2", tick_lead=4)

    async def both() -> list:
        rows = await fetch(db_url, "SELECT scheduled_at, attempt, state FROM runs WHERE job = 'restarted' "
                                   "ORDER BY scheduled_at")
        return rows if len(rows) >= 2 and all(r["state"] == "succeeded" for r in rows) else []

    rows = await wait_for(both, 30, "both instants run after the timer's restart")
    assert [(r["scheduled_at"], r["attempt"]) for r in rows[:2]] == [(at, 1), (after, 1)]
    starts = [e for e in ledger.read(path) if e.kind == "start"]
    instants = [r["scheduled_at"] for r in rows]
    assert len(starts) == len(rows) and len(instants) == len(set(instants)), "an instant ran twice"
