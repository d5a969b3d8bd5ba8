"""The notifier's streams, consumers and KV bucket (called from shared.bus.ensure_topology)."""

from __future__ import annotations

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
from nats.js.errors import BadRequestError

from services.notifier.settings import NotifierSettings
from shared import wire
from shared.settings import BusSettings


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code == 10058:  # exists with other settings
            await js.update_stream(config)
        else:
            raise


async def ensure_alert_topology(js: JetStreamContext, settings: BusSettings) -> None:
    notifier = NotifierSettings()
    await _ensure_stream(js, StreamConfig(
        name=wire.STREAM_ALERTS, subjects=[wire.ALERT_SUBJECTS],
        # limits: the notifier and history each read every alert (and every delivery record)
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, max_age=settings.run_events_max_age,
        duplicate_window=settings.duplicate_window))
    await _ensure_stream(js, StreamConfig(
        name=wire.STREAM_NOTIFY, subjects=[wire.NOTIFY_SUBJECTS],
        # the outbox: a notification leaves only once delivered or failed for good
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        duplicate_window=settings.duplicate_window, discard=DiscardPolicy.NEW))
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
        durable_name=wire.DELIVER_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=notifier.notify_ack_wait,
        max_deliver=-1,  # the notifier counts attempts itself (notify_max_attempts), then gives up
        max_ack_pending=1000))
    await js.create_key_value(KeyValueConfig(bucket=wire.KV_NOTIFY, history=1, storage=StorageType.FILE))
