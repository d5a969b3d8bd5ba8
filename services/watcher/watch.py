"""One folder watch: find its root, follow it with inotify (or poll it), scan it at start-up and
periodically, and hand complete files to the Announcer.

A root that is missing (not created yet, share not mounted) is reported and looked for again every
`root_retry` seconds; when it disappears, or is replaced (another device or inode: a remount), the
observer stops, nothing half-seen is announced, and watching starts again when it is back. Nothing
is ever "deleted": files that come back with the same size and mtime are not new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from typing import Any

from watchdog.observers.api import BaseObserver

from services.watcher import inotify
from services.watcher.announce import Announcer
from services.watcher.files import Entry, NameFilter, list_tree, rel_of
from services.watcher.settings import WatcherSettings
from services.watcher.state import StateStore
from services.watcher.tracker import Tracker
from shared import wire
from shared.bus import Bus, publish_until_acked
from shared.events import Rejected, utcnow
from shared.names import subject_key
from shared.watch_config import WatchConfig, WatchMode

log = logging.getLogger("cropcron.watcher")

ROOT_STAT_TIMEOUT = 10.0  # a root whose stat takes longer is reported as not responding


class WatchLoop:
    def __init__(self, watch: WatchConfig, bus: Bus, store: StateStore, settings: WatcherSettings) -> None:
        self.watch = watch
        self.bus = bus
        self.store = store
        self.settings = settings
        self.root = os.fsencode(watch.path)
        self.names = NameFilter(watch)
        self.fallback: str | None = None  # why inotify could not be used (polling instead)
        self.root_error: str | None = None
        self._outage = False  # the current outage was logged (once, not every retry)
        self.last_scan_s: float | None = None
        self.scans = 0
        self.found_by_rescan = 0  # events mode: complete files only a reconciliation scan found
        self.wake = asyncio.Event()
        self.tracker: Tracker | None = None
        self.announcer: Announcer | None = None
        self._observer: BaseObserver | None = None
        self._bridge: inotify.Bridge | None = None
        self._identity: tuple[int, int] | None = None
        self._probe: asyncio.Future[tuple[tuple[int, int] | None, str | None]] | None = None

    @property
    def polling(self) -> bool:
        return self.watch.mode is WatchMode.POLLING or self.fallback is not None

    def status(self) -> dict[str, Any]:
        t, c = self.tracker, self.announcer.counters if self.announcer else None
        return {"mode": "polling" if self.polling else "events", "fallback": self.fallback,
                "root": self.watch.path, "root_available": self.root_error is None, "root_error": self.root_error,
                "files_known": len(t.known) if t else 0, "pending": len(t.pending) if t else 0,
                "published": c.published if c else 0, "rejected": c.rejected if c else 0,
                "identical_rewrites": c.identical_rewrites if c else 0, "vanished": c.vanished if c else 0,
                "scans": self.scans, "last_scan_s": self.last_scan_s, "found_by_rescan": self.found_by_rescan}

    async def run(self, stop: asyncio.Event) -> None:
        known, rejected = await asyncio.to_thread(self.store.load, self.watch.name)
        self.tracker = Tracker(self.watch.settle, self.watch.mode is WatchMode.EVENTS, known, rejected)
        self.announcer = Announcer(self.watch, self.bus, self.store, self.tracker)
        try:
            while not stop.is_set():
                if await self._root_identity() is None:
                    await _sleep(stop, self.settings.root_retry)
                    continue
                await self._follow(stop)
        finally:
            await self._stop_observer()

    async def _root_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the root, or None (reported once per outage) if it is unusable.
        The stat runs in a thread with a deadline: a hung network mount must not freeze the loop
        (and a stat still hanging from an earlier check is not joined by another one)."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(asyncio.to_thread(_stat_root, self.root))
        try:
            identity, error = await asyncio.wait_for(asyncio.shield(self._probe), ROOT_STAT_TIMEOUT)
        except TimeoutError:
            identity, error = None, f"not responding (stat took over {ROOT_STAT_TIMEOUT:.0f}s)"
        if error is not None:
            if not self._outage:
                self._outage = True
                log.error("watch %s: root %s unavailable (%s; not created yet, or a share not mounted?); "
                          "looking again every %.0fs", self.watch.name, self.watch.path, error,
                          self.settings.root_retry)
            self.root_error = error
            return None
        if self._outage:
            self._outage = False
            log.info("watch %s: root %s is available again", self.watch.name, self.watch.path)
        self.root_error = None
        return identity

    async def _follow(self, stop: asyncio.Event) -> None:
        """Watch the root until it goes away or is replaced, or until stop."""
        assert self.tracker is not None
        self._identity = await self._root_identity()
        await self._start_observer()
        await self._scan()
        interval = self.watch.poll_interval if self.polling else self.watch.rescan_interval
        next_scan = time.monotonic() + interval
        tick = max(0.05, min(self.settings.settle_check, self.watch.settle / 4, self.watch.poll_interval))
        next_check = time.monotonic() + tick
        while not stop.is_set():
            await self._announce_ready(stop)
            if not self.tracker.ready:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.0, min(next_scan, next_check) - time.monotonic()))
            self.wake.clear()
            await self._take_events()
            now = time.monotonic()
            if now >= next_check:
                next_check = now + tick
                if await self._root_identity() != self._identity:
                    log.warning("watch %s: root %s went away or was replaced; re-watching when it is back",
                                self.watch.name, self.watch.path)
                    self.tracker.drop_all_waiting()
                    await self._stop_observer()
                    return
                await self._check_observer()
                await self._recheck_pending()
            if now >= next_scan:
                await self._scan()
                interval = self.watch.poll_interval if self.polling else self.watch.rescan_interval
                next_scan = time.monotonic() + interval

    async def _announce_ready(self, stop: asyncio.Event) -> None:
        assert self.tracker is not None and self.announcer is not None
        rels = self.tracker.take_ready(self.settings.publish_batch)
        if rels:
            await self.announcer.announce(rels, stop)
            self.wake.set()  # more may be waiting: look again without sleeping

    # -- inotify -------------------------------------------------------------------------
    async def _start_observer(self) -> None:
        if self.polling:
            return
        self._bridge = inotify.Bridge(asyncio.get_running_loop(), self.wake)
        try:
            self._observer = await asyncio.to_thread(
                inotify.start_observer, self.root, self.watch.recursive, self._bridge)
        except OSError as exc:
            self._bridge = None
            if exc.errno not in inotify.LIMIT_ERRORS:
                raise
            await self._fall_back(exc)

    async def _fall_back(self, exc: OSError) -> None:
        sysctl = inotify.LIMIT_ERRORS[exc.errno or 0]
        self.fallback = (f"inotify unavailable ({exc.strerror or exc}): raise the sysctl {sysctl} "
                         f"(e.g. `sysctl -w {sysctl}=524288`); polling every {self.watch.poll_interval:g}s instead")
        log.error("watch %s: %s", self.watch.name, self.fallback)
        note = Rejected(source="watcher", subject=wire.file_subject(self.watch.name),
                        reason=f"watch {self.watch.name}: {self.fallback}", at=utcnow())
        msg_id = f"watcher.fallback.{subject_key(self.watch.name)}.{int(time.time())}"
        await publish_until_acked(self.bus, [(wire.rejected_subject("watcher"), note.to_bytes(), msg_id)],
                                  f"watch {self.watch.name} fallback note", asyncio.Event())

    async def _check_observer(self) -> None:
        """watchdog's thread dies on an error (e.g. ENOSPC adding a watch for a new folder):
        start it again, which either works or falls back to polling."""
        if self._observer is not None and not inotify.observer_alive(self._observer):
            log.warning("watch %s: the inotify observer stopped; restarting it", self.watch.name)
            await self._stop_observer()
            await self._start_observer()
            await self._scan()

    async def _stop_observer(self) -> None:
        observer, self._observer, self._bridge = self._observer, None, None
        if observer is not None:
            await asyncio.to_thread(inotify.stop_observer(observer))

    async def _take_events(self) -> None:
        if self._bridge is None:
            return
        assert self.tracker is not None
        now = time.monotonic()
        for kind, path in self._bridge.drain():
            rel = rel_of(self.root, path)
            if rel is None:
                continue
            if kind in ("tree", "tree-complete"):
                entries = await asyncio.to_thread(list_tree, self.root, self.names, rel)
                for entry in entries:
                    if kind == "tree-complete":
                        self.tracker.complete(entry.rel)
                    else:
                        self.tracker.seen(entry, now, time.time_ns())
            elif not self.names.wants(rel):
                continue
            elif kind == "complete":
                self.tracker.complete(rel)
            elif kind == "candidate":
                self.tracker.candidate(rel, now)
            else:
                self.tracker.forget(rel)

    # -- scans -----------------------------------------------------------------------------
    async def _scan(self) -> None:
        """List the whole tree: files the event stream missed (overflow, downtime, polling)."""
        assert self.tracker is not None
        started = time.monotonic()
        tracker = self.tracker
        try:
            entries = await asyncio.to_thread(
                lambda: [e for e in list_tree(self.root, self.names)
                         if not tracker.current(e.rel, (e.size, e.mtime_ns))])
        except OSError as exc:
            log.warning("watch %s: scan of %s failed: %s", self.watch.name, self.watch.path, exc)
            return
        now, wall = time.monotonic(), time.time_ns()
        before = len(tracker.ready)
        for entry in entries:
            tracker.seen(entry, now, wall)
        found = len(tracker.ready) - before
        if found and self.scans and not self.polling:
            # complete files no event announced: inotify's queue overflowed (silently), a writer
            # that never closes visibly, or a folder's files written before its watch existed
            self.found_by_rescan += found
            log.warning("watch %s: the reconciliation scan found %d complete files the event stream did "
                        "not report (inotify overflow?)", self.watch.name, found)
        self.scans += 1
        self.last_scan_s = round(time.monotonic() - started, 3)

    async def _recheck_pending(self) -> None:
        assert self.tracker is not None
        if not self.tracker.pending:
            return
        rels = list(self.tracker.pending)
        entries = await asyncio.to_thread(_lstat_all, self.root, rels)
        now, wall = time.monotonic(), time.time_ns()
        for rel, entry in zip(rels, entries, strict=True):
            if entry is None:
                self.tracker.forget(rel)
            else:
                self.tracker.seen(entry, now, wall)


def _stat_root(root: bytes) -> tuple[tuple[int, int] | None, str | None]:
    try:
        info = os.stat(root)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    if not stat.S_ISDIR(info.st_mode):
        return None, "is not a directory"
    return (info.st_dev, info.st_ino), None


def _lstat_all(root: bytes, rels: list[bytes]) -> list[Entry | None]:
    out: list[Entry | None] = []
    for rel in rels:
        try:
            info = os.lstat(os.path.join(root, rel))
        except OSError:
            out.append(None)
            continue
        if stat.S_ISDIR(info.st_mode):
            out.append(None)
            continue
        out.append(Entry(rel, stat.S_ISREG(info.st_mode), info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    return out


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
