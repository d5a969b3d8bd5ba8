"""A saturated runner takes higher-priority triggers first; idle bands poll without a slot."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import ledger
from conftest import System, apply_yaml, fetch, in_process_runner, wait_for
from nats.aio.msg import Msg

from cropcron import commands
from services.runner.service import IDLE_POLL
from shared import wire
from shared.bus import Bus
from shared.events import RunEvent, RunState, decode


async def test_saturated_runner_prefers_higher_priority(system: System, bus: Bus, db_url: str,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    jobs = "".join(f"""
  - name: {name}
    type: batch_detection
    priority: {prio}
    overlap: allow
    run: ["{{python}}", tests/jobs/ledger.py, "{path}", "{{job}}", "{{attempt}}", "{sleep}", "0"]
""" for name, prio, sleep in (("blocker", 5, 3), ("hi", 9, 0.1), ("mid", 5, 0.1), ("lo", 2, 0.1)))
    await apply_yaml(bus, "jobs:" + jobs)
    await system.start("history", "runner", concurrency=1)
    await commands.run_now(bus, "blocker", wait=None)
    await wait_for(lambda: _started(path, 1), 15, "the blocker to occupy the only slot")
    for name in ("lo", "mid", "hi", "lo", "mid", "hi"):  # queued while saturated, low first
        await commands.run_now(bus, name, wait=None)
    await wait_for(lambda: _started(path, 7), 40, "every queued run")
    order = [e.run_id for e in ledger.read(path) if e.kind == "start"]  # the job name, see argv
    assert order == ["blocker", "hi", "hi", "mid", "mid", "lo", "lo"], order

    async def all_done() -> bool:
        rows = await fetch(db_url, "SELECT state FROM runs")
        return len(rows) == 7 and all(r["state"] == "succeeded" for r in rows)

    await wait_for(all_done, 20, "all runs recorded")


async def _started(path: Path, n: int) -> bool:
    return len([e for e in ledger.read(path) if e.kind == "start"]) >= n


async def test_idle_bands_poll_without_a_slot_and_what_they_bring_waits_its_turn(bus: Bus) -> None:
    """An idle band's poll holds no run slot while slots are free (held, it kept an instant's
    ticks or another band's triggers waiting up to a poll, bench/results.md). What such polls bring
    while the only slot is taken waits in its band's place: every run once, one at a time."""
    await apply_yaml(bus, "jobs:" + "".join(f"""
  - {{name: nap-{band}, type: data_cleanup, priority: {prio}, overlap: allow, max_retries: 0,
     call: tests.jobs.calls:nap}}""" for band, prio in (("hi", 9), ("mid", 5), ("lo", 2))))
    runs: dict[str, list[RunEvent]] = {}

    async def on_event(msg: Msg) -> None:
        ev = decode(RunEvent, msg.data)
        if ev.job.startswith("nap-") and ev.state is RunState.SUCCEEDED:
            runs.setdefault(ev.run_id, []).append(ev)

    sub = await bus.nc.subscribe(f"{wire.PREFIX}.run.*.succeeded", cb=on_event)
    try:
        async with in_process_runner(bus, concurrency=1) as runner:
            await asyncio.wait_for(runner.ready.wait(), 10)
            assert gc.get_freeze_count() > 0  # start-up's objects are out of the collector's way
            # every band polls (IDLE_POLL, 1 s at a time) and finds nothing; the one slot stays free
            # through more than a poll (the old fetch loop kept it in one band's poll after another)
            loop = asyncio.get_running_loop()
            idle_from = loop.time() + 0.3
            until = idle_from + IDLE_POLL + 0.5
            while loop.time() < until:
                if loop.time() >= idle_from:
                    assert runner.slots.free == 1 and not runner.slots.waiting(), "an idle poll holds the slot"
                await asyncio.sleep(0.02)
            for name in ("nap-lo", "nap-mid", "nap-hi") * 2:
                await commands.run_now(bus, name, wait=None)
            await wait_for(lambda: _succeeded(runs, 6), 30, "six runs")
    finally:
        await sub.unsubscribe()
    assert all(len(evs) == 1 and evs[0].attempt == 1 for evs in runs.values()), runs
    spans = sorted((ev.started_at, ev.finished_at) for evs in runs.values() for ev in evs
                   if ev.started_at and ev.finished_at)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:], strict=False)), "two ran at once"


async def _succeeded(runs: dict[str, list[RunEvent]], n: int) -> bool:
    return len(runs) >= n
