"""Service heartbeats: each service writes `<service>.<instance>` into the services KV bucket every
few seconds, so operators, the dashboard and the notifier's dead-man switch can tell a
live service from a silent one."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext

from shared import wire
from shared.events import utcnow

log = logging.getLogger("cropcron.health")


def instance_key(service: str, instance: str) -> str:
    return f"{service}.{re.sub(r'[^A-Za-z0-9_-]', '_', instance)}"


async def heartbeat_loop(
    js: JetStreamContext,
    service: str,
    instance: str,
    interval: float,
    status: Callable[[], dict[str, Any]],
    stop: asyncio.Event,
) -> None:
    kv = await js.key_value(wire.KV_SERVICES)
    key = instance_key(service, instance)
    while not stop.is_set():
        body = {"service": service, "instance": instance, "at": utcnow().isoformat(), "interval": interval,
                **status()}
        try:
            await kv.put(key, json.dumps(body).encode())
        except Exception as exc:  # the bus may be reconnecting; the next beat will tell
            log.debug("heartbeat for %s not written: %r", key, exc)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
    try:
        await kv.delete(key)  # a clean stop is not a dead service
    except Exception as exc:
        log.debug("heartbeat key %s not removed: %r", key, exc)
