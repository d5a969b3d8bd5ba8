"""The timer fires nothing while the wall clock is obviously unset (RELIABILITY A9)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from conftest import System, apply_yaml, fetch

from services.timer.service import CLOCK_FLOOR, TimerService
from shared.bus import Bus
from shared.catalog import Catalog
from shared.settings import ServiceSettings


class BootClock:
    """Reads 1970 until `synced` (NTP stepped it), then the real time."""

    def __init__(self) -> None:
        self.synced = False

    def now(self) -> datetime:
        return datetime.now(UTC) if self.synced else datetime(1970, 1, 1, 0, 5, tzinfo=UTC)


async def test_unsynchronised_clock_fires_nothing_until_set(bus: Bus, system: System, db_url: str) -> None:
    await apply_yaml(bus, """
jobs:
  - {name: tick, type: data_cleanup, schedule: "* * * * * *", overlap: allow, call: tests.jobs.calls:noop}
""")
    await system.start("history", "runner")
    catalog = Catalog(bus.js)
    await catalog.start()
    clock = BootClock()
    timer = TimerService(bus, catalog, ServiceSettings(), clock=clock)  # type: ignore[call-arg]
    stop = asyncio.Event()
    task = asyncio.create_task(timer.run(stop))
    try:
        for _ in range(50):
            if timer.role == "clock_unsynchronized":
                break
            await asyncio.sleep(0.05)
        assert timer.role == "clock_unsynchronized"
        assert clock.now() < CLOCK_FLOOR
        await asyncio.sleep(1.5)  # the scenario: time passes with the clock unset
        assert timer.fired == 0 and await fetch(db_url, "SELECT 1 FROM runs") == []
        clock.synced = True  # NTP steps the clock
        for _ in range(100):
            if timer.fired:
                break
            await asyncio.sleep(0.05)
        assert timer.role == "leader" and timer.fired >= 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await catalog.stop()
