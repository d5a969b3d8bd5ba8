"""Intake: run events become alerts (and resolutions); raised alerts are folded into groups; due
groups become notifications in the outbox. Each step acks its input only after its output is
durable."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from pydantic import ValidationError

from services.notifier import groups as grouping
from services.notifier.context import Notifier
from services.notifier.rules import CLEARED_BY_SUCCESS, alert_from_run, resolved_alert, route
from services.notifier.state import JobWatch, put_many, save_state
from shared import wire
from shared.bus import publish_all, publish_until_acked
from shared.events import Alert, RunEvent, RunState, decode, utcnow
from shared.notify_config import NotificationsConfig

log = logging.getLogger("cropcron.notifier")
WATCHED = {RunState.SUCCEEDED, RunState.DEAD, RunState.FAILED, RunState.MISSED}


async def raise_alerts(svc: Notifier, alerts: list[Alert]) -> None:
    """Publish on the alerts stream (history and our own grouping read it there); the id is the
    Nats-Msg-Id, so raising the same alert twice is dropped by the broker."""
    items = [(wire.alert_subject(a.level, a.kind), a.to_bytes(), a.id) for a in alerts]
    await publish_until_acked(svc.bus, items, "notifier: raising alerts")


async def on_run_events(svc: Notifier, msgs: list[Msg]) -> None:
    config = svc.config or NotificationsConfig()
    alerts: list[Alert] = []
    good: list[Msg] = []
    for msg in msgs:
        try:
            ev: RunEvent = decode(RunEvent, msg.data)
        except (ValidationError, ValueError) as exc:
            # history records unreadable events as rejections; here there is nothing to alert on
            log.error("notifier: unreadable run event on %s: %s", msg.subject, str(exc)[:200])
            await msg.term()
            continue
        good.append(msg)
        if ev.state not in WATCHED:
            continue
        watch = svc.state.jobs.setdefault(ev.job, JobWatch())
        if ev.state is RunState.SUCCEEDED:
            if watch.last_success is None or ev.at > watch.last_success:
                watch.last_success = ev.at
            cleared = {k: v for k, v in watch.firing.items() if k in CLEARED_BY_SUCCESS}
            alerts += [resolved_alert(ev, kind, level) for kind, level in sorted(cleared.items())]
            watch.firing = {k: v for k, v in watch.firing.items() if k not in cleared}
            watch.overdue_for = None
            svc.state.touch(ev.job, urgent=bool(cleared))
        alert = alert_from_run(ev, config)
        if alert is not None:
            alerts.append(alert)
            if alert.kind in CLEARED_BY_SUCCESS and watch.firing.get(alert.kind) != alert.level:
                watch.firing[alert.kind] = alert.level
                svc.state.touch(ev.job, urgent=True)
    if alerts:
        await raise_alerts(svc, alerts)
    await save_state(svc.bus, svc.state)  # what is firing is durable before the events are acked
    for msg in good:
        await msg.ack()


async def on_alerts(svc: Notifier, msgs: list[Msg]) -> None:
    config = svc.config or NotificationsConfig()
    timing = svc.timing
    now = utcnow()
    # updated copies: if saving fails, memory still matches KV and the redelivered alerts count
    updated: dict[str, grouping.Group] = {}
    changed: set[str] = set()
    good: list[Msg] = []
    for msg in msgs:
        try:
            alert: Alert = decode(Alert, msg.data)
        except (ValidationError, ValueError) as exc:
            log.error("notifier: unreadable alert on %s: %s", msg.subject, str(exc)[:300])
            await msg.term()  # history keeps it as a rejection (it reads the same stream)
            continue
        good.append(msg)
        svc.counts["alerts"] += 1
        for channel in route(config, alert):
            key = grouping.group_kv_key(channel, alert.group_key())
            if key not in updated:
                current = svc.groups.get(key)
                updated[key] = (current.model_copy(deep=True) if current is not None
                                else grouping.Group(channel=channel, key=alert.group_key()))
            if grouping.add(updated[key], alert, now, timing):
                changed.add(key)
    # the groups hold the alerts now: only then are the alerts acked
    await put_many(svc.bus, [(key, updated[key].model_dump_json().encode()) for key in sorted(changed)])
    svc.groups.update({key: updated[key] for key in changed})
    for msg in good:
        await msg.ack()


async def flush_due(svc: Notifier) -> None:
    timing = svc.timing
    now = utcnow()
    assert svc.kv is not None
    for key, group in list(svc.groups.items()):
        if svc.config is not None and group.channel not in svc.config.channels:
            # the channel was removed from the config: its groups (and their repeats) go with it
            await svc.kv.delete(key)
            del svc.groups[key]
            continue
        due = grouping.next_due(group, timing)
        if due is None or due > now:
            continue
        updated = group.model_copy(deep=True)
        n = grouping.take_due(updated, now, timing)
        if n is not None:
            failed = await publish_all(svc.bus, [(wire.notify_subject(n.channel), n.to_bytes(), n.id)])
            if failed:
                log.warning("notifier: notification %s not accepted by the broker; retrying", n.id)
                return
            svc.counts["notifications"] += 1
            log.info("notifier: %s notification %s for %s (%d alert(s))", n.status, n.id, n.group_key, n.total)
        await svc.kv.put(key, updated.model_dump_json().encode())
        svc.groups[key] = updated
