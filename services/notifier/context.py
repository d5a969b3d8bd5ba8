"""What the notifier's parts (intake, deadman, deliver) need of the running notifier: its bus,
catalog, applied config, groups, job state and counters. A Protocol, so those modules depend on
this small description and not on services/notifier/service.py, which imports them."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from nats.js.kv import KeyValue

from services.notifier.channels import Sender
from services.notifier.groups import Group, Timing
from services.notifier.settings import NotifierSettings
from services.notifier.state import JobsState
from shared.bus import Bus
from shared.catalog import Catalog
from shared.notify_config import NotificationsConfig


class Notifier(Protocol):
    bus: Bus
    catalog: Catalog
    ns: NotifierSettings
    notify_ack_wait: float  # the outbox consumer's ack_wait (BusSettings)
    config: NotificationsConfig | None
    senders: dict[str, Sender]
    groups: dict[str, Group]
    state: JobsState
    kv: KeyValue | None
    started_at: datetime
    counts: dict[str, int]

    @property
    def timing(self) -> Timing: ...
