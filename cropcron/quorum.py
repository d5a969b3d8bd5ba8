"""Is JetStream storing anything? A process can be connected to a live nats-server whose cluster
has lost its quorum (more than half its nodes down): every publish then times out and nothing is
stored, though the connection looks fine. Every CROPCRON_JETSTREAM_CHECK seconds the process asks
for the triggers stream's info; no answer, or an answer without a leader, twice in a row, makes
/healthz not ready and logs one warning; the answer coming back logs its recovery. The services
need nothing from this to resume: their publishes, fetches and lease renewals retry until
JetStream answers (docs/scale-out.md §5)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from shared import wire
from shared.bus import Bus

log = logging.getLogger("cropcron.quorum")


class JetStreamState:
    """What the probe last found; read by /healthz (cropcron/endpoint.py)."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self.since = 0.0  # monotonic: when the problem began
        self.listeners: list[Callable[[str | None], None]] = []  # called when it changes between ok and not

    def update(self, problem: str | None) -> None:
        if problem is not None and self.problem is None:
            self.since = time.monotonic()
            log.warning("JetStream is not available (%s): nothing can be stored or delivered; a NATS cluster that "
                        "lost its quorum (more than half its nodes down) waits for enough nodes to come back, and "
                        "cropcron resumes by itself then", problem)
        elif problem is None and self.problem is not None:
            log.info("JetStream is available again after %.0fs", time.monotonic() - self.since)
        changed = (problem is None) != (self.problem is None)
        self.problem = problem
        if changed:
            for listener in self.listeners:
                listener(problem)

    def report(self) -> str | None:
        if self.problem is None:
            return None
        return f"JetStream unavailable for {time.monotonic() - self.since:.0f}s ({self.problem})"


async def probe(bus: Bus, timeout: float) -> str | None:
    """None when the triggers stream has a leader that answers; else what is wrong."""
    try:
        info = await asyncio.wait_for(bus.js.stream_info(wire.STREAM_TRIGGERS), timeout)
    except Exception as exc:  # a timeout, "no responders", a 503 while the cluster recovers
        return f"{wire.STREAM_TRIGGERS} does not answer: {type(exc).__name__}"
    if info.cluster is not None and info.cluster.name and not info.cluster.leader:
        # a node of a cluster that cannot elect a leader for the stream: no quorum of its replicas
        return f"{wire.STREAM_TRIGGERS} has no leader (no quorum of its replicas)"
    return None


async def watch_jetstream(bus: Bus, state: JetStreamState, interval: float, stop: asyncio.Event) -> None:
    """Never raises. Only while connected: a lost connection is reported as such. Two failed
    checks in a row make it unavailable (one slow answer from a busy broker is not an outage);
    while it is, it is checked every second, so that its return shows at once."""
    failed = 0
    while not stop.is_set():
        if bus.health.connected:
            problem = await probe(bus, min(interval, 5.0))
            failed = failed + 1 if problem else 0
            if problem is None or failed >= 2:
                state.update(problem)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(interval, 1.0) if failed else interval)
