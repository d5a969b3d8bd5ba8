"""Announcing complete files: examine a batch (in a thread: hashing blocks), publish the FileEvents
and rejections in one pipelined round, and record them only after the broker acknowledged them.

Once per file version: a path whose (size, mtime) equals the version announced is never read; a
changed version with the same sha256 as the last one announced is an identical rewrite (remembered,
not announced); a rejection is published once per version, not on every scan."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field

from services.watcher.files import Examined, examine
from services.watcher.state import Known, StateStore
from services.watcher.tracker import Tracker
from shared import metrics, wire
from shared.bus import Bus, publish_until_acked
from shared.events import Rejected, file_event_id, utcnow
from shared.files import event_for
from shared.watch_config import WatchConfig

log = logging.getLogger("cropcron.watcher")


@dataclass
class Counters:
    published: int = 0
    rejected: int = 0
    identical_rewrites: int = 0
    vanished: int = 0


@dataclass
class _Round:
    items: list[tuple[str, bytes, str]] = field(default_factory=list)
    published: list[tuple[bytes, Known, str]] = field(default_factory=list)
    rejected: list[tuple[bytes, int, int, str]] = field(default_factory=list)
    touched: list[tuple[bytes, int, int]] = field(default_factory=list)


def _examine_all(watch: WatchConfig, rels: list[bytes], known: dict[bytes, tuple[int, int]]) -> list[Examined]:
    return [examine(watch.path, rel, watch.zero_byte, known.get(rel)) for rel in rels]


def show(rel: bytes) -> str:
    return rel.decode("utf-8", "backslashreplace")


class Announcer:
    def __init__(self, watch: WatchConfig, bus: Bus, store: StateStore, tracker: Tracker) -> None:
        self.watch = watch
        self.bus = bus
        self.store = store
        self.tracker = tracker
        self.counters = Counters()

    async def announce(self, rels: list[bytes], stop: asyncio.Event) -> None:
        known = {rel: (k.size, k.mtime_ns) for rel in rels if (k := self.tracker.known.get(rel))}
        results = await asyncio.to_thread(_examine_all, self.watch, rels, known)
        now = asyncio.get_running_loop().time()
        batch = _Round()
        for result in results:
            self._judge(result, batch, now)
        if batch.items:
            unacked = await publish_until_acked(self.bus, batch.items, f"watch {self.watch.name}", stop)
            if unacked:  # only when stopping: not recorded, so the next start announces them again
                lost = {msg_id for _, _, msg_id in unacked}
                batch.published = [p for p in batch.published if p[2] not in lost]
                batch.rejected = [r for r in batch.rejected if _reject_id(self.watch.name, r) not in lost]
        await asyncio.to_thread(self._store, batch)
        self._remember(batch)

    def _judge(self, result: Examined, batch: _Round, now: float) -> None:
        rel, info = result.rel, result.info
        if result.unchanged:
            return
        if result.vanished or info is None:
            self.counters.vanished += 1
            self.tracker.forget(rel)
            log.info("watch %s: %s vanished before it could be announced; skipped", self.watch.name, show(rel))
            return
        version = (info.st_size, info.st_mtime_ns)
        if result.changed:
            self.tracker.still_changing(rel, version, now)
        elif result.reason is not None:
            if self.tracker.rejected.get(rel) != version:
                self._reject(rel, info, result.reason, batch)
        elif result.sha256 is not None:
            last = self.tracker.known.get(rel)
            if last is not None and last.sha256 == result.sha256:
                batch.touched.append((rel, *version))  # rewritten with identical content
            else:
                event = event_for(self.watch.name, self.watch.path, rel, info, sha256=result.sha256)
                batch.items.append((wire.file_subject(self.watch.name), event.to_bytes(), event.id))
                batch.published.append((rel, Known(*version, result.sha256), event.id))

    def _reject(self, rel: bytes, info: os.stat_result, reason: str, batch: _Round) -> None:
        log.warning("watch %s: %s rejected: %s", self.watch.name, show(rel), reason)
        entry = (rel, info.st_size, info.st_mtime_ns, reason)
        note = Rejected(source="watcher", subject=wire.file_subject(self.watch.name),
                        reason=f"{show(rel)}: {reason}", at=utcnow(), payload_excerpt=show(rel)[:500])
        batch.items.append((wire.rejected_subject("watcher"), note.to_bytes(), _reject_id(self.watch.name, entry)))
        batch.rejected.append(entry)

    def _store(self, batch: _Round) -> None:  # in a thread: a commit waits for the disk
        if batch.published or batch.rejected:
            self.store.record(self.watch.name, batch.published, batch.rejected)
        if batch.touched:
            self.store.touch(self.watch.name, batch.touched)

    def _remember(self, batch: _Round) -> None:
        for rel, known, _ in batch.published:
            self.tracker.known[rel] = known
        for rel, size, mtime, _ in batch.rejected:
            self.tracker.rejected[rel] = (size, mtime)
        for rel, size, mtime in batch.touched:
            old = self.tracker.known[rel]
            self.tracker.known[rel] = Known(size, mtime, old.sha256)
        self.counters.published += len(batch.published)
        if batch.published:
            metrics.FILES_ANNOUNCED.labels(self.watch.name).inc(len(batch.published))
        for *_, reason in batch.rejected:
            metrics.file_rejected(self.watch.name, reason)
        self.counters.rejected += len(batch.rejected)
        self.counters.identical_rewrites += len(batch.touched)


def _reject_id(watch: str, entry: tuple[bytes, int, int, str]) -> str:
    rel, size, mtime, _ = entry
    return "rejected." + file_event_id(watch, rel, size, mtime)
