"""`cropcron up` restarts the servers it spawned (the embedded nats-server and Postgres).

A dead child is restarted on the same port and store after 0.5 s, backing off (doubling, at most
5 s apart) over at most MAX_ATTEMPTS tries; the services reconnect by themselves. Each restart is
logged and raised as a `component_restarted` alert once the bus takes it (which component, how
long it was down, how it died). When a restart cannot succeed (the port is taken, the server
keeps failing to start: a corrupt store, a full disk) or the child died more than
CROPCRON_RESTART_LIMIT times within an hour (a crash loop), `up` stops with the reason and exits
1, so that systemd or compose restarts it, rather than running on without a broker or database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from cropcron.child import ChildError, ChildProcess, EmbeddedError, describe_exit
from shared.events import Alert, utcnow

log = logging.getLogger("cropcron.supervise")

POLL = 0.25  # how often the children are checked (s)
FIRST_DELAY = 0.5  # before the first restart attempt (s)
MAX_DELAY = 5.0
MAX_ATTEMPTS = 5  # failed starts in a row before giving up
READY_TIMEOUT = 30.0  # Postgres may replay WAL after a crash
HOUR = 3600.0
HOLD_CHECK = 1.0  # while a restart is held (a full disk), how often to look again (s)
ALERT_KIND = "component_restarted"


class ComponentFailed(EmbeddedError):
    """A child that cannot be brought back: `up` exits 1 with this message."""


def restart_limit() -> int:
    raw = os.environ.get("CROPCRON_RESTART_LIMIT", "10")
    try:
        value = int(raw)
    except ValueError:
        raise EmbeddedError(f"CROPCRON_RESTART_LIMIT must be a whole number, got {raw!r}") from None
    if value < 1:
        raise EmbeddedError(f"CROPCRON_RESTART_LIMIT must be at least 1, got {raw!r}")
    return value


@dataclass
class Outage:
    component: str
    pid: int | None
    how: str  # "killed by SIGKILL", "exited with code 1"
    returncode: int
    log_line: str
    started: float = field(default_factory=time.monotonic)
    at: str = field(default_factory=lambda: utcnow().isoformat())

    def alert(self, down_for: float, new_pid: int | None) -> Alert:
        return Alert(
            id=f"{ALERT_KIND}.{self.component}.{self.at}", level="warning", kind=ALERT_KIND,
            summary=f"embedded {self.component} restarted after {down_for:.1f}s down ({self.how})",
            text=(f"cropcron up found its {self.component} (pid {self.pid}) {self.how} and restarted it "
                  f"(pid {new_pid}); it was down {down_for:.1f}s."
                  + (f" Its log said: {self.log_line}" if self.log_line else "")),
            source="up", at=utcnow(), fingerprint=f"{ALERT_KIND}:{self.component}",
            details={"component": self.component, "down_seconds": round(down_for, 3), "how": self.how,
                     "exit_code": self.returncode if self.returncode >= 0 else None,
                     "signal": -self.returncode if self.returncode < 0 else None,
                     "old_pid": self.pid, "new_pid": new_pid, "died_at": self.at})


class Supervisor:
    def __init__(self, children: Sequence[ChildProcess], raise_alert: Callable[[Alert], Coroutine[Any, Any, None]],
                 limit: int | None = None, first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY,
                 hold: Callable[[], str | None] | None = None) -> None:
        """`hold`: a reason not to restart yet (the disk is full: a start would fail, and failed
        starts in a row would end `up`), checked before each attempt; waiting for it costs no attempt."""
        self.hold = hold or (lambda: None)
        self.children = list(children)
        self.raise_alert = raise_alert
        self.limit = limit if limit is not None else restart_limit()
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.restarts: dict[str, list[float]] = {c.name: [] for c in self.children}
        self._alerts: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`; raises ComponentFailed when a child cannot be brought back."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL)
                for child in self.children:
                    if stop.is_set():
                        break
                    code = child.exited()
                    if code is not None:
                        await self._restart(child, code, stop)
        finally:
            await self._finish_alerts()

    async def _restart(self, child: ChildProcess, code: int, stop: asyncio.Event) -> None:
        how = f"was stopped by up: {child.recycled}" if child.recycled else describe_exit(code)
        child.recycled = None
        outage = Outage(child.name, child.pid, how, code, child.reason(telling_only=True))
        log.error("cropcron up: the embedded %s (pid %s) %s; restarting it.%s", child.name, outage.pid, outage.how,
                  f" Its log: {outage.log_line}" if outage.log_line else "")
        recent = [t for t in self.restarts[child.name] if outage.started - t < HOUR]
        self.restarts[child.name] = recent
        if len(recent) >= self.limit:
            raise ComponentFailed(
                f"the embedded {child.name} died {len(recent) + 1} times within an hour (now {outage.how}; "
                f"CROPCRON_RESTART_LIMIT={self.limit}); not restarting it again. {outage.log_line}".rstrip())
        delay = self.first_delay
        for attempt in range(1, MAX_ATTEMPTS + 1):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if not await self._held(child, stop):
                return
            try:
                child.spawn()  # here, on the main thread: the parent-death signal follows the spawning thread
                await child.wait_ready(READY_TIMEOUT)
                break
            except ChildError as exc:
                if exc.permanent or attempt == MAX_ATTEMPTS:
                    tries = "" if exc.permanent else f" after {attempt} attempts"
                    raise ComponentFailed(f"the embedded {child.name} could not be restarted{tries}: {exc}") from None
                delay = min(delay * 2, self.max_delay)
                log.warning("cropcron up: restarting the embedded %s failed (attempt %d of %d): %s; next in %.1fs",
                            child.name, attempt, MAX_ATTEMPTS, exc, delay)
        down_for = time.monotonic() - outage.started
        self.restarts[child.name].append(time.monotonic())
        log.warning("cropcron up: the embedded %s is back (pid %s) after %.1fs down", child.name, child.pid, down_for)
        task = asyncio.create_task(self.raise_alert(outage.alert(down_for, child.pid)))
        self._alerts.add(task)
        task.add_done_callback(self._alerts.discard)

    async def _held(self, child: ChildProcess, stop: asyncio.Event) -> bool:
        """Wait while `hold` gives a reason; False if stopping meanwhile."""
        said = None
        while not stop.is_set() and (why := self.hold()):
            if why != said:
                log.error("cropcron up: not restarting the embedded %s yet: %s", child.name, why)
                said = why
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOLD_CHECK)
        return not stop.is_set()

    async def _finish_alerts(self) -> None:
        """Give alerts still in flight a moment (the bus may be back by now), then drop them."""
        if self._alerts:
            _, late = await asyncio.wait(set(self._alerts), timeout=5)
            for task in late:
                task.cancel()
