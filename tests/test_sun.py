"""Sun-aware schedules on real servers (a nats-server, Postgres, the timer, runner and history):
a sun job on a 1 s grid runs while the sun is high, and a polar day without the event is recorded
as missed once, with the reason: on time, across a timer restart, and when caught up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from astral import Observer
from astral import sun as astral_sun
from browser import start_dashboard
from conftest import System, apply_yaml, fetch, wait_for

from cropcron.commands import job_rows
from services.timer.service import TimerService
from shared.bus import Bus
from shared.catalog import Catalog, set_paused
from shared.settings import ServiceSettings
from shared.sun_config import Location, SunRule
from shared.sun_schedule import SunSchedule, whole_second


def _high_sun_now() -> tuple[float, float]:
    """A place where the sun is high right now: on the equator, where it is about solar noon (the
    sun is then at least 66 degrees up, and above 30 for hours either side)."""
    now = datetime.now(UTC)
    hours = now.hour + now.minute / 60
    longitude = round(((12 - hours) * 15 + 180) % 360 - 180, 3)
    return 0.0, longitude


async def test_sun_grid_job_runs_every_second_while_the_sun_is_high(system: System, monkeypatch: pytest.MonkeyPatch,
                                                                   db_url: str) -> None:
    latitude, longitude = _high_sun_now()
    dash = await start_dashboard(system, monkeypatch, f"""
system:
  timezone: UTC
  location: {{latitude: {latitude}, longitude: {longitude}}}
jobs:
  - {{name: high_sun, type: image_processing, sun: {{every: 1s, elevation_above: 30}}, max_retries: 0,
     overlap: allow, call: tests.jobs.calls:noop}}
  - {{name: at_sunset, type: image_processing, sun: {{at: sunset, offset: "+30m"}}, call: tests.jobs.calls:noop}}
""")
    bus = dash.bus
    try:
        async def some_runs() -> list | None:
            found = await fetch(db_url, "SELECT scheduled_at, state FROM runs WHERE job = 'high_sun' "
                                        "AND state = 'succeeded' ORDER BY scheduled_at")
            return found if len(found) >= 5 else None

        done = await wait_for(some_runs, 30, "five runs of the sun job")
        await set_paused(bus.js, "high_sun", True)
        instants = [r["scheduled_at"] for r in done]
        observer = Observer(latitude=latitude, longitude=longitude)
        assert len(set(instants)) == len(instants)
        assert all(t.microsecond == 0 for t in instants)  # on the 1 s grid
        assert all(astral_sun.elevation(observer, t) > 30 for t in instants)
        assert not await fetch(db_url, "SELECT 1 FROM runs WHERE job = 'high_sun' AND state = 'missed'")

        # `cropcron jobs` and the dashboard say when, and show the next runs: astral's sunsets + 30 min
        sunsets = {whole_second(astral_sun.sunset(observer, datetime.now(UTC).date() + timedelta(days=k))
                                + timedelta(minutes=30)) for k in range(-1, 8)}
        rows = {r["name"]: r for r in await job_rows(bus, with_last=False)}
        assert rows["high_sun"]["schedule"] == "every 1s while the sun is above 30°"
        assert rows["at_sunset"]["schedule"] == "at sunset +30m"
        nxt = datetime.fromisoformat(rows["at_sunset"]["next_run"])
        assert nxt in sunsets and nxt > datetime.now(UTC)
        async with dash.authed() as c:
            job = (await c.get("/api/jobs/at_sunset")).json()
            assert job["schedule"] == "at sunset +30m" and job["next_run"] == rows["at_sunset"]["next_run"]
            upcoming = [datetime.fromisoformat(t) for t in job["upcoming"]]
            assert len(upcoming) == 5 and upcoming == sorted(upcoming) and set(upcoming) <= sunsets
            page = await c.get("/jobs/at_sunset")
            assert page.status_code == 200 and "at sunset +30m" in page.text and 'class="upcoming"' in page.text
    finally:
        await bus.close()


@dataclass
class ShiftedClock:
    """The wall clock moved to a polar day (the timer alone reads it; the other services do not
    care what day an instant names)."""

    offset: timedelta

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


SVALBARD = Location(latitude=78.2, longitude=15.6)
POLAR_CONFIG = """
system:
  timezone: Arctic/Longyearbyen
  location: {latitude: 78.2, longitude: 15.6}
