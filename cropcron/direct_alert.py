"""An alert sent straight to its channels, without the bus: for what `cropcron up` must report when
the bus itself may be what is failing (its broker's disk is full). The rules of the notifications
config `up` was started with choose the channels, as the notifier would; each gets one attempt."""

from __future__ import annotations

import asyncio
import logging

from services.notifier.channels import DeliveryError, make_sender
from services.notifier.rules import route
from services.notifier.settings import NotifierSettings
from shared.events import Alert, Notification, utcnow
from shared.notify_config import NotificationsConfig, channel_problems

log = logging.getLogger("cropcron.alerts")

SEND_TIMEOUT = 30.0


async def send_direct(config: NotificationsConfig, alert: Alert) -> list[str]:
    """Deliver `alert` to the channels its rules route it to; returns those that took it."""
    sent: list[str] = []
    ns = NotifierSettings()
    for name in route(config, alert):
        channel = config.channels[name]
        problems = channel_problems(name, channel)
        if problems:
            log.error("cropcron up: alert %r not sent to %s: %s", alert.summary, name, problems[0])
            continue
        sender = make_sender(name, channel, ns)
        note = Notification(id=f"direct.{alert.id}.{name}", channel=name, group_key=alert.group_key(),
                            status="resolved" if alert.resolved else "firing", alerts=[alert], total=1,
                            created_at=utcnow())
        try:
            await asyncio.wait_for(sender.send(note), SEND_TIMEOUT)
            sent.append(name)
            log.info("cropcron up: alert %r sent straight to %s (the bus could not take it)", alert.summary, name)
        except (DeliveryError, TimeoutError, OSError) as exc:
            log.error("cropcron up: alert %r not sent to %s: %s", alert.summary, name,
                      exc.reason if isinstance(exc, DeliveryError) else repr(exc))
        finally:
            await sender.close()
    return sent
