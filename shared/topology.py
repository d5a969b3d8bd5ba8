"""JetStream topology: every stream, durable consumer and KV bucket cropcron uses.

ensure_topology(): idempotent create-or-update; run by the operator (`cropcron apply`, `cropcron up`)
and by services whose broker user may create streams.
ensure_missing(): creates only what is missing, changing nothing (`apply` beside running services).
await_topology(): for service users that may not create it: wait until it is all there.
Names come from shared/wire.py; settings (ack waits, ages, windows) from BusSettings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from shared import wire
from shared.atomic import ensure_atomic
from shared.bus import Bus
from shared.errors import UserError
from shared.settings import BusSettings

log = logging.getLogger("cropcron.topology")

# what the server answers a replica count it cannot place: a single server (not clustered), or a
# cluster with fewer nodes (or fewer with JetStream) than asked
_NO_ROOM = (10074, 10005, 10023)


class ReplicasError(UserError):
    """CROPCRON_REPLICAS asks for more copies than the broker has nodes."""


def _no_room(exc: APIError, replicas: int, what: str) -> ReplicasError:
    return ReplicasError(f"CROPCRON_REPLICAS is {replicas} but the NATS broker cannot keep {replicas} copies of {what} "
                         f"({exc.description or 'error ' + str(exc.err_code)}): a single nats-server keeps 1, a "
                         f"cluster at most one per node; set CROPCRON_REPLICAS to 1 on one server, 3 on a "
                         "three-node cluster (docs/scale-out.md)")


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code == 10058:  # "stream name already in use with a different configuration"
                await js.update_stream(config)  # a changed replica count included: JetStream scales it
            else:
                raise
    except APIError as exc:
        if exc.err_code in _NO_ROOM and (config.num_replicas or 1) > 1:
            raise _no_room(exc, config.num_replicas or 1, f"the stream {config.name}") from None
        raise


async def ensure_topology(js: JetStreamContext, settings: BusSettings | None = None) -> None:
    settings = settings or BusSettings()
    try:
        await _ensure_topology(js, settings)
    except APIError as exc:
        if exc.err_code in _NO_ROOM and settings.replicas > 1:
            raise _no_room(exc, settings.replicas, "its streams and buckets") from None
        raise


async def _ensure_topology(js: JetStreamContext, settings: BusSettings) -> None:
    r = settings.replicas  # the consumers have as many copies as their stream (num_replicas 0)
    await _ensure_stream(
        js,
        StreamConfig(
            name=wire.STREAM_TRIGGERS,
            subjects=[wire.TRIGGER_SUBJECTS],
            # work queue: a trigger disappears once a runner acks (or terms) it
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=settings.duplicate_window,
            discard=DiscardPolicy.NEW,  # refuse new work rather than drop queued work
            num_replicas=r,
        ),
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=wire.STREAM_RUNS,
            subjects=[wire.RUN_EVENT_SUBJECTS, wire.REJECTED_SUBJECTS, wire.FLIGHT_SUBJECTS],
            # limits: history, notifier, dashboard and other modules each read it at their pace
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.run_events_max_age,
            duplicate_window=settings.duplicate_window,
            num_replicas=r,
        ),
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=wire.STREAM_FILES,
            subjects=[wire.FILE_SUBJECTS],
            # limits: the dispatcher turns arrivals into runs; other modules may read them too
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.run_events_max_age,
            duplicate_window=settings.duplicate_window,
            num_replicas=r,
        ),
    )
    await _ensure_consumer(
        js,
        wire.STREAM_FILES,
        ConsumerConfig(
            durable_name=wire.DISPATCH_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=-1,  # an arrival must not be dropped because the bus was briefly busy
            max_ack_pending=settings.max_ack_pending,
        ),
    )
    await _ensure_consumer(
        js,
        wire.STREAM_FILES,
        ConsumerConfig(
            durable_name=wire.HISTORY_FILES_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=-1,  # as for run events: Postgres being down must not drop an arrival
            max_ack_pending=settings.max_ack_pending,
        ),
    )
    for band in wire.BANDS:
        await _ensure_consumer(
            js,
            wire.STREAM_TRIGGERS,
            ConsumerConfig(
                durable_name=wire.runner_consumer(band),
                filter_subject=f"{wire.PREFIX}.trigger.{band}.>",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=settings.ack_wait,
                # per-job retry limits are enforced by the runner from num_delivered; this is
                # only the safety net against a poison message looping forever
                max_deliver=settings.max_deliver,
                max_ack_pending=settings.max_ack_pending,
                max_waiting=512,
            ),
        )
    await _ensure_consumer(
        js,
        wire.STREAM_RUNS,
        ConsumerConfig(
            durable_name=wire.HISTORY_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=-1,  # history must not give up on a run event because Postgres was down
            max_ack_pending=settings.max_ack_pending,
        ),
    )
    for bucket in (wire.KV_JOBS, wire.KV_JOB_STATE, wire.KV_TIMER, wire.KV_LEASES, wire.KV_SERVICES,
                   wire.KV_WATCHES, wire.KV_BATCHES):
        await _ensure_bucket(js, bucket, r)
    for bucket in (wire.KV_JOBS, wire.KV_WATCHES):  # `apply` writes a config to them all-or-nothing
        await ensure_atomic(js, f"KV_{bucket}")
    await _ensure_alert_topology(js, settings)
    await scale_topology(js, r)  # the buckets (create_key_value leaves an existing one as it is)


async def scale_topology(js: JetStreamContext, replicas: int) -> list[tuple[str, int]]:
    """Give every stream and KV bucket `replicas` copies (the consumers follow their stream: they
    are made with num_replicas 0). JetStream moves a stream between replica counts while it is in
    use (its readers and writers go on); fewer copies drop the extra ones. Returns each changed
    stream with its former count. Under ensure_missing, update_stream changes nothing."""
    streams, _ = topology_names()
    changed = []
    for name in streams:
        info = await js.stream_info(name)
        before = info.config.num_replicas or 1
        if before != replicas:
            log.info("topology: %s from %d to %d replicas", name, before, replicas)
            info.config.num_replicas = replicas
            await _ensure_stream(js, info.config)
            changed.append((name, before))
    return changed


class _CreateOnly(JetStreamContext):
    """JetStream for ensure_topology that creates what is missing and changes nothing that
    exists: each create is preceded by a look-up, and updates are skipped."""

    async def add_stream(self, config: StreamConfig | None = None, **params: Any) -> Any:
        assert config is not None and config.name is not None
        try:
            return await self.stream_info(config.name)
        except NotFoundError:
            return await super().add_stream(config, **params)

    async def update_stream(self, config: StreamConfig | None = None, **params: Any) -> Any:
        assert config is not None and config.name is not None
        return await self.stream_info(config.name)

    async def add_consumer(self, stream: str, config: ConsumerConfig | None = None, timeout: float | None = None,
                           **params: Any) -> Any:
        assert config is not None and config.durable_name is not None
        try:
            return await self.consumer_info(stream, config.durable_name)
        except NotFoundError:
            return await super().add_consumer(stream, config, timeout, **params)

    async def create_key_value(self, config: KeyValueConfig | None = None, **params: Any) -> KeyValue:
        assert config is not None
        try:
            return await self.key_value(config.bucket)
        except NotFoundError:
            return await super().create_key_value(config, **params)


async def ensure_missing(bus: Bus, settings: BusSettings | None = None) -> None:
    """Create every stream, consumer and KV bucket that does not exist yet, leaving those that do
    as they are (the services set them from their own environment). For `cropcron apply`, which
    may run while the services are still creating them (compose starts it beside them)."""
    await ensure_topology(_CreateOnly(bus.nc, timeout=10.0), settings)


async def _ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    # nats-py's add_consumer is create-or-update on current servers: an existing durable keeps
    # its pending messages and takes the new settings (e.g. a changed ack_wait).
    await js.add_consumer(stream, config)


def topology_names() -> tuple[list[str], list[tuple[str, str]]]:
    """The streams (KV buckets' included) and the durable consumers ensure_topology makes."""
    buckets = [wire.KV_JOBS, wire.KV_JOB_STATE, wire.KV_TIMER, wire.KV_LEASES, wire.KV_SERVICES, wire.KV_WATCHES,
               wire.KV_BATCHES, wire.KV_NOTIFY]
    streams = [wire.STREAM_TRIGGERS, wire.STREAM_RUNS, wire.STREAM_FILES, wire.STREAM_ALERTS, wire.STREAM_NOTIFY,
               *(f"KV_{b}" for b in buckets)]
    consumers = [*((wire.STREAM_TRIGGERS, wire.runner_consumer(b)) for b in wire.BANDS),
                 (wire.STREAM_RUNS, wire.HISTORY_CONSUMER), (wire.STREAM_FILES, wire.DISPATCH_CONSUMER),
                 (wire.STREAM_FILES, wire.HISTORY_FILES_CONSUMER),
                 (wire.STREAM_RUNS, wire.NOTIFIER_RUNS_CONSUMER), (wire.STREAM_ALERTS, wire.NOTIFIER_ALERTS_CONSUMER),
                 (wire.STREAM_ALERTS, wire.HISTORY_ALERTS_CONSUMER), (wire.STREAM_NOTIFY, wire.DELIVER_CONSUMER)]
    return streams, consumers


async def await_topology(bus: Bus, user: str, every: float = 2.0, max_silence: float = 60.0) -> None:
    """For a service user, which may not create streams: wait until the operator's `apply` (or
    `cropcron up`) has made every stream, bucket and consumer, saying what is missing."""
    streams, consumers = topology_names()
    said = ""
    # On a cluster, a stream or consumer `apply` has just made answers nothing while its replicas
    # elect a leader, nor does any while the nodes have no JetStream leader: not there yet either
    # (compose.cluster.yaml's runner exited 1 on that timeout and `up --wait` failed on its
    # restart). The first silence ends the round: thirteen request timeouts in a row kept the
    # dashboard from asking again for over two minutes. A silence longer than `max_silence` is
    # raised, as before: once (compose.yaml's notifier, on a loaded machine) one process's requests
    # went unanswered for two minutes from its first while the others' were answered at once;
    # exiting, it is restarted with a new connection (not understood: see the test's history).
    unanswered = (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError)
    silent_since: float | None = None
    while True:
        missing: list[str] = []
        try:
            for stream in streams:
                try:
                    await bus.js.stream_info(stream)
                except NotFoundError:
                    missing.append(stream)
            for stream, consumer in consumers:
                if stream not in missing:
                    try:
                        await bus.js.consumer_info(stream, consumer)
                    except NotFoundError:
                        missing.append(f"{stream}/{consumer}")
        except unanswered:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since > max_silence:
                raise
            missing.append("(no answer yet)")
        else:
            silent_since = None
        if not missing:
            return
        text = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        if text != said:
            log.warning("NATS user %s may not create the topology and it is not all there yet (missing %s): "
                        "waiting for `cropcron apply` to create it", user, text)
            said = text
        await asyncio.sleep(every)


async def _ensure_alert_topology(js: JetStreamContext, settings: BusSettings) -> None:
    """The alerts stream, the notification outbox, their consumers and the notifier's KV."""
    await _ensure_stream(js, StreamConfig(
        name=wire.STREAM_ALERTS, subjects=[wire.ALERT_SUBJECTS],
        # limits: the notifier and history each read every alert (and every delivery record)
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, max_age=settings.run_events_max_age,
        duplicate_window=settings.duplicate_window, num_replicas=settings.replicas))
    await _ensure_stream(js, StreamConfig(
        name=wire.STREAM_NOTIFY, subjects=[wire.NOTIFY_SUBJECTS],
        # the outbox: a notification leaves only once delivered or failed for good
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window, discard=DiscardPolicy.NEW, num_replicas=settings.replicas))
    # DeliverPolicy.NEW: a notifier added to a running system must not page about last week's runs
    await js.add_consumer(wire.STREAM_RUNS, ConsumerConfig(
        durable_name=wire.NOTIFIER_RUNS_CONSUMER, deliver_policy=DeliverPolicy.NEW,
        filter_subject=wire.RUN_EVENT_SUBJECTS, ack_policy=AckPolicy.EXPLICIT, ack_wait=settings.ack_wait,
        max_deliver=-1, max_ack_pending=settings.max_ack_pending))
    await js.add_consumer(wire.STREAM_ALERTS, ConsumerConfig(
        durable_name=wire.NOTIFIER_ALERTS_CONSUMER, deliver_policy=DeliverPolicy.ALL,
        filter_subjects=list(wire.ALERT_RAISED_SUBJECTS), ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait, max_deliver=-1, max_ack_pending=settings.max_ack_pending))
    await js.add_consumer(wire.STREAM_ALERTS, ConsumerConfig(
        durable_name=wire.HISTORY_ALERTS_CONSUMER, deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT, ack_wait=settings.ack_wait, max_deliver=-1,
        max_ack_pending=settings.max_ack_pending))
    await js.add_consumer(wire.STREAM_NOTIFY, ConsumerConfig(
        durable_name=wire.DELIVER_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=settings.notify_ack_wait,
        max_deliver=-1,  # the notifier counts attempts itself (notify_max_attempts), then gives up
        max_ack_pending=1000))
    await _ensure_bucket(js, wire.KV_NOTIFY, settings.replicas)


async def _ensure_bucket(js: JetStreamContext, bucket: str, replicas: int) -> None:
    try:
        await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas))
    except BadRequestError as exc:
        # 10058: it exists with another configuration: ours with atomic batches turned on, or
        # with another replica count (scale_topology changes that)
        if exc.err_code != 10058:
            raise
