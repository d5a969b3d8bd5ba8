"""What the watcher has already announced, kept across restarts (SQLite, one file per state dir).

A row is written only after the broker acknowledged the FileEvent, so a crash between publish and
record re-publishes the same event id, which JetStream (Nats-Msg-Id) and history de-duplicate.
Rows are never deleted when a file disappears: a share that is unmounted and mounted again must
not look like a flood of new files (RELIABILITY §3 item 5)."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS published (
    watch TEXT NOT NULL, rel BLOB NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL, event_id TEXT NOT NULL, PRIMARY KEY (watch, rel));
CREATE TABLE IF NOT EXISTS rejected (
    watch TEXT NOT NULL, rel BLOB NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL, PRIMARY KEY (watch, rel));
"""


@dataclass(frozen=True, slots=True)
class Known:
    size: int
    mtime_ns: int
    sha256: str  # of the last version announced: an identical rewrite is not a new arrival


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "watcher.db"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # one connection for every watch, used from worker threads: one transaction at a time
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def load(self, watch: str) -> tuple[dict[bytes, Known], dict[bytes, tuple[int, int]]]:
        """(published versions by path, rejected versions by path) for one watch."""
        with self._lock:
            return self._load(watch)

    def _load(self, watch: str) -> tuple[dict[bytes, Known], dict[bytes, tuple[int, int]]]:
        known = {bytes(rel): Known(size, mtime, sha) for rel, size, mtime, sha in self._db.execute(
            "SELECT rel, size, mtime_ns, sha256 FROM published WHERE watch = ?", (watch,))}
        rejected = {bytes(rel): (size, mtime) for rel, size, mtime in self._db.execute(
            "SELECT rel, size, mtime_ns FROM rejected WHERE watch = ?", (watch,))}
        return known, rejected

    def record(self, watch: str, published: list[tuple[bytes, Known, str]],
               rejected: list[tuple[bytes, int, int, str]]) -> None:
        """One transaction for a round of acknowledged publishes (rel, version, event id)."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO published VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (watch, rel) DO UPDATE SET "
                "size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, "
                "event_id = excluded.event_id",
                [(watch, rel, k.size, k.mtime_ns, k.sha256, event_id) for rel, k, event_id in published])
            self._db.executemany(
                "INSERT INTO rejected VALUES (?, ?, ?, ?, ?) ON CONFLICT (watch, rel) DO UPDATE SET "
                "size = excluded.size, mtime_ns = excluded.mtime_ns, reason = excluded.reason",
                [(watch, rel, size, mtime, reason) for rel, size, mtime, reason in rejected])

    def touch(self, watch: str, versions: list[tuple[bytes, int, int]]) -> None:
        """Identical rewrites: remember the new (size, mtime) so scans do not hash them again."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE published SET size = ?, mtime_ns = ? WHERE watch = ? AND rel = ?",
                                 [(size, mtime, watch, rel) for rel, size, mtime in versions])
