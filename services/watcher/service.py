"""The watcher's detection side: one WatchLoop per folder watch in the catalog, started, stopped
and restarted live as `cropcron apply` adds, removes or edits watches (no restart needed).

Dispatch (FileEvents -> runs) is services/watcher/dispatch.py, run next to this under the same
service name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from services.watcher.settings import WatcherSettings
from services.watcher.state import StateStore
from services.watcher.watch import WatchLoop
from shared.bus import Bus
from shared.catalog import Catalog
from shared.settings import ServiceSettings
from shared.watch_config import WatchConfig

log = logging.getLogger("cropcron.watcher")


class WatcherService:
    def __init__(self, bus: Bus, catalog: Catalog, settings: ServiceSettings,
                 watcher_settings: WatcherSettings | None = None) -> None:
        self.bus = bus
        self.catalog = catalog
        self.settings = settings
        self.watcher_settings = watcher_settings or WatcherSettings()
        self.ready = asyncio.Event()
        self._loops: dict[str, tuple[WatchConfig, WatchLoop, asyncio.Event, asyncio.Task[None]]] = {}
        self._changed = asyncio.Event()
        self._store: StateStore | None = None

    def status(self) -> dict[str, Any]:
        return {"watches": {name: loop.status() for name, (_, loop, _, _) in self._loops.items()},
                "state_db": str(self._store.path) if self._store else None}

    async def run(self, stop: asyncio.Event) -> None:
        self._store = await asyncio.to_thread(StateStore, self.watcher_settings.state_dir)
        self.catalog.on_change(self._on_catalog)
        await self._sync()
        self.ready.set()
        try:
            while not stop.is_set():
                waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self._changed.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                self._changed.clear()
                if not stop.is_set():
                    await self._sync()
        finally:
            for name in list(self._loops):
                await self._stop(name)
            self._store.close()

    def _on_catalog(self, key: str) -> None:
        if key.startswith("watch:"):
            self._changed.set()

    async def _sync(self) -> None:
        """Make the running loops match catalog.watches. An edited watch is stopped before it is
        started again, so the new loop reads everything the old one recorded."""
        wanted = dict(self.catalog.watches)
        for name, (config, *_rest) in list(self._loops.items()):
            if wanted.get(name) != config:
                log.info("watch %s: %s", name, "removed" if name not in wanted else "changed; restarting it")
                await self._stop(name)
        for name, config in wanted.items():
            if name not in self._loops:
                self._start(config)

    def _start(self, config: WatchConfig) -> None:
        assert self._store is not None
        loop = WatchLoop(config, self.bus, self._store, self.watcher_settings)
        stop = asyncio.Event()
        task = asyncio.create_task(self._guarded(loop, stop), name=f"watch-{config.name}")
        self._loops[config.name] = (config, loop, stop, task)
        log.info("watch %s: watching %s (%s mode)", config.name, config.path, config.mode.value)

    async def _guarded(self, loop: WatchLoop, stop: asyncio.Event) -> None:
        """A watch that fails is logged and started again; the service and other watches go on."""
        while not stop.is_set():
            try:
                await loop.run(stop)
            except Exception as exc:
                log.error("watch %s: failed (%r); starting it again in %.0fs", loop.watch.name, exc,
                          self.watcher_settings.root_retry, exc_info=exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.watcher_settings.root_retry)

    async def _stop(self, name: str) -> None:
        entry = self._loops.pop(name, None)
        if entry is None:
            return
        _, _, stop, task = entry
        stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
