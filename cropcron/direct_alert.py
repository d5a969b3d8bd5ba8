"""An alert sent straight to its channels, without the bus: for what `cropcron up` must report when
the bus itself may be what is failing (its broker's disk is full). The rules of the notifications
config `up` was started with choose the channels, as the notifier would; each gets one attempt."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from services.notifier.channels import DeliveryError, make_sender
from services.notifier.rules import route
from services.notifier.service import NotifierService
from services.notifier.settings import NotifierSettings
from shared.events import Alert, Notification, utcnow
from shared.notify_config import NotificationsConfig, channel_problems

log = logging.getLogger("cropcron.alerts")

SEND_TIMEOUT = 30.0


async def send_direct(config: NotificationsConfig, alert: Alert, who: str = "cropcron up") -> list[str]:
    """Deliver `alert` to the channels its rules route it to; returns those that took it. `who`:
    the sender, for the log."""
    sent: list[str] = []
    ns = NotifierSettings()
    for name in route(config, alert):
        channel = config.channels[name]
        problems = channel_problems(name, channel)
        if problems:
            log.error("%s: alert %r not sent to %s: %s", who, alert.summary, name, problems[0])
            continue
        sender = make_sender(name, channel, ns)
        note = Notification(id=f"direct.{alert.id}.{name}", channel=name, group_key=alert.group_key(),
                            status="resolved" if alert.resolved else "firing", alerts=[alert], total=1,
                            created_at=utcnow())
        try:
            await asyncio.wait_for(sender.send(note), SEND_TIMEOUT)
            sent.append(name)
            log.info("%s: alert %r sent straight to %s (the bus could not take it)", who, alert.summary, name)
        except (DeliveryError, TimeoutError, OSError) as exc:
            log.error("%s: alert %r not sent to %s: %s", who, alert.summary, name,
                      exc.reason if isinstance(exc, DeliveryError) else repr(exc))
        finally:
            await sender.close()
    return sent


QUORUM_KIND = "quorum_lost"


def quorum_alerts(notifier: NotifierService, instance: str, after: float) -> Callable[[str | None], None]:
    """A listener of cropcron.quorum.JetStreamState for a process that runs the notifier. Alerts
    travel through JetStream, which stores nothing while a NATS cluster has lost its quorum: once
    JetStream has been unavailable for `after` seconds (CROPCRON_QUORUM_ALERT_AFTER: a leader
    election alone takes 4 to 9 s), this process sends `quorum_lost` straight to the channels the
    rules route it to, with the notifications config its notifier last applied, and the
    resolution once JetStream answers again. A notifier that was never active has no config and
    sends nothing."""
    who = f"notifier {instance}"
    pending: list[asyncio.Task[None]] = []
    began: list[datetime] = []  # set once the firing alert is sent
    sending: set[asyncio.Task[list[str]]] = set()

    def send(alert: Alert) -> None:
        config = notifier.last_config
        if config is not None:
            task = asyncio.get_running_loop().create_task(send_direct(config, alert, who))
            sending.add(task)
            task.add_done_callback(sending.discard)

    async def fire(problem: str, since: datetime) -> None:
        await asyncio.sleep(after)
        if notifier.last_config is None:
            return
        began[:] = [since]
        send(Alert(id=f"{QUORUM_KIND}.{instance}.{since.isoformat()}", level="critical", kind=QUORUM_KIND,
                   summary=f"NATS JetStream unavailable since {since:%H:%M:%S} UTC ({problem}): nothing is "
                           "stored, scheduled or run",
                   text="A NATS cluster that lost its quorum (more than half its nodes down) stores nothing until "
                        "enough nodes are back; cropcron resumes by itself then (docs/scale-out.md).",
                   source=who, at=utcnow(), fingerprint=f"{QUORUM_KIND}:{instance}"))

    def on_change(problem: str | None) -> None:
        for task in pending:
            task.cancel()
        pending.clear()
        if problem is not None:
            pending.append(asyncio.get_running_loop().create_task(fire(problem, utcnow())))
        elif began:
            since = began.pop()
            send(Alert(id=f"{QUORUM_KIND}.{instance}.{since.isoformat()}.resolved", level="info", kind=QUORUM_KIND,
                       resolved=True, summary=f"NATS JetStream available again (unavailable since {since:%H:%M:%S} "
                                              "UTC)", source=who, at=utcnow(), fingerprint=f"{QUORUM_KIND}:{instance}"))

    return on_change
