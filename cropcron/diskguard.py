"""`cropcron up` and a full disk: the broker's store and Postgres live in the data dir, usually on
the same disk as the drone uploads that fill it.

What a full disk does (observed on nats-server 2.15.1 with its store on a small tmpfs): the stream
that hit ENOSPC logs "critical write error" and stays broken even after space is freed, answering
no publish at all until the server restarts; the acknowledged messages survive that restart.
Postgres refuses writes (and PANICs if it cannot write WAL, after which it cannot start until
there is room).

So the guard, every CHECK seconds:
- compares the data dir's free space with the reserve (CROPCRON_DISK_RESERVE, default 256M): below
  it, one clear ERROR line and a `disk_full` alert (through the bus, else straight to the
  channels, since the bus may be what is failing); above it again, a resolution;
- reads the new lines of the broker's and Postgres's logs for "no space left on device": a broker
  that had a write failure is restarted once there is room again (the supervisor raises
  `component_restarted`), so work resumes by itself;
- while the disk is below the reserve, the supervisor holds restarts (`hold`) instead of burning
  its attempts on starts that cannot succeed and ending `up` in a crash loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from cropcron.child import ChildProcess, EmbeddedError
from shared.events import Alert, utcnow

log = logging.getLogger("cropcron.disk")

CHECK = 1.0  # seconds between looks
DEFAULT_RESERVE = "256M"
KIND = "disk_full"
BROKER = "nats-server"  # EmbeddedNats.name
FULL_MARKERS = ("no space left on device", "disk quota exceeded")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'256M', '1G', '512K', '1048576' -> bytes (binary units); EmbeddedError naming the text."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise EmbeddedError(f"CROPCRON_DISK_RESERVE must be a size like 256M or 1G, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def disk_reserve() -> int:
    return parse_size(os.environ.get("CROPCRON_DISK_RESERVE", DEFAULT_RESERVE))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class LogTail:
    """The lines a child appended to its log since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.offset = path.stat().st_size
        except OSError:
            self.offset = 0

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # rotated or truncated
                    self.offset = 0
                f.seek(self.offset)
                data = f.read(1 << 20)
                self.offset += len(data)
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()


class DiskGuard:
    def __init__(self, data_dir: Path, children: Sequence[ChildProcess], reserve: int,
                 raise_alert: Callable[[Alert], Coroutine[Any, Any, None]]) -> None:
        self.data_dir = data_dir
        self.children = list(children)
        self.reserve = reserve
        self.raise_alert = raise_alert
        self.tails = {child.name: LogTail(child.log_path) for child in self.children}
        # the broker is the one to restart after a write failure (Postgres recovers or exits by itself)
        self.broker = next((c for c in self.children if c.name == BROKER), None)
        self.low: str | None = None  # why the disk counts as full now
        self.failed: dict[str, str] = {}  # child -> the write failure it logged, not yet healed
        self._alerts: set[asyncio.Task[None]] = set()

    def hold(self) -> str | None:
        """For the supervisor: a reason not to restart anything yet."""
        return self.low

    def free(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self.check()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), CHECK)
        finally:
            if self._alerts:
                _, late = await asyncio.wait(set(self._alerts), timeout=5)
                for task in late:
                    task.cancel()

    def check(self) -> None:
        for child in self.children:
            for line in self.tails[child.name].new_lines():
                if any(m in line.lower() for m in FULL_MARKERS) and child.name not in self.failed:
                    self.failed[child.name] = failure = line.strip()[:300]
                    log.error("cropcron up: the embedded %s could not write to the disk: %s", child.name, failure)
                    if self.low is None:  # (below the reserve it was said already)
                        self._alert(f"the embedded {child.name} could not write to the disk: {failure}")
        free = self.free()
        if free < self.reserve:
            why = (f"the disk holding {self.data_dir} has {_human(free)} free, below the reserve of "
                   f"{_human(self.reserve)} (CROPCRON_DISK_RESERVE)")
            if self.low is None:
                log.error("cropcron up: %s: new runs and their records may fail until space is freed", why)
                self._alert(why)
            self.low = why
            return
        if self.low is not None:
            log.warning("cropcron up: the disk holding %s has room again (%s free)", self.data_dir, _human(free))
            self.low = None
            self._alert(f"the disk holding {self.data_dir} has room again ({_human(free)} free)", resolved=True)
        for child in self.children:
            failure = self.failed.pop(child.name, "")
            if failure and child is self.broker and child.exited() is None:
                # a stream that hit ENOSPC stays broken until the server restarts; the store keeps
                # every acknowledged message across the restart (the supervisor raises the restart)
                log.warning("cropcron up: restarting the embedded %s to recover its store from the write failure",
                            child.name)
                child.recycle(f"its store had a write failure ({failure}), and the disk has room again")

    def _alert(self, summary: str, resolved: bool = False) -> None:
        alert = Alert(id=f"{KIND}.{utcnow().timestamp():.3f}", level="info" if resolved else "error", kind=KIND,
                      summary=summary, source="up", at=utcnow(), resolved=resolved, fingerprint=f"{KIND}:up",
                      details={"data_dir": str(self.data_dir), "free_bytes": self.free(),
                               "reserve_bytes": self.reserve})
        task = asyncio.create_task(self.raise_alert(alert))
        self._alerts.add(task)
        task.add_done_callback(self._alerts.discard)
