"""Flight batches as plain data: which batch a file joins, and when a batch closes. No I/O here
(services/watcher/batches.py keeps these in KV and closes them), so the rules are unit-tested.

Grouping (`on_batch.group_by`):
- folder: one open batch per first-level folder under the watch root (a flight's upload folder);
  files directly in the root form their own group (folder "").
- gap: one open batch per job; once it closes (a `quiet` gap, ...) the next file opens a new one.

Closing, checked in this order: a file matching `manifest` arrived; `expected_count` files
arrived; the trigger would exceed the size limit (the rest opens a new batch, marked partial);
`quiet` seconds since the latest file; `max_wait` since the first file (marked partial).
Times are wall-clock seconds (time.time()) at which the dispatcher received each file, so an
open batch keeps its age across a dispatcher restart."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.events import BatchClose, BatchFile, BatchInfo, FileEvent, batch_id
from shared.files import rel_bytes
from shared.flights import header_bytes, parse_header
from shared.watch_config import BatchGrouping, BatchRule


@dataclass
class OpenBatch:
    id: str
    job: str
    watch: str
    group: bytes  # the folder bytes (group_by folder) or b"" (gap)
    opened_at: float
    files: dict[str, BatchFile] = field(default_factory=dict)  # file id -> file, in arrival order
    arrived: dict[str, float] = field(default_factory=dict)  # file id -> when it arrived
    manifest_seen: bool = False
    size: int = 0  # bytes this batch's file list takes in the trigger (estimate)

    @property
    def last_at(self) -> float:
        return max(self.arrived.values(), default=self.opened_at)

    @property
    def folder(self) -> str:
        return self.group.decode("utf-8", "replace")

    def header(self) -> bytes:
        return header_bytes(self.id, self.job, self.watch, self.opened_at, self.group)

    @classmethod
    def from_header(cls, raw: bytes) -> OpenBatch:
        h = parse_header(raw)  # the KV layout lives in shared/flights.py (the dashboard reads it too)
        return cls(id=h.id, job=h.job, watch=h.watch, opened_at=h.opened_at, group=h.group)

    def add(self, file: BatchFile, at: float, rule: BatchRule) -> bool:
        """False if this file version is already in the batch (a redelivered event)."""
        if file.id in self.files:
            return False
        self.files[file.id] = file
        self.arrived[file.id] = at
        self.size += len(file.model_dump_json(exclude_none=True)) + 1
        name = file.rel_path.rsplit("/", 1)[-1]
        if rule.manifest and fnmatch.fnmatchcase(name, rule.manifest):
            self.manifest_seen = True
        return True

    def info(self, reason: BatchClose, now: float) -> BatchInfo:
        return BatchInfo(id=self.id, watch=self.watch, folder=self.folder, partial=reason in ("max_wait", "full"),
                         reason=reason, opened_at=_dt(self.opened_at), closed_at=_dt(now),
                         files=list(self.files.values()))


def batch_file(event: FileEvent) -> BatchFile:
    return BatchFile(id=event.id, rel_path=event.rel_path, rel_path_b64=event.rel_path_b64, size=event.size,
                     mtime_ns=event.mtime_ns)


def group_of(rule: BatchRule, event: FileEvent) -> bytes:
    if rule.group_by is BatchGrouping.GAP:
        return b""
    rel = rel_bytes(event)
    return rel.split(b"/", 1)[0] if b"/" in rel else b""


def new_batch(job: str, event: FileEvent, group: bytes, now: float) -> OpenBatch:
    return OpenBatch(id=batch_id(job, event.id), job=job, watch=event.watch, group=group, opened_at=now)


def close_reason(batch: OpenBatch, rule: BatchRule, now: float, max_bytes: int) -> BatchClose | None:
    if not batch.files:
        return None
    if batch.manifest_seen:
        return "manifest"
    if rule.expected_count is not None and len(batch.files) >= rule.expected_count:
        return "count"
    if batch.size >= max_bytes:
        return "full"
    if now - batch.last_at >= rule.quiet:
        return "quiet"
    if now - batch.opened_at >= rule.max_wait:
        return "max_wait"
    return None


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
