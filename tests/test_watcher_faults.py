"""The watcher keeps running through what goes wrong on an edge server: inotify limits used up
(injected ENOSPC: a clear error naming the sysctl, polling instead), a watch root that does not
exist yet, disappears (an unmounted share) and comes back, watches edited live, and polling mode
for network mounts."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest
from conftest import wait_for
from watch_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    Collector,
    InProcessWatcher,
    collector_fixture,
    set_watches,
    status,
    watch,
    watch_status,
    watcher_env_fixture,
    watcher_fixture,
    write_file,
)

from services.watcher import inotify
from shared.bus import Bus


async def test_inotify_limit_gives_clear_error_and_falls_back_to_polling(
        nats_server: Any, bus: Bus, collector: Collector, watcher_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def exhausted(*args: object) -> NoReturn:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(inotify, "start_observer", exhausted)
    caplog.set_level(logging.ERROR, logger="cropcron.watcher")
    root = tmp_path / "uploads"
    root.mkdir()
    w = InProcessWatcher(nats_server.url)
    await w.start()
    try:
        await set_watches(bus, watch("uploads", root))
        reason = await collector.wait_rejected(lambda r: "fs.inotify.max_user_watches" in r, "inotify note")
        assert "polling every 0.5s" in reason
        st = await watch_status(bus, "uploads", lambda s: s["mode"] == "polling", "polling fallback")
        assert "max_user_watches" in st["fallback"]
        assert any("fs.inotify.max_user_watches" in r.getMessage() for r in caplog.records)
        # still watching: files are found by polling and announced once
        for i in range(10):
            write_file(root / f"img{i}.jpg", b"%d" % i)
        await collector.wait_events(10)
        await asyncio.sleep(3)
        assert len(collector.events) == 10 and len(collector.counts()) == 10
        assert not w.task.done()  # type: ignore[union-attr]
    finally:
        await w.close()


async def test_root_missing_then_created_then_unmounted_and_back(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    root, away = tmp_path / "share", tmp_path / "share-unmounted"
    await set_watches(bus, watch("share", root))
    st = await watch_status(bus, "share", lambda s: not s["root_available"], "root reported missing")
    assert "No such file" in st["root_error"]

    root.mkdir()  # the share appears: watched without a restart
    await watch_status(bus, "share", lambda s: s["root_available"], "root available")
    for i in range(5):
        write_file(root / f"a{i}.jpg", b"%d" % i)
    await collector.wait_events(5)

    os.rename(root, away)  # unmounted: the tree vanishes
    await watch_status(bus, "share", lambda s: not s["root_available"], "root reported gone")
    await asyncio.sleep(1)
    os.rename(away, root)  # mounted again: same files, same size and mtime
    write_file(root / "new.jpg", b"new")
    await collector.wait_events(6)
    await asyncio.sleep(4)  # a rescan later
    assert collector.counts() == {**{b"a%d.jpg" % i: 1 for i in range(5)}, b"new.jpg": 1}
    assert not watcher.task.done()  # type: ignore[union-attr]


async def test_watches_added_edited_and_removed_live(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    await set_watches(bus, watch("one", one))
    await watch_status(bus, "one", lambda s: s["root_available"], "watch one live")
    write_file(one / "a.jpg", b"a")
    await collector.wait_events(1)

    await set_watches(bus, watch("one", one, extensions=[".tif"]), watch("two", two))
    await watch_status(bus, "two", lambda s: s["root_available"], "watch two live")
    write_file(two / "b.jpg", b"b")
    write_file(one / "c.jpg", b"c")  # no longer wanted by the edited watch
    write_file(one / "d.tif", b"d")
    await collector.wait_events(3)

    await set_watches(bus, watch("two", two))  # "one" removed
    await wait_for(lambda: _gone(bus, "one"), 30, "watch one stopped")
    write_file(one / "e.tif", b"e")
    write_file(two / "f.jpg", b"f")
    await collector.wait_events(4)
    await asyncio.sleep(3)
    assert sorted((e.watch, e.rel_path) for e in collector.events) == [
        ("one", "a.jpg"), ("one", "d.tif"), ("two", "b.jpg"), ("two", "f.jpg")]


async def _gone(bus: Bus, name: str) -> bool:
    return name not in (await status(bus)).get("watches", {})


async def test_polling_mode_waits_for_size_and_mtime_to_settle(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    root = tmp_path / "nfs"
    root.mkdir()
    await set_watches(bus, watch("nfs", root, mode="polling", settle=2.0))
    await watch_status(bus, "nfs", lambda s: s["mode"] == "polling" and s["scans"] > 0, "polling")
    started = time.monotonic()
    with open(root / "growing.tif", "wb") as f:  # noqa: ASYNC230 - the slow writer under test
        for _ in range(8):  # grows for ~4 s, never pausing as long as `settle`
            f.write(b"x" * 1000)
            f.flush()
            await asyncio.sleep(0.5)
            assert not collector.events, "announced while still growing"
    await collector.wait_events(1)
    assert time.monotonic() - started >= 4 + 2 - 0.5  # after the last write, plus settle
    assert collector.events[0].size == 8000


async def test_inotify_thread_dying_later_is_noticed_and_replaced_by_polling(
        nats_server: Any, bus: Bus, collector: Collector, watcher_env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """watchdog's thread dies on an error it cannot report (e.g. ENOSPC adding a watch for a new
    folder): the watch notices, tries inotify again, and polls when that fails too."""
    real = inotify.start_observer
    started: list[Any] = []

    def first_works_then_exhausted(root: bytes, recursive: bool, handler: inotify.Bridge) -> Any:
        if started:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        started.append(real(root, recursive, handler))
        return started[0]

    monkeypatch.setattr(inotify, "start_observer", first_works_then_exhausted)
    root = tmp_path / "uploads"
    root.mkdir()
    w = InProcessWatcher(nats_server.url)
    await w.start()
    try:
        await set_watches(bus, watch("uploads", root))
        await watch_status(bus, "uploads", lambda s: s["root_available"] and s["mode"] == "events", "inotify")
        write_file(root / "before.jpg", b"1")
        await collector.wait_events(1)
        for emitter in list(started[0].emitters):
            emitter.stop()  # the thread ends, as it does on an exception inside watchdog
        st = await watch_status(bus, "uploads", lambda s: s["mode"] == "polling", "polling after the thread died")
        assert "max_user_watches" in st["fallback"]
        write_file(root / "after.jpg", b"2")
        await collector.wait_events(2)
        await asyncio.sleep(2)
        assert collector.counts() == {b"before.jpg": 1, b"after.jpg": 1}
    finally:
        await w.close()


async def test_events_lost_by_inotify_are_found_by_the_reconciliation_scan(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify drops events silently when its queue overflows (watchdog discards IN_Q_OVERFLOW):
    here every event is dropped, and the periodic scan still announces each file once."""
    root = tmp_path / "uploads"
    root.mkdir()
    await set_watches(bus, watch("uploads", root))
    await watch_status(bus, "uploads", lambda s: s["root_available"] and s["scans"] >= 1, "watch live")
    monkeypatch.setattr(inotify.Bridge, "on_any_event", lambda self, event: None)  # an overflowing queue
    for i in range(200):
        write_file(root / f"img{i:03d}.jpg", b"%d" % i)
    await collector.wait_events(200)
    await asyncio.sleep(4)  # another rescan: nothing twice
    assert len(collector.events) == 200 and len(collector.counts()) == 200
    st = await watch_status(bus, "uploads", lambda s: s["found_by_rescan"] == 200, "the scan's count")
    assert st["published"] == 200