jobs:
  - {name: dawn_flight, type: image_processing, sun: {at: sunrise, offset: "+30m"}, call: tests.jobs.calls:noop}
  - {name: bright_scan, type: image_processing, sun: {every: 1s, elevation_above: 10}, overlap: allow,
     call: tests.jobs.calls:noop}
"""


async def _run_timer(bus: Bus, catalog: Catalog, clock: ShiftedClock) -> tuple[TimerService, asyncio.Event,
                                                                               asyncio.Task[None]]:
    timer = TimerService(bus, catalog, ServiceSettings(), clock=clock)  # type: ignore[call-arg]
    stop = asyncio.Event()
    task = asyncio.create_task(timer.run(stop))
    await wait_for(lambda: _is(timer.role == "leader"), 20, "the timer to lead")
    return timer, stop, task


async def _is(value: bool) -> bool:
    return value


async def test_polar_day_without_the_event_is_missed_once_with_the_reason(system: System, bus: Bus,
                                                                          db_url: str) -> None:
    tz = ZoneInfo("Arctic/Longyearbyen")
    polar = date(datetime.now(UTC).year + 1, 12, 21)  # deep in the polar night, and ahead of any real clock
    sunrise = SunSchedule(SunRule(at="sunrise", offset="+30m"), SVALBARD, tz)
    marker = sunrise.local_noon(polar)
    bright = SunSchedule(SunRule(every=1, elevation_above=10), SVALBARD, tz)
    bright_marker = bright.next_after(marker - timedelta(hours=1))
    assert bright_marker == marker and bright.no_run_reason(marker)  # same solar noon
    await apply_yaml(bus, POLAR_CONFIG)
    await system.start("history")
    catalog = Catalog(bus.js)
    await catalog.start()
    clock = ShiftedClock(marker - timedelta(seconds=3) - datetime.now(UTC))
    try:
        timer, stop, task = await _run_timer(bus, catalog, clock)

        async def missed(expected: int) -> list | None:
            found = await fetch(db_url, "SELECT job, scheduled_at, reason FROM runs WHERE state = 'missed' "
                                        "ORDER BY job, scheduled_at")
            return found if len(found) >= expected else None

        rows = await wait_for(lambda: missed(2), 20, "the polar day's missed records")
        assert {r["job"]: r["scheduled_at"] for r in rows} == {"bright_scan": marker, "dawn_flight": marker}
        reasons = {r["job"]: r["reason"] for r in rows}
        assert reasons["dawn_flight"] == (f"no sunrise at 78.2N 15.6E on {polar.isoformat()}: the sun stays below "
                                          "the horizon all day")
        assert reasons["bright_scan"].startswith(f"the sun never gets above 10° at 78.2N 15.6E on "
                                                 f"{polar.isoformat()} (highest -")
        # once, not per tick of the 1 s grid: the timer keeps going and records nothing more today
        await asyncio.sleep(3)  # the scenario: seconds of the polar day pass
        assert len(await fetch(db_url, "SELECT 1 FROM runs")) == 2
        assert timer.fired == 0

        # a restart replays nothing twice; then two polar days pass while no timer runs: each is
        # caught up as one missed record with its own reason, not "timer was not running"
        stop.set()
        await asyncio.wait_for(task, 10)
        clock.offset += timedelta(days=2, minutes=2)  # solar noon comes ~30 s later each day
        timer, stop, task = await _run_timer(bus, catalog, clock)
        rows = await wait_for(lambda: missed(6), 20, "two more polar days, caught up")
        await asyncio.sleep(1)  # anything recorded twice would arrive by now
        rows = await fetch(db_url, "SELECT job, scheduled_at, reason FROM runs ORDER BY job, scheduled_at")
        assert len(rows) == 6, rows
        for job in ("bright_scan", "dawn_flight"):
            days = [r["scheduled_at"].astimezone(tz).date() for r in rows if r["job"] == job]
            assert days == [polar, polar + timedelta(days=1), polar + timedelta(days=2)]
            assert all(str(r["reason"]).startswith(("no sunrise", "the sun never")) for r in rows if r["job"] == job)
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        await catalog.stop()
