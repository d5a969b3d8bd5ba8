"""The broker restarts under running services (kill -9, then the same port and store): nothing
crashes, the lease holders keep or retake their leases, and runs resume."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta

from conftest import NatsProcess, Spawner, apply_yaml, fetch, wait_for, wait_service

from shared import wire
from shared.bus import Bus, connect
from shared.lease import Lease


async def test_a_lease_outlives_an_unreachable_broker_until_its_ttl_then_is_retaken(
        nats_server: NatsProcess, bus: Bus) -> None:
    kv = await bus.js.key_value(wire.KV_TIMER)
    lease = Lease(kv, "leader", "me", ttl=2.0, role="test")
    assert await lease.try_acquire()
    nats_server.stop(signal.SIGKILL)
    # errors while the broker is away are "not renewed yet", never an exception: still ours ...
    assert await lease.renew() is True
    started = time.monotonic()
    while await lease.renew():
        assert time.monotonic() - started < 10, "the lease never ran out"
        await asyncio.sleep(0.2)
    # ... until the time bought by the last write runs out (counted from before that write)
    assert 1.0 < time.monotonic() - started <= 2.5
    assert not lease.held
    assert await lease.try_acquire() is False  # still unreachable: not taken, no exception
    await lease.release()  # nothing to release; no exception either
    nats_server.start()  # same port, same store

    async def retaken() -> bool:
        return await lease.try_acquire()

    await wait_for(retaken, 20, "the lease to be taken again once the broker is back")


async def test_timer_runner_history_keep_going_across_a_broker_kill_and_restart(
        nats_server: NatsProcess, spawn: Spawner, db_url: str, fast_env: dict[str, str]) -> None:
    bus = await connect(nats_server.url, "test")
    from shared.topology import ensure_topology

    await ensure_topology(bus.js)
    await apply_yaml(bus, """
jobs:
  - {name: tick, type: data_cleanup, interval: 4s, catchup: all, catchup_window: 1h, overlap: allow,
     call: tests.jobs.calls:noop}
""")
    # a 2 s request timeout: the 6 s outage below outlasts it (the default 10 s would hide the
    # outage from a request that is simply held until the broker is back)
    procs = {name: spawn.start(name, instance=name[0], request_timeout=2) for name in ("history", "runner", "timer")}
    await wait_service(bus, "timer", "t", check=lambda b: b.get("role") == "leader", what="leading")
    await bus.close()

    async def rows() -> list:
        return await fetch(db_url, "SELECT scheduled_at, state FROM runs WHERE job = 'tick' ORDER BY scheduled_at")

    await wait_for(lambda: _at_least(rows, 2), 20, "two runs before the kill")
    # just after an instant: the timer is idle and renewing its lease (every leader_ttl/3 = 1 s)
    # when the broker vanishes, which is where a renewal error used to crash it
    nats_server.stop(signal.SIGKILL)
    await asyncio.sleep(6)  # the outage: renewals fail, and an instant falls due with no broker
    nats_server.start()
    restarted = time.monotonic()
    before = len(await rows())

    async def resumed() -> bool:
        return len([r for r in await rows() if r["state"] == "succeeded"]) >= before + 2

    await wait_for(resumed, 30, "runs to resume after the broker restart")
    assert time.monotonic() - restarted < 20
    for name, proc in procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode} across the broker restart"
    # every instant is on record once: run, or missed with a reason; none lost in the gap
    got = await rows()
    instants = [r["scheduled_at"] for r in got]
    assert len(set(instants)) == len(instants)
    gaps = {b - a for a, b in zip(instants, instants[1:], strict=False)}
    assert gaps == {timedelta(seconds=4)}, f"instants lost around the restart: {sorted(gaps)}"


async def _at_least(fn, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await fn()) >= n
