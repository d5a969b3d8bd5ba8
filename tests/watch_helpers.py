"""Helpers for the watcher's detection tests: the watcher running in this event loop against the
test's nats-server, watches written straight into KV, and a collector that counts every FileEvent
and rejection published (a core subscription sees re-publishes that JetStream would de-duplicate,
so "published once" is checked strictly)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import _environ, wait_for

from cropcron.services import run_services
from shared import wire
from shared.bus import Bus
from shared.catalog import write_watches
from shared.events import FileEvent, Rejected, decode
from shared.files import rel_bytes
from shared.kv_read import bucket_entries
from shared.settings import ServiceSettings
from shared.watch_config import WatchConfig

# Short settle/scan periods so the tests end in seconds; generous deadlines for a loaded machine.
FAST_WATCH = {"settle": 2.0, "rescan_interval": 3.0, "poll_interval": 0.5}
WATCHER_ENV = {"CROPCRON_WATCHER_ROOT_RETRY": "0.3", "CROPCRON_WATCHER_SETTLE_CHECK": "0.2"}


def watch(name: str, path: Path, **kw: Any) -> WatchConfig:
    return WatchConfig(name=name, path=str(path), **{**FAST_WATCH, **kw})


async def set_watches(bus: Bus, *watches: WatchConfig) -> None:
    await write_watches(bus, list(watches))


class Collector:
    """Every FileEvent and Rejected the bus carries, in arrival order."""

    def __init__(self) -> None:
        self.events: list[FileEvent] = []
        self.rejected: list[Rejected] = []
        self.received_at: dict[str, float] = {}
        self._subs: list[Any] = []

    async def start(self, bus: Bus) -> None:
        async def on_file(msg: Any) -> None:
            event = decode(FileEvent, msg.data)
            self.received_at.setdefault(event.id, time.time())
            self.events.append(event)

        async def on_rejected(msg: Any) -> None:
            self.rejected.append(decode(Rejected, msg.data))

        self._subs = [await bus.nc.subscribe(wire.FILE_SUBJECTS, cb=on_file),
                      await bus.nc.subscribe(wire.rejected_subject("watcher"), cb=on_rejected)]
        await bus.barrier()  # the subscriptions exist at the server before anything is published

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def rels(self) -> list[bytes]:
        return [rel_bytes(e) for e in self.events]

    def counts(self) -> Counter[bytes]:
        return Counter(self.rels())

    def reasons(self) -> list[str]:
        return [r.reason for r in self.rejected]

    async def wait_events(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {n} file events; got "
                                     f"{len(self.events)}: {sorted(self.counts())[:20]}")
            await asyncio.sleep(0.05)

    async def wait_rejected(self, check: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for reason in self.reasons():
                if check(reason):
                    return reason
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for a rejection: {what}; got {self.reasons()}")


class InProcessWatcher:
    """`cropcron serve watcher` in this event loop (so a test can monkeypatch its parts)."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # the URL travels by environment, as for `cropcron serve` (the field is read by its alias)
        with _environ({"NATS_URL": self.nats_url, "CROPCRON_INSTANCE": f"w-{os.getpid()}"}):
            settings = ServiceSettings()  # type: ignore[call-arg]
        assert settings.nats_url == self.nats_url
        ready = asyncio.Event()
        self.task = asyncio.create_task(run_services(["watcher"], settings, self.stop, ready.set))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait([waiter, self.task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        assert waiter in done, "watcher did not start within 30s"

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 20)


@pytest.fixture(name="watcher_env")
def watcher_env_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {**WATCHER_ENV, "CROPCRON_WATCHER_STATE_DIR": str(tmp_path / "watcher-state")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(name="collector")
async def collector_fixture(bus: Bus) -> AsyncIterator[Collector]:
    c = Collector()
    await c.start(bus)
    yield c
    await c.stop()


@pytest.fixture(name="watcher")
async def watcher_fixture(nats_server: Any, bus: Bus, watcher_env: dict[str, str]) -> AsyncIterator[InProcessWatcher]:
    w = InProcessWatcher(nats_server.url)
    await w.start()
    yield w
    await w.close()


async def status(bus: Bus, instance_prefix: str = "watcher.") -> dict[str, Any]:
    """The watcher's latest heartbeat (its status())."""
    for raw in (await bucket_entries(bus.js, wire.KV_SERVICES, instance_prefix)).values():
        return dict(json.loads(raw))
    return {}


async def watch_status(bus: Bus, name: str, check: Callable[[dict[str, Any]], bool], what: str,
                       timeout: float = 60) -> dict[str, Any]:
    """Until the watch's entry in the watcher's heartbeat satisfies `check`."""
    async def probe() -> dict[str, Any] | None:
        st = (await status(bus)).get("watches", {}).get(name)
        return st if st and check(st) else None

    result: dict[str, Any] = await wait_for(probe, timeout, what, every=0.2)
    return result


async def wait_live(bus: Bus, name: str) -> None:
    """The watch is live: its root found, its observer started and its first scan done."""
    await watch_status(bus, name, lambda s: s["root_available"] and s["scans"] >= 1, f"watch {name} live")


def write_file(path: Path, data: bytes) -> None:
    """A writer that creates, writes and closes (one close-after-write)."""
    with open(path, "wb") as f:
        f.write(data)
