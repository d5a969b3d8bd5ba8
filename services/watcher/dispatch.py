"""The dispatcher: FileEvents -> runs. Part of the watcher service (`cropcron watcher`).

A pull consumer on the durable `dispatch` consumer of CROPCRON_FILES. For each FileEvent:
- refused (malformed, subject/watch mismatch, unknown watch, a relative path that could leave the
  root) -> a `Rejected` on cropcron.rejected.file with the reason, and the message is termed;
- each enabled job with `on_file: <watch>` -> one Trigger (kind "file", data = the event),
  run id = Nats-Msg-Id = file_run_id(job, event id);
- each enabled job with `on_batch.watch == <watch>` -> the file joins that job's open flight
  batch (services/watcher/batches.py), which closes into one Trigger (kind "batch").
The FileEvent is acked only after the triggers and batch records are acknowledged by JetStream,
so a crash at any point means a redelivery, never a lost arrival; ids make redeliveries no-ops.

One active dispatcher at a time (shared/lease.py): open batches are kept in its
memory (mirrored in KV), so two sharing the consumer would split a flight; others stand by.

Catching up: a dispatcher that has just taken the lead (a start, a restart, a standby taking over)
closes no batch for `quiet` or `max_wait` until the consumer shows it has caught up (nothing
undelivered, nothing unacknowledged). Otherwise the files that queued up while no dispatcher was
reading, and the events the previous one took but never acked (redelivered only after ack_wait),
would arrive just after their flight's batch closed "quiet" and start a second batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.watcher.batches import BatchKeeper, Publish
from shared import metrics, wire
from shared.bus import Bus, fetch_batches, publish_until_acked
from shared.catalog import Catalog
from shared.config import JobSpec
from shared.events import FileEvent, Rejected, Trigger, decode, file_run_id, utcnow
from shared.files import PathRefused, check_relative, rel_bytes
from shared.lease import Lease
from shared.names import subject_key
from shared.settings import BusSettings, ServiceSettings
from shared.watch_config import BatchRule, WatchConfig

log = logging.getLogger("cropcron.dispatch")


class DispatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CROPCRON_DISPATCH_", extra="ignore")

    fetch_batch: int = 500  # FileEvents taken per fetch (one PubAck wait for all their triggers)
    fetch_timeout: float = 1.0  # long-poll on an empty stream (seconds)
    batch_check: float = 0.5  # how often open batches are checked for quiet / max_wait (seconds)
    # a batch's file list travels inside its trigger; NATS refuses messages over max_payload (1 MB),
    # so a batch whose list reaches this many bytes closes (partial) and the rest opens a new one
    batch_max_bytes: int = 700_000
    # one active dispatcher (open batches are in its memory); a standby takes over this long
    # after the active one stopped renewing
    leader_ttl: float = 10.0
    # after taking the lead, quiet/max_wait closes wait until the consumer has caught up, but at
    # most this long past the redelivery of what the previous dispatcher left unacked (seconds)
    catch_up_limit: float = 60.0


class Dispatcher:
    def __init__(self, bus: Bus, catalog: Catalog, settings: ServiceSettings,
                 dispatch: DispatchSettings | None = None) -> None:
        self.bus = bus
        self.catalog = catalog
        self.settings = settings
        self.conf = dispatch or DispatchSettings()
        self.keeper = BatchKeeper(bus, self.conf.batch_max_bytes)
        self.lock = asyncio.Lock()  # intake and the batch closer both change the open batches
        self.ready = asyncio.Event()
        self.role = "starting"  # active | standby | stopped
        self.stats = {"events": 0, "triggers": 0, "rejected": 0}
        self.catching_up_until = 0.0  # while time.time() is below it, no quiet/max_wait closes

    def status(self) -> dict[str, Any]:
        return {**self.stats, "role": self.role, "open_batches": len(self.keeper.open),
                "open_files": sum(len(b.files) for b in self.keeper.open.values()),
                "batches_closed": self.keeper.closed, "catching_up": self.catching_up_until > time.time()}

    async def run(self, stop: asyncio.Event) -> None:
        kv = await self.bus.js.key_value(wire.KV_BATCHES)
        lease = Lease(kv, wire.DISPATCH_LEADER_KEY, self.settings.instance, self.conf.leader_ttl, "dispatcher")
        self.ready.set()  # live either way: active, or standing by for the active one
        try:
            while not stop.is_set():
                if not await lease.try_acquire():  # (False too while the bus is reconnecting)
                    self.role = "standby"
                    await _wait(stop, self.conf.leader_ttl / 3)
                    continue
                self.role = "active"
                log.info("dispatch: %s is the active dispatcher", self.settings.instance)
                await self._lead(stop, lease)
        finally:
            self.role = "stopped"
            await lease.release()

    async def _lead(self, stop: asyncio.Event, lease: Lease) -> None:
        """Dispatch until stopped or the lease is lost (then stand by again)."""
        self.keeper = BatchKeeper(self.bus, self.conf.batch_max_bytes)  # open batches: from KV, as left
        await self.keeper.load(self._rule)
        # the consumer's ack_wait bounds when the previous holder's unacked events come back
        self.catching_up_until = time.time() + await self._ack_wait() + self.conf.catch_up_limit
        tasks = [asyncio.create_task(self._intake(stop), name="dispatch-intake"),
                 asyncio.create_task(self._closer(stop), name="dispatch-batches")]
        try:
            while not stop.is_set():
                await asyncio.wait(tasks, timeout=self.conf.leader_ttl / 3)
                for task in tasks:
                    if task.done():
                        task.result()  # a crash stops the service (and the process, for compose)
                if not await lease.renew():
                    # another dispatcher took over, or the bus was away longer than the lease:
                    # drop our in-memory batches (they are in KV; the next holder loads them)
                    return
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- intake --------------------------------------------------------------------------
    async def _intake(self, stop: asyncio.Event) -> None:
        async for msgs in fetch_batches(self.bus, wire.STREAM_FILES, wire.DISPATCH_CONSUMER, self.conf.fetch_batch,
                                        self.conf.fetch_timeout, stop, "dispatch"):
            async with self.lock:
                await self._dispatch(msgs, stop)

    async def _dispatch(self, msgs: list[Msg], stop: asyncio.Event) -> None:
        pending: list[Publish] = []
        settle: list[tuple[Msg, bool]] = []  # (message, ack? else term)
        for msg in msgs:
            self.stats["events"] += 1
            try:  # each file's own arrival time: a long round must not age the files it carries
                reason = await self._route(msg, time.time(), pending, stop)
            except _Stopping:
                return  # nothing acked: the events come back to the next dispatcher
            if reason is not None:
                self.stats["rejected"] += 1
                metrics.file_rejected(msg.subject.rpartition(".")[2], reason, self.catalog.watches)
                log.error("dispatch: rejected file event on %s: %s", msg.subject, reason)
                body = Rejected(source="dispatch", subject=msg.subject, reason=reason, at=utcnow(),
                                payload_excerpt=msg.data[:500].decode("utf-8", "replace"))
                pending.append((wire.rejected_subject("file"), body.to_bytes(),
                                f"rejected.file.{msg.metadata.sequence.stream}"))
            settle.append((msg, reason is None))
        if await publish_until_acked(self.bus, pending, "dispatch", stop):
            return  # stopping: nothing acked, the events come back to the next dispatcher
        for msg, ok in settle:
            await (msg.ack() if ok else msg.term())
        await self._close_due(stop, immediate=True)

    async def _route(self, msg: Msg, now: float, pending: list[Publish], stop: asyncio.Event) -> str | None:
        """Queue this event's triggers and batch records; the reason if it is refused."""
        try:
            event: FileEvent = decode(FileEvent, msg.data)
        except (ValidationError, ValueError) as exc:
            return f"malformed file event: {_short(exc)}"
        if msg.subject != wire.file_subject(event.watch):
            return f"event for watch {event.watch!r} arrived on subject {msg.subject!r}"
        try:
            check_relative(rel_bytes(event))
        except PathRefused as exc:
            return f"rel_path {event.rel_path!r}: {exc}"
        if await self._watch(event.watch) is None:
            return f"unknown watch {event.watch!r} (not in the applied config)"
        for spec in list(self.catalog.specs.values()):
            job = spec.job
            if not job.enabled:
                continue
            if job.on_file == event.watch:
                run_id = file_run_id(job.name, event.id)
                trigger = Trigger(run_id=run_id, job=job.name, kind="file", created_at=utcnow(),
                                  data=event.model_dump(mode="json", exclude_none=True))
                subject = wire.trigger_subject(wire.band_for_priority(job.priority), job.name)
                pending.append((subject, trigger.to_bytes(), run_id))
                self.stats["triggers"] += 1
            rule = job.on_batch
            if rule is not None and rule.watch == event.watch:
                due = self.keeper.due(job.name, rule, event, now)
                if due is not None and not self._held(due[1]):  # quiet/max_wait passed since the closer last looked
                    if await publish_until_acked(self.bus, pending, "dispatch", stop):
                        raise _Stopping
                    pending.clear()
                    await self.keeper.close(due[0], due[1], spec, stop)
                pending.extend(self.keeper.add(job.name, rule, event, now))
        return None

    async def _watch(self, name: str) -> WatchConfig | None:
        watch = self.catalog.watches.get(name)
        if watch is not None:
            return watch
        # applied a moment ago, and the catalog's KV watcher has not delivered it yet
        try:
            entry = await (await self.bus.js.key_value(wire.KV_WATCHES)).get(subject_key(name))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return WatchConfig.model_validate_json(entry.value) if entry.value else None

    # -- batches -------------------------------------------------------------------------
    def _spec(self, job: str) -> JobSpec | None:
        return self.catalog.specs.get(job)

    def _rule(self, job: str) -> BatchRule | None:
        spec = self.catalog.specs.get(job)
        return spec.job.on_batch if spec is not None and spec.job.enabled else None

    async def _closer(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.conf.batch_check)
            async with self.lock:
                await self._close_due(stop, immediate=False)

    async def _close_due(self, stop: asyncio.Event, immediate: bool) -> None:
        if not immediate and self.catching_up_until and (time.time() >= self.catching_up_until
                                                         or await self._caught_up()):
            self.catching_up_until = 0.0  # caught up, or held as long as allowed: stop asking
        for batch, reason in self.keeper.ready(self._rule, time.time()):
            if immediate and reason not in ("manifest", "count", "full"):
                continue  # right after intake only what a new file completed; the closer does the rest
            if self._held(reason):
                continue
            if not await self.keeper.close(batch, reason, self._spec(batch.job), stop):
                return

    def _held(self, reason: str | None) -> bool:
        """A time-based close while catching up: the batch may still be missing queued files."""
        return reason in ("quiet", "max_wait") and time.time() < self.catching_up_until

    async def _consumer(self) -> ConsumerInfo | None:
        """The dispatch consumer's state, or None while the bus is reconnecting."""
        try:
            info: ConsumerInfo = await self.bus.js.consumer_info(wire.STREAM_FILES, wire.DISPATCH_CONSUMER)
        except Exception as exc:
            log.debug("dispatch: consumer info failed (%r)", exc)
            return None
        return info

    async def _ack_wait(self) -> float:
        info = await self._consumer()
        return float(info.config.ack_wait) if info and info.config.ack_wait else BusSettings().ack_wait

    async def _caught_up(self) -> bool:
        """Nothing undelivered and nothing unacked on the consumer (unknown counts as not yet).
        Called under the lock, so our own intake holds no events between fetch and ack (ones
        fetched and waiting for the lock count as unacked: that only means another look later)."""
        info = await self._consumer()
        if info is None or info.num_pending or info.num_ack_pending:
            return False
        if self.keeper.open:
            log.info("dispatch: caught up with the file stream; quiet and max_wait closes resume")
        return True


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class _Stopping(Exception):
    """The service is stopping while publishes are unacknowledged."""


def _short(exc: Exception) -> str:
    return str(exc).replace("\n", "; ")[:300]
