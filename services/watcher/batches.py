"""Open flight batches, kept in memory and mirrored in KV (wire.KV_BATCHES), so a dispatcher
restart neither loses nor duplicates a batch:

- a file joins a batch by a KV put ("f.<batch>.<file>", plus "h.<batch>" when it opens the batch);
  the dispatcher acks the FileEvent only after those puts are acknowledged;
- closing publishes ONE trigger (kind "batch", run id = Nats-Msg-Id = batch id) and only then
  purges the batch from the bucket. A crash in between re-closes the same batch after the restart
  with the same id, which JetStream (duplicate window) and history (run id) collapse.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from services.watcher.batch_state import (
    OpenBatch,
    batch_file,
    close_reason,
    group_of,
    new_batch,
)
from shared import wire
from shared.bus import Bus, publish_until_acked
from shared.config import JobSpec
from shared.events import BatchClose, FileEvent, FlightClosed, Trigger, utcnow
from shared.flights import file_entry, parse_file_entry
from shared.kv_read import bucket_entries
from shared.watch_config import BatchRule

log = logging.getLogger("cropcron.dispatch")

Publish = tuple[str, bytes, str]  # subject, payload, Nats-Msg-Id


class BatchKeeper:
    def __init__(self, bus: Bus, max_bytes: int) -> None:
        self.bus = bus
        self.max_bytes = max_bytes
        self.open: dict[tuple[str, bytes], OpenBatch] = {}  # (job, group) -> its open batch
        self.closed = 0

    async def load(self, rule_of: Callable[[str], BatchRule | None]) -> None:
        """Rebuild the open batches from KV after a restart."""
        batches: dict[str, OpenBatch] = {}
        entries: list[tuple[str, bytes]] = []
        # in the order written, so each batch's files keep their arrival order
        for key, value in (await bucket_entries(self.bus.js, wire.KV_BATCHES)).items():
            if key.startswith("h."):
                batch = OpenBatch.from_header(value)
                batches[batch.id] = batch
            elif key.startswith("f."):
                entries.append((key.split(".")[1], value))
        for owner, value in entries:
            found = batches.get(owner)
            if found is None:
                continue  # its header is gone: the batch was closed, the purge interrupted
            file, at = parse_file_entry(value)
            found.add(file, at, rule_of(found.job) or BatchRule(watch=found.watch, expected_count=None))
        for batch in batches.values():
            if batch.files:
                self.open[(batch.job, batch.group)] = batch
            else:
                await self._purge(batch.id)  # closed just before the purge finished
        if self.open:
            log.info("dispatch: resumed %d open batch(es) from KV", len(self.open))

    def due(self, job: str, rule: BatchRule, event: FileEvent, now: float) -> tuple[OpenBatch, BatchClose] | None:
        """The job's open batch this file would join, if that batch should have closed already."""
        batch = self.open.get((job, group_of(rule, event)))
        if batch is None:
            return None
        reason = close_reason(batch, rule, now, self.max_bytes)
        return (batch, reason) if reason else None

    def add(self, job: str, rule: BatchRule, event: FileEvent, now: float) -> list[Publish]:
        """The KV puts that record this file in its batch (empty if it is already there)."""
        file = batch_file(event)
        if any(file.id in b.files for (j, _), b in self.open.items() if j == job):
            return []  # a redelivered event: the file is already in one of the job's batches
        group = group_of(rule, event)
        batch = self.open.get((job, group))
        puts: list[Publish] = []
        if batch is None:
            batch = new_batch(job, event, group, now)
            self.open[(job, group)] = batch
            puts.append(self._put(wire.batch_header_key(batch.id), batch.header()))
        batch.add(file, now, rule)
        puts.append(self._put(wire.batch_file_key(batch.id, file.id), file_entry(file, now)))
        return puts

    def _put(self, key: str, value: bytes) -> Publish:
        return wire.kv_put_subject(wire.KV_BATCHES, key), value, f"batch.{key}"

    def ready(self, rule_of: Callable[[str], BatchRule | None], now: float) -> list[tuple[OpenBatch, BatchClose | None]]:
        """Batches to close now; reason None: the job is gone (or lost on_batch), drop the batch."""
        out: list[tuple[OpenBatch, BatchClose | None]] = []
        for batch in list(self.open.values()):
            rule = rule_of(batch.job)
            if rule is None or rule.watch != batch.watch:
                out.append((batch, None))
                continue
            reason = close_reason(batch, rule, now, self.max_bytes)
            if reason is not None:
                out.append((batch, reason))
        return out

    async def close(self, batch: OpenBatch, reason: BatchClose | None, spec: JobSpec | None,
                    stop: asyncio.Event) -> bool:
        """Publish the batch's one trigger, then forget the batch. False if stopping first."""
        if reason is not None and spec is not None:
            now = time.time()
            info = batch.info(reason, now)
            trigger = Trigger(run_id=batch.id, job=batch.job, kind="batch", created_at=utcnow(),
                              data={"batch": info.model_dump(mode="json", exclude_none=True)})
            subject = wire.trigger_subject(wire.band_for_priority(spec.job.priority), batch.job)
            # the flight's record goes with its trigger (history's Flights page, expect: alarms);
            # both are re-sent with the same ids if a crash comes between, and de-duplicated
            flight = FlightClosed(job=batch.job, batch=info)
            left = await publish_until_acked(self.bus, [(subject, trigger.to_bytes(), batch.id),
                                                        (wire.flight_subject(batch.watch), flight.to_bytes(),
                                                         f"flight.{batch.id}")],
                                             f"dispatch: batch {batch.id}", stop)
            if left:
                return False
            log.info("dispatch: batch %s of %s closed (%s): %d files%s", batch.id, batch.job, reason,
                     len(batch.files), " (partial)" if info.partial else "")
            self.closed += 1
        else:
            log.warning("dispatch: dropping open batch %s: job %r no longer batches watch %r", batch.id,
                        batch.job, batch.watch)
        self.open.pop((batch.job, batch.group), None)
        await self._purge(batch.id)
        return True

    async def _purge(self, batch_id: str) -> None:
        # files first, header last: a header without files on restart means "already closed"
        for subject in (wire.kv_put_subject(wire.KV_BATCHES, f"f.{batch_id}.>"),
                        wire.kv_put_subject(wire.KV_BATCHES, wire.batch_header_key(batch_id))):
            # a purge that keeps failing is left: after a restart the batch would close again
            # under the same id, which the trigger stream and history de-duplicate
            for delay in (0.2, 1.0, 0.0):
                try:
                    await self.bus.js.purge_stream(wire.KV_BATCHES_STREAM, subject=subject)
                    break
                except Exception as exc:
                    log.warning("dispatch: purging closed batch %s failed (%r)", batch_id, exc)
                    await asyncio.sleep(delay)
