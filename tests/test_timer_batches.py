"""A timer that finds itself behind publishes a batch per instant (or per few instants), not one
batch of everything due: at 10,000 jobs a timer 20 s behind would hold 200,000 ticks in memory at
once, and not record progress or renew its lease until they were all stored (bench/results.md)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from conftest import apply_yaml, wait_for

from services.timer import service as timer_service
from services.timer.service import TimerService
from shared import wire
from shared.bus import Bus
from shared.catalog import Catalog
from shared.events import RunEvent, Trigger, decode
from shared.settings import ServiceSettings


class JumpClock:
    """The real time, plus an offset the test moves forward (a stalled or suspended process)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def test_a_timer_behind_catches_up_in_batches_cut_between_instants(
        bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timer_service, "BATCH_LIMIT", 4, raising=False)  # raising: the test can fail on the old code
    await apply_yaml(bus, """
jobs:
  - {name: batch-a, type: data_cleanup, schedule: "* * * * * *", overlap: allow, call: tests.jobs.calls:noop}
  - {name: batch-b, type: data_cleanup, schedule: "* * * * * *", overlap: allow, call: tests.jobs.calls:noop}
  - {name: batch-c, type: data_cleanup, schedule: "* * * * * *", overlap: allow, call: tests.jobs.calls:noop}
""")
    ticks: list[tuple[str, datetime]] = []

    async def on_tick(msg: object) -> None:
        tr = decode(Trigger, msg.data)  # type: ignore[attr-defined]
        if tr.job.startswith("batch-") and tr.scheduled_at is not None:
            ticks.append((tr.job, tr.scheduled_at))

    sub = await bus.nc.subscribe(f"{wire.PREFIX}.trigger.*.*", cb=on_tick)
    catalog = Catalog(bus.js)
    await catalog.start()
    clock = JumpClock()
    timer = TimerService(bus, catalog, ServiceSettings(), clock=clock)  # type: ignore[call-arg]
    batches: list[tuple[list[datetime], datetime]] = []  # each batch's instants, the progress after it
    publish = timer._publish

    async def recording(triggers: list[Trigger], missed: list[RunEvent], now: datetime, mode: str = "fire") -> None:
        await publish(triggers, missed, now, mode)
        assert timer.progress is not None
        batches.append(([t.scheduled_at for t in triggers if t.scheduled_at], timer.progress.fired_through))

    monkeypatch.setattr(timer, "_publish", recording)
    stop = asyncio.Event()
    task = asyncio.create_task(timer.run(stop))
    try:
        await wait_for(lambda: _ready(timer, batches), 10, "the timer leading and firing on time")
        jumped_from = clock.now()
        clock.offset = timedelta(seconds=8)  # the process was stopped for 8 s (under STALL_SECONDS)
        timer.wake.set()
        behind = _whole_seconds(jumped_from, clock.now())
        await wait_for(lambda: _published(ticks, behind), 15, "every instant of the 8 s published")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await sub.unsubscribe()
        await catalog.stop()

    catching_up = [(instants, progress) for instants, progress in batches
                   if instants and min(instants) > jumped_from and min(instants) <= behind[-1]]
    assert len(catching_up) >= 4, f"8 s behind came out in {len(catching_up)} batch(es): {batches}"
    for i, (instants, progress) in enumerate(catching_up):
        # whole instants only (3 jobs each), at most one instant past the limit, and the progress
        # record at the batch's last instant: not at the clock, whose instants are still to go
        # out (a crash now must republish them); the last batch is the uncut one, up to the clock
        counts = {t: instants.count(t) for t in instants}
        assert set(counts.values()) == {3}, f"an instant cut in two: {sorted(counts.items())}"
        assert len(instants) <= 4 + 2
        if i < len(catching_up) - 1:
            assert progress == max(instants)
    seen = [t for t in ticks if t[1] in behind]
    assert len(seen) == len(set(seen)) == 3 * len(behind), "an instant published twice or not at all"


async def _ready(timer: TimerService, batches: list[tuple[list[datetime], datetime]]) -> bool:
    return timer.role == "leader" and any(instants for instants, _ in batches)


def _whole_seconds(after: datetime, until: datetime) -> list[datetime]:
    first = after.replace(microsecond=0) + timedelta(seconds=1)
    return [first + timedelta(seconds=i) for i in range(int((until - first).total_seconds()) + 1)]


async def _published(ticks: list[tuple[str, datetime]], instants: list[datetime]) -> bool:
    got = set(ticks)
    return all((job, t) in got for t in instants for job in ("batch-a", "batch-b", "batch-c"))
