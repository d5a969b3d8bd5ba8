"""Delivery from the outbox (stream CROPCRON_NOTIFY): a notification is acked only once its
channel accepted it or it failed for good. Transient failures are nak'ed with a backoff (or the
Slack Retry-After) and come back; permanent ones are recorded and escalated once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError

from services.notifier.channels import DeliveryError
from services.notifier.context import Notifier
from shared import metrics, wire
from shared.bus import publish_until_acked
from shared.events import DeliveryOutcome, DeliveryRecord, Notification, decode, utcnow

log = logging.getLogger("cropcron.notifier")
PARALLEL = 16


async def deliver_loop(svc: Notifier, stop: asyncio.Event, subs: dict[str, Any]) -> None:
    slots = asyncio.Semaphore(PARALLEL)
    running: set[asyncio.Task[None]] = set()
    delay = 0.2
    try:
        while not stop.is_set():
            try:
                if subs.get("deliver") is None:
                    subs["deliver"] = await svc.bus.js.pull_subscribe_bind(durable=wire.DELIVER_CONSUMER,
                                                                           stream=wire.STREAM_NOTIFY)
                msgs = await subs["deliver"].fetch(PARALLEL, timeout=1)
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notifier: delivery fetch failed (%r); re-subscribing in %.1fs", exc, delay)
                subs["deliver"] = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.2
            for msg in msgs:
                await slots.acquire()
                task = asyncio.create_task(deliver_one(svc, msg))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: slots.release())
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


def backoff(svc: Notifier, attempt: int) -> float:
    base = min(svc.ns.notify_retry_base * 2.0 ** (attempt - 1), svc.ns.notify_retry_max)
    return float(base * random.uniform(0.9, 1.1))  # noqa: S311 - jitter, not security


async def _keepalive(msg: Msg, every: float) -> None:
    # a slow SMTP server must not make the broker hand the same notification to a second sender
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(Exception):
            await msg.in_progress()


async def deliver_one(svc: Notifier, msg: Msg) -> None:
    try:
        n: Notification = decode(Notification, msg.data)
    except (ValidationError, ValueError) as exc:
        log.error("notifier: unreadable notification on %s: %s", msg.subject, str(exc)[:300])
        await msg.term()
        return
    if svc.config is None:  # nothing applied yet (a restart racing the config load): later
        await msg.nak(delay=2)
        return
    attempt = msg.metadata.num_delivered or 1
    keepalive = asyncio.create_task(_keepalive(msg, max(svc.notify_ack_wait / 3, 0.2)))
    try:
        sender = svc.senders.get(n.channel)
        if sender is None:
            raise DeliveryError(f"channel {n.channel!r} is not configured", permanent=True)
        mid = await sender.send(n)
    except DeliveryError as exc:
        keepalive.cancel()
        await _failed(svc, msg, n, attempt, exc)
        return
    finally:
        keepalive.cancel()
    svc.counts["sent"] += 1
    metrics.ALERTS_SENT.labels(n.channel).inc()
    log.info("notifier: delivered %s via %s (attempt %d)", n.id, n.channel, attempt)
    await record(svc, n, attempt, "sent", None, mid)
    await msg.ack()


async def _failed(svc: Notifier, msg: Msg, n: Notification, attempt: int, exc: DeliveryError) -> None:
    if not exc.permanent and attempt < svc.ns.notify_max_attempts:
        wait = exc.retry_after if exc.retry_after is not None else backoff(svc, attempt)
        svc.counts["retries"] += 1
        metrics.ALERTS_RETRIED.labels(n.channel).inc()
        log.warning("notifier: %s via %s failed (attempt %d): %s; retrying in %.1fs", n.id, n.channel, attempt,
                    exc.reason, wait)
        await record(svc, n, attempt, "retry", exc.reason)
        await msg.nak(delay=wait)
        return
    reason = exc.reason if exc.permanent else f"gave up after {attempt} attempts: {exc.reason}"
    svc.counts["failed"] += 1
    metrics.ALERTS_FAILED.labels(n.channel).inc()
    log.error("notifier: %s via %s failed permanently: %s", n.id, n.channel, reason)
    await record(svc, n, attempt, "failed", reason)
    target = await escalate(svc, n, reason)
    if target is not None:
        await record(svc, n, attempt, "escalated", f"escalated to {target}: {reason}")
    await msg.ack()


async def escalate(svc: Notifier, n: Notification, reason: str) -> str | None:
    """Once: an escalated notification that fails too is recorded, not escalated again."""
    channel = svc.config.channels.get(n.channel) if svc.config else None
    target = channel.escalate_to if channel is not None else None
    if target is None or n.escalated_from is not None or n.status == "test":
        return None
    esc = n.model_copy(update={"id": f"{n.id}.esc", "channel": target, "escalated_from": n.channel,
                               "escalation_reason": reason[:300]})
    await publish_until_acked(svc.bus, [(wire.notify_subject(target), esc.to_bytes(), esc.id)],
                              "notifier: escalation")
    return target


async def record(svc: Notifier, n: Notification, attempt: int, outcome: DeliveryOutcome,
                 error: str | None, message_id: str | None = None) -> None:
    rec = DeliveryRecord(notification_id=n.id, channel=n.channel, status=n.status,
                         alert_ids=[a.id for a in n.alerts], attempt=attempt, outcome=outcome, error=error,
                         message_id=message_id, at=utcnow())
    await publish_until_acked(svc.bus, [(wire.delivery_subject(n.channel), rec.to_bytes(),
                                         f"{n.id}.{attempt}.{outcome}")], "notifier: delivery record")
