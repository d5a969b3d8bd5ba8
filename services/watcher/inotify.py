"""The bridge from watchdog's inotify thread to the asyncio loop.

Only the events that can mean "complete" or "look here" are asked for: close-after-write, moves
(with `generate_full_events`, a move in from outside the tree is a move with an empty source,
not a `created`), and creations, which only make a file a candidate for the settle rule (a file
is never reported on `created` alone: RELIABILITY §3, A8). The thread appends to a deque and wakes
the loop at most once per drain, so a burst of 10,000 files costs a handful of loop wake-ups and
never blocks the loop.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections import deque
from collections.abc import Callable
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver

# (what, path): "complete" a file closed after writing or moved to this name; "candidate" a file
# created (settle rule applies); "tree" a directory created or moved in (list it)
Kind = Literal["complete", "candidate", "tree", "tree-complete", "gone"]
FsEvent = tuple[Kind, bytes]

WANTED = [FileClosedEvent, FileMovedEvent, FileCreatedEvent, DirCreatedEvent, DirMovedEvent]

# the errors that mean the kernel's inotify limits are used up, and the sysctl to raise for each
LIMIT_ERRORS = {errno.ENOSPC: "fs.inotify.max_user_watches", errno.EMFILE: "fs.inotify.max_user_instances"}


class Bridge(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        self.events: deque[FsEvent] = deque()
        self._loop = loop
        self._wake = wake
        self._signalled = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        src, dest = _b(event.src_path), _b(event.dest_path)
        if isinstance(event, FileClosedEvent):
            self.events.append(("complete", src))
        elif isinstance(event, FileMovedEvent):
            if src:
                self.events.append(("gone", src))
            if dest:
                self.events.append(("complete", dest))
        elif isinstance(event, FileCreatedEvent):
            self.events.append(("candidate", src))
        elif isinstance(event, DirMovedEvent) and dest:
            self.events.append(("tree-complete", dest))  # a renamed folder's files are complete
        elif isinstance(event, DirCreatedEvent):
            self.events.append(("tree", src))  # files written before the new watch existed
        else:
            return
        if not self._signalled.is_set():
            self._signalled.set()
            self._loop.call_soon_threadsafe(self._wake.set)

    def drain(self) -> list[FsEvent]:
        # clear the flag before taking the events: an append after this line signals again
        self._signalled.clear()
        out = []
        while self.events:
            out.append(self.events.popleft())
        return out


def _b(path: bytes | str) -> bytes:
    return path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")


def start_observer(root: bytes, recursive: bool, handler: Bridge) -> BaseObserver:
    """Start an inotify observer on root. Raises OSError (ENOSPC, EMFILE) when the kernel limits
    are exhausted. Tests replace this function to inject those errors."""
    observer = InotifyObserver(generate_full_events=True)
    try:
        observer.schedule(handler, root, recursive=recursive, event_filter=WANTED)  # type: ignore[arg-type]
        observer.start()
    except BaseException:
        _stop_quietly(observer)
        raise
    return observer


def observer_alive(observer: BaseObserver) -> bool:
    """False once the emitter thread died (root deleted, or an error inside watchdog's thread,
    e.g. ENOSPC while adding a watch for a new subdirectory)."""
    return observer.is_alive() and all(e.is_alive() for e in observer.emitters)


def stop_observer(observer: BaseObserver) -> Callable[[], None]:
    """A blocking stop, to run in a thread."""
    return lambda: _stop_quietly(observer)


def _stop_quietly(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(5)
    except Exception:  # noqa: S110 - stopping a broken observer must not take the service down
        pass
