"""Storm control after Alertmanager: alerts of one group (channel + fingerprint) within the group
window become one notification; later alerts wait for the group interval; a still-firing group
repeats after the repeat interval; a resolved group sends one "resolved" message.

Pure logic on a Group record (kept in KV so it survives restarts); the service does the I/O. A
notification's id is "<channel>.<group hash>.<seq>": it is published before the group's new seq
is saved, so a crash in between republishes the same id and the broker drops the duplicate."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from shared.events import Alert, Notification

RECENT_IDS = 500  # alert ids remembered per group: a redelivered alert is not counted twice


@dataclass(frozen=True)
class Timing:
    group_window: float
    group_interval: float
    repeat_interval: float
    max_alerts: int = 20


class Group(BaseModel):
    channel: str
    key: str
    seq: int = 0  # notifications produced so far
    active: bool = False  # firing: something was raised and not resolved yet
    pending: list[Alert] = Field(default_factory=list)  # raised, not notified yet (the last max_alerts)
    pending_total: int = 0
    resolved: Alert | None = None  # a resolved alert waiting to be notified
    flush_at: datetime | None = None
    last_sent: datetime | None = None
    last_alert: Alert | None = None
    recent_ids: list[str] = Field(default_factory=list)

    @property
    def kv_key(self) -> str:
        return group_kv_key(self.channel, self.key)


def group_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def group_kv_key(channel: str, key: str) -> str:
    return f"group.{channel}.{group_hash(key)}"


def add(group: Group, alert: Alert, now: datetime, timing: Timing) -> bool:
    """Fold one alert into the group; False if it changed nothing (a duplicate, or a resolution
    of something that is not firing)."""
    if alert.id in group.recent_ids:
        return False
    group.recent_ids = [*group.recent_ids[-(RECENT_IDS - 1):], alert.id]
    if alert.resolved:
        if not group.active:
            return False
        group.resolved = alert
        if group.flush_at is None:
            group.flush_at = _after_interval(group, now, timing)
        return True
    group.resolved = None  # firing again cancels a pending resolution
    if not group.active:
        group.active = True
        group.flush_at = now + timedelta(seconds=timing.group_window)
    elif group.flush_at is None:
        group.flush_at = _after_interval(group, now, timing)
    group.pending = [*group.pending[-(timing.max_alerts - 1):], alert]
    group.pending_total += 1
    group.last_alert = alert
    return True


def _after_interval(group: Group, now: datetime, timing: Timing) -> datetime:
    if group.last_sent is None:
        return now + timedelta(seconds=timing.group_window)
    return max(now, group.last_sent + timedelta(seconds=timing.group_interval))


def next_due(group: Group, timing: Timing) -> datetime | None:
    if group.flush_at is not None:
        return group.flush_at
    if group.active and group.last_sent is not None:
        return group.last_sent + timedelta(seconds=timing.repeat_interval)
    return None


def take_due(group: Group, now: datetime, timing: Timing) -> Notification | None:
    """The notification due now, if any; updates the group as if it was sent (the caller works
    on a copy and keeps it only once the notification is safely published)."""
    status = None
    alerts: list[Alert] = []
    total = 0
    if group.flush_at is not None and now >= group.flush_at:
        if group.pending:
            status, alerts, total = "firing", group.pending, group.pending_total
            group.pending, group.pending_total = [], 0
            # a resolution that arrived meanwhile follows one interval later
            group.flush_at = now + timedelta(seconds=timing.group_interval) if group.resolved else None
        elif group.resolved is not None:
            status, alerts, total = "resolved", [group.resolved], 1
            group.active, group.resolved, group.flush_at, group.last_alert = False, None, None, None
        else:
            group.flush_at = None
    elif (group.active and group.flush_at is None and group.last_sent is not None and group.last_alert is not None
          and now >= group.last_sent + timedelta(seconds=timing.repeat_interval)):
        status, alerts, total = "repeat", [group.last_alert], 1
    if status is None:
        return None
    group.last_sent = now
    n = Notification(id=f"{group.channel}.{group_hash(group.key)}.{group.seq}", channel=group.channel,
                     group_key=group.key, status=status, alerts=alerts, total=total,  # type: ignore[arg-type]
                     created_at=now)
    group.seq += 1
    return n
