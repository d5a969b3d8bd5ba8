"""Per-watch bookkeeping, with no I/O: which file versions were announced (or rejected), which
files are waiting for the settle rule, and which are judged complete and wait to be examined.

The settle rule: a file counts as complete once its size and mtime were seen unchanged for
`settle` seconds. On local disks (`trust_ctime`, events mode) a scan may also judge it from the
file's own timestamps: if neither mtime nor ctime moved for `settle` seconds, nothing wrote to it
(ctime cannot be set back by a writer, unlike mtime). Network mounts (polling) only trust two
observations `settle` apart, because the server's clock may differ from ours.
"""

from __future__ import annotations

from services.watcher.files import Entry
from services.watcher.state import Known

Version = tuple[int, int]  # (size, mtime_ns)


class Tracker:
    def __init__(self, settle: float, trust_ctime: bool, known: dict[bytes, Known],
                 rejected: dict[bytes, Version]) -> None:
        self.settle = settle
        self.trust_ctime = trust_ctime
        self.known = known
        self.rejected = rejected
        self.pending: dict[bytes, tuple[int, int, float]] = {}  # rel -> size, mtime_ns, first seen so
        self.ready: dict[bytes, None] = {}  # judged complete, in arrival order, to be examined

    def current(self, rel: bytes, version: Version) -> bool:
        """This exact version was already announced or rejected: nothing to do."""
        k = self.known.get(rel)
        return (k is not None and (k.size, k.mtime_ns) == version) or self.rejected.get(rel) == version

    def complete(self, rel: bytes) -> None:
        """Closed after writing, or moved to this name: complete now."""
        self.pending.pop(rel, None)
        self.ready[rel] = None

    def candidate(self, rel: bytes, now: float) -> None:
        """Created: complete only once the settle rule says so (or a close/move arrives first)."""
        if rel not in self.pending and rel not in self.ready:
            self.pending[rel] = (-1, -1, now)

    def forget(self, rel: bytes) -> None:
        """Moved away or vanished: stop waiting for it (what was announced stays announced)."""
        self.pending.pop(rel, None)

    def seen(self, entry: Entry, now: float, now_wall_ns: int) -> None:
        """A scan (or a settle re-check) found this entry."""
        rel, version = entry.rel, (entry.size, entry.mtime_ns)
        if rel in self.ready:
            return
        if self.current(rel, version):
            self.pending.pop(rel, None)
            return
        if not entry.regular:
            self.complete(rel)  # a symlink, FIFO, device: examined once, to be rejected with a reason
            return
        if self.trust_ctime and now_wall_ns - max(entry.mtime_ns, entry.ctime_ns) >= self.settle * 1e9:
            self.complete(rel)
            return
        prev = self.pending.get(rel)
        if prev is not None and prev[:2] == version:
            if now - prev[2] >= self.settle:
                self.complete(rel)
        else:
            self.pending[rel] = (entry.size, entry.mtime_ns, now)

    def still_changing(self, rel: bytes, version: Version, now: float) -> None:
        """The examination found it written to while it was read: wait for the next close/settle."""
        self.pending[rel] = (*version, now)

    def take_ready(self, limit: int) -> list[bytes]:
        out = []
        for rel in self.ready:
            out.append(rel)
            if len(out) >= limit:
                break
        for rel in out:
            del self.ready[rel]
        return out

    def drop_all_waiting(self) -> None:
        """The root went away: nothing half-seen may be announced from a tree that is not there."""
        self.pending.clear()
        self.ready.clear()
